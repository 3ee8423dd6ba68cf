"""The fast paths of nodulekit.metrics.surface: both nearest-point methods, the scans, the inputs."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nodulekit.errors import NodulekitError
from nodulekit.metrics import bounding_box, hausdorff, surface, surface_distances
from nodulekit.metrics._inputs import as_mask

ANISO_3D = (2.5, 0.7, 0.7)


def reference_boundary(mask: np.ndarray) -> np.ndarray:
    """``mask & ~binary_erosion(mask)`` with a False border (the documented definition)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def brute_directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """All-pairs distances (mm) from each boundary voxel of a to the nearest of b, C order."""
    pa = np.argwhere(reference_boundary(a)) * np.asarray(spacing, float)
    pb = np.argwhere(reference_boundary(b)) * np.asarray(spacing, float)
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(axis=-1)).min(axis=1)


def random_pair(rng: np.random.Generator, shape) -> tuple[np.ndarray, np.ndarray]:
    """Two masks of one of three kinds: noise, overlapping blobs, or small blobs far apart."""
    kind = rng.integers(3)
    if kind == 0:
        a, b = rng.random(shape) < 0.3, rng.random(shape) < 0.2
    else:
        grids = np.ogrid[tuple(slice(0, s) for s in shape)]
        centres = [rng.integers(0, s, size=2) for s in shape]
        if kind == 2:  # opposite corners
            centres = [np.array([0, s - 1]) for s in shape]
        radius = rng.uniform(1.0, max(1.5, min(shape) / 3), size=2)
        a, b = (sum((g - c[i]) ** 2 for g, c in zip(grids, centres)) <= radius[i] ** 2
                for i in range(2))
    a[tuple(rng.integers(0, s) for s in shape)] = True  # never empty
    b[tuple(rng.integers(0, s) for s in shape)] = True
    return a, b


@pytest.mark.parametrize("method", ["feature_transform", "kdtree"])
@pytest.mark.parametrize("shape,spacing", [
    ((13, 17), (1.25, 0.7)),
    ((7, 12, 11), ANISO_3D),
    ((9, 8, 10), (1.0, 2.0, 3.0)),
    ((6, 7, 8), 1.0),
])
def test_both_nearest_point_methods_match_brute_force(method, shape, spacing, monkeypatch):
    monkeypatch.setattr(surface, "_use_feature_transform", lambda *_: method == "feature_transform")
    rng = np.random.default_rng(11)
    full_spacing = np.broadcast_to(np.asarray(spacing, float), (len(shape),))
    for _ in range(12):
        a, b = random_pair(rng, shape)
        d_ab, d_ba = surface_distances(a, b, spacing)
        np.testing.assert_allclose(d_ab, brute_directed(a, b, full_spacing), rtol=0, atol=1e-12)
        np.testing.assert_allclose(d_ba, brute_directed(b, a, full_spacing), rtol=0, atol=1e-12)


def test_methods_agree_on_nodule_sized_balls_in_a_large_volume(monkeypatch):
    shape = (60, 96, 96)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    a = sum((g - c) ** 2 for g, c in zip(grids, (30, 40, 50))) <= 10 ** 2
    b = sum((g - c) ** 2 for g, c in zip(grids, (32, 42, 49))) <= 9 ** 2
    results = {}
    for method in ("feature_transform", "kdtree"):
        monkeypatch.setattr(surface, "_use_feature_transform", lambda *_, m=method: m == "feature_transform")
        results[method] = surface_distances(a, b, ANISO_3D)
    for ft, kd in zip(results["feature_transform"], results["kdtree"]):
        np.testing.assert_allclose(ft, kd, rtol=0, atol=1e-12)


def test_cost_model_prefers_the_tree_for_far_apart_objects_and_the_transform_for_ragged_ones():
    # two 5-voxel balls 200 voxels apart: a huge, nearly empty box and few boundary points
    assert not surface._use_feature_transform(n_box_voxels=11 * 11 * 211, n_targets=100, n_queries=100)
    # noise: most voxels of the box are boundary voxels
    assert surface._use_feature_transform(n_box_voxels=30 ** 3, n_targets=8000, n_queries=5500)


@pytest.mark.parametrize("big,small", [(7, 3), (64, 5), (5, 64)])
def test_last_true_with_small_blocks(big, small, monkeypatch):
    monkeypatch.setattr(surface, "_REVERSE_SCAN_CHUNK", big)
    monkeypatch.setattr(surface, "_REVERSE_REFINE_CHUNK", small)
    rng = np.random.default_rng(12)
    for size in (1, 2, 5, 63, 64, 65, 500):
        for _ in range(10):
            flat = rng.random(size) < rng.choice([0.01, 0.2])
            flat[rng.integers(size)] = True
            assert surface._last_true(flat) == np.flatnonzero(flat)[-1]


