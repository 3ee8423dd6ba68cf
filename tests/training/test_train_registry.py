"""Every registered model through the engine: its default config follows the convention and
resolves into phases and data streams, and a tiny instance trains 2 steps per phase on the CPU
through ``nodulekit.training.api.train`` into a complete run folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _training_helpers import shape_store

from nodulekit.models import get_spec, list_models
from nodulekit.models.registry import read_config_toml
from nodulekit.training.api import build_config, train
from nodulekit.training.config import AUGMENTATION_MODES, TOP_LEVEL_KEYS
from nodulekit.training.from_spec import build_phases, data_streams, stream_params, task_kinds
from nodulekit.training.phase import PhaseSettings
from nodulekit.training.runs import read_log_csv

MODELS = list_models()

#: Per model: the store (geometry, patch shape, extra columns, empty slices) of a tiny run and its overrides.
TINY: dict[str, dict[str, Any]] = {
    "mtnet": {"store": ("2d", (32, 32)), "config": {"model": {"input_size_px": 32},
                                                    "batch_size": {"seg": 2, "malignancy": 2}}},
    "dgnet": {"store": ("2d", (32, 32)), "empty_every": 3, "config": {"batch_size": 2}},
    "mtcnn": {"store": ("views9", (9, 32, 32)), "config": {"model": {"input_size_px": 32}, "batch_size": 2}},
    "msunet": {"store": ("2.5d", (4, 32, 32)), "config": {"batch_size": 2},
               "columns": ("label_msunet_malignancy", "label_msunet_margin", "label_msunet_texture",
                           "label_msunet_calcification")},
    "munet3d": {"store": ("3d", (16, 16, 16)), "config": {"batch_size": 2}},
    "cascade": {"store": ("3d", (16, 16, 16)), "config": {"model": {"input_size_px": 16}, "batch_size": 2},
                "columns": ("label_mtcnn_malignancy",)},
}

#: What each model's default config streams (the data each phase reads).
STREAMS = {
    "mtnet": {"seg": ("seg",), "malignancy": ("malignancy",)},
    "dgnet": {"seg+nodule": ("seg", "nodule")},
    "mtcnn": {"malignancy+reconstruction": ("malignancy", "reconstruction")},
    "msunet": {"seg+malignancy+margin+texture+calcification": ("seg", "malignancy", "margin", "texture",
                                                                 "calcification")},
    "munet3d": {"seg": ("seg",)},
    "cascade": {"seg": ("seg",), "cls": ("cls",), "seg+cls": ("seg", "cls")},
}


def test_every_model_is_covered() -> None:
    assert set(TINY) == set(MODELS) == set(STREAMS)


@pytest.mark.parametrize("name", MODELS)
def test_default_config_follows_the_convention_and_resolves_into_phases_and_streams(name: str, tmp_path: Path):
    spec = get_spec(name)
    toml, _ = read_config_toml(spec.config_path)
    assert set(toml) <= set(TOP_LEVEL_KEYS), f"{name}: top-level keys outside the convention"
    assert "schedule" not in toml and "on_the_fly" not in toml
    config = build_config(tmp_path, name)
    assert config["augmentation"]["mode"] in AUGMENTATION_MODES
    assert config["data"]["stores"] == [f"crop/{spec.geometry.crop_preset}"]  # no augment store in tmp_path
    streams = data_streams(spec, config)
    assert streams == STREAMS[name]
    phases = build_phases(spec, config)
    assert [p.name for p in phases] == [p.name for p in spec.phases(config)]
    for phase in phases:
        settings = PhaseSettings.from_config(config, phase.name)
        assert settings.epochs > 0 and set(phase.streams) <= set(streams)
        assert all(settings.batch_size_of(s) > 0 for s in phase.streams)
    assert set(stream_params(spec, config, tmp_path)) == set(streams)
    kinds = task_kinds(spec)
    assert set(kinds) == set(spec.tasks) and ("seg" in kinds) == ("seg" in spec.tasks)
    if config["augmentation"]["mode"] in ("on_the_fly", "both"):
        from nodulekit.patches.gpu_augment import OnTheFlyConfig

        OnTheFlyConfig.from_dict(config["augmentation"]["on_the_fly"])


def test_mtnet_cohort_table_matches_the_consensus_label_cohort() -> None:
    from nodulekit.labels.cohorts import PRESETS

    cohort, rule = get_spec("mtnet").default_config["cohort"], PRESETS["mtnet"]
    assert tuple(cohort["diameter_mm"]) == rule.diameter_mm
    negative, positive = rule.labels[0].classes
    assert (negative.lo, negative.hi) == tuple(cohort["malignancy_benign"])
    assert (positive.lo, positive.hi) == tuple(cohort["malignancy_malignant"])


def _tiny_run(name: str, workdir: Path, overrides: dict[str, Any] | None = None,
              config_overrides: dict[str, Any] | None = None) -> Any:
    spec, tiny = get_spec(name), TINY[name]
    geometry, shape = tiny["store"]
    shape_store(workdir / "crop" / spec.geometry.crop_preset / "patches.h5", spec.geometry.crop_preset, geometry,
                shape, per_patient=3, empty_every=tiny.get("empty_every", 0), label_columns=tiny.get("columns", ()),
                class_columns={"label_luna16_texture": 3})
    config = {**tiny["config"], **(config_overrides or {}),
              "model": {**spec.test_overrides, **tiny["config"].get("model", {}), **(overrides or {})}}
    return train(workdir, name, fold=0, config_overrides=config, epochs=1, max_steps=2, progress=False)


@pytest.mark.parametrize("name", MODELS)
def test_tiny_model_trains_into_a_complete_run(name: str, tmp_path: Path):
    result = _tiny_run(name, tmp_path)
    spec = get_spec(name)
    phases = [p.name for p in spec.phases(spec.resolve_config({"model": spec.test_overrides}))]
    assert result.status == "complete" and result.steps == 2 * len(phases)
    run = result.run_dir
    assert (run / "config.toml").is_file() and result.model_path == run / "model.pt"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["model"] == name and info["fold"] == 0
    payload = torch.load(run / "model.pt", weights_only=True)
    assert spec.factory(spec.resolve_config({"model": {**spec.test_overrides, **TINY[name]["config"].get(
        "model", {})}})["model"]).load_state_dict(payload["model"]) is not None
    rows = read_log_csv(run / "log.csv")
    assert [r["phase"] for r in rows] == phases
    assert all(r["val_loss"] not in ("", "nan") for r in rows)
    for phase in phases:
        assert (run / "checkpoints" / f"best-{phase}.pt").is_file()
    if name == "mtcnn":  # Algorithm 1: AUC view weights after training, recorded and in model.pt
        weights = info["post_training"]["view_weights"]
        assert len(weights) == 9 and abs(sum(weights) - 1) < 1e-5
        assert torch.allclose(payload["model"]["view_weights"], torch.tensor(weights))
    if name == "mtnet":  # Class-net kept by validation AUC, the rest by Jaccard
        group = info["best"]["fine_cls"]["groups"]["class_net"]
        assert group["metric"] == "val_malignancy_auc" and (run / "checkpoints" / group["path"]).is_file()


def test_cascade_ground_truth_masked_baseline_reads_the_mask(tmp_path: Path):
    result = _tiny_run("cascade", tmp_path, {"mode": "gt_masked"})
    assert result.status == "complete" and [r["phase"] for r in read_log_csv(result.log_csv)] == ["cls"]


TEXTURE = {"data": {"label_column": "label_luna16_texture"}}


def test_cascade_trains_three_texture_classes_with_unlabelled_patches_left_out(tmp_path: Path):
    """docs/models.md: --set data.label_column=label_luna16_texture --set model.n_classes=3."""
    from nodulekit.training.from_spec import stream_datasets

    result = _tiny_run("cascade", tmp_path, {"n_classes": 3}, TEXTURE)
    assert result.status == "complete" and result.steps == 6
    rows = read_log_csv(result.log_csv)
    assert [r["phase"] for r in rows] == ["seg", "cls", "joint"]
    assert all(float(r["val_cls_loss"]) > 0 for r in rows[1:]) and rows[1]["val_cls_accuracy"] != ""
    payload = torch.load(result.model_path, weights_only=True)
    assert payload["model"]["classifier.head.7.weight"].shape[0] == 3  # the last FC block: n_classes

    spec = get_spec("cascade")
    config = build_config(tmp_path, "cascade", config_overrides={**TEXTURE, "model": {"n_classes": 3}})
    train_sets, _ = stream_datasets(spec, config, tmp_path, 0)
    labels = train_sets["cls"].labels["label"]
    assert set(labels.tolist()) == {0, 1, 2}  # the cls stream drops the -1 rows ...
    assert -1 in train_sets["seg+cls"].labels["label"].tolist()  # ... the joint stream masks them in the CE
    assert len(train_sets["cls"]) + int((train_sets["seg+cls"].labels["label"] < 0).sum()) == len(train_sets["seg+cls"])


def test_a_three_class_column_needs_three_classes(tmp_path: Path):
    from nodulekit.errors import NodulekitError

    with pytest.raises(NodulekitError, match="'label_luna16_texture' has class 2, but cascade's 'cls' output has 2 "
                                             "classes.*model.n_classes=3"):
        _tiny_run("cascade", tmp_path, config_overrides=TEXTURE)
