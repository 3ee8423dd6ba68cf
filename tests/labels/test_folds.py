"""nodulekit.labels.folds: patient-level, stratified, deterministic."""
from __future__ import annotations

import numpy as np
import pytest

from nodulekit.errors import NodulekitError
from nodulekit.labels.folds import assign_folds


def test_no_patient_in_two_folds_and_balanced():
    rng = np.random.default_rng(0)
    patients = [f"P{rng.integers(0, 60):03d}" for _ in range(300)]
    labels = rng.integers(0, 2, 300).tolist()
    folds = assign_folds(patients, labels, 5, seed=1)
    by_patient = {}
    for p, f in zip(patients, folds):
        by_patient.setdefault(p, set()).add(int(f))
    assert all(len(s) == 1 for s in by_patient.values())
    assert set(folds.tolist()) == set(range(5))
    for label in (0, 1):
        counts = np.bincount(folds[np.array(labels) == label], minlength=5)
        assert counts.max() - counts.min() <= max(3, 0.25 * counts.mean())
    np.testing.assert_array_equal(folds, assign_folds(patients, labels, 5, seed=1))


def test_errors_and_empty():
    with pytest.raises(NodulekitError, match="--folds"):
        assign_folds(["a"], [0], 1)
    assert assign_folds([], [], 3).shape == (0,)
