"""Aggregate metrics with 95% patient-bootstrap CIs, per fold, and per nodule characteristic.

Input: the per-patch rows of :mod:`nodulekit.evaluation.rows` (pooled over every evaluated
fold). Every interval is :func:`nodulekit.metrics.bootstrap_ci` with ``groups = patient_id``:
a resample draws patients with replacement and takes all their patches, so the patches of
one patient always move together. All metrics use the same seed, hence the same resamples.

Segmentation (rows whose consensus mask is not empty, i.e. patches that show a nodule):
    metric = mean over patches of the per-patch value (the papers' "average DI"), over the
    patches where it is defined: precision is undefined (NaN) for an empty prediction;
    HD / HD95 / ASSD are infinite when the prediction is empty, so their mean is over the
    finite values and ``n_inf`` counts the missed patches. ``sd`` is the standard deviation
    over patches (the papers' "mean +/- SD").
Patches with an empty consensus mask (dgnet's empty slices) are summarised apart:
    false_positive_rate = #{empty-truth patches with any predicted voxel} / #{empty-truth patches}.
Classification per task (rows with a truth label): pooled metrics of all rows, binary
    decision P(class 1) >= threshold, argmax for more classes; AUC from the probabilities.
Cross-validation: rows of all folds are pooled for the aggregate; ``per_fold`` repeats every
    table on each fold's rows alone.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.evaluation.rows import DISTANCE_METRICS, OVERLAP_METRICS, SEG_METRICS
from nodulekit.metrics import (accuracy, auc, average_f1, bootstrap_ci, confusion_matrix, f1, mcc, sensitivity,
                               specificity)

Row = dict[str, Any]
#: Classification metrics: key -> function(labels, scores, predictions) -> float.
CLASS_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "auc": lambda y, s, p: auc(y, s),
    "accuracy": lambda y, s, p: accuracy(y, p),
    "sensitivity": lambda y, s, p: sensitivity(y, p, n_classes=s.shape[1] if s.ndim == 2 else 2),
    "specificity": lambda y, s, p: specificity(y, p, n_classes=s.shape[1] if s.ndim == 2 else 2),
    "f1": lambda y, s, p: f1(y, p) if s.ndim == 1 else math.nan,
    "average_f1": lambda y, s, p: average_f1(y, p),
    "mcc": lambda y, s, p: mcc(y, p, n_classes=s.shape[1] if s.ndim == 2 else 2),
}
#: Characteristic categories of paper 003 Table 9 (ratings are the readers' aggregate, e.g. median).
CHARACTERISTIC_CATEGORIES: tuple[tuple[str, str, str, Callable[[float], bool]], ...] = (
    ("margin", "fuzzy", "Fuzzy margin (rating < 4)", lambda v: v < 4),
    ("margin", "clear", "Clear margin (rating >= 4)", lambda v: v >= 4),
    ("texture", "non_solid", "Non-solid or part solid (rating < 4)", lambda v: v < 4),
    ("texture", "solid", "Solid (rating >= 4)", lambda v: v >= 4),
    ("calcification", "present", "Calcification (rating 1-5)", lambda v: v < 6),
    ("calcification", "absent", "No calcification (rating 6)", lambda v: v >= 6),
    ("malignancy", "benign", "Benign (rating < 4)", lambda v: v < 4),
    ("malignancy", "malignant", "Malignant (rating >= 4)", lambda v: v >= 4),
)
DEFAULT_DIAMETER_BINS_MM = (3.0, 6.0, 10.0, 20.0)
BREAKDOWN_METRICS = ("dice", "overlap_error", "hd95_mm")


@dataclass(frozen=True)
class CISettings:
    """Bootstrap settings: resamples, nominal coverage, seed."""

    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0


def _undefined(n: int, n_patients: int, note: str) -> dict[str, Any]:
    return {"estimate": None, "low": None, "high": None, "n": n, "n_patients": n_patients, "note": note}


def ci_entry(metric_fn: Callable[..., float], *arrays: np.ndarray, groups: np.ndarray,
             settings: CISettings) -> dict[str, Any]:
    """{"estimate", "low", "high", "n", "n_patients"} of ``metric_fn(*arrays)`` by patient bootstrap.

    estimate None (with a ``note``) when there are no rows or the metric is undefined on them.
    """
    n, n_patients = int(len(groups)), int(len(set(groups.tolist())))
    if n == 0:
        return _undefined(0, 0, "no rows")
    try:
        result = bootstrap_ci(metric_fn, *arrays, groups=groups, n_boot=settings.n_boot, ci=settings.ci,
                              seed=settings.seed)
    except NodulekitError as error:
        estimate = float(metric_fn(*arrays))
        entry = _undefined(n, n_patients, str(error).removeprefix("bootstrap_ci: "))
        entry["estimate"] = None if math.isnan(estimate) else estimate
        return entry
    return {"estimate": result.estimate, "low": result.low, "high": result.high, "n": n, "n_patients": n_patients}


def _column(rows: Sequence[Row], key: str) -> np.ndarray:
    """Values of ``key`` as float64, NaN where missing or None."""
    return np.array([math.nan if r.get(key) is None else r[key] for r in rows], dtype=np.float64)


def _patients(rows: Sequence[Row]) -> np.ndarray:
    return np.array([str(r.get("patient_id", i)) for i, r in enumerate(rows)], dtype=object)


def mean_entry(values: np.ndarray, groups: np.ndarray, settings: CISettings) -> dict[str, Any]:
    """Mean of the finite values with its patient-bootstrap CI, SD, and ``n_inf`` (infinite values)."""
    finite = np.isfinite(values)
    entry = ci_entry(np.mean, values[finite], groups=groups[finite], settings=settings)
    entry["sd"] = float(np.std(values[finite], ddof=1)) if finite.sum() > 1 else None
    entry["n_inf"] = int(np.isinf(values).sum())
    return entry


def _has_nodule(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.get("truth_voxels", 0) > 0]


def segmentation_summary(rows: Sequence[Row], settings: CISettings,
                         metrics: Sequence[str] = SEG_METRICS) -> dict[str, Any]:
    """Mean of each segmentation metric over the nodule patches, with CI (see module doc)."""
    nodule_rows = _has_nodule(rows)
    groups = _patients(nodule_rows)
    out: dict[str, Any] = {"n": len(nodule_rows), "n_patients": int(len(set(groups.tolist()))), "metrics": {}}
    for key in metrics:
        out["metrics"][key] = mean_entry(_column(nodule_rows, key), groups, settings)
    empty_rows = [r for r in rows if "truth_voxels" in r and r["truth_voxels"] == 0]
    if empty_rows:
        flagged = np.array([r["pred_voxels"] > 0 for r in empty_rows], dtype=np.float64)
        out["empty_patches"] = {"false_positive_rate": ci_entry(np.mean, flagged, groups=_patients(empty_rows),
                                                                settings=settings)}
    return out


def _task_arrays(rows: Sequence[Row], task: str, n_classes: int) -> tuple[list[Row], np.ndarray, np.ndarray, np.ndarray]:
    labelled = [r for r in rows if r.get(f"{task}_truth") is not None]
    labels = np.array([r[f"{task}_truth"] for r in labelled], dtype=np.int64)
    if n_classes == 2:
        scores = np.array([r[f"{task}_prob"] for r in labelled], dtype=np.float64)
    else:
        scores = np.array([r[f"{task}_prob"] for r in labelled], dtype=np.float64).reshape(-1, n_classes)
    preds = np.array([r[f"{task}_pred"] for r in labelled], dtype=np.int64)
    return labelled, labels, scores, preds


def classification_summary(rows: Sequence[Row], task: str, n_classes: int, settings: CISettings) -> dict[str, Any]:
    """Pooled classification metrics of ``task`` with CIs, class counts and the confusion matrix."""
    labelled, labels, scores, preds = _task_arrays(rows, task, n_classes)
    groups = _patients(labelled)
    out: dict[str, Any] = {"n": len(labelled), "n_patients": int(len(set(groups.tolist()))),
                           "n_classes": n_classes, "class_counts": np.bincount(labels, minlength=n_classes).tolist(),
                           "confusion_matrix": confusion_matrix(labels, preds, n_classes).tolist(), "metrics": {}}
    for key, fn in CLASS_METRICS.items():
        if key == "f1" and n_classes > 2:
            continue
        out["metrics"][key] = ci_entry(fn, labels, scores, preds, groups=groups, settings=settings)
    return out


def _category_rows(rows: Sequence[Row], column: str, rule: Callable[[float], bool]) -> list[Row]:
    out = []
    for r in rows:
        value = r.get(column)
        if value is not None and not (isinstance(value, float) and math.isnan(value)) and rule(float(value)):
            out.append(r)
    return out


def diameter_categories(bins_mm: Sequence[float]) -> list[tuple[str, str, str, Callable[[float], bool]]]:
    """Diameter bins [b_i, b_i+1) plus "< b_0" and ">= b_last" as breakdown categories."""
    edges = [-math.inf, *bins_mm, math.inf]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        label = (f"< {hi:g} mm" if math.isinf(lo) else f">= {lo:g} mm" if math.isinf(hi) else f"{lo:g}-{hi:g} mm")
        out.append(("diameter_mm", label.replace(" ", ""), f"Diameter {label}",
                    lambda v, lo=lo, hi=hi: lo <= v < hi))
    return out


def characteristic_breakdown(rows: Sequence[Row], settings: CISettings,
                             diameter_bins_mm: Sequence[float] = DEFAULT_DIAMETER_BINS_MM) -> list[dict[str, Any]]:
    """Segmentation by nodule characteristic as paper 003 Table 9, plus diameter bins.

    One entry per non-empty category: characteristic, category key and label, n patches,
    n patients, and the mean (CI, SD) of DI, OE and HD95 over its nodule patches.
    """
    nodule_rows = _has_nodule(rows)
    out = []
    for column, key, label, rule in (*CHARACTERISTIC_CATEGORIES, *diameter_categories(diameter_bins_mm)):
        members = _category_rows(nodule_rows, column, rule)
        if not members:
            continue
        groups = _patients(members)
        out.append({"characteristic": column, "category": key, "label": label, "n": len(members),
                    "n_patients": int(len(set(groups.tolist()))),
                    "metrics": {m: mean_entry(_column(members, m), groups, settings) for m in BREAKDOWN_METRICS}})
    return out


def _fold_key(value: Any) -> str:
    return str(int(value)) if value is not None else "none"


def summarise(rows: Sequence[Row], tasks: dict[str, int], has_seg: bool, settings: CISettings) -> dict[str, Any]:
    """Segmentation and per-task classification summaries of ``rows``."""
    out: dict[str, Any] = {}
    if has_seg:
        out["segmentation"] = segmentation_summary(rows, settings)
    out["classification"] = {task: classification_summary(rows, task, n, settings) for task, n in tasks.items()}
    return out


def build_tables(rows: Sequence[Row], tasks: dict[str, int], has_seg: bool, settings: CISettings,
                 diameter_bins_mm: Sequence[float] = DEFAULT_DIAMETER_BINS_MM) -> dict[str, Any]:
    """Aggregate (pooled over folds), per-fold and per-characteristic tables of ``rows``."""
    folds = sorted({_fold_key(r.get("fold")) for r in rows})
    tables: dict[str, Any] = {"aggregate": summarise(rows, tasks, has_seg, settings)}
    tables["per_fold"] = {f: summarise([r for r in rows if _fold_key(r.get("fold")) == f], tasks, has_seg, settings)
                          for f in folds}
    if has_seg:
        tables["by_characteristic"] = characteristic_breakdown(rows, settings, diameter_bins_mm)
    return tables


__all__ = ["BREAKDOWN_METRICS", "CHARACTERISTIC_CATEGORIES", "CLASS_METRICS", "CISettings", "DISTANCE_METRICS",
           "OVERLAP_METRICS", "SEG_METRICS", "build_tables", "characteristic_breakdown", "ci_entry",
           "classification_summary", "mean_entry", "segmentation_summary", "summarise"]
