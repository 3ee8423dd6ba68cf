"""``nodulekit consensus-label`` through Typer's CliRunner."""
from __future__ import annotations

from typer.testing import CliRunner

from nodulekit.cli import app
from nodulekit.errors import NodulekitError
from nodulekit.stages.ingest import IngestParams, ingest_lidc


def test_help_has_example():
    result = CliRunner().invoke(app, ["consensus-label", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "--clevel" in result.output


def test_run_and_bad_option(tmp_path):
    ingest_lidc(tmp_path, IngestParams(annotations_only=True, patients=["LIDC-IDRI-0001"]))
    runner = CliRunner()
    result = runner.invoke(app, ["consensus-label", "--workdir", str(tmp_path), "--folds", "2",
                                 "--min-readers", "3", "--label", "malignancy", "--benign", "1-2",
                                 "--malignant", "4-5", "--cohort", "custom"])
    assert result.exit_code == 0, result.output
    assert "custom" in result.output and (tmp_path / "consensus-label" / "nodules.csv").exists()
    for name in ("nodules.csv", "cohorts.md"):
        assert (tmp_path / "labels" / name).exists() and name in result.output
    assert str(tmp_path / "labels") in result.output.replace("\n", "")
    bad = runner.invoke(app, ["consensus-label", "--workdir", str(tmp_path), "--clevel", "1.5"])
    assert isinstance(bad.exception, NodulekitError) and "--clevel" in str(bad.exception)
