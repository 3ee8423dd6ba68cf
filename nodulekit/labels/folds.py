"""Patient-level folds stratified by label.

Every nodule gets a fold in ``0..k-1``; all nodules of one patient (both scans where a patient
has two) share the fold, so no patient is in two folds. Stratification is greedy, like
scikit-learn's ``StratifiedGroupKFold``: patients are shuffled with ``seed``, then taken in order
of decreasing nodule count, and each goes to the fold that keeps the per-stratum fold sizes most
even (smallest spread of each stratum's share, then the smallest fold, then the lowest index).
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from nodulekit.errors import NodulekitError


def assign_folds(patient_ids: Sequence[str], strata: Sequence[Hashable], k: int, seed: int = 0) -> np.ndarray:
    """Fold index (int64, one per nodule) for nodules of ``patient_ids`` with labels ``strata``."""
    if k < 2:
        raise NodulekitError(f"--folds {k}: need at least 2 folds")
    n = len(patient_ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    patients = sorted(set(patient_ids))
    classes = sorted(set(strata), key=repr)
    p_index = {p: i for i, p in enumerate(patients)}
    c_index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(patients), len(classes)), dtype=np.int64)
    for p, s in zip(patient_ids, strata):
        counts[p_index[p], c_index[s]] += 1
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(patients))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    totals = np.maximum(counts.sum(axis=0), 1)
    fold_counts = np.zeros((k, len(classes)), dtype=np.int64)
    patient_fold = np.zeros(len(patients), dtype=np.int64)
    for p in order:
        spread = np.empty(k)
        for f in range(k):
            trial = fold_counts.copy()
            trial[f] += counts[p]
            spread[f] = (trial / totals).std(axis=0).mean()
        sizes = fold_counts.sum(axis=1)
        best = min(range(k), key=lambda f: (round(spread[f], 12), sizes[f], f))
        fold_counts[best] += counts[p]
        patient_fold[p] = best
    return np.array([patient_fold[p_index[p]] for p in patient_ids], dtype=np.int64)
