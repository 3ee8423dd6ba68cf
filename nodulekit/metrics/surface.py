"""Boundaries and surface distances of binary masks, computed only inside the masks' bounding box.

Boundary (used by every distance metric in nodulekit): a voxel of a mask M is a boundary voxel
when it is foreground and at least one of its face neighbours (4-connectivity in 2D,
6-connectivity in 3D) is background. Voxels outside the array count as background, so a mask
that touches the image border has its border voxels on the boundary. This is
``M & ~binary_erosion(M)`` with scipy's default cross structure and ``border_value=0``, the
same boundary as MONAI (``get_mask_edges`` without sub-voxel spacing) and medpy.
Points are voxel centres; distances are Euclidean in mm with the per-axis spacing.

Speed: a nodule occupies a few thousand voxels of a 300x512x512 scan. Each mask is read once
to find its bounding box (:func:`bounding_box`); the boundaries are computed only in the union
box plus a one-voxel background frame, and nearest boundary points are found with a k-d tree.
All boundary points of both masks lie in that box, so the distances are exact (the crop only
saves time). benchmarks/bench_metrics.py measures it against a plain read of the masks.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from nodulekit.metrics._inputs import as_mask, as_spacing, check_same_shape

# Elements per step when searching the last True from the end (1 MiB of bool: measured fastest
# of 64 KiB .. 4 MiB on a 300x512x512 mask).
_REVERSE_SCAN_CHUNK = 1 << 20


def _last_true(flat: np.ndarray) -> int:
    """Index of the last True of a 1-D bool array (which has at least one True).

    Scans 1 MiB blocks from the end; ``argmax`` on bool stops at the first True and is faster
    than ``any`` (measured), and is far faster than ``argmax`` on a reversed view.
    """
    stop = flat.size
    while stop > 0:
        start = max(0, stop - _REVERSE_SCAN_CHUNK)
        block = flat[start:stop]
        if block[np.argmax(block)]:
            return start + int(np.flatnonzero(block)[-1])
        stop = start
    raise ValueError("no True element")  # pragma: no cover - callers check first


def _true_range(axis_any: np.ndarray) -> tuple[int, int]:
    """(first, last + 1) of the True entries of a 1-D bool array with at least one True."""
    hits = np.flatnonzero(axis_any)
    return int(hits[0]), int(hits[-1]) + 1


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of the True voxels of a bool array, or None when there are none.

    Reads the array about once: ``argmax`` stops at the first True, a chunked scan from the end
    finds the last True, which bound axis 0; the other axes come from the slab between them.

    Args:
        mask: bool array of any shape (2D (y, x) or 3D (z, y, x) in nodulekit).
    Returns:
        One ``slice(start, stop)`` per axis, or None for an all-False mask.
    """
    flat = mask.reshape(-1)  # a view for C-contiguous arrays, a copy otherwise
    if flat.size == 0:
        return None
    first = int(np.argmax(flat))
    if not flat[first]:
        return None
    last = _last_true(flat)
    inner_size = math.prod(mask.shape[1:])
    start0, stop0 = first // inner_size, last // inner_size + 1
    box = [slice(start0, stop0)]
    if mask.ndim == 1:
        return tuple(box)
    slab_any = np.any(mask[start0:stop0], axis=0)  # shape mask.shape[1:]
    for axis in range(slab_any.ndim):
        others = tuple(a for a in range(slab_any.ndim) if a != axis)
        start, stop = _true_range(np.any(slab_any, axis=others) if others else slab_any)
        box.append(slice(start, stop))
    return tuple(box)


