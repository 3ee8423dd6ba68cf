"""The patch store schema: round trip, random reads in any order, parts, clear errors."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from nodulekit.errors import InputFileError
from nodulekit.io.patch_store import (PatchBatch, PatchGeometryInfo, open_patch_store, read_patch_store,
                                      write_patch_store)

INFO = PatchGeometryInfo("3d", (4, 6, 6), (1.0, 1.0, 1.0), (-1000.0, 400.0), "01", "mtcnn", 0.5)


def make_batch(n: int, start: int, rng: np.random.Generator) -> PatchBatch:
    images = rng.random((n, *INFO.patch_shape), dtype=np.float32)
    agreement = rng.random((n, *INFO.patch_shape)).astype(np.float32)
    rows = [{"nodule_key": f"s/{start + i}", "patient_id": f"P{(start + i) % 3}", "series_uid": "s",
             "nodule_id": start + i, "fold": (start + i) % 2, "label": 1, "kind": "nodule", "slice_offset": 0,
             "source_spacing_z_mm": 2.5, "source_spacing_y_mm": 0.7, "source_spacing_x_mm": 0.7}
            for i in range(n)]
    return PatchBatch(images, agreement >= 0.5, agreement, rows)


def test_round_trip_from_batches_and_parts(tmp_path: Path):
    rng = np.random.default_rng(0)
    first, second = make_batch(3, 0, rng), make_batch(2, 3, rng)
    part = tmp_path / "part.h5"
    write_patch_store(part, INFO, [second])
    n = write_patch_store(tmp_path / "all.h5", INFO, [first, part], attrs={"extra": "x"})
    assert n == 5
    back = read_patch_store(tmp_path / "all.h5")
    np.testing.assert_array_equal(back.images, np.concatenate([first.images, second.images]))
    np.testing.assert_array_equal(back.masks, np.concatenate([first.masks, second.masks]))
    assert [r["nodule_id"] for r in back.rows] == [0, 1, 2, 3, 4]
    with open_patch_store(tmp_path / "all.h5") as store:
        assert store.info == INFO
        assert store.attrs["extra"] == "x"
        assert store.table["fold"].dtype == np.int64


def test_random_read_keeps_the_requested_order_and_repeats(tmp_path: Path):
    batch = make_batch(6, 0, np.random.default_rng(1))
    write_patch_store(tmp_path / "p.h5", INFO, [batch])
    with open_patch_store(tmp_path / "p.h5") as store:
        got = store.read([4, 0, 4, 2], arrays=("images",))
    np.testing.assert_array_equal(got["images"], batch.images[[4, 0, 4, 2]])


def test_one_patch_per_chunk(tmp_path: Path):
    write_patch_store(tmp_path / "p.h5", INFO, [make_batch(2, 0, np.random.default_rng(2))])
    with h5py.File(tmp_path / "p.h5") as f:
        assert f["images"].chunks == (1, *INFO.patch_shape)


def test_wrong_shape_and_non_store_are_clear_errors(tmp_path: Path):
    bad = PatchBatch(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2), bool),
                     np.zeros((1, 2, 2, 2), np.float32), [{}])
    with pytest.raises(InputFileError, match="shape"):
        write_patch_store(tmp_path / "p.h5", INFO, [bad])
    assert not (tmp_path / "p.h5").exists()
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(InputFileError, match="x.h5"):
        open_patch_store(tmp_path / "x.h5")
