"""Fixtures of the evaluation tests: the threshold model registered for the test's duration, a
WORKDIR with the synthetic store and two runs (builders in ``_eval_helpers``), and the texture
phantom cropped for cascade (built once per session; tests train into copies of it)."""
from __future__ import annotations

from pathlib import Path

import pytest

from _eval_helpers import MODEL, STORE_REL, ThresholdPredictor, make_batch, write_run, write_store
from nodulekit.evaluation import register_predictor, unregister_predictor


@pytest.fixture
def threshold_model():
    register_predictor(MODEL)(ThresholdPredictor)
    yield ThresholdPredictor
    unregister_predictor(MODEL)


@pytest.fixture
def workdir(tmp_path: Path, threshold_model) -> Path:
    """WORKDIR with the synthetic store and two runs of the threshold model (folds 0 and 1)."""
    write_store(tmp_path / STORE_REL, make_batch())
    write_run(tmp_path, f"{MODEL}-fold0-20260101T000000Z", 0, "2026-01-01T00:00:00+00:00")
    write_run(tmp_path, f"{MODEL}-fold1-20260102T000000Z", 1, "2026-01-02T00:00:00+00:00")
    return tmp_path


@pytest.fixture(scope="session")
def texture_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_texture_cascade's phantom, ingested, labelled and cropped once; copy it before training into it."""
    from test_texture_cascade import build_texture_workdir

    return build_texture_workdir(tmp_path_factory.mktemp("texture-phantom"))
