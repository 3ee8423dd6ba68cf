"""Stage augment/<preset> on toy crop stores (written here, not by the crop stage)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nodulekit.errors import NodulekitError
from nodulekit.io.patch_store import PatchBatch, PatchGeometryInfo, open_patch_store, read_patch_store, write_patch_store
from nodulekit.patches.augment import split_by_fold
from nodulekit.pipeline import StageRun, StageSpec, stage_status
from nodulekit.stages import augment as augment_stage
from nodulekit.stages.augment import AugmentParams, augment


def make_crop_stage(workdir: Path, preset: str = "mtcnn", geometry: str = "2d", shape: tuple = (16, 16),
                    n: int = 8, folds: int = 4, crop_params: dict | None = None, readers: bool = False) -> None:
    """A toy upstream ``crop/<preset>``: blobs whose agreement = image and mask = image >= 0.5
    (``readers``: with reader masks, patch i has i % 4 + 1 reads, read k = image >= 0.3 + 0.1 k)."""
    rng = np.random.default_rng(0)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape[-2:]], indexing="ij")
    images = np.empty((n, *shape), np.float32)
    for i in range(n):
        r2 = sum((g - s / 2 - rng.uniform(-2, 2)) ** 2 for g, s in zip(grids, shape[-2:]))
        images[i] = np.exp(-r2 / (2 * (shape[-1] / 5) ** 2))
    rows = [{"nodule_key": f"s{i}/1", "patient_id": f"P{i // 2}", "series_uid": f"s{i}", "nodule_id": 1,
             "fold": (i // 2) % folds, "label": i % 2, "kind": "nodule", "slice_offset": 0,
             "source_spacing_z_mm": 2.5, "source_spacing_y_mm": 0.7, "source_spacing_x_mm": 0.7} for i in range(n)]
    info = PatchGeometryInfo(geometry, shape, (1.0, 1.0, 1.0), (-1000.0, 400.0), "01", preset, 0.5)
    with StageRun(workdir, StageSpec(f"crop/{preset}", 1, crop_params or {"size": shape[-1]})) as run:
        run.start(n_items=1)
        reader_masks = None
        if readers:
            reader_masks = np.stack([images >= 0.3 + 0.1 * k for k in range(4)], axis=1)
            for i, row in enumerate(rows):
                row["n_reader_masks"] = i % 4 + 1
                reader_masks[i, i % 4 + 1:] = False
        write_patch_store(run.dir / "patches.h5", info,
                          [PatchBatch(images, images >= 0.5, images.copy(), rows, reader_masks)],
                          attrs={**run.provenance().as_attrs(), "params_json": json.dumps(crop_params or {})})
        run.finish(outputs=["patches.h5"])


def store(workdir: Path, preset: str = "mtcnn") -> PatchBatch:
    return read_patch_store(workdir / "augment" / preset / "patches.h5")


def test_store_holds_originals_and_aligned_copies_with_their_params(tmp_path):
    make_crop_stage(tmp_path)
    result = augment(tmp_path, AugmentParams("mtcnn", seed=1, held_out_folds=(3,)))
    out = store(tmp_path)
    source = read_patch_store(tmp_path / "crop" / "mtcnn" / "patches.h5")
    # folds 0-2: 6 originals x (1 + 4); fold 3 held out: 2 originals, no copies
    assert len(out) == 6 * 5 + 2 == result.report["n_patches"]
    assert result.report["folds"]["3"] == {"originals": 2, "copies": 0}
    for row, image in zip(out.rows, out.images):
        src = source.rows[row["source_index"]]
        assert (row["fold"], row["patient_id"], row["label"]) == (src["fold"], src["patient_id"], src["label"])
        params = json.loads(row["augmentation"])
        if row["is_augmented"]:
            assert [o["op"] for o in params["ops"]] == ["translate", "rot90", "flip"] and row["copy_index"] > 0
        else:
            assert params == {} and row["copy_index"] == 0
            np.testing.assert_array_equal(image, source.images[row["source_index"]])
    np.testing.assert_array_equal(out.masks, out.agreement >= 0.5)
    np.testing.assert_array_equal(out.masks, out.images >= 0.5)
    with open_patch_store(tmp_path / "augment" / "mtcnn" / "patches.h5") as s:
        assert json.loads(s.attrs["held_out_folds_json"]) == [3] and "crop_nodulekit_fingerprint" in s.attrs
        assert s.info.geometry == "2d" and s.table["is_augmented"].dtype == bool


def test_no_augmented_patch_from_a_validation_or_test_fold(tmp_path):
    make_crop_stage(tmp_path, n=12, folds=3)
    augment(tmp_path, AugmentParams("mtcnn", seed=0, held_out_folds=(2,)))
    with open_patch_store(tmp_path / "augment" / "mtcnn" / "patches.h5") as s:
        table = s.table
    augmented, folds, patients = table["is_augmented"], table["fold"], table["patient_id"]
    assert not augmented[folds == 2].any()  # held-out (test) fold: never copied
    for k in (0, 1):  # cross-validation over the training folds
        split = split_by_fold(table, [k], held_out_folds=[2])
        assert not augmented[split.validation].any() and set(folds[split.validation]) == {k}
        assert not set(patients[split.train]) & set(patients[split.validation])  # by patient
        assert augmented[split.train].any()


def test_deterministic_rerun_noop_and_seed_or_factor_redo(tmp_path):
    for workdir in (tmp_path / "a", tmp_path / "b"):
        make_crop_stage(workdir)
        assert not augment(workdir, AugmentParams("mtcnn", seed=5)).up_to_date
    a, b = store(tmp_path / "a"), store(tmp_path / "b")
    np.testing.assert_array_equal(a.images, b.images)
    assert [r["augmentation"] for r in a.rows] == [r["augmentation"] for r in b.rows]
    again = augment(tmp_path / "a", AugmentParams("mtcnn", seed=5))
    assert again.up_to_date and again.n_chunks_processed == 0
    assert stage_status(tmp_path / "a", "augment/mtcnn").state == "up to date"
    reseeded = augment(tmp_path / "a", AugmentParams("mtcnn", seed=6))
    assert not reseeded.up_to_date and not np.array_equal(store(tmp_path / "a").images, a.images)
    assert len(store(tmp_path / "a")) == len(a)
    refactored = augment(tmp_path / "a", AugmentParams("mtcnn", seed=6, factor=2))
    assert not refactored.up_to_date and len(store(tmp_path / "a")) == 8 * 3


def test_upstream_change_reruns_and_missing_crop_is_a_clear_error(tmp_path):
    with pytest.raises(NodulekitError, match="nodulekit crop --for mtcnn"):
        augment(tmp_path, AugmentParams("mtcnn"))
    make_crop_stage(tmp_path)
    augment(tmp_path, AugmentParams("mtcnn"))
    make_crop_stage(tmp_path, shape=(20, 20), crop_params={"size": 20})
    assert stage_status(tmp_path, "augment/mtcnn").state == "stale"
    assert not augment(tmp_path, AugmentParams("mtcnn")).up_to_date
    assert store(tmp_path).images.shape[1:] == (20, 20)
    with pytest.raises(NodulekitError, match="--val-fold 7"):
        augment(tmp_path, AugmentParams("mtcnn", held_out_folds=(7,)))
    with pytest.raises(NodulekitError, match="--recipe"):
        augment(tmp_path, AugmentParams("mtcnn", recipe="nope"))


def test_interrupted_run_resumes_chunks_and_ends_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(augment_stage, "MAX_CHUNK_SOURCES", 3)  # 8 sources -> 3 chunks
    make_crop_stage(tmp_path / "full")
    augment(tmp_path / "full", AugmentParams("mtcnn", seed=2))
    make_crop_stage(tmp_path / "cut")
    calls = []

    def stop_after_first() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        augment(tmp_path / "cut", AugmentParams("mtcnn", seed=2), on_advance=stop_after_first)
    status = stage_status(tmp_path / "cut", "augment/mtcnn")
    assert status.state == "partial" and (status.n_done, status.n_items) == (1, 3)
    resumed = augment(tmp_path / "cut", AugmentParams("mtcnn", seed=2))
    assert resumed.n_chunks_processed == 2
    np.testing.assert_array_equal(store(tmp_path / "cut").images, store(tmp_path / "full").images)
    assert not (tmp_path / "cut" / "augment" / "mtcnn" / "parts").exists()


@pytest.mark.parametrize("geometry,shape,preset", [("views9", (9, 16, 16), "mtcnn"), ("3d", (8, 16, 16), "msunet"),
                                                   ("2.5d", (4, 16, 16), "msunet")])
def test_other_geometries(tmp_path, geometry, shape, preset):
    make_crop_stage(tmp_path, preset=preset, geometry=geometry, shape=shape, n=4)
    result = augment(tmp_path, AugmentParams(preset, factor=2, ops="flip,rot90:1" if geometry == "3d" else None))
    out = store(tmp_path, preset)
    assert out.images.shape == (4 * 3, *shape) and result.report["n_copies"] == 8
    np.testing.assert_array_equal(out.masks, out.agreement >= 0.5)
    params = [json.loads(r["augmentation"]) for r in out.rows if r["is_augmented"]]
    assert all(len(p["views"]) == 9 for p in params) if geometry == "views9" else all("ops" in p for p in params)


@pytest.mark.parametrize("readers", [True, False])
def test_originals_keep_their_reader_masks_and_copies_carry_none(tmp_path, readers):
    make_crop_stage(tmp_path, readers=readers)
    augment(tmp_path, AugmentParams("mtcnn", seed=1, held_out_folds=(3,)))
    out, source = store(tmp_path), read_patch_store(tmp_path / "crop" / "mtcnn" / "patches.h5")
    if not readers:
        assert out.reader_masks is None and source.reader_masks is None
        return
    copies = np.array([r["is_augmented"] for r in out.rows])
    assert copies.any() and out.reader_masks.shape == (len(out), 4, 16, 16)
    assert not out.reader_masks[copies].any() and all(r["n_reader_masks"] == 0 for r in np.array(out.rows)[copies])
    for row, masks in zip(np.array(out.rows)[~copies], out.reader_masks[~copies]):
        np.testing.assert_array_equal(masks, source.reader_masks[row["source_index"]])
        assert row["n_reader_masks"] == source.rows[row["source_index"]]["n_reader_masks"]
