"""Devices and DDP: 2 gloo processes on the CPU match one process with the same global batch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _training_helpers import TinyNet, ddp_worker, make_store, tiny_config

from nodulekit.errors import NodulekitError
from nodulekit.training.distributed import DevicePlan, DistContext, launch, plan_devices


def test_plan_devices(monkeypatch: pytest.MonkeyPatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plan_devices(None) == DevicePlan("cpu", 1)
    assert plan_devices(0, cpu_processes=2) == DevicePlan("cpu", 2)
    with pytest.raises(NodulekitError, match="--gpus 2: no CUDA device is visible"):
        plan_devices(2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert plan_devices(None) == DevicePlan("cuda", 1) and plan_devices(1).backend == "nccl"
    with pytest.raises(NodulekitError, match="only 1 CUDA device"):
        plan_devices(4)
    for var, value in {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(var, value)
    assert plan_devices(None) == DevicePlan("cuda", 4)  # torchrun's world, not --gpus


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path):
    store = make_store(tmp_path / "patches.h5", n_patients=6, per_patient=3, n_folds=3)
    config = tiny_config(epochs=3, batch_size=4, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    # rank 0's validation drives the plateau schedule and a keep_best group on every rank
    config["scheduler"].update(name="plateau", monitor="val_loss", factor=0.5, patience=0, threshold=0.9)
    config["phases"] = {"main": {"keep_best": {"cls_head": "val_loss"}}}
    launch(ddp_worker, DevicePlan("cpu", 1), store, config, None, tmp_path / "one.pt")
    launch(ddp_worker, DevicePlan("cpu", 2), store, config, tmp_path / "run", tmp_path / "two.pt")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["world"] == 1 and two["world"] == 2
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, atol=1e-6, rtol=1e-5, msg=key)
    torch.manual_seed(0)
    initial = TinyNet(dropout=0.0).state_dict()
    assert not torch.allclose(initial["body.0.weight"], two["model"]["body.0.weight"])  # it trained
    for a, b in zip(one["rows"], two["rows"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["lr"] == b["lr"]
    assert one["rows"][-1]["lr"] == 0.05  # the plateau halved it after epoch 2
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file() and (tmp_path / "run" / "log.csv").is_file()


def test_single_process_context_collectives_are_local():
    ctx = DistContext()
    assert ctx.is_main and not ctx.distributed
    assert ctx.any_true(True) and ctx.broadcast(3) == 3 and ctx.gather("x") == ["x"]
    assert torch.equal(ctx.sum_tensor(torch.ones(2)), torch.ones(2))
