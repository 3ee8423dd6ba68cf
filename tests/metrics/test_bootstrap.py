"""bootstrap_ci: reproducibility, resampling by patient, degenerate resamples, coverage, speed."""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from nodulekit.errors import NodulekitError
from nodulekit.metrics import BootstrapCI, auc, bootstrap_ci


def test_seeded_reproducibility():
    values = np.random.default_rng(0).normal(size=100)
    first = bootstrap_ci(np.mean, values, n_boot=200, seed=7)
    assert first == bootstrap_ci(np.mean, values, n_boot=200, seed=7)
    assert first != bootstrap_ci(np.mean, values, n_boot=200, seed=8)
    assert isinstance(first, BootstrapCI)
    assert first.estimate == pytest.approx(values.mean())
    assert first.low < first.estimate < first.high
    assert (first.n_boot, first.n_groups, first.ci) == (200, 100, 0.95)


def test_wider_ci_level_gives_wider_interval():
    values = np.random.default_rng(1).normal(size=80)
    narrow = bootstrap_ci(np.mean, values, ci=0.5, seed=0)
    wide = bootstrap_ci(np.mean, values, ci=0.99, seed=0)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_rows_of_a_patient_are_never_split_and_arrays_stay_aligned():
    rng = np.random.default_rng(2)
    patient = np.repeat(np.arange(30), rng.integers(1, 6, 30))
    row_id = np.arange(patient.size)
    rows_per_patient = Counter(patient.tolist())
    problems: list[str] = []

    def check(rows: np.ndarray, pids: np.ndarray) -> float:
        if not np.array_equal(patient[rows], pids):
            problems.append("arrays not resampled with the same rows")
        for pid, count in Counter(pids.tolist()).items():
            if count % rows_per_patient[pid]:
                problems.append(f"patient {pid}: {count} rows of {rows_per_patient[pid]}")
            drawn_rows = rows[pids == pid]
            if set(drawn_rows.tolist()) != set(row_id[patient == pid].tolist()):
                problems.append(f"patient {pid}: not all of its rows")
        return float(len(pids))

    result = bootstrap_ci(check, row_id, patient, groups=patient, n_boot=100)
    assert problems == []
    assert result.n_groups == 30


def test_ci_reflects_patient_count_not_row_count():
    """One patient with 100 positive rows and 20 patients with one negative row each."""
    values = np.r_[np.ones(100), np.zeros(20)]
    patient = np.r_[np.zeros(100, int), np.arange(1, 21)]
    by_row = bootstrap_ci(np.mean, values, n_boot=500)
    by_patient = bootstrap_ci(np.mean, values, groups=patient, n_boot=500)
    assert (by_row.n_groups, by_patient.n_groups) == (120, 21)
    assert by_patient.high - by_patient.low > 3 * (by_row.high - by_row.low)
    assert by_patient.low == 0.0  # resamples without the big patient have mean 0


def test_pooled_auc_redraws_degenerate_resamples():
    # 12 patients, only one of them has positive rows: ~1/3 of resamples have no positive.
    patient = np.repeat(np.arange(12), 3)
    labels = (patient == 0).astype(int)
    scores = np.random.default_rng(3).normal(size=labels.size) + labels
    result = bootstrap_ci(auc, labels, scores, groups=patient, n_boot=300, seed=1)
    assert result.n_redrawn > 30
    assert result.n_boot == 300
    assert 0.0 <= result.low <= result.estimate <= result.high <= 1.0


def test_raises_when_resamples_are_almost_always_degenerate():
    calls = {"n": 0}

    def defined_only_on_full_sample(values: np.ndarray) -> float:
        calls["n"] += 1
        return 1.0 if calls["n"] == 1 else float("nan")

    with pytest.raises(NodulekitError, match="resamples"):
        bootstrap_ci(defined_only_on_full_sample, np.arange(10.0), n_boot=20)
    assert calls["n"] == 1 + 10 * 20


def test_coverage_of_patient_clustered_data():
    """Nominal 95%: the patient bootstrap covers about 95%, the naive row bootstrap much less."""
    rng = np.random.default_rng(4)
    n_trials, n_patients, rows_each = 150, 30, 5
    patient = np.repeat(np.arange(n_patients), rows_each)
    covered_patient = covered_row = 0
    for trial in range(n_trials):
        values = np.repeat(rng.normal(0, 1, n_patients), rows_each) + rng.normal(0, 0.3, patient.size)
        grouped = bootstrap_ci(np.mean, values, groups=patient, n_boot=200, seed=trial)
        naive = bootstrap_ci(np.mean, values, n_boot=200, seed=trial)
        covered_patient += grouped.low <= 0.0 <= grouped.high
        covered_row += naive.low <= 0.0 <= naive.high
    assert 0.85 <= covered_patient / n_trials <= 0.99
    assert covered_row / n_trials < covered_patient / n_trials - 0.2


def test_1000_resamples_over_1000_cases_are_fast():
    rng = np.random.default_rng(5)
    values, patient = rng.random(1000), rng.integers(0, 400, 1000)
    start = time.perf_counter()
    bootstrap_ci(np.mean, values, groups=patient, n_boot=1000)
    assert time.perf_counter() - start < 1.0


def test_bad_inputs_raise():
    with pytest.raises(NodulekitError, match="same first axis"):
        bootstrap_ci(auc, np.zeros(5), np.zeros(6))
    with pytest.raises(NodulekitError, match="groups"):
        bootstrap_ci(np.mean, np.zeros(5), groups=np.zeros(4))
    with pytest.raises(NodulekitError, match="ci"):
        bootstrap_ci(np.mean, np.zeros(5), ci=95)
    with pytest.raises(NodulekitError, match="full sample"):
        bootstrap_ci(auc, np.ones(5, int), np.zeros(5))
