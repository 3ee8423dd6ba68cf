"""Validation metrics of model outputs during training, by output kind.

Every output of a registered model is a *segmentation* output (logits ``(B, C, *spatial)``), a
*classification* output (binary logits ``(B,)``, or ``(B, C)`` class logits) or an *image*
output (a reconstruction: loss only). Per epoch the engine logs, for each output ``o`` a phase
validates (``val_`` is prefixed by the engine):

- ``<name>_loss`` for every part the model's loss returns (sample-weighted mean over the
  validation batches), and ``loss``: the mean of the loss function's total (summed over the
  phase's data streams);
- segmentation: ``<o>_dice`` and ``<o>_jaccard``, per image at probability 0.5 (sigmoid of
  ``C = 1`` logits; with a 2-channel softmax against a 1-channel mask, channel 1 beating
  channel 0), then the mean over images (masks resized to the logits' size as the loss does:
  bilinear, >= 0.5); an image whose prediction and truth are both empty counts 1.0
  (nodulekit.metrics.dice);
- classification: ``<o>_auc`` (nodulekit.metrics.auc; NaN with one class) and ``<o>_accuracy``
  at probability 0.5 (binary) or the arg-max (C classes), over the samples whose label is not
  -1. Logits of other shapes (mtcnn's per-view ``(B, V, 2)``) get the loss only.
"""
from __future__ import annotations

from collections.abc import Mapping

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
    """Dice and Jaccard per image ``(B,)`` of ``sigmoid(logits) >= 0.5`` against ``mask``
    (2-channel softmax logits against a 1-channel mask: channel 1 >= channel 0)."""
    logits = logits.float()
    if logits.shape[1] == 2 and mask.shape[1] == 1:
        logits = logits[:, 1:2] - logits[:, 0:1]
    pred = (logits >= 0).reshape(logits.shape[0], -1)  # sigmoid(x) >= 0.5 <=> x >= 0
    truth = resize_mask_like(mask, logits).reshape(logits.shape[0], -1) >= 0.5
    tp = (pred & truth).sum(1).double()
    fp = (pred & ~truth).sum(1).double()
    fn = (~pred & truth).sum(1).double()
    empty = (tp + fp + fn) == 0
    dice = torch.where(empty, torch.ones_like(tp), 2 * tp / (2 * tp + fp + fn).clamp(min=1))
    jaccard = torch.where(empty, torch.ones_like(tp), tp / (tp + fp + fn).clamp(min=1))
    return dice, jaccard


class OutputMetrics:
    """Accumulates one output's predictions over validation batches; :meth:`result` gives metrics.

    ``kind``: ``"seg"``, ``"cls"`` or ``"image"`` (no metric beyond the loss); ``True`` / ``False``
    are accepted for seg / cls."""

    def __init__(self, name: str, kind: str | bool) -> None:
        self.name = name
        self.kind = ("seg" if kind else "cls") if isinstance(kind, bool) else str(kind)
        self.segmentation = self.kind == "seg"
        self.loss_sum, self.loss_n = 0.0, 0
        self.dice: list[torch.Tensor] = []
        self.jaccard: list[torch.Tensor] = []
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, logits: torch.Tensor, target: torch.Tensor | None, loss: torch.Tensor | None = None) -> None:
        n = int(logits.shape[0])
        if loss is not None:
            self.loss_sum += float(loss) * n
            self.loss_n += n
        if target is None or self.kind == "image":
            return
        if self.segmentation:
            dice, jaccard = overlap_per_image(logits, target)
            self.dice.append(dice.cpu())
            self.jaccard.append(jaccard.cpu())
        elif logits.ndim in (1, 2):
            probs = torch.sigmoid(logits.float()) if logits.ndim == 1 else torch.softmax(logits.float(), dim=1)
            labels = target.reshape(-1).cpu().numpy().astype(np.int64)
            keep = labels >= 0
            self.scores.append(probs.cpu().numpy()[keep])
            self.labels.append(labels[keep])

    def result(self) -> dict[str, float]:
        from nodulekit.metrics import auc

        out: dict[str, float] = {}
        if self.loss_n:
            out[f"{self.name}_loss"] = self.loss_sum / self.loss_n
        if self.segmentation and self.dice:
            out[f"{self.name}_dice"] = float(torch.cat(self.dice).mean())
            out[f"{self.name}_jaccard"] = float(torch.cat(self.jaccard).mean())
        elif self.scores and sum(len(x) for x in self.labels):
            scores, labels = np.concatenate(self.scores), np.concatenate(self.labels)
            predicted = (scores >= 0.5).astype(np.int64) if scores.ndim == 1 else scores.argmax(axis=1)
            out[f"{self.name}_accuracy"] = float((predicted == labels).mean())
            out[f"{self.name}_auc"] = float(auc(labels, scores))
        return out


class LossMeans:
    """Sample-weighted means of a loss function's total (``loss``) and parts (``<part>_loss``)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, total: torch.Tensor, parts: Mapping[str, torch.Tensor], n: int) -> None:
        for key, value in (("loss", total), *((f"{k}_loss", v) for k, v in parts.items())):
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * n
        self.n += n

    def result(self) -> dict[str, float]:
        return {k: v / self.n for k, v in self.sums.items()} if self.n else {}
