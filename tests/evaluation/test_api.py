"""``evaluate``: which run, which folds, where outputs go, when predictions are reused, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _eval_helpers import MODEL, STORE_REL, ThresholdPredictor, make_batch, write_run, write_store
from nodulekit.errors import NodulekitError
from nodulekit.evaluation import EvaluateParams, PredictionBatch, evaluate
from nodulekit.evaluation.predictions import open_predictions

FAST = EvaluateParams(n_boot=30)


class Counting(ThresholdPredictor):
    instances: list["Counting"] = []

    def __init__(self, run) -> None:
        super().__init__(run)
        Counting.instances.append(self)


def test_most_recent_run_and_its_outputs(workdir: Path):
    result = evaluate(workdir, params=FAST)
    run_dir = workdir / "runs" / f"{MODEL}-fold1-20260102T000000Z"
    assert result.out_dir == run_dir / "evaluation" and result.runs == [run_dir.name]
    assert {p.name for p in result.out_dir.iterdir()} == {"predictions.h5", "metrics.json"}
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["folds"] == [1] and {r["fold"] for r in metrics["rows"]} == {1}
    with open_predictions(result.predictions[0]) as pred:
        assert pred.provenance["run_name"] == run_dir.name and pred.provenance["folds"] == [1]
        assert pred.provenance["store_path"].endswith(STORE_REL)
        assert sorted(pred.store_index.tolist()) == sorted(r["store_index"] for r in metrics["rows"])


def test_predictions_are_reused_until_an_input_changes(workdir: Path):
    Counting.instances.clear()
    run = f"{MODEL}-fold0-20260101T000000Z"
    first = evaluate(workdir, run=run, predictor=Counting, params=FAST)
    again = evaluate(workdir, run=run, predictor=Counting, params=FAST)
    assert (first.reused_predictions, again.reused_predictions) == ([False], [True]) and len(Counting.instances) == 1
    forced = evaluate(workdir, run=run, predictor=Counting, params=EvaluateParams(n_boot=30, force=True))
    assert forced.reused_predictions == [False]
    (workdir / "runs" / run / "config.toml").write_text("[model]\nthreshold = 0.6\n")
    changed = evaluate(workdir, run=run, predictor=Counting, params=FAST)
    assert changed.reused_predictions == [False] and len(Counting.instances) == 3
    assert changed.metrics["aggregate"] != first.metrics["aggregate"]


def test_cross_validation_runs_are_pooled(workdir: Path):
    runs = [f"{MODEL}-fold0-20260101T000000Z", f"{MODEL}-fold1-20260102T000000Z"]
    result = evaluate(workdir, run=runs, params=FAST)
    assert result.out_dir.parent == workdir / "evaluations" and result.out_dir.name.startswith(f"{MODEL}-cv-")
    assert set(result.metrics["per_fold"]) == {"0", "1"}
    per_fold_n = sum(result.metrics["per_fold"][f]["segmentation"]["n"] for f in ("0", "1"))
    assert result.metrics["aggregate"]["segmentation"]["n"] == per_fold_n
    assert all((workdir / "runs" / r / "evaluation" / "predictions.h5").exists() for r in runs)


def test_a_run_holding_out_several_folds(workdir: Path):
    write_run(workdir, "cv-run", [0, 1], "2026-02-01T00:00:00+00:00")
    Counting.instances.clear()
    both = evaluate(workdir, run="cv-run", predictor=Counting, params=FAST)
    assert both.metrics["folds"] == [0, 1] and [f for f, _ in Counting.instances[0].calls] == [0, 1]
    one = evaluate(workdir, run="cv-run", fold=1, predictor=Counting, params=FAST)
    assert one.out_dir == workdir / "runs" / "cv-run" / "evaluation" / "fold-1" and one.metrics["folds"] == [1]


def test_clear_errors(workdir: Path):
    with pytest.raises(NodulekitError, match="fold 0 is not held out"):
        evaluate(workdir, run=f"{MODEL}-fold1-20260102T000000Z", fold=0, params=FAST)
    write_run(workdir, "other", 0, "2026-01-05T00:00:00+00:00", model="no-such-model")
    with pytest.raises(NodulekitError, match="no predictor registered for model 'no-such-model'"):
        evaluate(workdir, run="other", params=FAST)
    with pytest.raises(NodulekitError, match="cannot be pooled"):
        evaluate(workdir, run=["other", f"{MODEL}-fold1-20260102T000000Z"], params=FAST)
    write_run(workdir, "repeat", 1, "2026-01-06T00:00:00+00:00")
    with pytest.raises(NodulekitError, match="fold 1 is held out by both"):
        evaluate(workdir, run=[f"{MODEL}-fold1-20260102T000000Z", "repeat"], params=FAST)


class Forgetful(ThresholdPredictor):
    def predict(self, store, indices, fold):
        batches = list(super().predict(store, indices, fold))
        return batches[:-1]


def test_a_predictor_that_skips_patches_is_an_error(workdir: Path):
    run = f"{MODEL}-fold0-20260101T000000Z"
    with pytest.raises(NodulekitError, match="exactly once"):
        evaluate(workdir, run=run, predictor=Forgetful, params=FAST)
    assert not (workdir / "runs" / run / "evaluation" / "predictions.h5").exists()


def test_augmented_copies_are_never_scored(tmp_path: Path, threshold_model):
    batch = make_batch()
    n = len(batch)
    for i, row in enumerate(batch.rows):
        row["is_augmented"] = bool(i % 3 == 0)
    write_store(tmp_path / "augment" / "t" / "patches.h5", batch)
    write_run(tmp_path, "r", 0, "2026-01-01T00:00:00+00:00", store_rel="augment/t")
    result = evaluate(tmp_path, params=FAST)
    scored = {r["store_index"] for r in result.metrics["rows"]}
    expected = {i for i in range(n) if i % 3 and batch.rows[i]["fold"] == 0}
    assert scored == expected


class TwoTasks(ThresholdPredictor):
    label_columns = {"texture": "label_test_malignancy"}

    def predict(self, store, indices, fold):
        for batch in super().predict(store, indices, fold):
            score = batch.class_prob["malignancy"]
            yield PredictionBatch(batch.indices, batch.seg_prob,
                                  {"malignancy": score, "texture": np.stack([score, 1 - score], axis=1)})


def test_truth_columns_from_config_and_predictor(workdir: Path):
    run = workdir / "runs" / f"{MODEL}-fold0-20260101T000000Z"
    (run / "config.toml").write_text('[model]\nthreshold = 0.5\n[data]\nlabels = {malignancy = "label"}\n')
    result = evaluate(workdir, run=run.name, predictor=TwoTasks, params=FAST)
    assert result.metrics["tasks"] == {"malignancy": {"n_classes": 2, "truth_column": "label"},
                                       "texture": {"n_classes": 2, "truth_column": "label_test_malignancy"}}
    texture_auc = result.metrics["aggregate"]["classification"]["texture"]["metrics"]["auc"]["estimate"]
    malignancy_auc = result.metrics["aggregate"]["classification"]["malignancy"]["metrics"]["auc"]["estimate"]
    assert texture_auc == pytest.approx(1 - malignancy_auc)
