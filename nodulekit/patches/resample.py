"""Sample a region of a scan (or of a nodule's agreement map) on a new grid, in mm.

A :class:`Grid` places an array in the scan's mm frame: voxel ``(k, j, i)`` (z, y, x) sits at
``origin_zyx_mm + (k, j, i) * spacing_zyx_mm``. For a scan, ``origin_zyx_mm`` is its
``origin_xyz_mm`` reversed; the direction cosines of LIDC scans are the identity, and the frame
is the scan's voxel grid scaled by its spacing, so image and masks always line up even where
the z steps are irregular (such scans, ``regular_z`` False, are then sampled as if their z
steps were uniform).

:func:`sample` resamples only the target voxels that fall inside the source (the rest is ``fill``),
reads only the source region they need (plus one voxel), then

- slices it exactly when the target grid is the source's own grid shifted by whole voxels
  (native 2D patches: no interpolation, agreement values kept exactly);
- otherwise resamples it with SimpleITK, linear interpolation (CT and agreement maps alike).

Target points outside the source get ``fill`` (-1024 HU for CT, 0 for agreement). SimpleITK
counts a point as inside up to half a voxel beyond the outermost voxel centres (it takes the
edge value there), so "outside" starts at the scan's outer voxel faces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

#: Two grids are aligned when spacings agree and offsets are whole voxels within these tolerances.
_SPACING_RTOL = 1e-6
_OFFSET_TOL_VOX = 1e-4


@dataclass(frozen=True)
class Grid:
    """A regular grid in the scan's mm frame (axis order z, y, x)."""

    origin_zyx_mm: tuple[float, float, float]
    spacing_zyx_mm: tuple[float, float, float]
    shape_zyx: tuple[int, int, int]

    @classmethod
    def centred(cls, centre_zyx_mm: Sequence[float], shape_zyx: Sequence[int],
                spacing_zyx_mm: Sequence[float]) -> "Grid":
        """The grid of ``shape_zyx`` whose geometric centre (index (n-1)/2 per axis) is ``centre_zyx_mm``."""
        shape = np.asarray(shape_zyx, dtype=np.float64)
        spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
        origin = np.asarray(centre_zyx_mm, dtype=np.float64) - (shape - 1) / 2 * spacing
        return cls(_tuple3(origin), _tuple3(spacing), tuple(int(v) for v in shape_zyx))  # type: ignore[arg-type]

    def index_to_mm(self, index_zyx: Any) -> np.ndarray:
        index = np.asarray(index_zyx, dtype=np.float64)
        return np.asarray(self.origin_zyx_mm) + index * np.asarray(self.spacing_zyx_mm)

    def mm_to_index(self, zyx_mm: Any) -> np.ndarray:
        offset = np.asarray(zyx_mm, dtype=np.float64) - np.asarray(self.origin_zyx_mm)
        return offset / np.asarray(self.spacing_zyx_mm)

    @property
    def centre_zyx_mm(self) -> np.ndarray:
        return self.index_to_mm((np.asarray(self.shape_zyx) - 1) / 2)

    def shifted(self, start_zyx: Sequence[int], shape_zyx: Sequence[int]) -> "Grid":
        """The sub-grid starting at voxel ``start_zyx`` (a region of this grid)."""
        return Grid(_tuple3(self.index_to_mm(start_zyx)), self.spacing_zyx_mm,
                    tuple(int(v) for v in shape_zyx))  # type: ignore[arg-type]


def _tuple3(values: Any) -> tuple[float, float, float]:
    v = [float(x) for x in values]
    return (v[0], v[1], v[2])


@dataclass
class VoxelSource:
    """An array to sample from: anything sliceable by a tuple of slices (numpy array, h5py dataset).

    ``grid.shape_zyx`` must equal the array's shape; ``fill`` is the value outside it.
    """

    data: Any
    grid: Grid
    fill: float

    @classmethod
    def from_array(cls, data: Any, origin_zyx_mm: Sequence[float], spacing_zyx_mm: Sequence[float],
                   fill: float) -> "VoxelSource":
        shape = tuple(int(v) for v in data.shape)
        grid = Grid(_tuple3(origin_zyx_mm), _tuple3(spacing_zyx_mm), shape)  # type: ignore[arg-type]
        return cls(data, grid, float(fill))


