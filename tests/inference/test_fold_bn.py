"""BatchNorm folding for inference: same outputs as the unfolded model, only safe pairs folded."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nodulekit.inference.fold_bn import fold_batchnorm
from nodulekit.models import create_model, get_spec, list_models


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=generator) * 0.1)


@pytest.mark.parametrize("name", list_models())
def test_folded_model_gives_the_same_outputs(name: str) -> None:
    torch.manual_seed(0)
    spec = get_spec(name)
    model = create_model(name, **spec.test_overrides)
    _randomise_norms(model)
    model.eval()
    x = torch.randn(2, spec.geometry.channels, *spec.geometry.patch_shape_px)
    folded = copy.deepcopy(model)
    n_folded = fold_batchnorm(folded)
    n_norms_before = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    n_norms_after = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert n_norms_after == n_norms_before - n_folded
    if n_norms_before:  # mtcnn has no BatchNorm (paper 002)
        assert n_folded > 0
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    assert set(expected) == set(actual)
    for key in expected:
        scale = float(expected[key].abs().max()) + 1e-6
        assert torch.allclose(actual[key], expected[key], rtol=1e-4, atol=1e-4 * scale), key


class _Residual(nn.Module):
    """conv -> bn, but the conv output is also added back: must not fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y


class _Untraceable(nn.Module):
    """Branches on the input's values (fx cannot trace it); its child block still folds."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.residual = _Residual()
        self.after_relu = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.block(self.after_relu(self.residual(x)))


def test_only_safe_pairs_fold_and_untraceable_parents_are_searched() -> None:
    torch.manual_seed(0)
    model = _Untraceable()
    _randomise_norms(model)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    assert fold_batchnorm(model) == 1
    assert isinstance(model.block[1], nn.Identity)
    assert isinstance(model.residual.norm, nn.BatchNorm2d)  # its conv output has a second user
    assert isinstance(model.after_relu[1], nn.BatchNorm2d)  # not after a conv
    assert model.block[0].bias is not None
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))


def test_folding_leaves_the_tensors_it_was_given_untouched() -> None:
    """The folded weight is a new tensor: the one loaded (a memory-mapped checkpoint's, or a state
    dict someone still holds) keeps its values, and nothing is written into its pages."""
    conv, norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    model = nn.Sequential(conv, norm)
    _randomise_norms(model)
    model.eval()
    original = conv.weight.detach().clone()
    held = conv.weight
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    assert fold_batchnorm(model) == 1
    assert torch.equal(held.detach(), original)
    assert model[0].weight is not held and not torch.allclose(model[0].weight, original)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-4, atol=1e-5)
