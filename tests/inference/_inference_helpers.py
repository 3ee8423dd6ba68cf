"""Test helpers (imported as ``_inference_helpers``): tiny synthetic patch stores in a preset's
geometry, and run folders with random weights saved the way nodulekit.training saves them."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nodulekit.io.patch_store import PatchBatch, PatchGeometryInfo, write_patch_store
from nodulekit.patches.presets import PRESETS

CHARACTERISTIC_LABELS = ("malignancy", "margin", "texture", "calcification")


def preset_info(preset: str, patch_shape: Sequence[int] | None = None) -> PatchGeometryInfo:
    """The store geometry ``crop --for <preset>`` writes (``patch_shape`` overrides the preset's)."""
    g = PRESETS[preset]
    return PatchGeometryInfo(g.geometry, tuple(patch_shape or g.patch_shape), g.spacing_zyx_mm, g.hu_window,
                             g.normalize, preset, 0.5)


def blob_patch(shape: Sequence[int], radius: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in [0, 1], mask) of a bright ball (disc in 2D) centred in the patch."""
    grids = np.indices(tuple(shape), dtype=np.float32)
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    mask = r <= radius
    image = rng.normal(0.2, 0.05, tuple(shape)).astype(np.float32)
    image[mask] = 0.8
    return np.clip(image, 0, 1).astype(np.float32), mask


def store_rows(n_nodules: int, folds: Sequence[int], *, slabs_per_nodule: int = 1, empty_per_nodule: int = 0,
               seed: int = 0) -> list[dict[str, Any]]:
    """Table rows: nodule i of patient P<i> in fold ``folds[i % len(folds)]``, every label column."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_nodules):
        patient, fold = f"P{i:02d}", int(folds[i % len(folds)])
        labels = {f"label_msunet_{c}": int(rng.integers(0, 2)) for c in CHARACTERISTIC_LABELS}
        labels.update(label=i % 2, label_mtnet_malignancy=i % 2, label_mtcnn_malignancy=i % 2,
                      label_texture3=i % 3)
        base = {"nodule_key": f"1.2.{i}/1", "patient_id": patient, "series_uid": f"1.2.{i}", "nodule_id": 1,
                "fold": fold, "source_spacing_z_mm": 1.25, "source_spacing_y_mm": 0.7, "source_spacing_x_mm": 0.7,
                "centre_z_mm": -100.0 - i, "centre_y_mm": 10.0 + i, "centre_x_mm": 20.0 - i,
                "diameter_mm": 4.0 + 3 * i, "malignancy": 1.5 + i % 4, "margin": 2.0 + i % 3, "texture": 5.0,
                "calcification": 6.0, **labels}
        for s in range(slabs_per_nodule):
            rows.append({**base, "kind": "nodule", "slice_offset": 4 * s - 2 * slabs_per_nodule,
                         "slab_spacing_z_mm": 1.0})
        for e in range(empty_per_nodule):
            rows.append({**base, "kind": "empty", "slice_offset": 10 + e, "label": -1, "slab_spacing_z_mm": 1.0})
    return rows


def write_store(path: Path, info: PatchGeometryInfo, rows: list[dict[str, Any]], seed: int = 0) -> Path:
    """A patch store of ``rows``: a ball per nodule patch (radius growing with the row), empty patches blank."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    spatial = info.patch_shape
    for k, row in enumerate(rows):
        if row["kind"] == "empty":
            image, mask = rng.normal(0.2, 0.05, spatial).clip(0, 1).astype(np.float32), np.zeros(spatial, bool)
        else:
            image, mask = blob_patch(spatial, 2.0 + k % 4, rng)
        images.append(image)
        masks.append(mask)
    mask_arr = np.stack(masks)
    write_patch_store(path, info, [PatchBatch(np.stack(images), mask_arr, mask_arr.astype(np.float32), rows)],
                      attrs={"dataset": "synthetic balls"})
    return path


def fake_run(workdir: Path, model: str, fold: int | None, store_rel: str, *,
             model_overrides: Mapping[str, Any] | None = None, config_overrides: Mapping[str, Any] | None = None,
             seed: int = 0, weights_file: str = "model.pt") -> Path:
    """A complete run folder of ``model`` with random weights (tiny: the spec's ``test_overrides``),
    written with nodulekit.training's own functions (config, run.json, checkpoint)."""
    import torch

    from nodulekit.models.registry import get_spec
    from nodulekit.training.checkpoint import save_checkpoint
    from nodulekit.training.config import deep_merge, resolve_config, save_config
    from nodulekit.training.runs import (CONFIG_TOML, RunRecord, environment, new_run_dir, store_record,
                                         utc_now)

    spec = get_spec(model)
    model_table = deep_merge(dict(spec.test_overrides), dict(model_overrides or {}))
    config = resolve_config([spec.default_config],
                            overrides={"model": model_table, "data": {"stores": [store_rel]},
                                       **dict(config_overrides or {})})
    run_dir = new_run_dir(workdir, model, fold)
    save_config(run_dir / CONFIG_TOML, config)
    torch.manual_seed(seed)
    module = spec.factory(config["model"])
    RunRecord(run_dir).update(model=model, fold=fold, status="complete", started_utc=utc_now(),
                              finished_utc=utc_now(), stores={store_rel: store_record(workdir / store_rel, workdir)},
                              config=CONFIG_TOML, environment=environment())
    path = run_dir / weights_file
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": module.state_dict(), "phase": "test", "epoch": 0, "step": 0, "metric": None,
                           "value": None, "config": config})
    return run_dir