def aligned_start(source: Grid, target: Grid) -> np.ndarray | None:
    """Voxel index of the target's origin in the source when the target is a whole-voxel shift of it."""
    s, t = np.asarray(source.spacing_zyx_mm), np.asarray(target.spacing_zyx_mm)
    if not np.allclose(s, t, rtol=_SPACING_RTOL, atol=0.0):
        return None
    start = source.mm_to_index(target.origin_zyx_mm)
    rounded = np.round(start)
    if np.max(np.abs(start - rounded)) > _OFFSET_TOL_VOX:
        return None
    return rounded.astype(np.int64)


def needed_region(source: Grid, target: Grid, margin_vox: int = 1) -> tuple[slice, slice, slice] | None:
    """The source voxels the target's points lie between (plus ``margin_vox``), or None if none."""
    first = source.mm_to_index(target.origin_zyx_mm)
    last = source.mm_to_index(target.index_to_mm(np.asarray(target.shape_zyx) - 1))
    lo = np.floor(np.minimum(first, last)).astype(np.int64) - margin_vox
    hi = np.ceil(np.maximum(first, last)).astype(np.int64) + margin_vox
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(source.shape_zyx) - 1)
    if np.any(hi < lo):
        return None
    return (slice(int(lo[0]), int(hi[0]) + 1), slice(int(lo[1]), int(hi[1]) + 1), slice(int(lo[2]), int(hi[2]) + 1))


def sample(source: VoxelSource, target: Grid) -> np.ndarray:
    """``source`` sampled at the points of ``target``: float32 of shape ``target.shape_zyx``.

    Exact slicing when aligned (see the module docstring), linear SimpleITK resampling otherwise.
    """
    start = aligned_start(source.grid, target)
    if start is not None:
        return _slice_with_fill(source, start, target.shape_zyx)
    out = np.full(target.shape_zyx, source.fill, dtype=np.float32)
    covered = covered_region(source.grid, target)
    if covered is None:
        return out
    sub = target.shifted([r.start for r in covered], [r.stop - r.start for r in covered])
    region = needed_region(source.grid, sub)
    if region is None:
        return out
    block = np.asarray(source.data[region], dtype=np.float32)
    block_grid = source.grid.shifted([r.start for r in region], block.shape)
    out[covered] = resample_linear(block, block_grid, sub, source.fill)
    return out


def covered_region(source: Grid, target: Grid) -> tuple[slice, slice, slice] | None:
    """The target voxels inside the source's outer voxel faces (the rest is ``fill``), or None.

    Only these are resampled: for a nodule's agreement map (a small frame) in a 64^3 cube this
    is a few percent of the cube.
    """
    size = np.asarray(source.shape_zyx, dtype=np.float64)
    first = target.mm_to_index(source.index_to_mm(np.full(3, -0.5)))
    last = target.mm_to_index(source.index_to_mm(size - 0.5))
    lo = np.maximum(np.ceil(np.minimum(first, last) - _OFFSET_TOL_VOX), 0).astype(np.int64)
    hi = np.floor(np.maximum(first, last) + _OFFSET_TOL_VOX).astype(np.int64)
    hi = np.minimum(hi, np.asarray(target.shape_zyx) - 1)
    if np.any(hi < lo):
        return None
    return (slice(int(lo[0]), int(hi[0]) + 1), slice(int(lo[1]), int(hi[1]) + 1), slice(int(lo[2]), int(hi[2]) + 1))


def _slice_with_fill(source: VoxelSource, start: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
    out = np.full(tuple(shape_zyx), source.fill, dtype=np.float32)
    size = np.asarray(source.grid.shape_zyx)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(shape_zyx), size)
    if np.any(hi <= lo):
        return out
    src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
    out[dst] = np.asarray(source.data[src], dtype=np.float32)
    return out


def resample_linear(block_zyx: np.ndarray, block_grid: Grid, target: Grid, fill: float) -> np.ndarray:
    """Linear resampling of an in-memory block onto ``target`` with SimpleITK (x, y, z at the edge)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(block_zyx, dtype=np.float32))
    image.SetSpacing(tuple(reversed(block_grid.spacing_zyx_mm)))
    image.SetOrigin(tuple(reversed(block_grid.origin_zyx_mm)))
    out = sitk.Resample(image, [int(v) for v in reversed(target.shape_zyx)], sitk.Transform(), sitk.sitkLinear,
                        tuple(reversed(target.origin_zyx_mm)), tuple(reversed(target.spacing_zyx_mm)),
                        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), float(fill), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)

