"""The Trainer: exact resume, phases and freezing, early stopping, max-steps, the CSV log."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _training_helpers import TinyNet, make_store, seg_cls_step, seg_step, tiny_config

from nodulekit.errors import NodulekitError
from nodulekit.training.checkpoint import load_checkpoint
from nodulekit.training.data import DataParams, split_datasets
from nodulekit.training.engine import Phase, StepInfo, Trainer
from nodulekit.training.runs import read_log_csv


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    """18 patches of 6 patients; fold 0: 12 training (3 batches of 4), 6 validation patches."""
    store = make_store(tmp_path_factory.mktemp("store") / "patches.h5", n_patients=6, per_patient=3, n_folds=3)
    return split_datasets(DataParams((store,)), fold=0)


class Recorder:
    """on_step_end hook: records losses per (phase, epoch); can stop or crash at a given step."""

    def __init__(self, stop_at: int | None = None, crash_at: int | None = None) -> None:
        self.losses: dict[tuple[str, int], list[float]] = {}
        self.stop_at, self.crash_at = stop_at, crash_at
        self.trainer: Trainer | None = None

    def __call__(self, info: StepInfo) -> None:
        self.losses.setdefault((info.phase, info.epoch), []).append(info.losses["loss"])
        if info.step == self.crash_at:
            raise RuntimeError("simulated kill")
        if info.step == self.stop_at:
            assert self.trainer is not None
            self.trainer.request_stop()


def make_trainer(data, config: dict[str, Any], run_dir: Path | None, phases: list[Phase] | None = None,
                 recorder: Recorder | None = None, init_seed: int = 0) -> Trainer:
    torch.manual_seed(init_seed)
    trainer = Trainer(TinyNet(dropout=0.3), phases or [Phase("main", seg_cls_step)], data[0], data[1], config,
                      run_dir=run_dir, progress=False, on_step_end=recorder)
    if recorder is not None:
        recorder.trainer = trainer
    return trainer


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=name)


def test_resume_after_a_kill_continues_exactly(data, tmp_path: Path):
    config = tiny_config(epochs=2)
    full = Recorder()
    reference = make_trainer(data, config, tmp_path / "full", recorder=full)
    assert reference.fit().status == "complete"

    crash = Recorder(crash_at=4)  # first step of epoch 2: the run dies without saving
    with pytest.raises(RuntimeError, match="simulated kill"):
        make_trainer(data, config, tmp_path / "killed", recorder=crash).fit()
    torch.manual_seed(1234)  # other global RNG state and other initial weights before resuming
    resumed_losses = Recorder()
    resumed = make_trainer(data, config, tmp_path / "killed", recorder=resumed_losses, init_seed=99)
    result = resumed.fit(resume=True)

    assert result.status == "complete" and result.steps == 6
    assert resumed_losses.losses[("main", 1)] == full.losses[("main", 1)]
    assert list(resumed_losses.losses) == [("main", 1)]
    assert_same_weights(reference.model, resumed.model)
    rows_full = read_log_csv(tmp_path / "full" / "log.csv")
    rows_resumed = read_log_csv(tmp_path / "killed" / "log.csv")
    assert [r["train_loss"] for r in rows_full] == [r["train_loss"] for r in rows_resumed]
    assert [r["val_loss"] for r in rows_full] == [r["val_loss"] for r in rows_resumed]


def test_interrupt_mid_epoch_saves_and_resumes_exactly_across_phases(data, tmp_path: Path):
    phases = [Phase("seg", seg_step, trainable=["body", "seg_head"]), Phase("joint", seg_cls_step)]
    config = tiny_config(epochs=2)
    config["phases"] = {"seg": {"epochs": 1}}
    full = Recorder()
    reference = make_trainer(data, config, tmp_path / "full", phases, full)
    reference.fit()

    stop = Recorder(stop_at=5)  # phase "joint", epoch 1, second batch
    first = make_trainer(data, config, tmp_path / "run", phases, stop)
    interrupted = first.fit()
    assert interrupted.status == "interrupted" and interrupted.steps == 5
    position = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["position"]
    assert position == {"phase_index": 1, "epoch": 0, "batch_in_epoch": 2, "phase_step": 2, "step": 5}
    torch.manual_seed(7)
    rest = Recorder()
    resumed = make_trainer(data, config, tmp_path / "run", phases, rest, init_seed=5)
    assert resumed.fit(resume=True).status == "complete"

    assert rest.losses[("joint", 0)] == full.losses[("joint", 0)][2:]
    assert rest.losses[("joint", 1)] == full.losses[("joint", 1)]
    assert_same_weights(reference.model, resumed.model)
    rows_full = read_log_csv(tmp_path / "full" / "log.csv")
    rows_resumed = read_log_csv(tmp_path / "run" / "log.csv")
    strip = ("seconds", "data_seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows_full] == \
        [{k: v for k, v in r.items() if k not in strip} for r in rows_resumed]


def test_phase_trains_only_its_parameters_and_keeps_frozen_modules_in_eval(data):
    seen_modes: list[bool] = []

    def step(model, batch):
        seen_modes.append(model.body[2].training)  # the dropout of the frozen body
        return seg_step(model, batch)

    config = tiny_config(epochs=1)
    trainer = make_trainer(data, config, None, [Phase("head", step, trainable=["seg_head"])])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    assert torch.equal(before["body.0.weight"], after["body.0.weight"])
    assert torch.equal(before["cls_head.weight"], after["cls_head.weight"])
    assert not torch.equal(before["seg_head.weight"], after["seg_head.weight"])
    assert seen_modes and not any(seen_modes)
    with pytest.raises(NodulekitError, match="match no parameter"):
        make_trainer(data, config, None, [Phase("bad", seg_step, trainable=["sge_head"])]).fit()


def test_early_stopping_and_best_checkpoint(data, tmp_path: Path):
    # val_loss falls, so in "max" mode only the first epoch is ever the best: stop after 1 + patience
    config = tiny_config(epochs=10, early_stopping={"monitor": "val_loss", "mode": "max", "patience": 2})
    trainer = make_trainer(data, config, tmp_path)
    result = trainer.fit()
    assert [r["epoch"] for r in result.log_rows] == [1, 2, 3]
    assert result.best["main"]["epoch"] == 1 and result.best["main"]["path"] == "best-main.pt"
    best = load_checkpoint(tmp_path / "checkpoints" / "best-main.pt")
    assert best["metric"] == "val_loss" and best["value"] == pytest.approx(result.log_rows[0]["val_loss"])
    assert_same_weights_state(trainer.model.state_dict(), best["model"])  # load_best_at_end
    final = load_checkpoint(tmp_path / "model.pt")
    assert_same_weights_state(final["model"], best["model"])
    bad = tiny_config(epochs=1, early_stopping={"monitor": "val_dice"})
    with pytest.raises(NodulekitError, match="val_dice.*val_loss"):
        make_trainer(data, bad, None).fit()


def assert_same_weights_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_max_steps_stops_mid_epoch_and_logs_the_partial_epoch(data, tmp_path: Path):
    config = tiny_config(epochs=5, max_steps=4, grad_clip_norm=0.5)
    result = make_trainer(data, config, tmp_path).fit()
    assert result.status == "complete" and result.steps == 4
    assert [(r["epoch"], r["step"]) for r in result.log_rows] == [(1, 3), (2, 4)]
    columns = list(read_log_csv(tmp_path / "log.csv")[0])
    assert columns == ["phase", "epoch", "step", "train_cls", "train_loss", "train_seg", "val_cls", "val_loss",
                       "val_seg", "lr", "seconds", "data_seconds", "images_per_s"]
    row = result.log_rows[0]
    assert row["lr"] == pytest.approx(1e-2) and row["images_per_s"] > 0 and row["seconds"] > 0
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "checkpoints" / "last.pt").is_file()


def test_streams_metrics_and_schedule(data):
    got: list[dict[str, int]] = []

    def step(model, batches):
        got.append({name: len(b["image"]) for name, b in batches.items()})
        seg = seg_step(model, batches["seg"])["loss"]
        cls = seg_cls_step(model, batches["cls"])["cls"]
        return {"loss": seg + cls, "seg": seg, "cls": cls}

    def metrics(model, batches):
        n = {name: sum(len(b["image"]) for b in it) for name, it in batches.items()}
        return {"n_seg": n["seg"], "n_cls": n["cls"]}

    config = tiny_config(epochs=2, batch_size={"seg": 4, "cls": 8}, early_stopping={"monitor": "val_n_seg"})
    config["scheduler"] = {"name": "step", "step_epochs": 1, "gamma": 0.5}
    train, val = data
    torch.manual_seed(0)
    trainer = Trainer(TinyNet(), [Phase("multi", step, metrics=metrics, data=("seg", "cls"))],
                      {"seg": train, "cls": train}, {"seg": val, "cls": val}, config, progress=False)
    result = trainer.fit()
    assert got[0] == {"seg": 4, "cls": 8} and len(got) == 6  # 3 seg batches per epoch; cls cycles
    assert result.log_rows[0]["val_n_seg"] == 6 and result.log_rows[0]["val_n_cls"] == 6
    assert [r["lr"] for r in result.log_rows] == [pytest.approx(1e-2), pytest.approx(5e-3)]
    with pytest.raises(NodulekitError, match="reads data stream"):
        Trainer(TinyNet(), [Phase("x", seg_step, data="nope")], train, val, config, progress=False)
