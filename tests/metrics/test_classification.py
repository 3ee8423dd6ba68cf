"""Classification metrics against scikit-learn on random binary and multi-class data."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from nodulekit.errors import NodulekitError
from nodulekit.metrics import (
    accuracy,
    auc,
    average_f1,
    confusion_matrix,
    f1,
    mcc,
    sensitivity,
    specificity,
)

SEEDS = range(8)


def random_binary(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = labels * rng.normal(0.7, 1, n) + rng.normal(0, 1, n)
    if seed % 2:  # heavy ties
        scores = np.round(scores)
    predictions = (scores > 0.3).astype(int)
    return labels, scores, predictions


def random_multiclass(seed: int, n: int = 300, n_classes: int = 4):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(0, 1, (n, n_classes))
    logits[np.arange(n), labels] += 1.0
    if seed % 2:
        logits = np.round(logits, 1)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities, probabilities.argmax(axis=1)


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_against_sklearn(seed):
    labels, scores, predictions = random_binary(seed)
    assert auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert auc(labels, np.c_[1 - scores, scores]) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert mcc(labels, predictions) == pytest.approx(skm.matthews_corrcoef(labels, predictions), abs=1e-12)
    assert accuracy(labels, predictions) == pytest.approx(skm.accuracy_score(labels, predictions))
    assert sensitivity(labels, predictions) == pytest.approx(skm.recall_score(labels, predictions))
    assert specificity(labels, predictions) == pytest.approx(skm.recall_score(labels, predictions, pos_label=0))
    assert f1(labels, predictions) == pytest.approx(skm.f1_score(labels, predictions))
    assert f1(labels, predictions, positive=0) == pytest.approx(skm.f1_score(labels, predictions, pos_label=0))
    assert average_f1(labels, predictions) == pytest.approx(skm.f1_score(labels, predictions, average="macro"))
    np.testing.assert_array_equal(confusion_matrix(labels, predictions), skm.confusion_matrix(labels, predictions))


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_against_sklearn(seed):
    labels, probabilities, predictions = random_multiclass(seed)
    expected_auc = skm.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    assert auc(labels, probabilities) == pytest.approx(expected_auc, abs=1e-12)
    assert mcc(labels, predictions) == pytest.approx(skm.matthews_corrcoef(labels, predictions), abs=1e-12)
    assert accuracy(labels, predictions) == pytest.approx(skm.accuracy_score(labels, predictions))
    assert sensitivity(labels, predictions) == pytest.approx(skm.recall_score(labels, predictions, average="macro"))
    per_class = skm.multilabel_confusion_matrix(labels, predictions)  # (C, 2, 2): [[tn, fp], [fn, tp]]
    expected_spec = np.mean(per_class[:, 0, 0] / (per_class[:, 0, 0] + per_class[:, 0, 1]))
    assert specificity(labels, predictions) == pytest.approx(expected_spec)
    assert average_f1(labels, predictions) == pytest.approx(skm.f1_score(labels, predictions, average="macro"))
    np.testing.assert_array_equal(confusion_matrix(labels, predictions), skm.confusion_matrix(labels, predictions))


def test_macro_f1_with_a_class_only_in_predictions():
    labels = np.array([0, 0, 1, 1, 1, 0])
    predictions = np.array([0, 2, 1, 1, 0, 0])
    assert average_f1(labels, predictions) == pytest.approx(
        skm.f1_score(labels, predictions, average="macro", zero_division=0))
    assert confusion_matrix(labels, predictions, n_classes=4).shape == (4, 4)


def test_mcc_is_gorodkin_formula_by_hand():
    matrix = np.array([[5, 1, 0], [2, 3, 1], [0, 2, 6]])
    labels = np.repeat(np.repeat(np.arange(3), 3), matrix.ravel())
    predictions = np.repeat(np.tile(np.arange(3), 3), matrix.ravel())
    np.testing.assert_array_equal(confusion_matrix(labels, predictions), matrix)
    s, c = matrix.sum(), np.trace(matrix)
    t, p = matrix.sum(1), matrix.sum(0)
    expected = (c * s - p @ t) / np.sqrt((s**2 - p @ p) * (s**2 - t @ t))
    assert mcc(labels, predictions) == pytest.approx(expected)


def test_auc_known_values():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auc([0, 0, 1], [0.0, 0.1, 0.9]) == 1.0


def test_undefined_values_are_nan():
    assert np.isnan(auc([1, 1, 1], [0.2, 0.3, 0.4]))
    assert np.isnan(auc([0, 1, 1], np.eye(3)))  # class 2 has no samples
    assert np.isnan(mcc([0, 1, 1, 0], [1, 1, 1, 1]))  # sklearn gives 0 here
    assert skm.matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0
    assert np.isnan(sensitivity([0, 0, 0], [0, 1, 0]))
    assert np.isnan(specificity([1, 1], [1, 0]))
    assert np.isnan(f1([0, 0], [0, 0]))
    assert np.isnan(accuracy([], []))


def test_bad_inputs_raise():
    with pytest.raises(NodulekitError, match="shape mismatch"):
        accuracy([0, 1], [0, 1, 1])
    with pytest.raises(NodulekitError, match="integers"):
        confusion_matrix([0.5, 1], [0, 1])
    with pytest.raises(NodulekitError, match=">= 0"):
        mcc([-1, 1], [0, 1])
    with pytest.raises(NodulekitError, match="binary AUC"):
        auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(NodulekitError, match="scores"):
        auc([0, 1], [0.1, np.nan])
    with pytest.raises(NodulekitError, match="n_classes"):
        confusion_matrix([0, 3], [0, 1], n_classes=2)
