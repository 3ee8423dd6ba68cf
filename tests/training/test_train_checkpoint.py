"""Checkpoints load with weights_only=True and carry exact RNG states."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _training_helpers import TinyNet

from nodulekit.errors import InputFileError
from nodulekit.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nodulekit.training.optim import EarlyStopping, build_optimizer, build_scheduler


def draws() -> tuple:
    return random.random(), np.random.random(), np.random.normal(), torch.rand(3).tolist()


def test_round_trip_with_weights_only(tmp_path: Path):
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = build_optimizer(model.parameters(), {"name": "adam", "lr": 1e-3})
    scheduler = build_scheduler(optimizer, {"name": "multistep", "milestones": [1, 2], "gamma": [0.1, 0.5]}, 4)
    model(torch.rand(2, 1, 8, 8))["seg"].sum().backward()
    optimizer.step()
    scheduler.step()
    early = EarlyStopping("val_dice", "max", 3)
    early.update(0.5, 0)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "early_stopping": early.state_dict(), "rng": rng_state(), "config": {"a": {"b": [1, 2.5, "x"]}},
               "log_rows": [{"phase": "p", "epoch": 1, "train_loss": 0.5}]}
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, payload)
    expected = draws()
    loaded = load_checkpoint(path)  # weights_only=True inside
    torch.load(path, weights_only=True)
    set_rng_state(loaded["rng"])
    assert draws() == expected
    other = TinyNet()
    other.load_state_dict(loaded["model"])
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = build_optimizer(other.parameters(), {"name": "adam", "lr": 1e-3})
    opt2.load_state_dict(loaded["optimizer"])
    sched2 = build_scheduler(opt2, {"name": "multistep", "milestones": [1, 2], "gamma": [0.1, 0.5]}, 4)
    sched2.load_state_dict(loaded["scheduler"])
    assert sched2.get_last_lr() == scheduler.get_last_lr() == [pytest.approx(1e-4)]
    early2 = EarlyStopping("val_dice", "max", 3)
    early2.load_state_dict(loaded["early_stopping"])
    assert early2 == early
    assert loaded["config"] == payload["config"] and loaded["log_rows"] == payload["log_rows"]


def test_loading_refuses_pickled_objects_and_garbage(tmp_path: Path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "obj": EarlyStopping()}, evil)  # an arbitrary class needs full unpickling
    with pytest.raises(InputFileError, match="not a readable"):
        load_checkpoint(evil)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError):
        load_checkpoint(garbage)
    with pytest.raises(InputFileError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(InputFileError, match="not a nodulekit checkpoint"):
        load_checkpoint(other)


def test_early_stopping_modes():
    stop = EarlyStopping("val_loss", "min", patience=2, min_delta=0.01)
    assert stop.update(1.0, 0) and not stop.update(0.995, 1) and not stop.stopped
    assert stop.update(0.5, 2) and stop.bad_epochs == 0
    assert not stop.update(float("nan"), 3) and not stop.update(0.6, 4) and stop.stopped
    never = EarlyStopping("val_auc", "max", patience=0)
    for epoch in range(5):
        never.update(0.1, epoch)
    assert not never.stopped and never.best_epoch == 0
