"""Pure metric functions: segmentation (overlap and surface distances), classification, and
bootstrap confidence intervals by patient. See docs/metrics.md for every definition.

``specificity`` here is the classification one (labels, predictions); the voxel-wise one is
``nodulekit.metrics.segmentation.specificity(pred, truth)``.
"""
from __future__ import annotations

from nodulekit.metrics.bootstrap import BootstrapCI, bootstrap_ci
from nodulekit.metrics.classification import (
    accuracy,
    auc,
    average_f1,
    confusion_matrix,
    f1,
    mcc,
    sensitivity,
    specificity,
)
from nodulekit.metrics.segmentation import (
    Counts,
    assd,
    confusion_counts,
    dice,
    hausdorff,
    jaccard,
    overlap_error,
    pixel_accuracy,
    precision,
    recall,
)
from nodulekit.metrics.surface import boundary, bounding_box, surface_distances

__all__ = [
    "BootstrapCI",
    "Counts",
    "accuracy",
    "assd",
    "auc",
    "average_f1",
    "bootstrap_ci",
    "boundary",
    "bounding_box",
    "confusion_counts",
    "confusion_matrix",
    "dice",
    "f1",
    "hausdorff",
    "jaccard",
    "mcc",
    "overlap_error",
    "pixel_accuracy",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "surface_distances",
]
