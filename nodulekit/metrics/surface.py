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
box, and the nearest boundary point of each boundary voxel is found either with scipy's exact
Euclidean feature transform of the box or with a k-d tree on the boundary points, whichever a
small cost model (:func:`_use_feature_transform`) expects to be cheaper. All boundary points of
both masks lie in that box, so the distances are exact (the crop only saves time).
benchmarks/bench_metrics.py measures it against a plain read of the masks.
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from nodulekit.metrics._inputs import as_mask, as_spacing, check_same_shape

# Elements per step when searching the last True from the end: 2 MiB blocks of bool, then 64 KiB
# blocks inside the block that holds it (so the exact position is found in a small block).
_REVERSE_SCAN_CHUNK = 1 << 21
_REVERSE_REFINE_CHUNK = 1 << 16

# Rows per band when a 3-D slab is reduced to one flag per band of rows and slice (8 KiB of a
# 512-wide slice): long runs keep the reduction at memory speed (measured: 2x faster than an
# OR of the slices into one (y, x) image, which streams slower from memory).
_BAND_ROWS = 16

# Cost model of one directed distance set, in ns (2-core EPYC, numpy 2.4, scipy 1.17; 54 balls,
# boxes, noise and far-apart pairs of 400-300,000 box voxels): the feature transform costs about
# this much per voxel of the box, the k-d tree this much per target boundary point (build) and per
# query (search). Near the crossover both take about as long, so the rounding matters little.
_FT_NS_PER_VOXEL = 55.0
_KD_NS_PER_TARGET = 80.0
_KD_NS_PER_QUERY = 550.0

# Masks of at least this many bytes are scanned for their boxes in two threads, one mask each
# (numpy's reductions release the GIL): a 300x512x512 pair took 8.4 ms instead of 12.5 ms on the
# 2-core development machine (the scan is memory-bound; two cores draw about 1.5x one core's
# bandwidth). Small masks (evaluation patches) stay in the calling thread: a hand-off costs ~50 us.
_PARALLEL_SCAN_MIN_BYTES = 1 << 22
# Both directed distance sets are computed in two threads when the expected cost of the cheaper
# one (cost model above) is at least this many ns (the k-d tree and scipy's feature transform
# release the GIL; 21^3 boxes: 4.0 -> 2.5 ms).
_PARALLEL_DISTANCES_MIN_NS = 500_000.0

_T = TypeVar("_T")
_U = TypeVar("_U")
_helper: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()


def _forget_helper() -> None:
    """After ``fork``: the child has no helper thread, so it starts its own when it needs one."""
    global _helper
    _helper = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper)


def _n_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _both(first: Callable[[], _T], second: Callable[[], _U], parallel: bool) -> tuple[_T, _U]:
    """``(first(), second())``; with ``parallel`` and a second CPU, ``first`` runs in a helper
    thread (one, started on first use) while ``second`` runs here. Exceptions propagate."""
    global _helper
    if not parallel or _n_cpus() < 2:
        return first(), second()
    with _helper_lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nodulekit-surface")
        future = _helper.submit(first)
    second_result = second()
    return future.result(), second_result


def _last_block_with_true(flat: np.ndarray, start: int, stop: int,
                          chunk: int) -> tuple[int, int] | None:
    """(start, stop) of the last ``chunk``-sized block of ``flat[start:stop]`` that holds a True.

    Blocks are counted from ``stop`` backwards; ``argmax`` on bool stops at the first True, so
    each block is read only up to its first True. None if the range has no True.
    """
    while stop > start:
        block_start = max(start, stop - chunk)
        block = flat[block_start:stop]
        if block[np.argmax(block)]:
            return block_start, stop
        stop = block_start
    return None


def _last_true(flat: np.ndarray) -> int:
    """Index of the last True of a 1-D bool array (which has at least one True).

    Scans 2 MiB blocks from the end (``argmax`` on a reversed view would be far slower: it is
    not contiguous), then the 64 KiB blocks of the block that holds the last True, so only a
    small block is read twice.
    """
    block = (0, flat.size)
    for chunk in (_REVERSE_SCAN_CHUNK, _REVERSE_REFINE_CHUNK):
        block = _last_block_with_true(flat, *block, chunk)
        if block is None:
            raise ValueError("no True element")  # callers check first
    start, stop = block
    return start + int(np.flatnonzero(flat[start:stop])[-1])


def _true_range(axis_any: np.ndarray) -> tuple[int, int]:
    """(first, last + 1) of the True entries of a 1-D bool array with at least one True."""
    hits = np.flatnonzero(axis_any)
    return int(hits[0]), int(hits[-1]) + 1


def _extents(projection: np.ndarray) -> list[slice]:
    """Tight ``slice(start, stop)`` per axis of the True entries of a bool array with a True.

    Axis by axis, each range is taken on the part already narrowed down by the previous axes,
    so after the first axis only a small block is read.
    """
    box = []
    for axis in range(projection.ndim):
        others = tuple(a for a in range(projection.ndim) if a != axis)
        start, stop = _true_range(np.any(projection, axis=others) if others else projection)
        box.append(slice(start, stop))
        narrowed = [slice(None)] * projection.ndim
        narrowed[axis] = slice(start, stop)
        projection = projection[tuple(narrowed)]
    return box


