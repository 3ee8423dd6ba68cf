"""Engine hooks the models need: ReduceLROnPlateau, per-group best weights (keep_best), the
post-training hook, on-the-fly augmentation from ``[augmentation]``, per-model targets and inputs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _training_helpers import TinyNet, make_store, seg_cls_step, seg_step, tiny_config

from nodulekit.errors import NodulekitError
from nodulekit.training.api import OnTheFlyAugment, on_the_fly_transform
from nodulekit.training.checkpoint import load_checkpoint
from nodulekit.training.data import DataParams, split_datasets
from nodulekit.training.distributed import DistContext
from nodulekit.training.engine import Phase, Trainer, group_state_keys
from nodulekit.training.runs import read_log_csv


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    store = make_store(tmp_path_factory.mktemp("store") / "patches.h5", n_patients=6, per_patient=3, n_folds=3)
    return split_datasets(DataParams((store,)), fold=0)


def plateau_config(monitor: str, epochs: int = 4, lr: float = 1e-4) -> dict[str, Any]:
    config = tiny_config(epochs=epochs, optimizer={"name": "sgd", "lr": lr})
    config["scheduler"].update(name="plateau", monitor=monitor, mode="min", factor=0.5, patience=0)
    return config


def fit(data, config, run_dir=None, phases=None, seed: int = 0, **kw):
    torch.manual_seed(seed)
    trainer = Trainer(TinyNet(dropout=0.0), phases or [Phase("main", seg_cls_step)], data[0], data[1], config,
                      run_dir=run_dir, progress=False, **kw)
    return trainer, trainer.fit()


@pytest.mark.parametrize("monitor", ["train_loss", "val_loss"])
def test_plateau_halves_the_lr_when_the_monitored_value_stops_improving(data, monitor: str):
    _, result = fit(data, plateau_config(monitor))  # SGD at lr 1e-4: changes far below the 1e-4 threshold
    lrs = [row["lr"] for row in result.log_rows]
    assert lrs == pytest.approx([1e-4, 1e-4, 5e-5, 2.5e-5], rel=1e-6)


def test_plateau_state_resumes_exactly(data, tmp_path: Path):
    config = plateau_config("val_loss", epochs=3, lr=1e-2)
    config["scheduler"]["threshold"] = 0.5  # improvements below 50 % count as a plateau: the lr moves
    full, _ = fit(data, config, tmp_path / "full")

    class Kill:
        def __call__(self, info):
            if info.step == 5:
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        fit(data, config, tmp_path / "run", on_step_end=Kill())
    resumed = Trainer(TinyNet(dropout=0.0), [Phase("main", seg_cls_step)], data[0], data[1], config,
                      run_dir=tmp_path / "run", progress=False)
    resumed.fit(resume=True)
    rows = [read_log_csv(tmp_path / name / "log.csv") for name in ("full", "run")]
    assert [r["lr"] for r in rows[0]] == [r["lr"] for r in rows[1]] and rows[0][-1]["lr"] != rows[0][0]["lr"]
    assert [r["val_loss"] for r in rows[0]] == [r["val_loss"] for r in rows[1]]


def test_plateau_errors(data):
    with pytest.raises(NodulekitError, match="needs validation data"):
        fit((data[0], None), plateau_config("val_loss"))
    with pytest.raises(NodulekitError, match="scheduler.monitor"):
        fit(data, plateau_config("train_nope"))
    with pytest.raises(NodulekitError, match="scheduler.monitor"):
        fit(data, plateau_config("loss"))


class Scripted:
    """Validation metrics ``a`` and ``b`` given per epoch (the step's losses are ignored)."""

    def __init__(self, a: list[float], b: list[float]) -> None:
        self.a, self.b, self.epoch = a, b, 0

    def __call__(self, model, batches) -> dict[str, float]:
        for _ in batches:
            pass
        out = {"a": self.a[self.epoch], "b": self.b[self.epoch], "loss": 0.0}
        self.epoch += 1
        return out


@pytest.mark.parametrize("with_run_dir", [True, False])
def test_keep_best_restores_each_group_from_its_own_best_epoch(data, tmp_path: Path, with_run_dir: bool):
    config = tiny_config(epochs=4)
    config["phases"] = {"main": {"early_stopping": {"monitor": "val_a", "mode": "max"},
                                 "keep_best": {"cls_head": "val_b"}}}
    snapshots = []
    metrics = Scripted(a=[0.1, 0.9, 0.2, 0.3], b=[0.1, 0.2, 0.3, 0.8])  # a best at epoch 2, b at epoch 4

    def snapshot(row):
        snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    torch.manual_seed(0)
    trainer = Trainer(TinyNet(dropout=0.0), [Phase("main", seg_cls_step, metrics=metrics)], data[0], data[1],
                      config, run_dir=tmp_path / "run" if with_run_dir else None, progress=False,
                      on_epoch_end=snapshot)
    result = trainer.fit()
    state = trainer.model.state_dict()
    for key, value in state.items():
        expected = snapshots[3 if key.startswith("cls_head.") else 1][key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
    group = result.best["main"]["groups"]["cls_head"]
    assert (group["metric"], group["epoch"], group["value"]) == ("val_b", 4, 0.8)
    assert result.best["main"]["epoch"] == 2 and "state" not in group
    if with_run_dir:
        saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "best-main-cls_head.pt")
        assert set(saved["model"]) == {"cls_head.weight", "cls_head.bias"}
        torch.testing.assert_close(load_checkpoint(result.model_path)["model"]["cls_head.weight"],
                                   snapshots[3]["cls_head.weight"])


def test_group_state_keys_include_the_batchnorm_buffers():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Conv2d(2, 1, 1))
    keys = group_state_keys(model, "1")
    assert set(keys) == {"1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    with pytest.raises(NodulekitError, match="keep_best"):
        group_state_keys(model, "head")


def test_post_training_runs_once_on_the_best_weights_before_model_pt(data, tmp_path: Path):
    config = tiny_config(epochs=2)
    seen = []

    def hook(model):
        seen.append(model.seg_head.weight.detach().clone())
        with torch.no_grad():
            model.seg_head.bias.fill_(7.0)
        return {"note": "done", "values": [1.0, 2.0]}

    trainer, result = fit(data, config, tmp_path / "run", phases=[Phase("main", seg_step)], post_training=hook)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best-main.pt")["model"]
    assert len(seen) == 1 and torch.equal(seen[0], best["seg_head.weight"])
    assert result.post_training == {"note": "done", "values": [1.0, 2.0]}
    assert float(load_checkpoint(result.model_path)["model"]["seg_head.bias"][0]) == 7.0


def test_on_the_fly_augmentation_follows_the_augmentation_mode():
    ctx = DistContext()
    flip = {"flip": {"p": 1.0, "axes": ["x"]}}
    assert on_the_fly_transform({"augmentation": {"mode": "offline", "on_the_fly": flip}, "train": {"seed": 0}},
                                ctx) is None
    for mode in ("on_the_fly", "both"):
        transform = on_the_fly_transform({"augmentation": {"mode": mode, "on_the_fly": flip}, "train": {"seed": 0}},
                                         ctx)
        assert isinstance(transform, OnTheFlyAugment)
        image = torch.arange(8.0).reshape(1, 1, 2, 4)
        out = transform({"image": image, "mask": image > 3, "label": torch.tensor([1])})
        assert torch.equal(out["image"], image.flip(-1)) and torch.equal(out["mask"], (image > 3).flip(-1))
    with pytest.raises(NodulekitError, match="augmentation.on_the_fly"):
        on_the_fly_transform({"augmentation": {"mode": "on_the_fly", "on_the_fly": {}}, "train": {"seed": 0}}, ctx)
    legacy = {"on_the_fly": flip, "train": {"seed": 0}}  # config.toml of a run made before [augmentation]
    assert isinstance(on_the_fly_transform(legacy, ctx), OnTheFlyAugment)


def test_spec_targets_and_batch_inputs():
    from nodulekit.models import get_spec
    from nodulekit.training.from_spec import batch_inputs, batch_targets, task_kinds

    mask = torch.zeros(3, 1, 8, 8)
    mask[0, 0, 2:4, 2:4] = 1
    batch = {"image": torch.rand(3, 1, 8, 8), "mask": mask, "label": torch.tensor([1, -1, 0])}
    dgnet = get_spec("dgnet")
    targets = batch_targets(dgnet, batch, ("seg", "nodule"), task_kinds(dgnet))
    assert targets["seg"] is mask and targets["nodule"].tolist() == [1.0, 0.0, 0.0]
    mtcnn = get_spec("mtcnn")
    targets = batch_targets(mtcnn, batch, ("malignancy", "reconstruction"), task_kinds(mtcnn))
    assert targets["malignancy"] is batch["label"] and targets["reconstruction"] is batch["image"]
    cascade = get_spec("cascade")
    assert set(batch_inputs(cascade.build(mode="gt_masked", width=0.125), batch)) == {"image", "mask"}
    assert set(batch_inputs(cascade.build(width=0.125), batch)) == {"image"}
    assert set(batch_inputs(TinyNet(), batch)) == {"image"}
