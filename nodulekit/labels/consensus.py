"""One nodule's reads -> reader masks, agreement map, consensus mask and measures.

Frame: the union of the reads' inclusive bounding boxes (:func:`union_bbox_zyx`), exactly as
``pylidc.utils.consensus(anns, clevel, pad=None)`` builds it (LIDC-FACTS 3.7), so every mask of a
nodule shares one (z, y, x) box.

- **Reader mask**: inclusion contours filled, exclusion contours removed
  (:func:`nodulekit.labels.masks.read_mask`). Contour convention: by default the outline pixels
  themselves are left out (pylidc's ``include_contour_points=False``; LIDC readers drew on the
  first pixels outside the nodule); ``include_contour_points=True`` keeps the outline pixels of
  inclusion contours (exclusion outlines are always cleared, as in pylidc).
- **Agreement**: float32, the fraction of the nodule's reads covering each voxel.
- **Consensus**: ``agreement >= clevel`` where ``clevel`` is a fraction of *this nodule's reads*
  (not of 4 readers): with 2 reads 0.5 is the union, with 3 or 4 reads it means >= 2 reads.
  Computed in float64 as pylidc does, so ``1/3 >= 1/3`` behaves identically.
- **Measures** of the consensus mask: centroid (voxel index, and mm), ``diameter_mm`` (largest
  in-plane distance between consensus pixel centres on any one slice, like pylidc's
  per-read ``diameter`` but on the consensus), ``volume_mm3`` (voxels x spacing product). An empty
  consensus (e.g. three disjoint reads at 0.5) gives NaN measures.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import pdist

from nodulekit.io.reads import CHARACTERISTICS, Contour
from nodulekit.labels.masks import read_bbox_zyx, read_mask, union_bbox_zyx

AGGREGATES = ("median", "mean", "mode")


@dataclass
class NoduleMasks:
    """Masks of one nodule in its frame ``bbox_zyx`` (inclusive (3, 2) slice/row/column indices).

    ``reader_masks``: bool (n_reads, nz, ny, nx); ``agreement``: float32 (nz, ny, nx) in [0, 1];
    ``consensus``: bool (nz, ny, nx).
    """

    bbox_zyx: np.ndarray
    reader_masks: np.ndarray
    agreement: np.ndarray
    consensus: np.ndarray


def nodule_masks(reads_contours: Sequence[Sequence[Contour]], z_positions_mm: np.ndarray, clevel: float,
                 *, include_contour_points: bool = False,
                 shape_yx: tuple[int, int] = (512, 512)) -> NoduleMasks:
    """Masks of one nodule from its reads' contours (one list of contours per read)."""
    if not 0.0 < clevel <= 1.0:
        raise ValueError(f"clevel must be in (0, 1], got {clevel}")
    boxes = [read_bbox_zyx(c, z_positions_mm, shape_yx) for c in reads_contours]
    frame = union_bbox_zyx(boxes)
    masks = np.stack([read_mask(c, z_positions_mm, frame, include_contour_points=include_contour_points,
                                shape_yx=shape_yx) for c in reads_contours])
    mean = masks.mean(axis=0, dtype=np.float64)
    return NoduleMasks(frame, masks, mean.astype(np.float32), mean >= clevel)


@dataclass
class NoduleMeasures:
    consensus_voxels: int
    centroid_zyx_vox: tuple[float, float, float]
    centroid_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float


def measure(masks: NoduleMasks, spacing_zyx_mm: Sequence[float], z_positions_mm: np.ndarray,
            origin_xyz_mm: Sequence[float]) -> NoduleMeasures:
    """Measures of the consensus mask (see the module docstring for definitions).

    ``centroid_zyx_vox``: absolute voxel indices (slice, row, column) in the scan.
    ``centroid_xyz_mm``: z interpolated in ``z_positions_mm`` (exact slice z); x, y =
    origin + index x spacing, NaN where the origin is unknown (pylidc database).
    """
    idx = np.argwhere(masks.consensus)
    if len(idx) == 0:
        nan = float("nan")
        return NoduleMeasures(0, (nan, nan, nan), (nan, nan, nan), nan, nan)
    c = idx.mean(axis=0) + masks.bbox_zyx[:, 0]
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    z_mm = float(np.interp(c[0], np.arange(len(z_positions_mm)), z_positions_mm))
    y_mm = float(origin_xyz_mm[1] + c[1] * spacing[1])
    x_mm = float(origin_xyz_mm[0] + c[2] * spacing[2])
    diameter = 0.0
    for k in np.unique(idx[:, 0]):
        yx = idx[idx[:, 0] == k, 1:] * spacing[1:]
        if len(yx) > 1:
            diameter = max(diameter, float(pdist(_hull_candidates(yx)).max()))
    return NoduleMeasures(int(len(idx)), (float(c[0]), float(c[1]), float(c[2])), (x_mm, y_mm, z_mm),
                          diameter, float(len(idx) * np.prod(spacing)))


def _hull_candidates(yx: np.ndarray) -> np.ndarray:
    """Per row, the leftmost and rightmost points: the farthest pair is always among them."""
    order = np.lexsort((yx[:, 1], yx[:, 0]))
    yx = yx[order]
    rows, first = np.unique(yx[:, 0], return_index=True)
    last = np.r_[first[1:] - 1, len(yx) - 1]
    return np.unique(np.concatenate([yx[first], yx[last]]), axis=0)


def aggregate_characteristics(ratings: np.ndarray, how: str = "median") -> dict[str, float]:
    """Aggregate per-reader ratings (int (n_reads, 9), CHARACTERISTICS order, 0 = not rated).

    ``median`` (may be x.5), ``mean`` or ``mode`` (the smallest most frequent value); NaN where no
    reader rated the characteristic.
    """
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    out: dict[str, float] = {}
    ratings = np.asarray(ratings).reshape(-1, len(CHARACTERISTICS))
    for j, name in enumerate(CHARACTERISTICS):
        values = ratings[:, j][ratings[:, j] > 0].astype(np.float64)
        if len(values) == 0:
            out[name] = float("nan")
        elif how == "median":
            out[name] = float(np.median(values))
        elif how == "mean":
            out[name] = float(values.mean())
        else:
            uniq, counts = np.unique(values, return_counts=True)
            out[name] = float(uniq[counts.argmax()])
    return out
