"""MT-Net's losses against brute-force hand computations (paper 000, eq. 1-3)."""
from __future__ import annotations

import itertools

import pytest
import torch

from nodulekit.models.losses import bce_loss, dice_loss, rank_loss, seg_loss


def _brute_dice(p: torch.Tensor, g: torch.Tensor, eps: float) -> float:
    num = sum(float(a) * float(b) for a, b in zip(p.flatten(), g.flatten()))
    den = sum(float(a) + float(b) for a, b in zip(p.flatten(), g.flatten()))
    return 1.0 - 2.0 * num / (den + eps)


def _brute_rank(p: torch.Tensor, g: torch.Tensor, k: int, margin: float) -> float | None:
    values = [(float(a), int(b)) for a, b in zip(p.flatten(), g.flatten())]
    bg = sorted((v for v, lab in values if lab == 0), reverse=True)[:k]  # highest P = hardest
    fg = sorted(v for v, lab in values if lab == 1)[:k]                  # lowest P = hardest
    if not bg or not fg:
        return None
    total = sum(max(0.0, h0 - h1 + margin) for h0, h1 in itertools.product(bg, fg))
    return total / (len(bg) * len(fg))


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    probs = torch.rand(3, 1, 5, 6, generator=gen)
    target = torch.zeros(3, 1, 5, 6)
    target[0, 0, 1:4, 2:5] = 1   # 9 nodule pixels
    target[1, 0, 2, 3] = 1       # 1 nodule pixel (< K)
    # image 2: no nodule at all
    return probs, target


def test_dice_loss_matches_equation_2_per_image_and_per_batch() -> None:
    probs, target = _example()
    expected = sum(_brute_dice(probs[i], target[i], 1.0) for i in range(3)) / 3
    assert float(dice_loss(probs, target, eps=1.0)) == pytest.approx(expected, rel=1e-6)
    assert float(dice_loss(probs, target, eps=1.0, reduction="batch")) == pytest.approx(
        _brute_dice(probs, target, 1.0), rel=1e-6)


def test_dice_loss_is_zero_for_a_perfect_prediction_without_eps() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., 1:3, 1:3] = 1
    assert float(dice_loss(target.clone(), target, eps=0.0)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("k", [1, 3, 20])
@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_rank_loss_matches_equation_3(k: int, margin: float) -> None:
    probs, target = _example()
    per_image = [_brute_rank(probs[i], target[i], k, margin) for i in range(3)]
    defined = [v for v in per_image if v is not None]
    assert per_image[2] is None  # no nodule: no pair, left out of the mean
    assert float(rank_loss(probs, target, k=k, margin=margin)) == pytest.approx(
        sum(defined) / len(defined), rel=1e-6)


def test_rank_loss_hand_example() -> None:
    # 2x2 image: nodule P = [0.9, 0.4], background P = [0.5, 0.1]; K = 2, margin 0.3:
    # pairs (h0, h1): (0.5, 0.4) -> 0.4, (0.5, 0.9) -> 0, (0.1, 0.4) -> 0.0, (0.1, 0.9) -> 0
    probs = torch.tensor([[[[0.9, 0.5], [0.4, 0.1]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert float(rank_loss(probs, target, k=2, margin=0.3)) == pytest.approx(0.4 / 4)
    # K = 1: hardest background 0.5, hardest nodule 0.4 -> 0.4
    assert float(rank_loss(probs, target, k=1, margin=0.3)) == pytest.approx(0.4)


def test_rank_loss_without_any_pair_is_zero_and_differentiable() -> None:
    logits = torch.zeros(2, 1, 3, 3, requires_grad=True)
    loss = rank_loss(torch.sigmoid(logits), torch.zeros(2, 1, 3, 3))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_rank_loss_gradient_reaches_only_the_selected_pixels() -> None:
    probs = torch.tensor([[[[0.9, 0.5], [0.4, 0.1]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    rank_loss(probs, target, k=1, margin=0.3).backward()
    assert probs.grad.flatten().tolist() == pytest.approx([0.0, 1.0, -1.0, 0.0])


def test_seg_loss_is_dice_plus_gamma_rank_on_sigmoid() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=gen)
    _, target = _example()
    target = torch.nn.functional.pad(target[:2], (1, 1, 1, 2))
    probs = torch.sigmoid(logits)
    expected = dice_loss(probs, target) + 0.02 * rank_loss(probs, target, k=20, margin=0.3)
    assert float(seg_loss(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    assert float(seg_loss(logits, target, gamma=0.0)) == pytest.approx(float(dice_loss(probs, target)))


def test_bce_loss_matches_formula() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([1, 0, 0])
    p = torch.sigmoid(logits)
    expected = -(torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(1 - p[2])) / 3
    assert float(bce_loss(logits, labels)) == pytest.approx(float(expected), rel=1e-6)


def test_losses_are_float32_under_bfloat16_logits() -> None:
    logits = torch.randn(2, 1, 8, 8).to(torch.bfloat16)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert seg_loss(logits, target).dtype == torch.float32
    assert bce_loss(torch.randn(3).to(torch.bfloat16), torch.tensor([0, 1, 1])).dtype == torch.float32
