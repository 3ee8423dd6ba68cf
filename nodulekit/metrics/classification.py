"""Classification metrics in numpy (checked against scikit-learn in the tests).

Inputs: ``labels`` (N,) true classes and ``predictions`` (N,) predicted classes, non-negative
integers 0..C-1; ``scores`` (N,) for binary or (N, C) per-class scores/probabilities for AUC.
Confusion matrices are rows = true class, columns = predicted class (scikit-learn's layout).

Binary or multi-class: with ``n_classes=None`` the number of classes is max(label) + 1 over
labels and predictions; C <= 2 is binary with class 1 as the positive class, C > 2 is
multi-class and sensitivity / specificity are macro averages of the one-vs-rest values.

Undefined values (0/0) are NaN (STYLE). Where scikit-learn returns 0 instead (MCC with a
constant prediction, zero_division), the docstring says so. Macro averages skip classes whose
value is undefined (e.g. recall of a class with no true samples).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.metrics._inputs import as_labels, is_torch_tensor


def _labels_pair(labels: Any, predictions: Any) -> tuple[np.ndarray, np.ndarray]:
    true = as_labels(labels, "labels")
    pred = as_labels(predictions, "predictions")
    if true.shape != pred.shape:
        raise NodulekitError(f"shape mismatch: labels {true.shape} vs predictions {pred.shape}")
    return true, pred


def _n_classes(true: np.ndarray, pred: np.ndarray, n_classes: int | None) -> int:
    observed = int(max(true.max(initial=-1), pred.max(initial=-1))) + 1
    if n_classes is None:
        return max(observed, 1)
    if n_classes < observed:
        raise NodulekitError(f"n_classes={n_classes} but labels go up to {observed - 1}")
    return int(n_classes)


def confusion_matrix(labels: Any, predictions: Any, n_classes: int | None = None) -> np.ndarray:
    """Confusion matrix M[i, j] = #{n : labels[n] = i and predictions[n] = j}.

    Args:
        labels, predictions: (N,) integer classes >= 0.
        n_classes: C; default max(label) + 1 over both arrays.
    Returns:
        (C, C) int64 array, rows = true class, columns = predicted class.
    """
    true, pred = _labels_pair(labels, predictions)
    n = _n_classes(true, pred, n_classes)
    return np.bincount(true * n + pred, minlength=n * n).reshape(n, n)


def _one_vs_rest(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (TP, FP, FN, TN) vectors of a (C, C) confusion matrix, float64."""
    matrix = matrix.astype(np.float64)
    tp = np.diag(matrix)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    tn = matrix.sum() - tp - fp - fn
    return tp, fp, fn, tn


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _macro(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def _binary_or_macro(per_class: np.ndarray) -> float:
    """Class-1 value for a binary problem, macro mean over defined classes otherwise."""
    if per_class.size <= 2:
        return float(per_class[1]) if per_class.size == 2 else float("nan")
    return _macro(per_class)


def accuracy(labels: Any, predictions: Any) -> float:
    """Accuracy = (1/N) sum_n [labels[n] = predictions[n]] = trace(M) / N; NaN for N = 0."""
    true, pred = _labels_pair(labels, predictions)
    return float(np.mean(true == pred)) if true.size else float("nan")


def sensitivity(labels: Any, predictions: Any, n_classes: int | None = None) -> float:
    """Sensitivity (recall, TPR) = TP / (TP + FN).

    Binary (C <= 2): for class 1, NaN without positives. Multi-class: macro mean of the
    per-class one-vs-rest recall over classes that have true samples.
    """
    matrix = confusion_matrix(labels, predictions, n_classes)
    tp, _, fn, _ = _one_vs_rest(matrix)
    return _binary_or_macro(_safe_divide(tp, tp + fn))


def specificity(labels: Any, predictions: Any, n_classes: int | None = None) -> float:
    """Specificity (TNR) = TN / (TN + FP).

    Binary (C <= 2): class 1 is positive, NaN without negatives. Multi-class: macro mean over
    classes of the one-vs-rest specificity TN_k / (TN_k + FP_k).
    """
    matrix = confusion_matrix(labels, predictions, n_classes)
    _, fp, _, tn = _one_vs_rest(matrix)
    return _binary_or_macro(_safe_divide(tn, tn + fp))


def _per_class_f1(matrix: np.ndarray) -> np.ndarray:
    tp, fp, fn, _ = _one_vs_rest(matrix)
    return _safe_divide(2.0 * tp, 2.0 * tp + fp + fn)


def f1(labels: Any, predictions: Any, positive: int = 1) -> float:
    """F1 of class ``positive`` = 2 TP / (2 TP + FP + FN) = harmonic mean of precision and recall.

    NaN when the class occurs in neither labels nor predictions (scikit-learn returns 0).
    """
    true, pred = _labels_pair(labels, predictions)
    matrix = confusion_matrix(true, pred, max(_n_classes(true, pred, None), positive + 1))
    return float(_per_class_f1(matrix)[positive])


def average_f1(labels: Any, predictions: Any) -> float:
    """Macro F1 = mean over classes k of F1_k, over the classes present in labels or predictions

    (equal to ``sklearn.metrics.f1_score(average="macro")``).
    """
    return _macro(_per_class_f1(confusion_matrix(labels, predictions)))


def mcc(labels: Any, predictions: Any, n_classes: int | None = None) -> float:
    """Matthews correlation coefficient, Gorodkin's R_K for K >= 2 classes.

    With M the confusion matrix, s = N, c = trace(M), t_k = sum_j M[k, j] (true counts) and
    p_k = sum_i M[i, k] (predicted counts):
        R_K = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)),
    which for two classes is (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    NaN when a factor of the denominator is 0 (one predicted or one true class only);
    scikit-learn returns 0 there.
    """
    matrix = confusion_matrix(labels, predictions, n_classes).astype(np.float64)
    s, c = matrix.sum(), np.trace(matrix)
    t, p = matrix.sum(axis=1), matrix.sum(axis=0)
    denominator = (s * s - p @ p) * (s * s - t @ t)
    if denominator <= 0:
        return float("nan")
    return float((c * s - p @ t) / np.sqrt(denominator))


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    group_starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    group_stops = np.r_[group_starts[1:], values.size]
    mean_rank = (group_starts + group_stops + 1) / 2.0  # mean of start+1 .. stop
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, group_stops - group_starts)
    return ranks


