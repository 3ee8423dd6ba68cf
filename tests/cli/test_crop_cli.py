"""``nodulekit crop`` through Typer's CliRunner."""
from __future__ import annotations

from typer.testing import CliRunner

from nodulekit.cli import app
from nodulekit.errors import NodulekitError
from nodulekit.io.patch_store import open_patch_store
from nodulekit.stages.consensus import ConsensusParams, consensus_label
from nodulekit.stages.ingest import IngestParams, ingest_lidc


def test_help_has_example():
    result = CliRunner().invoke(app, ["crop", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "--for" in result.output


def test_run_summary_missing_images_and_bad_option(tmp_path, tiny_phantom):
    ingest_lidc(tmp_path, IngestParams(root=tiny_phantom))
    consensus_label(tmp_path, ConsensusParams(folds=2))
    runner = CliRunner()
    args = ["crop", "--for", "munet3d", "--workdir", str(tmp_path), "--size", "32", "--hu-window", "-1000", "400"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "crop/munet3d: 2 patches (32x32x32)" in result.output and "fold " in result.output
    assert "up to date" in runner.invoke(app, args).output
    with open_patch_store(tmp_path / "crop" / "munet3d" / "patches.h5") as store:
        volume = tmp_path / "ingest" / "volumes" / f"{store.table['series_uid'][0]}.h5"
    volume.unlink()
    missing = runner.invoke(app, [*args, "--force"])
    assert missing.exit_code == 0 and "missing images" in missing.output and volume.stem in missing.output
    bad = runner.invoke(app, ["crop", "--for", "mtcnn", "--workdir", str(tmp_path), "--normalize", "zscore"])
    assert isinstance(bad.exception, NodulekitError) and "--normalize" in str(bad.exception)
