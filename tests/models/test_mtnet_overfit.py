"""A small MT-Net learns: overfit 4 synthetic 64x64 patches with a bright disc as the nodule.

Runs both phases of the paper's training order (section 3.2.1): ``coarse``, then ``fine_cls``.
Width, input size and learning rate are test values (the paper's lr 1e-4 is for 100 epochs).
"""
from __future__ import annotations

import pytest
import torch

from nodulekit.metrics.segmentation import dice
from nodulekit.models import create_model, get_spec
from nodulekit.models.mtnet import mtnet_loss

OVERRIDES = {"width": 0.125, "input_size_px": 64, "output_resolution": "input",
             "seg": {"middle_units": 1}, "cls": {"middle_blocks": 1}}


def discs(n: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy patches ``(n, 1, size, size)`` with a bright disc of radius 6, 8, ... px."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for i in range(n):
        cy, cx = (size // 2 + torch.randint(-6, 7, (2,), generator=gen)).tolist()
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= (6 + 2 * i) ** 2).float()
        images.append(mask + 0.1 * torch.randn(size, size, generator=gen))
        masks.append(mask)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


def _dice(logits: torch.Tensor, mask: torch.Tensor) -> float:
    return dice(torch.sigmoid(logits.detach()) > 0.5, mask.bool())


def _train(model, phase, config, image, targets, steps: int, lr: float) -> list[dict[str, float]]:
    groups = model.parameter_groups()
    optimizer = torch.optim.Adam([p for name in phase.trains for p in groups[name]], lr=lr)
    history = []
    for _ in range(steps):
        outputs = model(image, outputs=list(phase.losses))
        total, parts = mtnet_loss(outputs, targets, config, phase.losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({name: loss.item() for name, loss in parts.items()}
                       | {"dice_" + n: _dice(outputs[n], targets["seg"])
                          for n in ("seg", "seg_coarse") if n in outputs})
    return history


@pytest.mark.slow
def test_mtnet_overfits_four_discs() -> None:
    torch.manual_seed(0)
    spec = get_spec("mtnet")
    config = spec.resolve_config({"model": OVERRIDES})
    model = create_model("mtnet", config=config)
    image, mask = discs()
    targets = {"seg": mask, "malignancy": torch.tensor([0.0, 0.0, 1.0, 1.0])}  # big = malignant
    coarse, fine_cls = spec.phases(config)

    history = _train(model, coarse, config, image, targets, steps=60, lr=1e-2)
    assert history[-1]["seg_coarse"] < 0.3 * history[0]["seg_coarse"]
    model.eval()
    with torch.no_grad():
        assert _dice(model(image, outputs=["seg_coarse"])["seg_coarse"], mask) > 0.7
    model.train()

    history = _train(model, fine_cls, config, image, targets, steps=15, lr=1e-2)
    assert history[-1]["dice_seg"] > 0.7 and history[-1]["dice_seg_coarse"] > 0.7
    assert history[-1]["seg"] < history[0]["seg"]
    assert history[-1]["malignancy"] < 0.5 * history[0]["malignancy"]
