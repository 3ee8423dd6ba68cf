"""dgnet specifics (paper 001): STD sigmoid (eq. 4-5), blocks, ablations, transfer learning, loss."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.metrics.segmentation import dice
from nodulekit.models import create_model, get_spec
from nodulekit.models.blocks import (FeatureCombination, ResidualUnit, SeparableConv2d, STDSigmoid,
                                     SummedASPP, gaussian_kernel2d)
from nodulekit.models.dgnet import (DGNet, dgnet_loss, dgnet_targets, freeze, load_init_weights,
                                    trainable_groups)
from nodulekit.models.losses import dice_loss
from nodulekit.training.engine import select_trainable, set_train_mode

SPEC = get_spec("dgnet")
SMALL = dict(SPEC.test_overrides)


def small(**overrides: object) -> DGNet:
    torch.manual_seed(0)
    return create_model("dgnet", **{**SMALL, **overrides})  # type: ignore[return-value]


def small_config(**overrides: object) -> dict:
    return SPEC.resolve_config({"model": {**SMALL, **overrides}})


def noisy_disc(n: int = 64, radius: int = 14, noise: float = 2.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A feature map ``u`` (1, 1, n, n): +-2 inside/outside a disc plus Gaussian noise, and the disc."""
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    disc = (((yy - n // 2) ** 2 + (xx - n // 2) ** 2) <= radius ** 2).float()
    gen = torch.Generator().manual_seed(seed)
    return ((2 * disc - 1) * 2 + noise * torch.randn(n, n, generator=gen))[None, None], disc


def boundary_and_components(mask: torch.Tensor) -> tuple[int, int]:
    """Boundary length (4-neighbour pairs with different labels) and foreground components."""
    m = mask.squeeze().numpy().astype(bool)
    boundary = int((m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum())
    return boundary, int(ndimage.label(m)[1])


def std(**kwargs: object) -> STDSigmoid:
    defaults = dict(iterations=10, lambda2=0.0, learn_lambda2=False, learn_sigma=False)
    return STDSigmoid(**{**defaults, **kwargs})  # type: ignore[arg-type]


# -- STD sigmoid (section 3.3, eq. 4-5) --------------------------------------------------------

@pytest.mark.parametrize("eps", [1.0, 0.5, 2.0])
def test_std_without_lambdas_is_a_plain_sigmoid_of_u_over_eps(eps: float) -> None:
    u, _ = noisy_disc()
    layer = std(lambda1=0.0, eps=eps)
    z = layer(u, c=torch.tensor([0.2]))  # lambda2 = 0: the prior has no effect
    torch.testing.assert_close(z, u / eps)
    torch.testing.assert_close(torch.sigmoid(z), torch.sigmoid(u / eps))


def test_std_iteration_is_eq5_with_u_and_converges_within_ten_steps() -> None:
    u, _ = noisy_disc()
    c = torch.tensor([0.3])
    layer = std(lambda1=1.0, lambda2=0.7, sigma=1.5)
    x = torch.sigmoid(layer(u, c))
    # x is (close to) the fixed point of eq. (5) with u in the numerator
    residual = torch.sigmoid(u - layer.smooth(1 - 2 * x) - 0.7 * (1 - 0.3)) - x
    assert residual.abs().max() < 1e-4
    longer = std(lambda1=1.0, lambda2=0.7, sigma=1.5, iterations=60)
    assert (torch.sigmoid(longer(u, c)) - x).abs().max() < 1e-4


def test_larger_lambda1_gives_smoother_masks_on_a_noisy_input() -> None:
    u, disc = noisy_disc()
    stats = [boundary_and_components(std(lambda1=lam)(u) > 0) for lam in (0.0, 1.0, 2.0, 4.0)]
    boundaries = [b for b, _ in stats]
    components = [k for _, k in stats]
    print("boundary length, components by lambda1 0, 1, 2, 4:", stats)
    assert boundaries == sorted(boundaries, reverse=True) and len(set(boundaries)) == 4
    assert components == sorted(components, reverse=True) and components[-1] < components[0] / 4
    plain, smooth = (std(lambda1=lam)(u) > 0 for lam in (0.0, 4.0))
    assert dice(smooth[0, 0], disc.bool()) > dice(plain[0, 0], disc.bool())


def test_larger_sigma_also_smooths() -> None:
    u, _ = noisy_disc()
    narrow, wide = (boundary_and_components(std(lambda1=2.0, sigma=s)(u) > 0)[0] for s in (0.5, 2.0))
    assert wide < narrow


def test_classifier_prior_shrinks_the_mask_when_no_nodule_is_likely() -> None:
    u, _ = noisy_disc(noise=0.5)
    layer = std(lambda1=1.0, lambda2=2.0)
    sizes = {c: int((layer(u, torch.tensor([c])) > 0).sum()) for c in (0.0, 0.5, 1.0)}
    assert sizes[0.0] < sizes[0.5] < sizes[1.0]
    torch.testing.assert_close(layer(u, torch.tensor([1.0])), layer(u, None))  # c = 1: no effect


def test_std_gradients_reach_u_and_the_learnable_scalars_but_not_c() -> None:
    u, _ = noisy_disc()
    u.requires_grad_(True)
    c = torch.tensor([0.4], requires_grad=True)
    layer = STDSigmoid(iterations=10)  # defaults: lambda2 and sigma learnable (section 3.3)
    assert {n for n, _ in layer.named_parameters()} == {"lambda2.raw", "sigma.raw"}
    torch.sigmoid(layer(u, c)).mean().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    assert c.grad is None  # section 3.3: c is excluded from backpropagation
    assert layer.lambda2.raw.grad.abs() > 0 and layer.sigma.raw.grad.abs() > 0
    torch.testing.assert_close(layer.lambda2(), torch.tensor(1.0))
    torch.testing.assert_close(layer.sigma(), torch.tensor(1.0))


def test_gaussian_kernel() -> None:
    sigma = torch.tensor(1.3, requires_grad=True)
    k = gaussian_kernel2d(sigma, 9)
    assert k.shape == (9, 9) and float(k.sum().detach()) == pytest.approx(1.0)
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k, k.flip(0))
    assert k.argmax() == 40  # the centre
    k[4, 4].backward()
    assert sigma.grad < 0  # wider kernel -> lower peak
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel2d(sigma, 8)


# -- architecture (sections 3.1, 3.2) ------------------------------------------------------------

def test_blocks_follow_section_3_1() -> None:
    model = small()
    seg = model.segmenter
    for name in ("S2", "S3", "S4"):
        assert isinstance(seg[name], ResidualUnit)
        assert isinstance(seg[name].conv1, SeparableConv2d) and seg[name].conv1.depthwise.stride == (2, 2)
        assert seg[name].conv1.depthwise.groups == seg[name].conv1.depthwise.in_channels
    for aspp in (seg["S5"], seg["S9"][0]):
        assert isinstance(aspp, SummedASPP)
        assert [b[0].dilation[0] for b in aspp.branches] == [1, 5, 10, 15]
    assert seg["S9"][1].out_channels == 1
    plain = small(separable_downsampling=False)
    assert isinstance(plain.segmenter["S2"].conv1, nn.Conv2d)


def test_feature_combination_block_structure() -> None:
    block = FeatureCombination(seg_channels=8, cls_channels=12)
    assert block.cls_project[0].kernel_size == (1, 1)
    assert (block.cls_project[0].in_channels, block.cls_project[0].out_channels) == (12, 12)
    assert (block.fuse[0].in_channels, block.fuse[0].out_channels, block.fuse[0].kernel_size) == (20, 8, (1, 1))
    assert isinstance(block.refine[0], SeparableConv2d) and block.refine[0].depthwise.kernel_size == (3, 3)
    out = block(torch.randn(2, 8, 16, 16), torch.randn(2, 12, 16, 16))
    assert out.shape == (2, 8, 16, 16)
    with pytest.raises(ValueError, match="same-size"):
        block(torch.randn(2, 8, 16, 16), torch.randn(2, 12, 8, 8))


def test_combination_pairs_same_size_features() -> None:
    model = small(combine_at=["S2", "S3", "S4", "S5"])
    feats = {}
    hooks = [model.combination[n].register_forward_hook(
        lambda m, args, out, n=n: feats.__setitem__(n, (args[0].shape, args[1].shape))) for n in model.combination]
    model(torch.randn(2, 1, 128, 128))
    for hook in hooks:
        hook.remove()
    assert {n: seg[-1] for n, (seg, _) in feats.items()} == {"S2": 64, "S3": 32, "S4": 16, "S5": 16}
    assert all(seg[-2:] == cls[-2:] for seg, cls in feats.values())


def test_outputs_are_logits_and_seg_is_the_std_argument() -> None:
    model = small().eval()
    x = torch.rand(2, 1, 64, 64)
    captured = {}
    model.segmenter["S9"].register_forward_hook(lambda m, a, out: captured.__setitem__("u", out))
    with torch.no_grad():
        out = model(x)
    assert out["seg"].shape == (2, 1, 64, 64) and out["nodule"].shape == (2,)
    with torch.no_grad():
        expected = model.std(captured["u"], torch.sigmoid(out["nodule"]))
    torch.testing.assert_close(out["seg"], expected)


ABLATIONS = {
    "no_combination": {"combine_at": []},
    "no_std": {"std": {"enabled": False}},
    "std_lambda2_0": {"std": {"prior": False}},
    "all_three": {"combine_at": [], "std": {"enabled": False, "prior": False}},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_table3_ablations(name: str) -> None:
    overrides = ABLATIONS[name]
    model = small(**overrides)
    cfg = small_config(**overrides)
    groups = trainable_groups(cfg)
    out = model(torch.rand(2, 1, 64, 64))
    assert out["seg"].shape == (2, 1, 64, 64)
    if "combine_at" in overrides:
        assert len(model.combination) == 0 and "combination" not in groups
    if overrides.get("std", {}).get("enabled") is False:
        assert model.std is None and "std" not in groups
    elif overrides.get("std", {}).get("prior") is False:
        assert float(model.std.lambda2()) == 0.0 and not model.std.lambda2.learnable
        assert {n for n, _ in model.std.named_parameters()} == {"sigma.raw"}
    assert set(groups) <= set(model.parameter_groups())
    assert all(model.parameter_groups()[g] for g in groups)  # no empty trained group


def test_no_std_seg_is_u() -> None:
    model = small(std={"enabled": False}).eval()
    captured = {}
    model.segmenter["S9"].register_forward_hook(lambda m, a, out: captured.__setitem__("u", out))
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    torch.testing.assert_close(out["seg"], captured["u"])


def test_without_combination_the_seg_loss_does_not_reach_the_classifier() -> None:
    model = small(combine_at=[])
    out = model(torch.rand(2, 1, 64, 64))
    out["seg"].sum().backward()  # through the STD prior: c must be detached
    assert all(p.grad is None for p in model.classifier.parameters())
    assert model.segmenter["S1"].conv1.weight.grad.abs().sum() > 0


def test_with_combination_the_seg_loss_trains_the_classifier_features() -> None:
    model = small()
    model(torch.rand(2, 1, 64, 64))["seg"].sum().backward()
    assert model.classifier.stem[0].weight.grad.abs().sum() > 0
    assert model.classifier.fc.weight.grad is None  # only the prior uses fc, detached


@pytest.mark.parametrize("overrides", [
    {"aspp_merge": "concat"}, {"upsample": "bilinear"}, {"separable_downsampling": False},
    {"std": {"learn_eps": True, "learn_lambda1": True, "learn_lambda2": False, "learn_sigma": False}},
    {"std": {"padding": "reflect", "kernel_size": 5, "eps": 0.5}},
])
def test_other_config_switches(overrides: dict) -> None:
    model = small(**overrides)
    out = model(torch.rand(2, 1, 64, 64))
    assert out["seg"].shape == (2, 1, 64, 64) and torch.isfinite(out["seg"]).all()
    assert set(trainable_groups(small_config(**overrides))) <= set(model.parameter_groups())


def test_bad_config_values_raise() -> None:
    with pytest.raises(NodulekitError, match="combine_at"):
        small(combine_at=["S1"])
    with pytest.raises(NodulekitError, match="aspp_merge"):
        small(aspp_merge="max")
    with pytest.raises(NodulekitError, match="unknown block"):
        small(transfer={"freeze": ["S10"]})


# -- transfer learning (section 4.5) -------------------------------------------------------------

def test_freeze_blocks_keeps_them_unchanged_in_a_training_step() -> None:
    model = small()
    names = freeze(model, ["S1", "S5", "S9", "C1", "FC"])
    assert names and all(n.startswith(("segmenter.S1.", "segmenter.S5.", "segmenter.S9.",
                                       "classifier.stem.", "classifier.fc.")) for n in names)
    params = dict(model.named_parameters())
    assert all(not params[n].requires_grad for n in names)
    assert sum(p.requires_grad for p in params.values()) == len(params) - len(names)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert not model.segmenter["S1"].training and not model.classifier.stem.training
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.rand(2, 1, 64, 64)
    total, _ = dgnet_loss(model(x), {"seg": (x > 0.5).float()}, SPEC.default_config, {"seg": 1.0, "nodule": 1.0})
    total.backward()
    optimizer.step()
    after = model.state_dict()
    frozen_prefixes = ("segmenter.S1.", "segmenter.S5.", "segmenter.S9.", "classifier.stem.", "classifier.fc.")
    for key, value in after.items():
        if key.startswith(frozen_prefixes):  # parameters and BatchNorm statistics
            assert torch.equal(value, before[key]), key
    assert not torch.equal(after["segmenter.S2.conv2.weight"], before["segmenter.S2.conv2.weight"])
    assert not torch.equal(after["classifier.layer1.0.bn3.weight"], before["classifier.layer1.0.bn3.weight"])


def test_freeze_from_config_and_phase(tmp_path: Path) -> None:
    source = small(std={"enabled": False})  # section 4.2: no STD during pre-training
    torch.save({"model": source.state_dict(), "phase": "train"}, tmp_path / "model.pt")
    transfer = {"init_from": str(tmp_path), "freeze": ["S9", "C1"]}
    model = small(transfer=transfer)
    torch.testing.assert_close(model.segmenter["S4"].conv2.weight, source.segmenter["S4"].conv2.weight)
    assert model.frozen == ("S9", "C1")
    assert not any(p.requires_grad for p in model.segmenter["S9"].parameters())
    (phase,) = SPEC.phases(small_config(transfer=transfer))
    assert phase.name == "finetune" and phase.epochs == 50  # section 4.2: 50 fine-tuning epochs
    assert "S9" not in phase.trains and "C1" not in phase.trains and "S1" in phase.trains
    (pretrain,) = SPEC.phases(SPEC.default_config)
    assert pretrain.name == "train" and pretrain.epochs == 200


def test_freeze_through_the_phase_and_the_trainer_selection() -> None:
    transfer = {"freeze": ["S1", "S5", "C1", "FC"]}
    model = small(transfer=transfer)
    (phase,) = SPEC.phases(small_config(transfer=transfer))
    params = select_trainable(model, lambda m: [p for g in phase.trains for p in m.parameter_groups()[g]])
    set_train_mode(model, frozen_eval=True)
    assert not model.segmenter["S5"].training and model.segmenter["S6"].training
    frozen = {id(p) for name in transfer["freeze"] for p in model.blocks()[name].parameters()}
    assert not frozen & {id(p) for p in params}
    assert len(params) == sum(1 for p in model.parameters() if p.requires_grad)


def test_init_from_keeps_trained_std_scalars_when_they_fit(tmp_path: Path) -> None:
    source = small()
    with torch.no_grad():
        source.std.sigma.raw.fill_(2.0)
    torch.save(source.state_dict(), tmp_path / "with_std.pt")
    target = small()
    assert load_init_weights(target, tmp_path / "with_std.pt") == []
    torch.testing.assert_close(target.std.sigma(), source.std.sigma())
    no_prior = small(std={"prior": False})  # lambda2 fixed here: the file's learnt one does not fit
    assert load_init_weights(no_prior, tmp_path / "with_std.pt") == ["std.lambda2.fixed"]


def test_init_from_rejects_other_architectures(tmp_path: Path) -> None:
    torch.save(small(width=0.125).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(NodulekitError, match="shape mismatch"):
        load_init_weights(small(), tmp_path / "wide.pt")
    with pytest.raises(NodulekitError, match="no weights"):
        load_init_weights(small(), tmp_path / "missing.pt")


# -- loss (eq. 7) ---------------------------------------------------------------------------------

def test_loss_is_dice_plus_bce_plus_bce_with_the_nodule_target_from_the_mask() -> None:
    torch.manual_seed(0)
    seg = torch.randn(3, 1, 16, 16)
    nodule = torch.randn(3)
    mask = torch.zeros(3, 1, 16, 16)
    mask[0, 0, 4:9, 4:9] = 1
    mask[1, 0, 2:4, 10:12] = 1  # slice 2 is empty
    config = SPEC.default_config
    weights = SPEC.phases(config)[0].losses
    total, parts = dgnet_loss({"seg": seg, "nodule": nodule}, {"seg": mask}, config, weights)
    expected_seg = dice_loss(torch.sigmoid(seg), mask, eps=1.0, reduction="batch") + \
        nn.functional.binary_cross_entropy(torch.sigmoid(seg), mask)
    expected_cls = nn.functional.binary_cross_entropy_with_logits(nodule, torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(parts["seg"], expected_seg)
    torch.testing.assert_close(parts["nodule"], expected_cls)
    torch.testing.assert_close(total, expected_seg + expected_cls)
    targets = dgnet_targets({"mask": mask, "image": seg})
    assert targets["nodule"].tolist() == [1.0, 1.0, 0.0]


def test_paper_defaults() -> None:
    config = SPEC.default_config
    assert config["batch_size"] == 10
    assert config["optimizer"] == {"name": "adam", "lr": 1e-3, "weight_decay": 1e-8, "betas": [0.9, 0.999]}
    assert config["model"]["aspp_rates"] == [1, 5, 10, 15]
    assert config["model"]["std"]["iterations"] == 10 and config["model"]["std"]["lambda1"] == 1.0
    assert SPEC.cite["optimizer.weight_decay"].startswith("§4.2")


@pytest.mark.slow
def test_default_width_parameter_counts() -> None:
    counts = SPEC.param_counts()
    print("dgnet default-width parameters:", counts)
    # ResNet-50 without its 1000-class FC (23,508,032), 1 input channel (-2 * 64 * 49), FC 2048 -> 1
    assert counts["classifier"] == 23_508_032 - 2 * 64 * 49 + 2049
    assert 15e6 < counts["segmenter"] < 18e6
    assert counts["total"] == counts["classifier"] + counts["segmenter"] + counts["combination"]


# -- overfit ----------------------------------------------------------------------------------------

def slices(n: int = 6, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy slices with a bright disc (radius 5, 7, ...), every third one empty."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for i in range(n):
        mask = torch.zeros(size, size)
        if i % 3 != 2:
            cy, cx = (size // 2 + torch.randint(-8, 9, (2,), generator=gen)).tolist()
            mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= (5 + 2 * i) ** 2).float()
        images.append(0.2 + 0.6 * mask + 0.08 * torch.randn(size, size, generator=gen))
        masks.append(mask)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


@pytest.mark.slow
def test_dgnet_overfits_six_slices() -> None:
    torch.manual_seed(0)
    config = SPEC.resolve_config({"model": {"width": 0.0625}})
    model = create_model("dgnet", config=config)
    image, mask = slices()
    (phase,) = SPEC.phases(config)
    groups = model.parameter_groups()
    optimizer = torch.optim.Adam([p for g in phase.trains for p in groups[g]], lr=1e-2)
    history = []
    for _ in range(20):
        out = model(image)
        total, parts = dgnet_loss(out, {"seg": mask}, config, phase.losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append((total.item(), dice(torch.sigmoid(out["seg"].detach()) > 0.5, mask.bool()),
                        parts["nodule"].item()))
    print("loss, dice, nodule BCE:", history[0], history[-1])
    assert history[-1][0] < 0.4 * history[0][0]
    assert history[0][1] < 0.5 and history[-1][1] > 0.9
    assert history[-1][2] < 0.1
    assert np.isfinite(float(model.std.sigma().detach())) and float(model.std.lambda2().detach()) > 0
