"""train(): a registered model (tiny MT-Net) end to end, run folders, resume, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _training_helpers import make_store

from nodulekit.errors import NodulekitError
from nodulekit.training import engine
from nodulekit.training.api import build_config, train
from nodulekit.training.checkpoint import load_checkpoint
from nodulekit.training.config import load_toml
from nodulekit.training.runs import latest_run, read_log_csv


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("work")
    make_store(root / "crop" / "mtnet" / "patches.h5", n_patients=6, per_patient=2, n_folds=3)
    make_store(root / "augment" / "mtnet" / "patches.h5", n_patients=6, per_patient=2, n_folds=3, augment_copies=1)
    return root


def tiny_mtnet() -> dict:
    from nodulekit.models.registry import get_spec

    spec = get_spec("mtnet")
    return {"model": {**spec.test_overrides, "input_size_px": 32}, "batch_size": {"seg": 4, "malignancy": 4}}


def test_train_mtnet_writes_a_complete_run(workdir: Path):
    result = train(workdir, "mtnet", fold=0, config_overrides=tiny_mtnet(), epochs=1, max_steps=2, progress=False)
    assert result.status == "complete" and result.steps == 4 and result.run_dir.parent == workdir / "runs"
    assert result.run_dir.name.startswith("mtnet-fold0-")
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["model"] == "mtnet" and info["fold"] == 0 and info["status"] == "complete"
    assert info["stores"]["augment/mtnet"]["augmented"] and info["eval_store"] == "crop/mtnet/patches.h5"
    assert set(info["environment"]) >= {"torch", "numpy", "nodulekit"} and info["devices"]["kind"] == "cpu"
    config = load_toml(result.run_dir / "config.toml")
    assert config["phases"]["coarse"]["early_stopping"]["monitor"] == "val_seg_coarse_jaccard"
    assert config["phases"]["fine_cls"]["epochs"] == 1 and config["train"]["max_steps"] == 2
    rows = read_log_csv(result.log_csv)
    assert [r["phase"] for r in rows] == ["coarse", "fine_cls"]
    assert {"train_seg_coarse", "train_seg", "train_malignancy", "val_seg_jaccard", "val_malignancy_auc"} <= set(rows[0])
    weights = load_checkpoint(result.model_path)["model"]
    assert any(k.startswith("class_net.") for k in weights)
    assert latest_run(workdir, "mtnet") == result.run_dir
    with pytest.raises(NodulekitError, match="already complete"):
        train(workdir, None, resume=result.run_dir.name, progress=False)


def test_interrupted_run_resumes_to_completion(workdir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(engine.Trainer, "_stop_agreed", lambda self, step: step == 1)
    first = train(workdir, "mtnet", fold=1, config_overrides=tiny_mtnet(), epochs=1, max_steps=2, progress=False)
    assert first.status == "interrupted" and first.steps == 1
    monkeypatch.undo()
    with pytest.raises(NodulekitError, match="keeps its config"):
        train(workdir, None, resume=first.run_dir.name, config_overrides=["optimizer.lr=1"])
    resumed = train(workdir, None, resume=first.run_dir.name, progress=False)
    assert resumed.status == "complete" and resumed.steps == 4 and resumed.fold == 1 and resumed.resumed
    info = json.loads((first.run_dir / "run.json").read_text())
    assert len(info["resumes"]) == 1 and info["status"] == "complete"


def test_clear_errors(workdir: Path, tmp_path: Path):
    with pytest.raises(NodulekitError, match="unknown model"):
        train(workdir, "nonet", fold=0)
    with pytest.raises(NodulekitError, match="patch store"):
        train(tmp_path, "mtnet", fold=0)
    with pytest.raises(NodulekitError, match="unknown key"):
        train(workdir, "mtnet", fold=0, config_overrides=["optimizer.lrr=1"])
    with pytest.raises(NodulekitError, match="not a run of this workdir"):
        train(workdir, None, resume=tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(NodulekitError, match="--gpus 2"):
            train(workdir, "mtnet", fold=0, gpus=2)


def test_build_config_layers(workdir: Path, tmp_path: Path):
    user = tmp_path / "user.toml"
    user.write_text("[optimizer]\nlr = 0.5\n[phases.fine_cls]\nepochs = 3\n")
    config = build_config(workdir, "mtnet", config_files=[user], config_overrides=["train.epochs=7"])
    assert config["optimizer"]["lr"] == 0.5 and config["data"]["stores"] == ["augment/mtnet"]
    assert config["phases"]["coarse"]["epochs"] == 7 and config["phases"]["fine_cls"]["epochs"] == 3
    assert build_config(workdir, "mtnet", epochs=2)["phases"]["fine_cls"]["epochs"] == 2
    assert build_config(workdir, "mtnet", config_overrides=["phases.coarse.early_stopping.monitor=val_loss"]
                        )["phases"]["coarse"]["early_stopping"] == {"monitor": "val_loss", "mode": "max"}
    assert build_config(workdir, "mtnet", stores="crop")["data"]["stores"] == ["crop/mtnet"]
    assert build_config(workdir, "mtnet", stores="both")["data"]["stores"] == ["crop/mtnet", "augment/mtnet"]
    assert build_config(workdir, "mtnet", config_overrides=["augmentation.mode=on_the_fly"]
                        )["data"]["stores"] == ["crop/mtnet"]
    with pytest.raises(NodulekitError, match="augmentation.mode"):
        build_config(workdir, "mtnet", config_overrides=["augmentation.mode=sometimes"])
    with pytest.raises(NodulekitError, match="--stores"):
        build_config(workdir, "mtnet", stores="all")


def test_torchrun_environment_is_honoured(workdir: Path, monkeypatch: pytest.MonkeyPatch):
    """One process under torchrun's variables: it joins the group from them, rank 0 makes the run."""
    from nodulekit.training.distributed import free_port

    for var, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(var, value)
    result = train(workdir, "mtnet", fold=2, gpus=0, config_overrides=tiny_mtnet(), epochs=1, max_steps=1,
                   progress=False)
    assert result.status == "complete" and result.steps == 2
    assert not torch.distributed.is_initialized()  # the group is left again
