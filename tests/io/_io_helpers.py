"""Small synthetic CT series and reads for the io tests (imported as ``_io_helpers``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from nodulekit.io.reads import CHARACTERISTICS, Contour, NoduleRead, SeriesReads

STUDY_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


def make_hu(n_z: int = 12, n_y: int = 32, n_x: int = 24, seed: int = 0) -> np.ndarray:
    """A random int16 HU volume (z, y, x) with distinct slices (x != y so transposes show)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1200, 1500, size=(n_z, n_y, n_x)).astype(np.int16)


def square(x0: int, y0: int, size: int = 4) -> np.ndarray:
    pts = [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size), (x0, y0)]
    return np.asarray(pts, dtype=np.int32)


def chars(value: int = 3) -> dict[str, int]:
    return {name: min(value, 4) if name == "internalStructure" else value for name in CHARACTERISTICS}


def sample_reads(series_uid: str = SERIES_UID) -> SeriesReads:
    """Three readers: nodules with an exclusion, a small nodule, a non-nodule; reader 3 empty."""
    reads = [
        NoduleRead(0, "Nodule 001", "nodule", [
            Contour(-300.0, True, square(10, 12), f"{series_uid}.1"),
            Contour(-298.75, True, square(10, 12, 5), f"{series_uid}.2"),
            Contour(-298.75, False, square(11, 13, 2), f"{series_uid}.2"),
        ], chars(3)),
        NoduleRead(0, "nn-1", "non_nodule", [Contour(-297.5, True, np.array([[5, 6]], np.int32),
                                                     f"{series_uid}.3")]),
        NoduleRead(1, "IR-7", "nodule", [Contour(1604.5, True, square(2, 3), None)], chars(5)),
        NoduleRead(1, "small-1", "small_nodule", [Contour(-296.25, True, np.array([[7, 8]], np.int32),
                                                          f"{series_uid}.4")]),
        NoduleRead(2, "Nodule 001", "nodule", [Contour(-300.0, True, square(9, 12), f"{series_uid}.1")],
                   chars(2)),
    ]
    return SeriesReads(series_uid=series_uid, study_uid=STUDY_UID, reads=reads, n_readers=4)


def reads_by_reader(series_reads: SeriesReads) -> dict[int | None, list[tuple]]:
    out: dict[int | None, list[tuple]] = {}
    for r in series_reads.reads:
        out.setdefault(r.reader_id, []).append(r.key())
    return {k: sorted(v, key=repr) for k, v in out.items()}


def write_series(out_dir: Path, hu: np.ndarray, **kwargs) -> list[Path]:
    from nodulekit.io.dicom_write import write_ct_series

    defaults = dict(spacing_zyx_mm=(1.25, 0.7, 0.8), origin_xyz_mm=(-170.0, -160.0, -300.0),
                    patient_id="LIDC-IDRI-0001", study_uid=STUDY_UID, series_uid=SERIES_UID)
    defaults.update(kwargs)
    return write_ct_series(out_dir, hu, **defaults)