def _binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg); NaN for one class."""
    n_pos = int(is_positive.sum())
    n_neg = is_positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _midranks(scores)[is_positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve.

    Binary: AUC = P(score of a random positive > score of a random negative) + 0.5 P(tie),
    computed from midranks (Mann-Whitney U). Multi-class (scores (N, C), C > 2): one-vs-rest
    macro mean over classes k of AUC(labels == k, scores[:, k]) (scikit-learn's
    ``multi_class="ovr", average="macro"``; the scores need not sum to 1 here).

    Args:
        labels: (N,) classes; binary labels must be 0/1.
        scores: (N,) score of class 1, or (N, 2) (column 1 is used), or (N, C) per-class scores.
    Returns:
        AUC in [0, 1]; NaN when a class needed for it has no samples (binary: only one class
        present; multi-class: any class absent from ``labels``).
    """
    true = as_labels(labels, "labels")
    if is_torch_tensor(scores):
        scores = scores.detach().cpu().numpy()
    score = np.asarray(scores, dtype=np.float64)
    if score.shape[:1] != true.shape or score.ndim not in (1, 2):
        raise NodulekitError(f"scores must have shape (N,) or (N, C) with N={true.size}, got {score.shape}")
    if not np.all(np.isfinite(score)):
        raise NodulekitError("scores contain NaN or inf")
    if score.ndim == 2 and score.shape[1] == 2:
        score = score[:, 1]
    if score.ndim == 1:
        if true.size and true.max() > 1:
            raise NodulekitError("binary AUC needs labels 0/1; pass (N, C) scores for more classes")
        return _binary_auc(true == 1, score)
    n_classes = score.shape[1]
    if true.size and true.max() >= n_classes:
        raise NodulekitError(f"labels go up to {true.max()} but scores have {n_classes} columns")
    return float(np.mean([_binary_auc(true == k, score[:, k]) for k in range(n_classes)]))
