"""``nodulekit run``: the README's demo with a tiny budget, its rerun, and one-line errors."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nodulekit.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from _run_helpers import IntensityPredictor  # noqa: E402

ENV = {"COLUMNS": "200"}


@pytest.fixture
def mtnet_predictor():
    """The registered MT-Net predictor; a stand-in while none is registered (evaluation plugs
    models in by name, and the CLI cannot be handed one)."""
    from nodulekit.evaluation.predictor import register_predictor, registered_factory, unregister_predictor

    if registered_factory("mtnet") is not None:
        yield
        return
    register_predictor("mtnet")(IntensityPredictor)
    yield
    unregister_predictor("mtnet")


@pytest.mark.slow
def test_demo_with_a_tiny_budget_writes_the_report_then_reruns_nothing(tmp_path: Path, mtnet_predictor):
    args = ["run", "--demo", "--workdir", str(tmp_path / "demo"), "--epochs", "1", "--max-steps", "1", "--boot", "20"]
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    report = Path(re.search(r"report: (\S+report\.html)", result.output).group(1))
    assert report.is_file() and report.parent.name == "evaluation" and report.is_relative_to(tmp_path / "demo")
    assert (report.parent / "report-preview.png").is_file()
    for stage in ("phantom", "ingest", "consensus-label", "crop/mtnet", "augment/mtnet", "train/mtnet-fold0",
                  "evaluate/mtnet-fold0"):
        assert re.search(rf"^{re.escape(stage)}\s+ran\b", result.output, re.M), stage

    again = CliRunner().invoke(app, args, env=ENV)
    assert again.exit_code == 0, again.output
    assert "everything was up to date" in again.output and f"report: {report}" in again.output


def test_help_names_the_demo_and_the_options():
    result = CliRunner().invoke(app, ["run", "--help"], env=ENV)
    assert result.exit_code == 0
    for option in ("--demo", "--lidc-root", "--fold", "--set", "--epochs", "--gpus", "--until", "--workdir"):
        assert option in result.output


@pytest.mark.parametrize("args, message", [
    ([], "name a model"),
    (["mtnet"], "--lidc-root"),
    (["--demo", "mtnet"], "--demo runs its own model"),
    (["mtnet", "--lidc-root", "x", "--fold", "1", "--folds", "all"], "not both"),
])
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], message: str):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "nodulekit", "run", *args, "--workdir", str(tmp_path)],
                            capture_output=True, text=True, env={**ENV, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
