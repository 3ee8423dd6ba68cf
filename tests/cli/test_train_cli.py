"""``nodulekit train`` through Typer's CliRunner, on the tiny phantom (ingest -> consensus-label ->
crop --for mtnet): a short MT-Net run, cross-validation, resume, one-line errors."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nodulekit.cli import app
from nodulekit.errors import NodulekitError

SMALL = ["--set", "model.width=0.125"]


pytestmark = pytest.mark.one_torch_thread


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_phantom: Path) -> Path:
    """The tiny phantom cropped for MT-Net: 7 patches of 2 nodules in folds 0 and 2."""
    from nodulekit.patches.presets import resolve_geometry
    from nodulekit.stages.consensus import ConsensusParams, consensus_label
    from nodulekit.stages.crop import CropParams, crop
    from nodulekit.stages.ingest import IngestParams, ingest_lidc

    root = tmp_path_factory.mktemp("train-cli")
    ingest_lidc(root, IngestParams(root=tiny_phantom))
    consensus_label(root, ConsensusParams())
    crop(root, CropParams(resolve_geometry("mtnet")))
    return root


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", *args])


def test_help_has_an_example():
    result = invoke("--help")
    assert result.exit_code == 0 and "Example" in result.output and "--folds" in result.output


def test_short_mtnet_run_finishes_well_under_a_minute(workdir: Path):
    started = time.perf_counter()
    result = invoke("mtnet", "--epochs", "1", "--max-steps", "2", *SMALL, "--workdir", str(workdir))
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert seconds < 60, f"took {seconds:.1f} s"
    assert "mtnet fold 0: complete, 2 steps" in result.output and "best coarse: val_seg_coarse_jaccard" in result.output
    assert "no augment/mtnet store" in result.output  # the note: mtnet's offline copies are missing
    run_dir = Path(result.output.split("-> ")[1].split()[0])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and (run_dir / "model.pt").is_file()


def test_cross_validation_trains_each_fold_in_turn(workdir: Path):
    result = invoke("mtnet", "--folds", "all", "--epochs", "1", "--max-steps", "1", *SMALL,
                    "--set", "model.input_size_px=64", "--workdir", str(workdir))
    assert result.exit_code == 0, result.output
    assert "mtnet fold 0: complete" in result.output and "mtnet fold 2: complete" in result.output
    assert "cross-validation" in result.output


def test_interrupted_run_resumes_from_the_cli(workdir: Path, monkeypatch: pytest.MonkeyPatch):
    from nodulekit.training import engine

    monkeypatch.setattr(engine.Trainer, "_stop_agreed", lambda self, step: step == 1)
    first = invoke("mtnet", "--epochs", "1", "--max-steps", "1", *SMALL, "--set", "model.input_size_px=64",
                   "--fold", "2", "--workdir", str(workdir))
    assert first.exit_code == 130 and "interrupted after 1 steps" in first.output
    name = first.output.split("--resume ")[1].split("`")[0]
    monkeypatch.undo()
    resumed = invoke("--resume", name, "--workdir", str(workdir))
    assert resumed.exit_code == 0, resumed.output
    assert "mtnet fold 2: complete, 2 steps" in resumed.output


def test_errors_are_one_line(workdir: Path, tmp_path: Path):
    missing = invoke("mtnet", "--workdir", str(tmp_path))
    assert isinstance(missing.exception, NodulekitError)
    assert "crop/mtnet not found" in str(missing.exception) and "`nodulekit crop --for mtnet`" in str(missing.exception)
    augment = invoke("mtnet", "--stores", "augment", "--workdir", str(workdir))
    assert "`nodulekit augment --for mtnet`" in str(augment.exception)
    for args, text in ((["nonet"], "unknown model"), (["mtnet", "--set", "optimizer.lrr=1"], "unknown key"),
                       (["mtnet", "--device", "cpu", "--gpus", "2"], "choose one"),
                       (["mtnet", "--folds", "x"], "--folds"), (["mtnet", "--stores", "all"], "--stores")):
        result = invoke(*args, "--workdir", str(workdir))
        assert isinstance(result.exception, NodulekitError) and text in str(result.exception), args
        assert "\n" not in str(result.exception)


def test_init_and_freeze_become_the_transfer_config(tmp_path: Path):
    from nodulekit.cli.train import transfer_overrides
    from nodulekit.models.registry import get_spec
    from nodulekit.training.config import apply_overrides

    run = tmp_path / "runs" / "dgnet-fold0-x"
    run.mkdir(parents=True)
    entries = transfer_overrides(tmp_path, "dgnet-fold0-x", "S1, S5,FC")
    config = apply_overrides(get_spec("dgnet").default_config, entries)
    assert config["model"]["transfer"]["init_from"] == str(run.resolve())
    assert config["model"]["transfer"]["freeze"] == ["S1", "S5", "FC"]
    with pytest.raises(NodulekitError, match="--init nope"):
        transfer_overrides(tmp_path, "nope", None)


def test_init_on_a_model_without_transfer_is_a_one_line_error(workdir: Path, tmp_path: Path):
    (tmp_path / "weights.pt").write_bytes(b"")
    result = invoke("mtnet", "--init", str(tmp_path / "weights.pt"), "--max-steps", "1", *SMALL,
                    "--workdir", str(workdir))
    assert result.exit_code != 0
    assert "transfer" in str(result.exception) or "transfer" in result.output
