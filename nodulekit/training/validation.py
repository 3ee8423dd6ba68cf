"""Validation metrics of model outputs during training, by output kind.

Every output of a registered model is a *segmentation* output (logits ``(B, 1, *spatial)``) or a
*classification* output (binary logits ``(B,)``, or ``(B, C)`` class logits). Per epoch the
engine logs, for each output ``o`` a phase trains (``val_`` is prefixed by the engine):

- ``<o>_loss``: the model's loss of ``o`` (sample-weighted mean), and ``loss``: their weighted sum;
- segmentation: ``<o>_dice`` and ``<o>_jaccard``, per image at probability 0.5 (sigmoid), then
  the mean over images (the masks resized to the logits' size as the loss does: bilinear, >= 0.5);
  an image whose prediction and truth are both empty counts 1.0 (nodulekit.metrics.dice);
- classification: ``<o>_auc`` (nodulekit.metrics.auc; NaN with one class) and ``<o>_accuracy``
  at probability 0.5 (binary) or the arg-max (C classes).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def resize_mask_like(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """A 0/1 mask ``(B, 1, *spatial)`` at the logits' spatial size (bilinear, >= 0.5)."""
    mask = mask.to(torch.float32)
    if tuple(mask.shape[2:]) == tuple(logits.shape[2:]):
        return mask
    mode = "bilinear" if mask.ndim == 4 else "trilinear"
    return (F.interpolate(mask, size=logits.shape[2:], mode=mode, align_corners=False) >= 0.5).to(torch.float32)


def overlap_per_image(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and Jaccard per image ``(B,)`` of ``sigmoid(logits) >= 0.5`` against ``mask``."""
    pred = (logits.float() >= 0).reshape(logits.shape[0], -1)  # sigmoid(x) >= 0.5 <=> x >= 0
    truth = resize_mask_like(mask, logits).reshape(logits.shape[0], -1) >= 0.5
    tp = (pred & truth).sum(1).double()
    fp = (pred & ~truth).sum(1).double()
    fn = (~pred & truth).sum(1).double()
    empty = (tp + fp + fn) == 0
    dice = torch.where(empty, torch.ones_like(tp), 2 * tp / (2 * tp + fp + fn).clamp(min=1))
    jaccard = torch.where(empty, torch.ones_like(tp), tp / (tp + fp + fn).clamp(min=1))
    return dice, jaccard


class OutputMetrics:
    """Accumulates one output's predictions over validation batches; :meth:`result` gives metrics."""

    def __init__(self, name: str, segmentation: bool) -> None:
        self.name, self.segmentation = name, segmentation
        self.loss_sum, self.loss_n = 0.0, 0
        self.dice: list[torch.Tensor] = []
        self.jaccard: list[torch.Tensor] = []
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | None) -> None:
        n = int(logits.shape[0])
        if loss is not None:
            self.loss_sum += float(loss) * n
            self.loss_n += n
        if self.segmentation:
            dice, jaccard = overlap_per_image(logits, target)
            self.dice.append(dice.cpu())
            self.jaccard.append(jaccard.cpu())
        else:
            probs = torch.sigmoid(logits.float()) if logits.ndim == 1 else torch.softmax(logits.float(), dim=1)
            self.scores.append(probs.cpu().numpy())
            self.labels.append(target.cpu().numpy().astype(np.int64))

    def result(self) -> dict[str, float]:
        from nodulekit.metrics import auc

        out: dict[str, float] = {}
        if self.loss_n:
            out[f"{self.name}_loss"] = self.loss_sum / self.loss_n
        if self.segmentation and self.dice:
            out[f"{self.name}_dice"] = float(torch.cat(self.dice).mean())
            out[f"{self.name}_jaccard"] = float(torch.cat(self.jaccard).mean())
        elif self.scores:
            scores, labels = np.concatenate(self.scores), np.concatenate(self.labels)
            predicted = (scores >= 0.5).astype(np.int64) if scores.ndim == 1 else scores.argmax(axis=1)
            out[f"{self.name}_accuracy"] = float((predicted == labels).mean())
            out[f"{self.name}_auc"] = float(auc(labels, scores))
        return out


def combine(metrics: Iterable[OutputMetrics], weights: Mapping[str, float]) -> dict[str, Any]:
    """All outputs' metrics plus ``loss`` = the weighted sum of their mean losses."""
    out: dict[str, Any] = {}
    total = 0.0
    for m in metrics:
        result = m.result()
        out.update(result)
        total += float(weights.get(m.name, 0.0)) * result.get(f"{m.name}_loss", 0.0)
    out["loss"] = total
    return out
