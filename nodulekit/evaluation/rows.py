"""Per-patch rows: every metric of one predicted patch against its patch-store truth.

A row is a dict: the patch's table columns (``nodule_key``, ``patient_id``, ``fold``, ``kind``,
``slice_offset``, ``diameter_mm``, characteristics ...), then

- segmentation (when the model segments): ``truth_voxels``, ``pred_voxels`` and ``dice``,
  ``jaccard``, ``overlap_error``, ``precision``, ``recall``, ``specificity``,
  ``pixel_accuracy``, ``hd_mm``, ``hd95_mm``, ``assd_mm`` of the mask
  ``seg_prob >= threshold`` against the consensus mask, with the patch spacing;
- per classification task T: ``T_truth`` (int class, None when the row has no label:
  label < 0, or an ``empty`` patch), ``T_prob`` (P(class 1) for binary tasks, the list of
  class probabilities otherwise) and ``T_pred`` (threshold on P(class 1) / argmax).

Cube geometries have one patch per nodule, so rows are nodules; 2D / 2.5D stores may have
several patches (slices) per nodule, each a row with its ``slice_offset``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.evaluation.predictions import PredictionStore
from nodulekit.io.patch_store import PatchGeometryInfo, PatchStore
from nodulekit.metrics import segmentation as seg

#: Table columns copied into every row (when the store has them).
ROW_COLUMNS = ("nodule_key", "patient_id", "series_uid", "nodule_id", "fold", "kind", "slice_offset", "label",
               "diameter_mm", "malignancy", "margin", "texture", "calcification")
#: Overlap metrics: key -> function(pred, truth).
OVERLAP_METRICS = {
    "dice": seg.dice, "jaccard": seg.jaccard, "overlap_error": seg.overlap_error, "precision": seg.precision,
    "recall": seg.recall, "specificity": seg.specificity, "pixel_accuracy": seg.pixel_accuracy,
}
DISTANCE_METRICS = ("hd_mm", "hd95_mm", "assd_mm")
SEG_METRICS = (*OVERLAP_METRICS, *DISTANCE_METRICS)
#: A truth "column" that is derived instead of stored: 1 for patches showing a nodule, 0 for empty ones.
KIND_IS_NODULE = "kind==nodule"
_CHUNK_ROWS = 32


def row_spacing_mm(info: PatchGeometryInfo, table: Mapping[str, np.ndarray], index: int) -> tuple[float, ...]:
    """Voxel size (mm) per patch axis: the store's spacing, or the source scan's when it is None.

    2D patches (H, W) get (y, x); 2.5D / 3D patches (S|D, H, W) get (z, y, x).
    """
    if info.spacing_zyx_mm is not None:
        zyx = tuple(float(v) for v in info.spacing_zyx_mm)
    else:
        zyx = tuple(float(table[f"source_spacing_{a}_mm"][index]) for a in "zyx")
    if info.geometry == "2d":
        return zyx[1:]
    if info.geometry in ("2.5d", "3d"):
        return zyx
    raise NodulekitError(f"segmentation metrics need 2d, 2.5d or 3d patches, not '{info.geometry}'")


def truth_column(table: Mapping[str, np.ndarray], task: str, preset: str, n_tasks: int,
                 label_columns: Mapping[str, str] | None = None) -> str:
    """The store column holding task ``task``'s truth.

    In order: the predictor's ``label_columns[task]``; ``label_<preset>_<task>`` (the
    cohort label of consensus-label, e.g. ``label_msunet_margin``); the only ``label_*_<task>``
    column; ``label`` (the cohort's primary label) when the model has a single task.
    ``kind==nodule`` means "patch shows a nodule" (dgnet's slice classifier).
    """
    if label_columns and task in label_columns:
        column = label_columns[task]
        if column != KIND_IS_NODULE and column not in table:
            raise NodulekitError(f"task '{task}': truth column '{column}' is not in the patch store")
        return column
    if f"label_{preset}_{task}" in table:
        return f"label_{preset}_{task}"
    matches = [c for c in table if c.startswith("label_") and c.endswith(f"_{task}")]
    if len(matches) == 1:
        return matches[0]
    if n_tasks == 1 and "label" in table:
        return "label"
    raise NodulekitError(f"task '{task}': no truth column in the patch store (looked for label_{preset}_{task}, "
                         f"label_*_{task}); the predictor can name one in label_columns")


def truth_labels(table: Mapping[str, np.ndarray], column: str, indices: np.ndarray) -> list[int | None]:
    """Truth class per row; None where the row has no label (< 0, NaN) or shows no nodule."""
    kinds = table["kind"][indices] if "kind" in table else np.full(indices.size, "nodule", dtype=object)
    if column == KIND_IS_NODULE:
        return [int(k == "nodule") for k in kinds]
    values = np.asarray(table[column][indices], dtype=np.float64)
    return [None if (not np.isfinite(v) or v < 0 or k != "nodule") else int(v) for v, k in zip(values, kinds)]


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _base_row(table: Mapping[str, np.ndarray], index: int, run: str) -> dict[str, Any]:
    row: dict[str, Any] = {"run": run, "store_index": int(index)}
    for column in ROW_COLUMNS:
        if column in table:
            row[column] = _python(table[column][index])
    return row


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, ...]) -> dict[str, Any]:
    """Every segmentation metric of one binary prediction against one binary truth (see module doc)."""
    out: dict[str, Any] = {"truth_voxels": int(truth.sum()), "pred_voxels": int(pred.sum())}
    for key, fn in OVERLAP_METRICS.items():
        out[key] = float(fn(pred, truth))
    out["hd_mm"] = seg.hausdorff(pred, truth, spacing_mm)
    out["hd95_mm"] = seg.hausdorff(pred, truth, spacing_mm, percentile=95)
    out["assd_mm"] = seg.assd(pred, truth, spacing_mm)
    return out


def _add_segmentation(rows: list[dict[str, Any]], pred: PredictionStore, store: PatchStore,
                      threshold: float) -> None:
    """Segmentation metrics of every row, reading both files in chunks of rows (contiguous in predictions)."""
    for start in range(0, len(pred), _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, len(pred))
        probs = pred.seg_prob(slice(start, stop))
        masks = store.read(pred.store_index[start:stop], arrays=("masks",))["masks"]
        for k, r in enumerate(range(start, stop)):
            spacing = row_spacing_mm(store.info, store.table, int(pred.store_index[r]))
            rows[r].update(segmentation_metrics(probs[k] >= threshold, masks[k], spacing))


def _add_classification(rows: list[dict[str, Any]], pred: PredictionStore, store: PatchStore,
                        label_columns: Mapping[str, str] | None, threshold: float) -> dict[str, str]:
    columns: dict[str, str] = {}
    for task, n_classes in pred.tasks.items():
        column = truth_column(store.table, task, store.info.preset, len(pred.tasks), label_columns)
        columns[task] = column
        truth = truth_labels(store.table, column, pred.store_index)
        prob = pred.class_prob(task)
        decided = (prob[:, 1] >= threshold).astype(int) if n_classes == 2 else prob.argmax(axis=1)
        for r, row in enumerate(rows):
            row[f"{task}_truth"] = truth[r]
            row[f"{task}_prob"] = float(prob[r, 1]) if n_classes == 2 else [float(p) for p in prob[r]]
            row[f"{task}_pred"] = int(decided[r])
    return columns


def prediction_rows(pred: PredictionStore, store: PatchStore, *, seg_threshold: float = 0.5,
                    class_threshold: float = 0.5,
                    label_columns: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One row per prediction (in the predictions' order) and the truth column used per task."""
    if len(store) <= int(pred.store_index.max(initial=-1)):
        raise NodulekitError(f"{pred.path}: refers to row {int(pred.store_index.max())} but {store.path} "
                             f"has {len(store)} patches (a different store?)")
    run = str(pred.provenance.get("run_name", ""))
    rows = [_base_row(store.table, int(i), run) for i in pred.store_index]
    if pred.has_seg:
        _add_segmentation(rows, pred, store, seg_threshold)
    columns = _add_classification(rows, pred, store, label_columns, class_threshold)
    return rows, columns
