"""The store schemas round-trip what they hold."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from nodulekit.errors import InputFileError
from nodulekit.io import stores
from nodulekit.io.reads import Contour, NoduleRead, SeriesReads


def sample_reads() -> SeriesReads:
    square = np.array([[10, 10], [12, 10], [12, 12], [10, 12], [10, 10]], dtype=np.int32)
    reads = [
        NoduleRead(0, "N1", "nodule", [Contour(-100.0, True, square, "1.2.3.1"),
                                        Contour(-97.5, False, square[:3], "1.2.3.2")],
                   {"malignancy": 4, "texture": 5, "calcification": 6}),
        NoduleRead(1, "S1", "small_nodule", [Contour(-95.0, True, square[:1], None)]),
        NoduleRead(None, "NN", "non_nodule", [Contour(-92.5, True, square[1:2], "1.2.3.4")]),
    ]
    return SeriesReads("1.2.3", "1.2", reads, n_readers=2, sources=["a.xml"], notes=["merged"])


def test_reads_round_trip(tmp_path: Path):
    reads = sample_reads()
    slices = np.array([0, 1, 2, -1], dtype=np.int32)
    with h5py.File(tmp_path / "r.h5", "w") as f:
        stores.write_reads(f.create_group("g"), reads, slices)
    with h5py.File(tmp_path / "r.h5", "r") as f:
        back, back_slices = stores.read_reads(f["g"], "1.2.3")
    assert back_slices.tolist() == slices.tolist()
    assert [r.key() for r in back.reads] == [r.key() for r in reads.reads]
    assert [r.reader_id for r in back.reads] == [0, 1, None]
    assert (back.n_readers, back.sources, back.notes, back.study_uid) == (2, ["a.xml"], ["merged"], "1.2")


def test_volume_store_round_trip(tmp_path: Path):
    hu = np.arange(3 * 20 * 30, dtype=np.int16).reshape(3, 20, 30) - 1000
    volume = SimpleNamespace(
        hu_zyx=hu, spacing_zyx_mm=(2.5, 0.7, 0.7), origin_xyz_mm=(-180.0, -170.0, -100.0),
        direction_xyz=(1, 0, 0, 0, 1, 0, 0, 0, 1), z_positions_mm=np.array([-100, -97.5, -95.0]),
        sop_uids=["1.2.3.1", "1.2.3.2", "1.2.3.3"], patient_id="LIDC-IDRI-0001", series_uid="1.2.3",
        study_uid="1.2", slice_thickness_mm=2.5, problems=[{"code": "x", "detail": "y"}], files_used=["a.dcm"])
    path = stores.volume_path(tmp_path, "1.2.3")
    stores.write_volume_store(path, volume, sample_reads(), np.array([0, 1, 2, -1]), {"nodulekit_fingerprint": "f"})
    store = stores.open_volume_store(path)
    assert np.array_equal(store.read_hu(), hu)
    assert np.array_equal(store.read_hu((slice(1, 2), slice(0, 5), slice(3, 4))), hu[1:2, 0:5, 3:4])
    assert store.spacing_zyx_mm == (2.5, 0.7, 0.7)
    assert store.sop_uids == volume.sop_uids
    assert store.attrs["nodulekit_fingerprint"] == "f"
    assert store.problems == [{"code": "x", "detail": "y"}]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_open_volume_store_rejects_other_files(tmp_path: Path):
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(InputFileError, match="bad.h5: cannot open as HDF5"):
        stores.open_volume_store(bad)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(InputFileError, match="not a nodulekit volume store"):
        stores.open_volume_store(tmp_path / "other.h5")
