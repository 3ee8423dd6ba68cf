"""Stage crop/<preset> on the tiny phantom: stores, cache, resume, status, missing images, reader masks."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from nodulekit.errors import NodulekitError
from nodulekit.io import nodule_store
from nodulekit.io.patch_store import READER_SLOTS, REQUIRED_COLUMNS, open_patch_store
from nodulekit.patches.presets import resolve_geometry
from nodulekit.pipeline import CODE_VERSIONS, pipeline_status, stage_status
from nodulekit.stages.consensus import ConsensusParams, consensus_label
from nodulekit.stages.crop import CropParams, crop, missing_lines
from nodulekit.stages.ingest import IngestParams, ingest_lidc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_phantom):
    workdir = tmp_path_factory.mktemp("crop-stage")
    ingest_lidc(workdir, IngestParams(root=tiny_phantom))
    consensus_label(workdir, ConsensusParams(folds=2))
    return workdir


def test_mtnet_store_then_rerun_is_a_no_op_and_a_size_change_recrops(workdir):
    params = CropParams(resolve_geometry("mtnet"))
    first = crop(workdir, params)
    assert not first.up_to_date and first.n_processed == first.summary["n_scans"] > 0
    path = workdir / "crop" / "mtnet" / "patches.h5"
    with open_patch_store(path) as store:
        assert len(store) == first.summary["n_patches"] > 0
        assert store.info.geometry == "2d" and store.info.patch_shape == (64, 64) and store.info.spacing_zyx_mm is None
        table = store.table
        for col in (*REQUIRED_COLUMNS, "centre_z_mm", "in_cohort", "cohort_mtnet", "label_mtnet_malignancy",
                    "malignancy", "diameter_mm"):
            assert col in table, col
        assert table["cohort_mtnet"].all() and table["in_cohort"].all()
        np.testing.assert_array_equal(table["label"], table["label_mtnet_malignancy"])
        arrays = store.read([0, len(store) - 1])
        assert arrays["masks"].any(axis=(1, 2)).all() and 0 <= arrays["images"].min() <= arrays["images"].max() <= 1
        assert store.attrs["cohort"] == "mtnet" and store.attrs["label_column"] == "label_mtnet_malignancy"
    assert not (workdir / "crop" / "mtnet" / "parts").exists()  # assembled, then removed
    assert first.summary["missing_images"]["n_series"] == 0

    again = crop(workdir, params)
    assert again.up_to_date and again.summary == first.summary
    assert stage_status(workdir, "crop/mtnet").state == "up to date"
    assert "crop/mtnet" in [s.stage for s in pipeline_status(workdir)]

    bigger = crop(workdir, CropParams(resolve_geometry("mtnet", size=48)))
    assert not bigger.up_to_date
    with open_patch_store(path) as store:
        assert store.info.patch_shape == (48, 48)


def test_3d_preset_resumes_after_an_interruption(workdir):
    params = CropParams(resolve_geometry("cascade"))

    def stop():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        crop(workdir, params, on_advance=stop)
    status = stage_status(workdir, "crop/cascade")
    assert status.state == "partial" and status.n_done == 1 and status.n_items == 2
    resumed = crop(workdir, params)
    assert resumed.n_processed == 1 and resumed.summary["n_nodules"] == 2
    with open_patch_store(workdir / "crop" / "cascade" / "patches.h5") as store:
        assert store.info.patch_shape == (32, 32, 32) and store.info.spacing_zyx_mm == (1.0, 0.7, 0.7)
        first = store.read()
        keys = store.table["nodule_key"].tolist()
    crop(workdir, params, force=True)
    with open_patch_store(workdir / "crop" / "cascade" / "patches.h5") as store:
        assert store.table["nodule_key"].tolist() == keys
        np.testing.assert_array_equal(store.read()["images"], first["images"])


def test_missing_images_are_listed_and_the_rest_is_cropped(workdir, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy)
    params = CropParams(resolve_geometry("mtnet"))
    summary = crop(copy, params, force=True).summary
    series = sorted(set(_series(copy / "crop" / "mtnet" / "patches.h5")))  # the cohort's scans
    assert len(series) == 2
    (copy / "ingest" / "volumes" / f"{series[0]}.h5").unlink()
    result = crop(copy, params, force=True)
    missing = result.summary["missing_images"]
    assert missing["n_series"] == 1 and missing["series"][0]["series_uid"] == series[0]
    (line,) = missing_lines(missing["series"])
    assert series[0] in line and f"{series[0]}.h5" in line and "no volume store" in line
    assert result.summary["n_nodules"] == summary["n_nodules"] - missing["n_nodules"] > 0
    for uid in series[1:]:
        (copy / "ingest" / "volumes" / f"{uid}.h5").unlink()
    with pytest.raises(NodulekitError, match="no images for any of the .* --annotations-only"):
        crop(copy, params, force=True)


def _series(path):
    with open_patch_store(path) as store:
        return store.table["series_uid"].tolist()


def test_unknown_cohort_is_a_clear_error(workdir):
    with pytest.raises(NodulekitError, match="cohort_nope"):
        crop(workdir, CropParams(resolve_geometry("mtnet", cohort="nope")))


# -- reader masks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["mtnet", "dgnet", "mtcnn", "msunet", "cascade"])  # 2d, 2d + empty, views9, 2.5d, 3d
def test_every_geometry_stores_each_nodules_reads(workdir, preset):
    geometry = resolve_geometry(preset, cohort="all")
    crop(workdir, CropParams(geometry))
    nodules = nodule_store.read_table(workdir / "consensus-label" / "nodules.h5")
    n_reads = {f"{s}/{i}": int(n) for s, i, n in zip(nodules["series_uid"], nodules["nodule_id"], nodules["n_reads"])}
    with open_patch_store(workdir / "crop" / preset / "patches.h5") as store:
        assert store.has_reader_masks
        arrays = store.read(arrays=("masks", "agreement", "reader_masks"))
        counts = store.table["n_reader_masks"]
        keys, kinds = store.table["nodule_key"], store.table["kind"]
    assert arrays["reader_masks"].shape == (len(keys), READER_SLOTS, *geometry.patch_shape)
    assert [int(c) for c in counts] == [n_reads[k] for k in keys] and max(counts) > 1
    for readers, count, kind in zip(arrays["reader_masks"], counts, kinds):
        assert not readers[count:].any()
        assert readers[:count].any() == (kind == "nodule")
    if preset in ("mtnet", "dgnet"):  # native slices: exact pixels, so the agreement is the mean of the reads
        total = arrays["reader_masks"].sum(axis=1)
        expand = (slice(None), *([None] * len(geometry.patch_shape)))
        np.testing.assert_allclose(arrays["agreement"] * counts[expand], total, atol=1e-5)


def test_a_store_of_crop_code_version_1_is_stale_and_recropped_with_reader_masks(workdir, monkeypatch):
    params = CropParams(resolve_geometry("munet3d"))
    current = CODE_VERSIONS["crop"]
    monkeypatch.setitem(CODE_VERSIONS, "crop", 1)
    crop(workdir, params)
    path = workdir / "crop" / "munet3d" / "patches.h5"
    with h5py.File(path, "a") as f:  # what version 1 wrote: no reader masks, no count column
        del f["reader_masks"], f["table"]["n_reader_masks"]
        f.attrs["columns_json"] = json.dumps([c for c in json.loads(f.attrs["columns_json"]) if c != "n_reader_masks"])
    with open_patch_store(path) as store:
        assert not store.has_reader_masks and len(store.read([0])["masks"]) == 1  # old stores still read
    monkeypatch.setitem(CODE_VERSIONS, "crop", current)
    status = stage_status(workdir, "crop/munet3d")
    assert status.state == "stale" and f"code version 1 -> {current}" in status.reasons
    assert not crop(workdir, params).up_to_date
    with open_patch_store(path) as store:
        assert store.has_reader_masks and "n_reader_masks" in store.table
