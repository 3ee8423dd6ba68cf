"""One scan's reads -> nodules: grouping, masks, measures and characteristics (no cohorts).

:func:`scan_nodules` is the per-scan work of the ``consensus-label`` stage and of the benchmark.
Only outlined reads (kind ``nodule``) become nodules; small nodules and non-nodules are counted.
A contour's slice is the one ingest matched it to (``contour_slice``); contours that matched no
slice are dropped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from nodulekit.io.nodule_store import NoduleRecord
from nodulekit.io.reads import CHARACTERISTICS, Contour, NoduleRead
from nodulekit.io.stores import ScanAnnotations
from nodulekit.labels.consensus import aggregate_characteristics, measure, nodules_masks
from nodulekit.labels.grouping import group_reads


@dataclass
class ScanNodules:
    records: list[NoduleRecord]
    rows: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)


def outlined_reads(scan: ScanAnnotations) -> tuple[list[int], list[NoduleRead], dict[str, int]]:
    """(indices into scan.reads.reads, reads with slice-snapped contours, counts of what was left out)."""
    z_positions = np.asarray(scan.geometry["z_positions_mm"], dtype=np.float64)
    contour_slice = np.asarray(scan.contour_slice)
    counts = {"small_nodule": 0, "non_nodule": 0, "unmatched_contours": 0, "reads_without_contours": 0}
    keep_index, keep = [], []
    c = 0
    for i, read in enumerate(scan.reads.reads):
        slices = contour_slice[c:c + len(read.contours)] if len(contour_slice) else np.full(len(read.contours), -2)
        c += len(read.contours)
        if read.kind != "nodule":
            counts[read.kind] = counts.get(read.kind, 0) + 1
            continue
        contours: list[Contour] = []
        for contour, k in zip(read.contours, slices):
            if k == -1:
                counts["unmatched_contours"] += 1
                continue
            if k >= 0 and contour.z_mm != z_positions[k]:
                # snap to the matched slice's z so read_mask picks exactly that slice
                contour = replace(contour, z_mm=float(z_positions[k]))
            contours.append(contour)
        if not contours:
            counts["reads_without_contours"] += 1
            continue
        keep_index.append(i)
        keep.append(replace(read, contours=contours))
    return keep_index, keep, counts


def scan_row_base(scan: ScanAnnotations, regular_z: bool) -> dict[str, Any]:
    g = scan.geometry
    spacing = np.asarray(g["spacing_zyx_mm"], dtype=np.float64)
    return {"patient_id": scan.patient_id, "series_uid": scan.reads.series_uid,
            "slice_thickness_mm": float(g.get("slice_thickness_mm", np.nan)),
            "slice_spacing_mm": float(spacing[0]), "regular_z": bool(regular_z),
            "has_images": bool(g.get("has_images", False))}


def scan_nodules(scan: ScanAnnotations, *, clevel: float = 0.5, aggregate: str = "median",
                 include_contour_points: bool = False, tol_mm: float | None = None,
                 regular_z: bool = True) -> ScanNodules:
    """Nodules of one scan with their masks (records) and table rows (no cohort columns yet).

    ``tol_mm``: grouping tolerance; default the scan's slice spacing (``spacing_zyx_mm[0]``).
    """
    g = scan.geometry
    z_positions = np.asarray(g["z_positions_mm"], dtype=np.float64)
    spacing = np.asarray(g["spacing_zyx_mm"], dtype=np.float64)
    origin = np.asarray(g["origin_xyz_mm"], dtype=np.float64)
    shape_yx = tuple(int(v) for v in np.asarray(g["shape_zyx"])[1:])
    index, reads, counts = outlined_reads(scan)
    tol = float(spacing[0]) + 1e-6 if tol_mm is None else float(tol_mm)
    grouping = group_reads(reads, float(spacing[2]), tol)
    base = scan_row_base(scan, regular_z)
    records, rows = [], []
    all_masks = nodules_masks([[reads[i].contours for i in members] for members in grouping.groups], z_positions,
                              clevel, include_contour_points=include_contour_points, shape_yx=shape_yx)
    for n, (members, masks) in enumerate(zip(grouping.groups, all_masks), start=1):
        m = measure(masks, spacing, z_positions, origin)
        ratings = np.array([[(reads[i].characteristics or {}).get(c, 0) for c in CHARACTERISTICS]
                            for i in members], dtype=np.int8)
        reader_ids = np.array([-1 if reads[i].reader_id is None else reads[i].reader_id for i in members])
        read_index = np.array([index[i] for i in members])
        records.append(NoduleRecord(scan.reads.series_uid, n, masks.bbox_zyx, masks.consensus, masks.agreement,
                                    masks.reader_masks, read_index, reader_ids, ratings, clevel))
        row = dict(base)
        row.update({
            "nodule_id": n, "n_reads": len(members),
            "n_readers": len(set(reader_ids.tolist())) if grouping.reader_ids_known else len(members),
            "reader_ids": ";".join(map(str, reader_ids.tolist())) if grouping.reader_ids_known else "",
            "read_index": ";".join(map(str, read_index.tolist())),
            "centroid_x_mm": m.centroid_xyz_mm[0], "centroid_y_mm": m.centroid_xyz_mm[1],
            "centroid_z_mm": m.centroid_xyz_mm[2],
            "centroid_zyx_vox": ";".join(f"{v:.2f}" for v in m.centroid_zyx_vox),
            "bbox_zyx": ";".join(f"{lo}-{hi}" for lo, hi in masks.bbox_zyx.tolist()),
            "diameter_mm": m.diameter_mm, "volume_mm3": m.volume_mm3, "consensus_voxels": m.consensus_voxels,
            "ambiguous_group": any(set(members) <= set(a.reads) for a in grouping.ambiguous),
        })
        row.update(aggregate_characteristics(ratings, aggregate))
        for j, name in enumerate(CHARACTERISTICS):
            row[f"{name}_readers"] = ";".join(str(int(v)) for v in ratings[:, j])
        rows.append(row)
    report = dict(counts, n_reads=len(reads), n_nodules=len(rows), tol_mm=tol,
                  ambiguous=[{"patient_id": scan.patient_id, "series_uid": scan.reads.series_uid,
                              "read_index": [index[i] for i in a.reads],
                              "split_into": [[index[i] for i in p] for p in a.parts], "reason": a.reason}
                             for a in grouping.ambiguous])
    return ScanNodules(records, rows, report)
