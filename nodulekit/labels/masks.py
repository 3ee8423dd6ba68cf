"""Rasterise one read's contours into a filled boolean mask, exactly as pylidc does.

This reproduces pylidc's ``Annotation.boolean_mask`` and ``Annotation.bbox_matrix`` (see
../shared/LIDC-FACTS.md section 3.5) in nodulekit's axis order (z, y, x) instead of pylidc's
(row, col, slice), without the ORM and faster:

1. each contour's slice index is ``k = argmin |z_positions_mm - z_mm|``;
2. for each **inclusion** contour (in list order): close the polygon, build a
   :class:`matplotlib.path.Path` from the (row, col) = (y, x) pairs, test the pixel centres
   (row i, col j) with ``contains_points`` and OR the result into slice k; then, unless
   ``include_contour_points``, clear the contour's own points;
3. for each **exclusion** contour: AND NOT ``contains_points`` into slice k and always clear the
   contour's points.

Speed: only the pixels inside a contour's own (inclusive) bounding box are tested; pixels outside
it cannot be inside the polygon, so the result is identical to testing the whole box.

A mask covers an inclusive box ``bbox_zyx`` (int array (3, 2): rows z, y, x; columns first,
last). Pass the same explicit box to several reads to get masks in one shared frame (for
consensus); parts of a contour that fall outside the box are ignored (pylidc would wrap
negative indices there).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.path import Path as MplPath

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
    ks = [slice_index(z_positions_mm, c.z_mm) for c in contours]
    pts = np.concatenate([_points_yx(c) for c in contours])
    lo = np.array([min(ks), *pts.min(axis=0)], dtype=np.int64)
    hi = np.array([max(ks), *pts.max(axis=0)], dtype=np.int64)
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


def _polygon_fill(points_yx: np.ndarray, lo_yx: np.ndarray, shape_yx: tuple[int, int]
                  ) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """``contains_points`` of the closed polygon, tested in its bounding box clipped to the frame.

    Returns the bool window and the (y, x) slices of the frame it belongs to, or None when the
    polygon's box misses the frame. The frame starts at absolute pixel ``lo_yx``.
    """
    if (points_yx[0] != points_yx[-1]).any():
        points_yx = np.vstack([points_yx, points_yx[:1]])
    p_lo = np.maximum(points_yx.min(axis=0), lo_yx)
    p_hi = np.minimum(points_yx.max(axis=0), lo_yx + np.asarray(shape_yx) - 1)
    if (p_hi < p_lo).any():
        return None
    ii, jj = np.mgrid[p_lo[0]:p_hi[0] + 1, p_lo[1]:p_hi[1] + 1]
    inside = MplPath(points_yx, closed=True).contains_points(np.c_[ii.ravel(), jj.ravel()])
    window = (slice(p_lo[0] - lo_yx[0], p_hi[0] - lo_yx[0] + 1),
              slice(p_lo[1] - lo_yx[1], p_hi[1] - lo_yx[1] + 1))
    return inside.reshape(ii.shape), window


def _clear_points(plane: np.ndarray, points_yx: np.ndarray, lo_yx: np.ndarray) -> None:
    """Set the contour's own pixels to False (points outside the frame are ignored)."""
    rel = points_yx - lo_yx
    ok = (rel >= 0).all(axis=1) & (rel[:, 0] < plane.shape[0]) & (rel[:, 1] < plane.shape[1])
    plane[rel[ok, 0], rel[ok, 1]] = False


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
    bbox_zyx = np.asarray(bbox_zyx, dtype=np.int64)
    size = bbox_zyx[:, 1] - bbox_zyx[:, 0] + 1
    mask = np.zeros(tuple(int(s) for s in size), dtype=bool)
    lo_yx = bbox_zyx[1:, 0]
    for inclusion_pass in (True, False):
        for contour in contours:
            if contour.inclusion != inclusion_pass:
                continue
            k = slice_index(z_positions_mm, contour.z_mm) - int(bbox_zyx[0, 0])
            if not 0 <= k < mask.shape[0]:
                continue
            pts = _points_yx(contour)
            plane = mask[k]
            filled = _polygon_fill(pts, lo_yx, plane.shape)
            if filled is not None:
                inside, window = filled
                if inclusion_pass:
                    plane[window] |= inside
                else:
                    plane[window] &= ~inside
            if not (inclusion_pass and include_contour_points):
                _clear_points(plane, pts, lo_yx)
    return mask


def paste_mask(volume_mask: np.ndarray, mask: np.ndarray, bbox_zyx: np.ndarray) -> np.ndarray:
    """OR a box mask into a full-volume bool array in place (returns ``volume_mask``)."""
    b = np.asarray(bbox_zyx)
    volume_mask[b[0, 0]:b[0, 1] + 1, b[1, 0]:b[1, 1] + 1, b[2, 0]:b[2, 1] + 1] |= mask
    return volume_mask