def union_box(*boxes: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """Smallest box containing all given boxes (None entries are ignored)."""
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    return tuple(
        slice(min(b[a].start for b in present), max(b[a].stop for b in present))
        for a in range(len(present[0]))
    )


def _framed_crop(mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Copy of ``mask[box]`` with a one-voxel False frame around it (shape + 2 per axis)."""
    out = np.zeros(tuple(s.stop - s.start + 2 for s in box), dtype=bool)
    out[tuple(slice(1, -1) for _ in box)] = mask[box]
    return out


def boundary_in_frame(framed: np.ndarray) -> np.ndarray:
    """Boundary voxels of a mask that has a False frame of one voxel on every side.

    Boundary = foreground with at least one face-connected background neighbour (the frame
    stands for everything outside, i.e. background). Same shape as ``framed``.
    """
    core = tuple(slice(1, -1) for _ in range(framed.ndim))
    interior = framed[core].copy()
    for axis in range(framed.ndim):
        for shifted in (slice(0, -2), slice(2, None)):
            index = list(core)
            index[axis] = shifted
            interior &= framed[tuple(index)]
    edges = np.zeros_like(framed)
    edges[core] = framed[core] & ~interior
    return edges


def boundary(mask: Any) -> np.ndarray:
    """Boundary voxels of a binary mask (same shape, bool); see the module docstring."""
    mask = as_mask(mask, "mask")
    box = bounding_box(mask)
    out = np.zeros(mask.shape, dtype=bool)
    if box is None:
        return out
    out[box] = boundary_in_frame(_framed_crop(mask, box))[tuple(slice(1, -1) for _ in box)]
    return out


def _directed_distances(edges_from: np.ndarray, edges_to: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from every True voxel of ``edges_from`` to the nearest True of ``edges_to``.

    Both arrays are the same box; ``edges_to`` has at least one True. Voxels on both
    boundaries have distance 0 and are not queried. The rest use a k-d tree on the boundary
    points: exact, and measured 2-4x faster than ``scipy.ndimage.distance_transform_edt``
    with ``sampling=spacing`` on the cropped box for nodule radii 5-40 voxels (the tree scales
    with the surface, the transform with the box volume).

    Returns:
        (n_from,) float64 distances, in C order of the True voxels of ``edges_from``.
    """
    on_both = edges_to[edges_from]  # per from-voxel, in C order
    distances = np.zeros(on_both.size, dtype=np.float64)
    if not on_both.all():
        tree = cKDTree(np.argwhere(edges_to) * spacing, leafsize=32, balanced_tree=False)
        queries = np.argwhere(edges_from & ~edges_to) * spacing
        distances[~on_both], _ = tree.query(queries, k=1)
    return distances


def surface_distances(
    pred: Any, truth: Any, spacing_zyx_mm: Sequence[float] | float
) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary-to-boundary distances between two binary masks.

    For every boundary voxel x of ``pred`` the distance d(x, ∂truth) = min_{y in ∂truth} |x - y|
    (Euclidean, mm, voxel centres), and the same from ``truth`` to ``pred``
    (paper 001, d(x, Y) in eq. 12-13).

    Args:
        pred, truth: binary masks of the same shape, 2D (y, x) or 3D (z, y, x).
        spacing_zyx_mm: voxel size per array axis in mm (a scalar means isotropic).
    Returns:
        (pred_to_truth, truth_to_pred): float64 arrays of shape (|∂pred|,) and (|∂truth|,),
        in C order of the boundary voxels. Empty masks: both empty -> two empty arrays; one
        empty -> the non-empty mask's distances are all ``inf`` and the other array is empty.
    """
    pred = as_mask(pred, "pred")
    truth = as_mask(truth, "truth")
    check_same_shape(pred, truth)
    spacing = as_spacing(spacing_zyx_mm, pred.ndim)
    box_pred, box_truth = bounding_box(pred), bounding_box(truth)
    box = union_box(box_pred, box_truth)
    if box is None:
        return np.zeros(0), np.zeros(0)
    edges_pred = boundary_in_frame(_framed_crop(pred, box))
    edges_truth = boundary_in_frame(_framed_crop(truth, box))
    if box_pred is None or box_truth is None:
        return (np.full(int(np.count_nonzero(edges_pred)), np.inf),
                np.full(int(np.count_nonzero(edges_truth)), np.inf))
    return (
        _directed_distances(edges_pred, edges_truth, spacing),
        _directed_distances(edges_truth, edges_pred, spacing),
    )
