"""The patch store schema: round trip, random reads in any order, parts, clear errors, reader masks."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from nodulekit.errors import InputFileError
from nodulekit.io.patch_store import (ARRAYS, READER_SLOTS, PatchBatch, PatchGeometryInfo, open_patch_store,
                                      read_patch_store, write_patch_store)

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


# -- reader masks (optional dataset) ----------------------------------------------------------------
def with_readers(batch: PatchBatch, n_reads: list[int], rng: np.random.Generator) -> PatchBatch:
    """``batch`` with random reader masks: patch i has ``n_reads[i]`` reads, the rows after them empty."""
    width = max(n_reads)
    readers = rng.random((len(batch), width, *INFO.patch_shape)) < 0.3
    for i, n in enumerate(n_reads):
        readers[i, n:] = False
        batch.rows[i]["n_reader_masks"] = n
    batch.reader_masks = readers
    return batch


def test_reader_masks_round_trip_padded_to_the_widest_part(tmp_path: Path):
    rng = np.random.default_rng(3)
    first = with_readers(make_batch(3, 0, rng), [1, 4, 2], rng)
    second = with_readers(make_batch(2, 3, rng), [5, 0], rng)  # one nodule with more reads than LIDC's 4
    part = tmp_path / "part.h5"
    write_patch_store(part, INFO, [second])
    with h5py.File(part) as f:  # a part alone: padded to READER_SLOTS
        assert f["reader_masks"].shape == (2, max(5, READER_SLOTS), *INFO.patch_shape)
    write_patch_store(tmp_path / "all.h5", INFO, [first, part])
    with h5py.File(tmp_path / "all.h5") as f:
        dataset = f["reader_masks"]
        assert dataset.shape == (5, 5, *INFO.patch_shape) and dataset.dtype == bool
        assert dataset.chunks == (1, 5, *INFO.patch_shape)
        assert dataset.compression_opts == f["masks"].compression_opts and "32001" in dataset._filters  # Blosc
    back = read_patch_store(tmp_path / "all.h5")
    assert [r["n_reader_masks"] for r in back.rows] == [1, 4, 2, 5, 0]
    np.testing.assert_array_equal(back.reader_masks[:3, :4], first.reader_masks)
    np.testing.assert_array_equal(back.reader_masks[3:], second.reader_masks)
    assert not back.reader_masks[:3, 4].any()
    with open_patch_store(tmp_path / "all.h5") as store:
        assert store.has_reader_masks
        got = store.read([4, 1], arrays=("reader_masks", "masks"))
        np.testing.assert_array_equal(got["reader_masks"], back.reader_masks[[4, 1]])
        assert set(store.read([0])) == set(ARRAYS)  # the default arrays stay the three


def test_stores_without_reader_masks_still_read(tmp_path: Path):
    write_patch_store(tmp_path / "p.h5", INFO, [make_batch(2, 0, np.random.default_rng(4))])
    with open_patch_store(tmp_path / "p.h5") as store:
        assert not store.has_reader_masks and len(store.read([0, 1])["images"]) == 2
        with pytest.raises(InputFileError, match="no reader masks"):
            store.read([0], arrays=("reader_masks",))
    assert read_patch_store(tmp_path / "p.h5").reader_masks is None


def test_parts_with_and_without_reader_masks_or_without_counts_are_errors(tmp_path: Path):
    rng = np.random.default_rng(5)
    with pytest.raises(InputFileError, match="some parts have reader masks"):
        write_patch_store(tmp_path / "p.h5", INFO, [with_readers(make_batch(1, 0, rng), [2], rng),
                                                     make_batch(1, 1, rng)])
    uncounted = with_readers(make_batch(1, 0, rng), [2], rng)
    del uncounted.rows[0]["n_reader_masks"]
    with pytest.raises(ValueError, match="n_reader_masks"):
        write_patch_store(tmp_path / "p.h5", INFO, [uncounted])
    assert not (tmp_path / "p.h5").exists()
