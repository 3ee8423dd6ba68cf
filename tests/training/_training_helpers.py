"""Tiny patch stores and a tiny conv net for the training tests."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nodulekit.io.patch_store import PatchBatch, PatchGeometryInfo, write_patch_store

PATCH_SHAPE = (8, 8)
INFO = PatchGeometryInfo("2d", PATCH_SHAPE, None, (-1000.0, 400.0), "01", "tiny", 0.5)


def patch_rows(n_patients: int, per_patient: int, n_folds: int, start: int = 0,
               unlabelled_every: int = 0) -> list[dict[str, Any]]:
    rows = []
    for p in range(n_patients):
        for j in range(per_patient):
            i = start + p * per_patient + j
            label = -1 if unlabelled_every and i % unlabelled_every == 0 else i % 2
            rows.append({"nodule_key": f"s{p}/{j}", "patient_id": f"P{p:03d}", "series_uid": f"s{p}",
                         "nodule_id": j, "fold": p % n_folds, "label": label, "kind": "nodule",
                         "slice_offset": 0, "source_spacing_z_mm": 1.0, "source_spacing_y_mm": 0.7,
                         "source_spacing_x_mm": 0.7})
    return rows


def random_batch(rows: list[dict[str, Any]], seed: int) -> PatchBatch:
    rng = np.random.default_rng(seed)
    n = len(rows)
    images = rng.random((n, *PATCH_SHAPE), dtype=np.float32)
    agreement = np.zeros((n, *PATCH_SHAPE), dtype=np.float32)
    for i, row in enumerate(rows):  # a bright square whose size follows the label
        r = 2 + (row["label"] == 1)
        agreement[i, 4 - r:4 + r, 4 - r:4 + r] = 1.0
        images[i] += agreement[i]
    return PatchBatch(images, agreement >= 0.5, agreement, rows)


def make_store(path: Path, n_patients: int = 6, per_patient: int = 3, n_folds: int = 3, seed: int = 0,
               augment_copies: int = 0, unlabelled_every: int = 0) -> Path:
    """A 2D store; with ``augment_copies`` each original is followed by that many augmented copies."""
    rows = patch_rows(n_patients, per_patient, n_folds, unlabelled_every=unlabelled_every)
    batch = random_batch(rows, seed)
    if augment_copies:
        out_rows, images, masks, agreement = [], [], [], []
        for i, row in enumerate(rows):
            for c in range(augment_copies + 1):
                out_rows.append({**row, "source_index": i, "is_augmented": c > 0,
                                 "augmentation": "" if c == 0 else f"flip{c}"})
                flip = (lambda a: a) if c == 0 else (lambda a: np.flip(a, axis=c % 2).copy())
                images.append(flip(batch.images[i]))
                masks.append(flip(batch.masks[i]))
                agreement.append(flip(batch.agreement[i]))
        batch = PatchBatch(np.stack(images), np.stack(masks), np.stack(agreement), out_rows)
    write_patch_store(path, INFO, [batch])
    return path


class TinyNet(nn.Module):
    """Conv -> dropout -> seg head and class head; parameters ``body``, ``seg_head``, ``cls_head``."""

    def __init__(self, dropout: float = 0.3, channels: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Dropout(dropout))
        self.seg_head = nn.Conv2d(channels, 1, 1)
        self.cls_head = nn.Linear(channels, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(image)
        return {"seg": self.seg_head(features), "malignancy": self.cls_head(features.mean(dim=(2, 3))).squeeze(1)}


def seg_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = model(batch["image"])
    seg = F.binary_cross_entropy_with_logits(out["seg"], batch["mask"])
    return {"loss": seg, "seg": seg}


def seg_cls_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = model(batch["image"])
    seg = F.binary_cross_entropy_with_logits(out["seg"], batch["mask"])
    cls = F.binary_cross_entropy_with_logits(out["malignancy"], batch["label"].clamp(min=0).float())
    return {"loss": seg + cls, "seg": seg, "cls": cls}


def tiny_config(**train: Any) -> dict[str, Any]:
    from nodulekit.training.config import resolve_config

    overrides = {f"train.{k}": v for k, v in train.items() if k not in ("batch_size", "optimizer", "early_stopping")}
    config = resolve_config([], overrides=overrides)
    config["batch_size"] = train.get("batch_size", 4)
    config["optimizer"].update(train.get("optimizer", {"name": "adam", "lr": 1e-2}))
    config["early_stopping"].update(train.get("early_stopping", {}))
    return config


def ddp_worker(ctx: Any, store: Path, config: dict[str, Any], run_dir: Path | None, out: Path) -> None:
    """One process of the DDP test: train TinyNet (no dropout) and let rank 0 save its weights."""
    from nodulekit.training.data import DataParams, split_datasets
    from nodulekit.training.engine import Phase, Trainer

    train, val = split_datasets(DataParams((store,)), fold=0)
    torch.manual_seed(0)
    model = TinyNet(dropout=0.0)
    trainer = Trainer(model, [Phase("main", seg_cls_step)], train, val, config, dist=ctx, run_dir=run_dir,
                      progress=False)
    result = trainer.fit()
    if ctx.is_main:
        torch.save({"model": trainer.model.state_dict(), "rows": result.log_rows, "world": ctx.world_size}, out)


# -- stores of a model's geometry (registry-wide smoke tests) -----------------------------------
def shape_store(path: Path, preset: str, geometry: str, patch_shape: tuple[int, ...], *, n_patients: int = 4,
                per_patient: int = 2, n_folds: int = 2, empty_every: int = 0, seed: int = 0,
                label_columns: tuple[str, ...] = (), class_columns: dict[str, int] | None = None) -> Path:
    """A store of synthetic discs (2d, 2.5d, views9: one disc per plane) or spheres (3d) whose
    radius follows the label (0/1, alternating); ``empty_every``: every k-th patch is an
    ``empty`` slice without nodule (dgnet). Each column of ``label_columns`` gets the labels too;
    each ``column: C`` of ``class_columns`` gets ``i % C`` for patch i, -1 (no label) every 5th."""
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    images = np.empty((n, *patch_shape), dtype=np.float32)
    agreement = np.zeros((n, *patch_shape), dtype=np.float32)
    spatial = patch_shape if geometry == "3d" else patch_shape[-2:]
    grids = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in spatial], indexing="ij")
    dist = np.sqrt(sum(g ** 2 for g in grids))
    rows = []
    for i in range(n):
        p, label = i // per_patient, i % 2
        empty = bool(empty_every) and i % empty_every == empty_every - 1
        radius = min(spatial) * (0.15 + 0.1 * label)
        if not empty:
            agreement[i] = np.broadcast_to((dist <= radius).astype(np.float32), patch_shape)
        images[i] = agreement[i] + 0.2 * rng.standard_normal(patch_shape).astype(np.float32)
        rows.append({"nodule_key": f"s{p}/{i}", "patient_id": f"P{p:03d}", "series_uid": f"s{p}", "nodule_id": i,
                     "fold": p % n_folds, "label": label, "kind": "empty" if empty else "nodule",
                     "slice_offset": 0, "source_spacing_z_mm": 1.0, "source_spacing_y_mm": 0.7,
                     "source_spacing_x_mm": 0.7, **{column: label for column in label_columns},
                     **{column: -1 if i % 5 == 4 else i % c for column, c in (class_columns or {}).items()}})
    info = PatchGeometryInfo(geometry, tuple(patch_shape), (1.0, 1.0, 1.0), (-1000.0, 400.0), "01", preset, 0.5)
    write_patch_store(path, info, [PatchBatch(images, agreement >= 0.5, agreement, rows)])
    return path
