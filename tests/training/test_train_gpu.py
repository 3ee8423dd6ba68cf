"""The CUDA path: bf16 autocast, CUDA RNG in checkpoints, resume, and DDP on NCCL (>= 2 GPUs)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _training_helpers import TinyNet, ddp_worker, make_store, seg_cls_step, tiny_config

from nodulekit.training.checkpoint import load_checkpoint
from nodulekit.training.data import DataParams, split_datasets
from nodulekit.training.distributed import DevicePlan, DistContext, launch
from nodulekit.training.engine import Phase, StepInfo, Trainer

pytestmark = pytest.mark.gpu


def cuda_trainer(data, config, run_dir: Path, on_step_end=None, init_seed: int = 0) -> Trainer:
    torch.manual_seed(init_seed)
    ctx = DistContext(device=torch.device("cuda", 0))
    return Trainer(TinyNet(), [Phase("main", seg_cls_step)], data[0], data[1], config, dist=ctx, run_dir=run_dir,
                   progress=False, on_step_end=on_step_end)


def test_cuda_bf16_training_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    store = make_store(tmp_path / "patches.h5")
    data = split_datasets(DataParams((store,)), fold=0)
    config = tiny_config(epochs=2)
    reference = cuda_trainer(data, config, tmp_path / "full")
    result = reference.fit()
    assert result.status == "complete" and all(r["train_loss"] == r["train_loss"] for r in result.log_rows)
    assert load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["ranks"][0]["rng"]["cuda"]

    def crash(info: StepInfo) -> None:
        if info.step == 4:
            raise RuntimeError("simulated kill")

    with pytest.raises(RuntimeError):
        cuda_trainer(data, config, tmp_path / "killed", crash).fit()
    resumed = cuda_trainer(data, config, tmp_path / "killed", init_seed=5)
    resumed.fit(resume=True)
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_ddp_matches_one_gpu(tmp_path: Path):
    store = make_store(tmp_path / "patches.h5")
    config = tiny_config(epochs=1, batch_size=4, precision="fp32", optimizer={"name": "sgd", "lr": 0.1})
    launch(ddp_worker, DevicePlan("cuda", 1), store, config, None, tmp_path / "one.pt")
    launch(ddp_worker, DevicePlan("cuda", 2), store, config, tmp_path / "run", tmp_path / "two.pt")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key].cpu(), value.cpu(), atol=1e-5, rtol=1e-4, msg=key)
