"""The nine views against hand-made cubes (paper 002, section III.A)."""
from __future__ import annotations

import numpy as np
import pytest

from nodulekit.patches.views import VIEW_NAMES, nine_views, trilinear

N = 8
MID = N // 2
V = {name: i for i, name in enumerate(VIEW_NAMES)}


def test_shapes_and_names():
    views = nine_views(np.zeros((N, N, N), np.float32))
    assert views.shape == (9, N, N) and len(VIEW_NAMES) == 9
    with pytest.raises(ValueError, match="cube"):
        nine_views(np.zeros((N, N, N + 1)))


def test_orthogonal_views_are_the_middle_layers():
    cube = np.arange(N ** 3, dtype=np.float32).reshape(N, N, N)
    views = nine_views(cube)
    np.testing.assert_array_equal(views[V["axial"]], cube[MID])
    np.testing.assert_array_equal(views[V["coronal"]], cube[:, MID, :])
    np.testing.assert_array_equal(views[V["sagittal"]], cube[:, :, MID])


def test_marked_space_diagonal_shows_in_the_three_diagonal_views_holding_it():
    cube = np.zeros((N, N, N), np.uint8)
    k = np.arange(N)
    cube[k, k, k] = 1  # the main space diagonal z = y = x
    views = nine_views(cube, "corner")
    eye = np.eye(N, dtype=np.uint8)
    for name in ("z_diag_yx", "y_diag_zx", "x_diag_zy"):  # planes y = x, z = x, z = y hold the line
        np.testing.assert_array_equal(views[V[name]], eye, err_msg=name)
    for name in ("z_antidiag_yx", "y_antidiag_zx", "x_antidiag_zy"):  # they cross it at most once
        assert views[V[name]].sum() <= 1, name
    assert views[V["axial"]].sum() == views[V["coronal"]].sum() == views[V["sagittal"]].sum() == 1


def test_marked_antidiagonal_plane_fills_its_view():
    cube = np.zeros((N, N, N), np.uint8)
    j = np.arange(N)
    cube[:, N - 1 - j, j] = 1  # the plane y = N-1-x, holding the z axis
    views = nine_views(cube, "corner")
    assert views[V["z_antidiag_yx"]].all()
    np.testing.assert_array_equal(views[V["z_diag_yx"]].sum(axis=1), np.zeros(N) + (N % 2))  # crosses only for odd N
    np.testing.assert_array_equal(views[V["axial"]], np.fliplr(np.eye(N, dtype=np.uint8)))


def test_isotropic_diagonals_sample_1_voxel_steps_through_the_centre():
    # trilinear interpolation is exact for a linear ramp: check the sampled positions analytically
    z, y, x = np.meshgrid(*(np.arange(N, dtype=np.float64),) * 3, indexing="ij")
    ramp = 100 * z + 10 * y + x
    views = nine_views(ramp, "isotropic")
    c = (N - 1) / 2
    t = np.arange(N) - c
    # rows z, columns (y, x) = (+1, +1) / sqrt2
    expected = 100 * (c + t[:, None]) + (10 + 1) * (c + t[None, :] / np.sqrt(2))
    np.testing.assert_allclose(views[V["z_diag_yx"]], expected, atol=1e-9)
    # rows (z, x) = (+1, +1) / sqrt2, columns y
    expected = (100 + 1) * (c + t[:, None] / np.sqrt(2)) + 10 * (c + t[None, :])
    np.testing.assert_allclose(views[V["y_diag_zx"]], expected, atol=1e-9)
    expected = (100 - 10) * (t[:, None] / np.sqrt(2)) + 110 * c + (c + t[None, :])  # rows (z, y) = (+1, -1)/sqrt2
    np.testing.assert_allclose(views[V["x_antidiag_zy"]], expected, atol=1e-9)


def test_a_centred_sphere_looks_the_same_in_every_isotropic_view():
    n = 33  # odd: every plane passes through the centre voxel
    grid = np.indices((n, n, n)) - (n - 1) / 2
    ball = (np.sqrt((grid ** 2).sum(axis=0)) <= 8).astype(np.float32)
    areas = (nine_views(ball, "isotropic") >= 0.5).sum(axis=(1, 2))
    assert np.ptp(areas) <= 0.05 * areas.mean(), areas  # a round nodule stays round
    corner = (nine_views(ball, "corner") >= 0.5).sum(axis=(1, 2))
    assert corner[3:].mean() < 0.8 * corner[:3].mean()  # corner sampling squeezes the diagonal by sqrt(2)


def test_trilinear_at_voxel_centres_is_exact():
    volume = np.random.default_rng(0).random((4, 5, 6))
    points = np.stack(np.meshgrid(np.arange(4), np.arange(5), np.arange(6), indexing="ij"), axis=-1).astype(float)
    np.testing.assert_array_equal(trilinear(volume, points), volume)