def _rows_any(words: np.ndarray) -> np.ndarray:
    """Per row, whether a (slices, rows, words) block of 64-bit words has a nonzero word."""
    return np.bitwise_or.reduce(words, axis=0).any(axis=1)


def _slab_extents(slab: np.ndarray) -> list[slice]:
    """Tight ranges, along axes 1.., of the True voxels of a bool slab that has a True.

    3-D C-contiguous slabs with rows of a multiple of 8 voxels are read as 64-bit words
    (8 voxels each, nonzero iff one is True): one OR per band of rows and slice gives the bands
    that hold a True; the first and last of those bands give the rows, and the rows in between
    (a small block, still cached) the columns. Other slabs use an OR over axis 0.
    """
    if slab.ndim != 3 or slab.shape[2] % 8 or not slab.flags.c_contiguous:
        return _extents(np.logical_or.reduce(slab, axis=0))
    n_slices, n_rows, _ = slab.shape
    band = math.gcd(n_rows, _BAND_ROWS)
    words = slab.view(np.uint64)  # (n_slices, n_rows, n_columns // 8)
    per_band = np.bitwise_or.reduce(words.reshape(n_slices * n_rows // band, -1), axis=1)
    first_band, stop_band = _true_range(per_band.reshape(n_slices, -1).any(axis=0))
    rows_first = _rows_any(words[:, first_band * band:(first_band + 1) * band])
    rows_last = _rows_any(words[:, (stop_band - 1) * band:stop_band * band])
    start = first_band * band + _true_range(rows_first)[0]
    stop = (stop_band - 1) * band + _true_range(rows_last)[1]
    columns = np.bitwise_or.reduce(np.bitwise_or.reduce(words[:, start:stop], axis=0), axis=0)
    return [slice(start, stop), *_extents(columns.view(np.bool_))]  # OR of 0/1 bytes: 0/1 bytes


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
    if mask.ndim == 1:
        return (slice(start0, stop0),)
    slab = flat.reshape(mask.shape)[start0:stop0]  # C-contiguous
    return (slice(start0, stop0), *_slab_extents(slab))


def union_box(*boxes: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """Smallest box containing all given boxes (None entries are ignored)."""
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    return tuple(
        slice(min(b[a].start for b in present), max(b[a].stop for b in present))
        for a in range(len(present[0]))
    )


def _framed(crop: np.ndarray | None, crop_box: tuple[slice, ...] | None,
            box: tuple[slice, ...]) -> np.ndarray:
    """``crop`` (the mask inside ``crop_box``) placed in ``box`` with a one-voxel False frame.

    ``crop_box`` lies inside ``box``; None (an empty mask) gives an all-False array. The
    result has shape ``box`` + 2 per axis.
    """
    out = np.zeros(tuple(s.stop - s.start + 2 for s in box), dtype=bool)
    if crop is not None and crop_box is not None:
        out[tuple(slice(c.start - b.start + 1, c.stop - b.start + 1)
                  for c, b in zip(crop_box, box))] = crop
    return out


def _framed_crop(mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Copy of ``mask[box]`` with a one-voxel False frame around it (shape + 2 per axis)."""
    return _framed(mask[box], box, box)


def _core_boundary(framed: np.ndarray) -> np.ndarray:
    """Boundary voxels of the core (all but the frame) of a mask with a one-voxel False frame.

    Boundary = foreground with at least one face-connected background neighbour (the frame
    stands for everything outside, i.e. background). Returns a C-contiguous bool array of the
    core's shape (``framed.shape`` - 2 per axis).
    """
    core = tuple(slice(1, -1) for _ in range(framed.ndim))
    foreground = framed[core]
    interior = foreground.copy()
    for axis in range(framed.ndim):
        for shifted in (slice(0, -2), slice(2, None)):
            index = list(core)
            index[axis] = shifted
            interior &= framed[tuple(index)]
    return foreground > interior  # foreground & ~interior in one pass


def boundary(mask: Any) -> np.ndarray:
    """Boundary voxels of a binary mask (same shape, bool); see the module docstring."""
    mask = as_mask(mask, "mask")
    box = bounding_box(mask)
    out = np.zeros(mask.shape, dtype=bool)
    if box is None:
        return out
    out[box] = _core_boundary(_framed_crop(mask, box))
    return out


def _method_costs_ns(n_box_voxels: int, n_targets: int, n_queries: int) -> tuple[float, float]:
    """Expected ns of one directed distance set by (feature transform, k-d tree): the cost constants."""
    return (_FT_NS_PER_VOXEL * n_box_voxels,
            _KD_NS_PER_TARGET * n_targets + _KD_NS_PER_QUERY * n_queries)


def _use_feature_transform(n_box_voxels: int, n_targets: int, n_queries: int) -> bool:
    """Whether the feature transform is expected to beat the k-d tree (see the cost constants).

    The transform's cost grows with the box volume, the tree's with the number of boundary
    points, so the transform wins for compact, ragged or strongly overlapping shapes and the
    tree for objects that are far apart (a big, mostly empty box) or large and smooth.
    """
    transform_ns, tree_ns = _method_costs_ns(n_box_voxels, n_targets, n_queries)
    return transform_ns < tree_ns


def _points_mm(flat_indices: np.ndarray, shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    """(n, ndim) positions in mm of the voxels with these C-order flat indices in ``shape``.

    Same values as ``np.argwhere(mask) * spacing``, without the slow N-D ``nonzero``.
    """
    points = np.empty((flat_indices.size, len(shape)), dtype=np.float64)
    for axis, index in enumerate(np.unravel_index(flat_indices, shape)):
        np.multiply(index, spacing[axis], out=points[:, axis])
    return points


def _nearest_by_feature_transform(queries: np.ndarray, targets: np.ndarray,
                                  spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from each query voxel to the nearest True voxel of ``targets``.

    scipy's Euclidean feature transform (exact, with the per-axis spacing) gives the index of
    the nearest target voxel of every voxel of the box; distances are computed at the queries
    only. ``queries`` are C-order flat indices into ``targets`` (a bool box with a True).
    """
    nearest = ndimage.distance_transform_edt(
        ~targets, sampling=spacing, return_distances=False, return_indices=True)
    nearest = nearest.reshape(targets.ndim, -1)[:, queries]  # (ndim, n_queries) voxel indices
    offsets_mm = (nearest - np.stack(np.unravel_index(queries, targets.shape))) * spacing[:, None]
    return np.sqrt(np.einsum("ij,ij->j", offsets_mm, offsets_mm))


def _nearest_by_kdtree(queries: np.ndarray, targets: np.ndarray, shape: tuple[int, ...],
                       spacing: np.ndarray) -> np.ndarray:
    """Same result as :func:`_nearest_by_feature_transform`, from a k-d tree on the targets.

    ``queries`` and ``targets`` are C-order flat indices of voxels in a box of this ``shape``.
    """
    tree = cKDTree(_points_mm(targets, shape, spacing), leafsize=32, balanced_tree=False)
    distances, _ = tree.query(_points_mm(queries, shape, spacing), k=1)
    return distances


def _expected_ns(n_box_voxels: int, n_targets: int, n_queries: int) -> float:
    """Expected time (ns) of one directed distance set: the cheaper of the two methods."""
    return min(_method_costs_ns(n_box_voxels, n_targets, n_queries))


def _directed_distances(from_points: np.ndarray, to_points: np.ndarray, to_edges: np.ndarray,
                        spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from every boundary voxel in ``from_points`` to the nearest of ``to_points``.

    Args:
        from_points, to_points: ascending C-order flat indices of boundary voxels in the box;
            ``to_points`` is not empty.
        to_edges: the box as a C-contiguous bool array, True at ``to_points``.
        spacing: (ndim,) voxel size in mm.
    Voxels on both boundaries have distance 0 and are not queried. The rest use the feature
    transform of the box or a k-d tree on the boundary points, whichever
    :func:`_use_feature_transform` picks; both are exact.

    Returns:
        (n_from,) float64 distances, in C order of the ``from_points``.
    """
    off_target = ~to_edges.reshape(-1)[from_points]
    distances = np.zeros(from_points.size, dtype=np.float64)
    queries = from_points[off_target]
    if queries.size == 0:
        return distances
    if _use_feature_transform(to_edges.size, to_points.size, queries.size):
        distances[off_target] = _nearest_by_feature_transform(queries, to_edges, spacing)
    else:
        distances[off_target] = _nearest_by_kdtree(queries, to_points, to_edges.shape, spacing)
    return distances


def _box_and_crop(mask: np.ndarray) -> tuple[tuple[slice, ...] | None, np.ndarray | None]:
    """Bounding box of a mask and a copy of the mask inside it (None, None when empty).

    The copy is taken right after the box scan, while that part of the mask is still cached.
    """
    box = bounding_box(mask)
    return box, (None if box is None else mask[box].copy())


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
    (box_pred, crop_pred), (box_truth, crop_truth) = _both(
        lambda: _box_and_crop(pred), lambda: _box_and_crop(truth), pred.nbytes >= _PARALLEL_SCAN_MIN_BYTES)
    box = union_box(box_pred, box_truth)
    if box is None:
        return np.zeros(0), np.zeros(0)
    edges_pred = _core_boundary(_framed(crop_pred, box_pred, box))
    edges_truth = _core_boundary(_framed(crop_truth, box_truth, box))
    points_pred, points_truth = np.flatnonzero(edges_pred), np.flatnonzero(edges_truth)
    if box_pred is None or box_truth is None:
        return np.full(points_pred.size, np.inf), np.full(points_truth.size, np.inf)
    cheaper_ns = _expected_ns(edges_pred.size, min(points_pred.size, points_truth.size),
                              min(points_pred.size, points_truth.size))
    return _both(lambda: _directed_distances(points_pred, points_truth, edges_truth, spacing),
                 lambda: _directed_distances(points_truth, points_pred, edges_pred, spacing),
                 cheaper_ns >= _PARALLEL_DISTANCES_MIN_NS)
