"""One nodule's reads -> reader masks, agreement map, consensus mask and measures.

Frame: the union of the reads' inclusive bounding boxes (``union_bbox_zyx``), exactly as
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

from nodulekit.io.reads import CHARACTERISTICS, Contour
from nodulekit.labels.masks import nodules_read_masks

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
    return nodules_masks([reads_contours], z_positions_mm, clevel, include_contour_points=include_contour_points,
                         shape_yx=shape_yx)[0]


def nodules_masks(nodules: Sequence[Sequence[Sequence[Contour]]], z_positions_mm: np.ndarray, clevel: float,
                  *, include_contour_points: bool = False,
                  shape_yx: tuple[int, int] = (512, 512)) -> list[NoduleMasks]:
    """:func:`nodule_masks` of several nodules of one scan, their polygons filled in one pass."""
    if not 0.0 < clevel <= 1.0:
        raise ValueError(f"clevel must be in (0, 1], got {clevel}")
    out = []
    for frame, masks in nodules_read_masks(nodules, z_positions_mm, include_contour_points=include_contour_points,
                                           shape_yx=shape_yx):
        # the reads covering each voxel over the number of reads: np.mean's float64 values exactly
        mean = masks.sum(axis=0, dtype=np.uint16) / np.float64(len(masks))
        out.append(NoduleMasks(frame, masks, mean.astype(np.float32), mean >= clevel))
    return out


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
    cons = masks.consensus
    n_vox = int(np.count_nonzero(cons))
    if n_vox == 0:
        nan = float("nan")
        return NoduleMeasures(0, (nan, nan, nan), (nan, nan, nan), nan, nan)
    nz, ny, nx = cons.shape
    # centroid: exact integer sums of the indices, as argwhere(...).mean(axis=0) would give
    c = np.array([float(np.dot(cons.sum(axis=(1, 2)), np.arange(nz))),
                  float(np.dot(cons.sum(axis=(0, 2)), np.arange(ny))),
                  float(np.dot(cons.sum(axis=(0, 1)), np.arange(nx)))]) / n_vox + masks.bbox_zyx[:, 0]
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    z_mm = float(np.interp(c[0], np.arange(len(z_positions_mm)), z_positions_mm))
    y_mm = float(origin_xyz_mm[1] + c[1] * spacing[1])
    x_mm = float(origin_xyz_mm[0] + c[2] * spacing[2])
    return NoduleMeasures(n_vox, (float(c[0]), float(c[1]), float(c[2])), (x_mm, y_mm, z_mm),
                          _max_inplane_diameter(cons, spacing[1:]), float(n_vox * np.prod(spacing)))


def _max_inplane_diameter(cons: np.ndarray, spacing_yx: np.ndarray) -> float:
    """Largest distance between two consensus pixel centres on one slice (mm), 0.0 for single pixels.

    The farthest pair of a pixel set is always among each row's leftmost and rightmost pixels
    (the convex hull's vertices are). For rows i and j the farthest of those four pairs is
    ``max(right_i - left_j, right_j - left_i)`` apart in x, so one (rows x rows) matrix per slice
    is compared, all slices at once.
    """
    nz, ny, nx = cons.shape
    rows = cons.any(axis=2)                                    # (nz, ny)
    keep = rows.any(axis=0)                                    # drop rows empty on every slice
    sub, rows = cons[:, keep], rows[:, keep]
    y = np.flatnonzero(keep) * spacing_yx[0]
    left = sub.argmax(axis=2) * spacing_yx[1]                  # (nz, rows) in mm
    right = (nx - 1 - sub[:, :, ::-1].argmax(axis=2)) * spacing_yx[1]
    dx = np.maximum(right[:, :, None] - left[:, None, :], right[:, None, :] - left[:, :, None])
    d2 = (y[:, None] - y[None, :]) ** 2 + dx ** 2
    d2[~(rows[:, :, None] & rows[:, None, :])] = 0.0
    return float(np.sqrt(d2.max()))


def aggregate_characteristics(ratings: np.ndarray, how: str = "median") -> dict[str, float]:
    """Aggregate per-reader ratings (int (n_reads, 9), CHARACTERISTICS order, 0 = not rated).

    ``median`` (may be x.5), ``mean`` or ``mode`` (the smallest most frequent value); NaN where no
    reader rated the characteristic.
    """
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    out: dict[str, float] = {}
    # plain Python on at most a handful of small integers per column: same values as np.median /
    # np.mean / np.unique (exact integer sums, (a + b) / 2 for even counts), far less overhead
    columns = np.asarray(ratings).reshape(-1, len(CHARACTERISTICS)).T.tolist()
    for name, column in zip(CHARACTERISTICS, columns):
        values = sorted(v for v in column if v > 0)
        k = len(values)
        if k == 0:
            out[name] = float("nan")
        elif how == "median":
            out[name] = float(values[k // 2]) if k % 2 else (values[k // 2 - 1] + values[k // 2]) / 2
        elif how == "mean":
            out[name] = sum(values) / k
        else:
            counts: dict[int, int] = {}
            for v in values:
                counts[v] = counts.get(v, 0) + 1
            best = max(counts.values())
            out[name] = float(min(v for v, c in counts.items() if c == best))
    return out