@pytest.mark.parametrize("shape", [(5, 48, 16), (3, 24, 8), (4, 5, 24), (2, 64, 64), (6, 33, 40)])
def test_bounding_box_of_slabs_read_as_words_matches_argwhere(shape):
    """Rows of a multiple of 8 voxels take the banded 64-bit path (bands of 16, 8 or 1 rows)."""
    rng = np.random.default_rng(14)
    for _ in range(40):
        mask = rng.random(shape) < rng.choice([0.001, 0.01, 0.1])
        if not mask.any():
            mask[tuple(rng.integers(0, s) for s in shape)] = True
        points = np.argwhere(mask)
        expected = tuple(slice(lo, hi + 1) for lo, hi in zip(points.min(0), points.max(0)))
        assert bounding_box(mask) == expected
        assert bounding_box(np.asfortranarray(mask)) == expected  # copied to C order first
        unaligned = np.zeros(mask.size + 1, bool)[1:].reshape(shape)  # words not 8-byte aligned
        unaligned[...] = mask
        assert bounding_box(unaligned) == expected


def test_bounding_box_of_a_nodule_in_a_ct_sized_slab():
    mask = np.zeros((40, 512, 512), bool)
    mask[17:23, 300:310, 20:41] = True
    mask[20, 299, 30] = True
    assert bounding_box(mask) == (slice(17, 23), slice(299, 310), slice(20, 41))


def test_bool_masks_pass_without_a_copy_and_uint8_masks_become_a_view():
    mask = np.zeros((4, 5, 6), bool)
    assert as_mask(mask, "m") is mask
    view = mask[:, ::2]
    assert as_mask(view, "m") is view
    as_uint8 = mask.astype(np.uint8)
    as_uint8[1, 2, 3] = 1
    out = as_mask(as_uint8, "m")
    assert out.dtype == np.bool_ and np.shares_memory(out, as_uint8)
    np.testing.assert_array_equal(out, as_uint8.astype(bool))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint32, np.int64, np.float32, np.float64])
def test_as_mask_accepts_01_and_rejects_other_values(dtype):
    values = np.array([[0, 1, 1], [0, 0, 1]], dtype=dtype)
    np.testing.assert_array_equal(as_mask(values, "m"), values != 0)
    bad = [2]
    if np.dtype(dtype).kind in "if":
        bad.append(-1)
    if np.dtype(dtype).kind == "f":
        bad += [0.5, np.nan]
    for value in bad:
        broken = values.copy()
        broken[0, 0] = value
        with pytest.raises(NodulekitError, match="0/1"):
            as_mask(broken, "m")


def test_hausdorff_of_uint8_masks_equals_bool_masks():
    rng = np.random.default_rng(13)
    a, b = random_pair(rng, (8, 20, 20))
    assert hausdorff(a.astype(np.uint8), b.astype(np.uint8), ANISO_3D) == hausdorff(a, b, ANISO_3D)


def test_two_thread_path_gives_the_serial_results(monkeypatch):
    """Scans and both distance sets in the helper thread (thresholds at 0) equal the serial path."""
    rng = np.random.default_rng(15)
    pairs = [random_pair(rng, (9, 24, 32)) for _ in range(8)] + [
        (np.zeros((6, 8, 8), bool), random_pair(rng, (6, 8, 8))[0])]  # one mask empty
    serial = [surface_distances(a, b, ANISO_3D) for a, b in pairs]
    monkeypatch.setattr(surface, "_PARALLEL_SCAN_MIN_BYTES", 0)
    monkeypatch.setattr(surface, "_PARALLEL_DISTANCES_MIN_NS", 0.0)
    monkeypatch.setattr(surface, "_n_cpus", lambda: 2)
    used = []
    real_both = surface._both
    monkeypatch.setattr(surface, "_both", lambda f, s, parallel: used.append(parallel) or real_both(f, s, parallel))
    for (a, b), expected in zip(pairs, serial):
        for got, want in zip(surface_distances(a, b, ANISO_3D), expected):
            np.testing.assert_array_equal(got, want)
    assert used and all(used) and surface._helper is not None


def test_helper_errors_reach_the_caller(monkeypatch):
    monkeypatch.setattr(surface, "_n_cpus", lambda: 2)

    def broken() -> None:
        raise ValueError("in the helper")

    with pytest.raises(ValueError, match="in the helper"):
        surface._both(broken, lambda: 1, parallel=True)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_helper(monkeypatch):
    """A child forked after the helper thread started (e.g. a DataLoader worker) must not wait on
    the parent's thread, which does not exist in the child."""
    import os

    monkeypatch.setattr(surface, "_n_cpus", lambda: 2)
    assert surface._both(lambda: 1, lambda: 2, parallel=True) == (1, 2)  # the helper exists now
    pid = os.fork()
    if pid == 0:  # child: exit code 0 only when the helper ran the task
        try:
            ok = surface._both(lambda: 3, lambda: 4, parallel=True) == (3, 4)
        finally:
            os._exit(0 if ok else 1)
    for _ in range(200):  # up to 10 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        __import__("time").sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the parent's helper thread")
    assert os.waitstatus_to_exitcode(status) == 0
