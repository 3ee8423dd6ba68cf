"""Segmentation metrics of one binary prediction against one binary ground truth, 2D or 3D.

Notation: TP, FP, FN, TN are voxel counts of pred & truth, pred & ~truth, ~pred & truth and
~pred & ~truth; ∂A is the boundary of mask A (see :mod:`nodulekit.metrics.surface`: foreground
voxels with a face-connected background neighbour, outside the array = background);
d(x, ∂B) = min over y in ∂B of the Euclidean distance |x - y| in mm between voxel centres.

Empty masks (STYLE: undefined values are NaN):
- both empty: dice = jaccard = 1 and overlap_error = 0 (perfect agreement by convention);
  precision, recall are NaN (0/0); hausdorff and assd are NaN (there is no boundary at all,
  so they are undefined; NaN keeps empty-vs-empty slices out of a ``nanmean`` of distances).
- exactly one empty: dice = jaccard = 0; hausdorff and assd are ``inf`` (the distance from a
  point to an empty set is inf), so a missed nodule can never improve a mean distance.

Masks may be numpy arrays or torch tensors (bool or 0/1 values); the overlap metrics on torch
tensors are counted with torch ops on the tensor's device (cheap for training-time validation).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.metrics._inputs import as_mask, check_same_shape, is_torch_tensor
from nodulekit.metrics.surface import surface_distances


class Counts(NamedTuple):
    """Voxel counts of the 2x2 confusion table of a binary segmentation."""

    tp: int
    fp: int
    fn: int
    tn: int


def _torch_counts(pred: Any, truth: Any) -> Counts:
    """Counts of two torch tensors computed on their device (one host sync per count)."""
    for name, tensor in (("pred", pred), ("truth", truth)):
        if str(tensor.dtype) != "torch.bool" and not bool(((tensor == 0) | (tensor == 1)).all()):
            raise NodulekitError(f"{name}: mask values must be 0/1 or bool (threshold probabilities first)")
    pred, truth = pred.detach().bool(), truth.detach().bool()
    tp = int((pred & truth).sum())
    n_pred, n_truth = int(pred.sum()), int(truth.sum())
    return Counts(tp, n_pred - tp, n_truth - tp, pred.numel() - n_pred - n_truth + tp)


def confusion_counts(pred: Any, truth: Any) -> Counts:
    """TP, FP, FN, TN voxel counts of binary masks of equal shape (numpy or torch)."""
    check_same_shape(pred, truth)
    if is_torch_tensor(pred) and is_torch_tensor(truth):
        return _torch_counts(pred, truth)
    pred, truth = as_mask(pred, "pred"), as_mask(truth, "truth")
    tp = int(np.count_nonzero(pred & truth))
    n_pred, n_truth = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    return Counts(tp, n_pred - tp, n_truth - tp, pred.size - n_pred - n_truth + tp)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


def dice(pred: Any, truth: Any) -> float:
    """Dice index DI = 2 TP / (2 TP + FP + FN) = 2 |P ∩ T| / (|P| + |T|); 1.0 when both are empty.

    Args: pred, truth: binary masks of equal shape (numpy or torch, any number of axes).
    """
    tp, fp, fn, _ = confusion_counts(pred, truth)
    return 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def jaccard(pred: Any, truth: Any) -> float:
    """Jaccard index (IoU) JA = TP / (TP + FP + FN) = |P ∩ T| / |P ∪ T|; 1.0 when both are empty."""
    tp, fp, fn, _ = confusion_counts(pred, truth)
    return 1.0 if tp + fp + fn == 0 else tp / float(tp + fp + fn)


def overlap_error(pred: Any, truth: Any) -> float:
    """Overlap error OE = 1 - JA = (FP + FN) / (TP + FP + FN); 0.0 when both are empty."""
    return 1.0 - jaccard(pred, truth)


def precision(pred: Any, truth: Any) -> float:
    """Precision = TP / (TP + FP); NaN when the prediction is empty."""
    tp, fp, _, _ = confusion_counts(pred, truth)
    return _ratio(tp, tp + fp)


def recall(pred: Any, truth: Any) -> float:
    """Recall (sensitivity) = TP / (TP + FN); NaN when the ground truth is empty."""
    tp, _, fn, _ = confusion_counts(pred, truth)
    return _ratio(tp, tp + fn)


def specificity(pred: Any, truth: Any) -> float:
    """Specificity = TN / (TN + FP); NaN when the ground truth fills the whole array.

    Depends on the array size (background voxels), so compare it only on equal crops.
    """
    _, fp, _, tn = confusion_counts(pred, truth)
    return _ratio(tn, tn + fp)


def pixel_accuracy(pred: Any, truth: Any) -> float:
    """Pixel (voxel) accuracy = (TP + TN) / (TP + FP + FN + TN); NaN for zero-size arrays."""
    tp, fp, fn, tn = confusion_counts(pred, truth)
    return _ratio(tp + tn, tp + fp + fn + tn)


def _check_percentile(percentile: float) -> float:
    percentile = float(percentile)
    if not 0.0 < percentile <= 100.0:
        raise NodulekitError(f"percentile must be in (0, 100], got {percentile}")
    return percentile


def _directed_percentile(distances_mm: np.ndarray, percentile: float) -> float:
    if percentile == 100.0:
        return float(distances_mm.max())
    return float(np.percentile(distances_mm, percentile))  # linear interpolation, as torch.quantile


def hausdorff(
    pred: Any, truth: Any, spacing_zyx_mm: Sequence[float] | float, percentile: float = 100.0
) -> float:
    """Hausdorff distance between the boundaries of two masks in mm (paper 001, eq. 12).

    HD = max( sup_{x in ∂P} d(x, ∂T), sup_{y in ∂T} d(y, ∂P) ).
    With ``percentile=q < 100`` (q = 95 gives HD95) this follows MONAI's
    ``compute_hausdorff_distance``: the q-th percentile of each directed distance set
    (``numpy.percentile``, linear interpolation, each boundary voxel counts once), then the
    max of the two. DeepMind's ``surface-distance`` instead weights surfels by their area and
    takes the first distance whose cumulative area reaches q%, so its HD95 can differ.

    Args:
        pred, truth: binary masks of equal shape, 2D (y, x) or 3D (z, y, x).
        spacing_zyx_mm: voxel size per array axis in mm, same order as the axes (scalar: isotropic).
        percentile: q in (0, 100].
    Returns:
        Distance in mm; NaN if both masks are empty, inf if exactly one is.
    """
    percentile = _check_percentile(percentile)
    pred_to_truth, truth_to_pred = surface_distances(pred, truth, spacing_zyx_mm)
    if pred_to_truth.size == 0 and truth_to_pred.size == 0:
        return float("nan")
    if pred_to_truth.size == 0 or truth_to_pred.size == 0:
        return float("inf")
    return max(
        _directed_percentile(pred_to_truth, percentile),
        _directed_percentile(truth_to_pred, percentile),
    )


def assd(pred: Any, truth: Any, spacing_zyx_mm: Sequence[float] | float) -> float:
    """Average symmetric surface distance in mm, pooled over both boundaries (paper 001, eq. 13).

    ASSD = ( sum_{x in ∂P} d(x, ∂T) + sum_{y in ∂T} d(y, ∂P) ) / ( |∂P| + |∂T| ),
    |∂A| = number of boundary voxels. This differs from medpy's ``assd``, which is the mean of
    the two directed means, (mean_x d(x, ∂T) + mean_y d(y, ∂P)) / 2; the two agree when
    |∂P| = |∂T|, and the pooled form weights the larger boundary more.

    Args:
        pred, truth: binary masks of equal shape, 2D (y, x) or 3D (z, y, x).
        spacing_zyx_mm: voxel size per array axis in mm (scalar: isotropic).
    Returns:
        Distance in mm; NaN if both masks are empty, inf if exactly one is.
    """
    pred_to_truth, truth_to_pred = surface_distances(pred, truth, spacing_zyx_mm)
    n_points = pred_to_truth.size + truth_to_pred.size
    if n_points == 0:
        return float("nan")
    if pred_to_truth.size == 0 or truth_to_pred.size == 0:
        return float("inf")
    return float((pred_to_truth.sum() + truth_to_pred.sum()) / n_points)
