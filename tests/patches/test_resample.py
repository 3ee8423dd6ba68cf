"""Sampling a scan region on a grid in mm: exact slicing, SimpleITK linear resampling, air outside."""
from __future__ import annotations

import numpy as np

from nodulekit.patches.resample import Grid, VoxelSource, aligned_start, needed_region, sample

SPACING = (2.5, 0.7, 0.8)
ORIGIN = (-300.0, 12.3, -45.6)
SHAPE = (30, 60, 50)


def ramp_volume() -> tuple[np.ndarray, Grid]:
    grid = Grid(ORIGIN, SPACING, SHAPE)
    z, y, x = (grid.index_to_mm(np.indices(SHAPE).reshape(3, -1).T).T).reshape(3, *SHAPE)
    return (3 * z + 2 * y - x).astype(np.float64), grid  # linear in mm: linear interpolation is exact


class CountingArray:
    """A numpy array that records the regions read from it (like an HDF5 dataset)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.reads = data, data.shape, []

    def __getitem__(self, region):
        self.reads.append(region)
        return self.data[region]


def test_grid_centred_puts_the_centre_at_index_half_size():
    grid = Grid.centred((10.0, -5.0, 3.0), (4, 5, 6), (1.0, 0.7, 0.7))
    np.testing.assert_allclose(grid.index_to_mm((1.5, 2, 2.5)), (10.0, -5.0, 3.0))
    np.testing.assert_allclose(grid.centre_zyx_mm, (10.0, -5.0, 3.0))
    np.testing.assert_allclose(grid.mm_to_index(grid.index_to_mm((1, 2, 3))), (1, 2, 3))


def test_resampling_a_linear_ramp_is_exact_with_anisotropic_spacing_and_an_origin():
    volume, grid = ramp_volume()
    source = VoxelSource.from_array(CountingArray(volume), ORIGIN, SPACING, fill=-1024)
    centre = grid.index_to_mm((14.3, 27.9, 21.4))
    target = Grid.centred(centre, (8, 10, 12), (1.0, 0.7, 0.7))
    out = sample(source, target)
    z, y, x = target.index_to_mm(np.indices(target.shape_zyx).reshape(3, -1).T).T
    np.testing.assert_allclose(out.ravel(), 3 * z + 2 * y - x, atol=1e-3)
    assert out.dtype == np.float32 and out.shape == (8, 10, 12)
    (region,) = source.data.reads  # one read, of a small region around the target only
    assert all((r.stop - r.start) <= n for r, n in zip(region, (8, 17, 14)))


def test_aligned_grids_are_sliced_exactly():
    volume, grid = ramp_volume()
    source = VoxelSource.from_array(volume, ORIGIN, SPACING, fill=-1024)
    target = grid.shifted((3, 10, 7), (2, 5, 4))
    assert aligned_start(grid, target).tolist() == [3, 10, 7]
    np.testing.assert_array_equal(sample(source, target), volume[3:5, 10:15, 7:11].astype(np.float32))
    assert aligned_start(grid, Grid.centred(grid.index_to_mm((3, 10.5, 7)), (1, 5, 5), SPACING)) is None


def test_outside_the_scan_is_filled_with_air():
    volume, grid = ramp_volume()
    source = VoxelSource.from_array(volume, ORIGIN, SPACING, fill=-1024)
    corner = Grid.centred(grid.index_to_mm((0, 0, 0)), (8, 8, 8), (1.0, 1.0, 1.0))  # half outside on each axis
    out = sample(source, corner)
    inside = corner.mm_to_index(grid.index_to_mm((-0.5, -0.5, -0.5)))  # the scan's outer voxel faces
    outside = np.zeros(out.shape, bool)
    for axis in range(3):
        index = np.arange(8) < inside[axis]
        outside |= np.expand_dims(index, [a for a in range(3) if a != axis])
    assert np.all(out[outside] == -1024) and np.all(out[~outside] != -1024)
    far = Grid.centred(grid.index_to_mm((-50, 0, 0)), (4, 4, 4), (1.0, 1.0, 1.0))
    assert needed_region(grid, far) is None and np.all(sample(source, far) == -1024)
    aligned_outside = grid.shifted((-3, -2, 48), (5, 4, 4))
    out = sample(source, aligned_outside)
    assert np.all(out[:3] == -1024) and np.all(out[:, :2] == -1024) and np.all(out[:, :, 2:] == -1024)
    np.testing.assert_array_equal(out[3:, 2:, :2], volume[0:2, 0:2, 48:50].astype(np.float32))
