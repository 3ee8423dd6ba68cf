"""``nodulekit evaluate`` through Typer's CliRunner, with the tests' threshold model."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nodulekit.cli import app
from nodulekit.errors import NodulekitError
from nodulekit.evaluation import register_predictor, unregister_predictor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
from _eval_helpers import MODEL, STORE_REL, ThresholdPredictor, make_batch, write_run, write_store  # noqa: E402

RUNS = (f"{MODEL}-fold0-a", f"{MODEL}-fold1-b")


@pytest.fixture
def workdir(tmp_path: Path):
    register_predictor(MODEL)(ThresholdPredictor)
    write_store(tmp_path / STORE_REL, make_batch())
    for fold, name in enumerate(RUNS):
        write_run(tmp_path, name, fold, f"2026-01-0{fold + 1}T00:00:00+00:00")
    yield tmp_path
    unregister_predictor(MODEL)


def run(*args: str):
    return CliRunner().invoke(app, ["evaluate", *args], env={"COLUMNS": "200"})


def test_help_has_example():
    result = run("--help")
    assert result.exit_code == 0 and "Example" in result.output and "--compare" in result.output


def test_prints_the_aggregate_table_and_json(workdir: Path):
    result = run("--workdir", str(workdir), "--boot", "30")
    assert result.exit_code == 0, result.output
    assert "DI (Dice)" in result.output and "HD95" in result.output and "AUC" in result.output
    assert RUNS[1] in result.output and "this run, synthetic spheres" in result.output
    as_json = run("--workdir", str(workdir), "--run", RUNS[0], "--json", "--boot", "30")
    data = json.loads(as_json.output)
    assert data["folds"] == [0] and "dice" in data["aggregate"]["segmentation"]["metrics"]


def test_pooled_runs_and_compare(workdir: Path):
    pooled = run("--workdir", str(workdir), "--run", RUNS[0], "--run", RUNS[1], "--boot", "30")
    assert pooled.exit_code == 0 and "folds [0, 1]" in pooled.output
    compared = run("--workdir", str(workdir), "--compare", *RUNS, "--boot", "30")
    assert compared.exit_code == 0, compared.output
    assert "comparison.md" in compared.output and RUNS[0] in compared.output


def test_errors_are_user_errors(workdir: Path):
    result = run("--workdir", str(workdir), "--run", "nope")
    assert isinstance(result.exception, NodulekitError) and "nope" in str(result.exception)
    stray = run("--workdir", str(workdir), RUNS[0])
    assert isinstance(stray.exception, NodulekitError) and "--compare" in str(stray.exception)
