"""The predictions store: round trip, the predictor contract's checks, atomic writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodulekit.errors import InputFileError, NodulekitError
from nodulekit.evaluation import PredictionBatch
from nodulekit.evaluation.predictions import cache_key_of, open_predictions, write_predictions

SHAPE = (2, 4, 4)


def batches(indices: np.ndarray, rng: np.random.Generator, **overrides) -> list[PredictionBatch]:
    out = []
    for chunk in np.array_split(indices, 3):
        fields = {"seg_prob": rng.random((len(chunk), *SHAPE)), "class_prob": {"malignancy": rng.random(len(chunk))}}
        fields.update(overrides)
        out.append(PredictionBatch(chunk, **fields))
    return out


def test_round_trip_in_any_order(tmp_path: Path):
    rng = np.random.default_rng(0)
    indices = np.array([7, 2, 9, 4, 11, 0])
    parts = batches(indices, rng)[::-1]
    n = write_predictions(tmp_path / "p.h5", parts, indices, SHAPE, {"run_name": "r", "cache_key": "k1"})
    assert n == 6 and cache_key_of(tmp_path / "p.h5") == "k1"
    with open_predictions(tmp_path / "p.h5") as pred:
        expected_order = np.concatenate([b.indices for b in parts])
        np.testing.assert_array_equal(pred.store_index, expected_order)
        seg = np.concatenate([b.seg_prob for b in parts])
        np.testing.assert_allclose(pred.seg_prob(slice(None)), seg, atol=5e-4)  # float16
        prob = np.concatenate([b.class_prob["malignancy"] for b in parts])
        np.testing.assert_allclose(pred.class_prob("malignancy"), np.stack([1 - prob, prob], axis=1), atol=1e-6)
        assert pred.tasks == {"malignancy": 2} and pred.has_seg and pred.patch_shape == SHAPE
        assert pred.provenance["run_name"] == "r"


def test_classification_only_and_multiclass(tmp_path: Path):
    probs = np.full((4, 3), 1 / 3)
    write_predictions(tmp_path / "p.h5", [PredictionBatch(np.arange(4), class_prob={"texture": probs})],
                      np.arange(4), SHAPE, {})
    with open_predictions(tmp_path / "p.h5") as pred:
        assert not pred.has_seg and pred.tasks == {"texture": 3}
        with pytest.raises(NodulekitError, match="no segmentation"):
            pred.seg_prob(slice(None))


@pytest.mark.parametrize("problem, kwargs, message", [
    ("missing", {}, "exactly once"),
    ("logits", {"class_prob": None}, "probabilities"),
    ("shape", {"seg_prob": None}, "patch shape"),
])
def test_contract_violations_write_nothing(tmp_path: Path, problem, kwargs, message):
    rng = np.random.default_rng(1)
    indices = np.arange(6)
    parts = batches(indices, rng)
    if problem == "missing":
        parts = parts[:-1]
    elif problem == "logits":
        parts[0].class_prob = {"malignancy": np.full(len(parts[0].indices), 3.5)}
    else:
        parts[0].seg_prob = np.zeros((len(parts[0].indices), 4, 4))
    with pytest.raises(NodulekitError, match=message):
        write_predictions(tmp_path / "p.h5", parts, indices, SHAPE, {})
    assert not any(tmp_path.iterdir())


def test_duplicates_are_rejected(tmp_path: Path):
    rng = np.random.default_rng(2)
    parts = batches(np.arange(4), rng)
    parts.append(parts[0])
    with pytest.raises(NodulekitError):
        write_predictions(tmp_path / "p.h5", parts, np.arange(4), SHAPE, {})


def test_not_a_predictions_store(tmp_path: Path):
    (tmp_path / "x.h5").write_text("no")
    with pytest.raises(InputFileError, match="x.h5"):
        open_predictions(tmp_path / "x.h5")
