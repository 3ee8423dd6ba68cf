"""The nine 2D views of a nodule cube (MT-CNN, paper 002, section III.A and Fig. 2b).

The nine planes of symmetry of a cube (Setio et al. 2016 and Xie et al. 2018, whose views the
paper follows): three orthogonal planes parallel to the faces, and six diagonal planes, each
holding one axis and a diagonal of the other two (so it cuts two opposite faces along their
diagonals). Pure numpy on an (n, n, n) cube in z, y, x order; every view is (n, n).

=====  ==================  ====================  ======================
index  name                rows (i) run along    columns (j) run along
=====  ==================  ====================  ======================
0      ``axial``           y                     x           (z = n//2)
1      ``coronal``         z                     x           (y = n//2)
2      ``sagittal``        z                     y           (x = n//2)
3      ``z_diag_yx``       z                     (y, x) = (+1, +1)
4      ``z_antidiag_yx``   z                     (y, x) = (-1, +1)
5      ``y_diag_zx``       (z, x) = (+1, +1)     y
6      ``y_antidiag_zx``   (z, x) = (+1, -1)     y
7      ``x_diag_zy``       (z, y) = (+1, +1)     x
8      ``x_antidiag_zy``   (z, y) = (+1, -1)     x
=====  ==================  ====================  ======================

Orthogonal views are the voxel layer ``n // 2`` (the centre for odd n, half a voxel past it for
even n; no interpolation). Diagonal views pass through the centre line and are sampled by

- ``"isotropic"`` (default): 1 voxel steps along the diagonal too, so every view has the cube's
  spacing in both directions (a round nodule stays round, rot90 stays a valid augmentation);
  the view covers the central n voxels of the sqrt(2) n long diagonal; trilinear interpolation
  (exact for linear intensity ramps);
- ``"corner"``: the voxels on the diagonal itself (``cube[i, j, j]`` for ``z_diag_yx``), corner
  to corner: exact values, but the diagonal direction has sqrt(2) times the spacing.
"""
from __future__ import annotations

import functools

import numpy as np

VIEW_NAMES = ("axial", "coronal", "sagittal", "z_diag_yx", "z_antidiag_yx", "y_diag_zx", "y_antidiag_zx",
              "x_diag_zy", "x_antidiag_zy")

#: (row direction, column direction) of each diagonal view in z, y, x voxel steps (corner sampling).
_DIAGONAL_DIRECTIONS = (
    ((1, 0, 0), (0, 1, 1)),
    ((1, 0, 0), (0, -1, 1)),
    ((1, 0, 1), (0, 1, 0)),
    ((1, 0, -1), (0, 1, 0)),
    ((1, 1, 0), (0, 0, 1)),
    ((1, -1, 0), (0, 0, 1)),
)


def nine_views(cube: np.ndarray, sampling: str = "isotropic") -> np.ndarray:
    """The nine views of an (n, n, n) cube as an array (9, n, n): the cube's dtype for ``corner``,
    float (at least float32) for ``isotropic``. Order and orientation in the module docstring."""
    cube = np.asarray(cube)
    n = cube.shape[0]
    if cube.ndim != 3 or cube.shape != (n, n, n):
        raise ValueError(f"nine views need a cube (n, n, n), got shape {cube.shape}")
    if sampling not in ("isotropic", "corner"):
        raise ValueError(f"sampling {sampling!r}: 'isotropic' or 'corner'")
    dtype = np.result_type(cube.dtype, np.float32) if sampling == "isotropic" else cube.dtype
    out = np.empty((9, n, n), dtype=dtype)
    mid = n // 2
    out[0], out[1], out[2] = cube[mid, :, :], cube[:, mid, :], cube[:, :, mid]
    flat = cube.reshape(-1)
    for v, (index, weights) in enumerate(_diagonal_tables(n, sampling), start=3):
        if weights is None:  # corner sampling: the voxels themselves
            out[v] = flat[index[0]].reshape(n, n)
        else:
            out[v] = np.einsum("kp,kp->p", flat[index].astype(np.float64), weights).reshape(n, n)
    return out


@functools.lru_cache(maxsize=16)
def _diagonal_tables(n: int, sampling: str) -> tuple[tuple[np.ndarray, np.ndarray | None], ...]:
    """Per diagonal view, the flat voxel indices and trilinear weights of its n x n points (cached:
    the same for every cube of size n). ``corner`` points are voxel centres (weights None)."""
    centre = (n - 1) / 2
    steps = np.arange(n, dtype=np.float64) - centre
    tables = []
    for row, col in _DIAGONAL_DIRECTIONS:
        r, c = np.asarray(row, float), np.asarray(col, float)
        if sampling == "isotropic":
            r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
        points = (centre + steps[:, None, None] * r + steps[None, :, None] * c).reshape(-1, 3)
        if sampling == "corner":
            index = np.ravel_multi_index(tuple(np.rint(points).astype(np.int64).T), (n, n, n))
            tables.append((index[None, :], None))
        else:
            tables.append(trilinear_weights((n, n, n), points))
    return tuple(tables)


def trilinear_weights(shape_zyx: tuple[int, int, int], points_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (k, P) and weights (k, P) of the voxels around ``points_zyx`` (P, 3) (voxel
    coordinates inside the volume; edge voxels clamped); corners with zero weight everywhere are
    dropped (k <= 8)."""
    size = np.asarray(shape_zyx)
    base = np.clip(np.floor(points_zyx).astype(np.int64), 0, size - 2)
    frac = points_zyx - base
    index, weights = [], []
    for corner in np.ndindex(2, 2, 2):
        w = np.prod([frac[:, a] if corner[a] else 1 - frac[:, a] for a in range(3)], axis=0)
        if np.any(w):
            index.append(np.ravel_multi_index(tuple((base + corner).T), tuple(shape_zyx)))
            weights.append(w)
    return np.stack(index), np.stack(weights)


def trilinear(volume: np.ndarray, points_zyx: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``volume`` at voxel coordinates ``points_zyx`` (..., 3), which
    must lie inside the volume (edge voxels are clamped)."""
    index, weights = trilinear_weights(volume.shape, points_zyx.reshape(-1, 3))
    values = np.asarray(volume, dtype=np.float64).reshape(-1)[index]
    return np.einsum("kp,kp->p", values, weights).reshape(points_zyx.shape[:-1])
