"""Segmentation metrics against slow, obviously-correct definitions and analytic cases."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from nodulekit.errors import NodulekitError
from nodulekit.metrics import (
    assd,
    boundary,
    bounding_box,
    confusion_counts,
    dice,
    hausdorff,
    jaccard,
    overlap_error,
    pixel_accuracy,
    precision,
    recall,
    surface_distances,
)
from nodulekit.metrics import segmentation, surface

ANISO_3D = (2.5, 0.7, 0.7)
ANISO_2D = (1.25, 0.7)


# ---------------------------------------------------------------- brute-force references
def brute_boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a face neighbour that is background or outside the array."""
    out = np.zeros_like(mask)
    for index in zip(*np.nonzero(mask)):
        for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
            neighbour = list(index)
            neighbour[axis] += step
            inside = 0 <= neighbour[axis] < mask.shape[axis]
            if not inside or not mask[tuple(neighbour)]:
                out[index] = True
                break
    return out


def brute_directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """All-pairs distances (mm) from each boundary voxel of a to the nearest of b, C order."""
    pa = np.argwhere(brute_boundary(a)) * np.asarray(spacing, float)
    pb = np.argwhere(brute_boundary(b)) * np.asarray(spacing, float)
    all_pairs = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(axis=-1))
    return all_pairs.min(axis=1)


def brute_hd(a, b, spacing, q=100.0) -> float:
    return max(np.percentile(brute_directed(a, b, spacing), q),
               np.percentile(brute_directed(b, a, spacing), q))


def brute_assd(a, b, spacing) -> float:
    d_ab, d_ba = brute_directed(a, b, spacing), brute_directed(b, a, spacing)
    return (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)


def random_blob(rng: np.random.Generator, shape, fill=0.35) -> np.ndarray:
    """Random, irregular mask (noise, possibly several components, touching borders)."""
    mask = rng.random(shape) < fill
    if not mask.any():
        mask[tuple(s // 2 for s in shape)] = True
    return mask


def ball(shape, centre, radius_vox) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius_vox ** 2


# ---------------------------------------------------------------- boundary and bounding box
@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 7)])
def test_boundary_matches_brute_force_on_random_masks(shape):
    rng = np.random.default_rng(1)
    for fill in (0.2, 0.5, 0.9):
        mask = random_blob(rng, shape, fill)
        np.testing.assert_array_equal(boundary(mask), brute_boundary(mask))


def test_full_array_boundary_is_the_outer_shell():
    mask = np.ones((4, 5, 6), bool)
    shell = np.ones_like(mask)
    shell[1:-1, 1:-1, 1:-1] = False
    np.testing.assert_array_equal(boundary(mask), shell)


def test_solid_cube_boundary_excludes_interior_and_uses_face_connectivity():
    mask = np.zeros((7, 7, 7), bool)
    mask[1:6, 1:6, 1:6] = True
    edges = boundary(mask)
    assert edges.sum() == 5 ** 3 - 3 ** 3
    assert not edges[3, 3, 3]
    assert edges[1, 1, 1] and edges[3, 3, 1]


@pytest.mark.parametrize("shape", [(40,), (6, 30), (4, 5, 33), (3, 4, 5, 6)])
def test_bounding_box_matches_argwhere(shape, monkeypatch):
    monkeypatch.setattr(surface, "_REVERSE_SCAN_CHUNK", 7)  # exercise the chunked reverse scan
    rng = np.random.default_rng(2)
    for _ in range(20):
        mask = rng.random(shape) < rng.choice([0.002, 0.02, 0.3])
        box = bounding_box(mask)
        if not mask.any():
            assert box is None
            continue
        points = np.argwhere(mask)
        expected = tuple(slice(lo, hi + 1) for lo, hi in zip(points.min(0), points.max(0)))
        assert box == expected


def test_bounding_box_of_non_contiguous_view_and_empty():
    mask = np.zeros((6, 8, 10), bool)
    mask[1, 2, 3] = mask[4, 5, 7] = True
    view = mask.transpose(2, 0, 1)[::-1]
    points = np.argwhere(view)
    assert bounding_box(view) == tuple(slice(lo, hi + 1) for lo, hi in zip(points.min(0), points.max(0)))
    assert bounding_box(np.zeros((3, 4), bool)) is None
    assert bounding_box(np.zeros((0, 4), bool)) is None


# ---------------------------------------------------------------- distances vs brute force
@pytest.mark.parametrize("shape,spacing", [((9, 11), ANISO_2D), ((6, 8, 9), ANISO_3D), ((6, 7, 8), (1.0, 1.0, 1.0))])
def test_distances_match_brute_force_on_random_shapes(shape, spacing):
    rng = np.random.default_rng(3)
    for _ in range(6):
        a, b = random_blob(rng, shape, 0.3), random_blob(rng, shape, 0.2)
        d_ab, d_ba = surface_distances(a, b, spacing)
        np.testing.assert_allclose(d_ab, brute_directed(a, b, spacing), rtol=0, atol=1e-12)
        np.testing.assert_allclose(d_ba, brute_directed(b, a, spacing), rtol=0, atol=1e-12)
        assert hausdorff(a, b, spacing) == pytest.approx(brute_hd(a, b, spacing), abs=1e-12)
        assert hausdorff(a, b, spacing, 95) == pytest.approx(brute_hd(a, b, spacing, 95), abs=1e-12)
        assert assd(a, b, spacing) == pytest.approx(brute_assd(a, b, spacing), abs=1e-12)


def test_small_objects_in_a_larger_volume_match_brute_force():
    """The bounding-box crop must not change distances (objects far apart, near borders)."""
    shape = (12, 30, 31)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[0:3, 0:4, 2:5] = True           # touches two image borders
    a[9, 20, 25] = True               # an isolated voxel far away
    b[5:9, 25:30, 26:31] = True       # touches the far border
    for spacing in (ANISO_3D, (1.0, 2.0, 3.0)):
        assert hausdorff(a, b, spacing) == pytest.approx(brute_hd(a, b, spacing), abs=1e-12)
        assert hausdorff(a, b, spacing, 95) == pytest.approx(brute_hd(a, b, spacing, 95), abs=1e-12)
        assert assd(a, b, spacing) == pytest.approx(brute_assd(a, b, spacing), abs=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_cubes_offset_by_k_voxels_have_hd_k_times_spacing(axis, k):
    shape = (20, 24, 24)
    a = np.zeros(shape, bool)
    a[4:10, 5:11, 6:12] = True
    b = np.roll(a, k, axis=axis)
    expected = k * ANISO_3D[axis]
    assert hausdorff(a, b, ANISO_3D) == pytest.approx(expected, abs=1e-12)
    assert hausdorff(b, a, ANISO_3D) == pytest.approx(expected, abs=1e-12)


def test_squares_offset_in_2d():
    a = np.zeros((20, 20), bool)
    a[3:9, 4:10] = True
    b = np.roll(a, 2, axis=1)
    assert hausdorff(a, b, ANISO_2D) == pytest.approx(2 * 0.7, abs=1e-12)
    assert hausdorff(a, b, (1.0, 1.0)) == pytest.approx(2.0)
    assert assd(a, a, ANISO_2D) == 0.0


def test_hd95_is_max_of_directed_percentiles_and_ignores_a_rare_outlier():
    """MONAI's definition: percentile of each directed set, then the max of the two."""
    truth = np.zeros((40, 40), bool)
    truth[5:30, 5:30] = True
    pred = truth.copy()
    pred[38, 38] = True  # one far voxel: 1 of 97 boundary voxels of pred
    d_pt, d_tp = brute_directed(pred, truth, (1.0, 1.0)), brute_directed(truth, pred, (1.0, 1.0))
    assert hausdorff(pred, truth, 1.0) == pytest.approx(np.hypot(9, 9))
    assert hausdorff(pred, truth, 1.0, 95) == pytest.approx(
        max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
    assert hausdorff(pred, truth, 1.0, 95) == 0.0
    assert hausdorff(pred, truth, 1.0, 99.5) > 0.0


def test_hd95_differs_from_percentile_of_pooled_distances():
    """6 far voxels are 7% of pred's boundary but 4% of the pooled boundaries."""
    truth = np.zeros((30, 30), bool)
    truth[5:25, 5:25] = True  # 76 boundary voxels
    pred = truth.copy()
    pred[27:29, 27:30] = True  # a separate 2x3 blob: 6 boundary voxels, all far from truth
    d_pt, d_tp = surface_distances(pred, truth, 1.0)
    assert (d_pt.size, d_tp.size, np.count_nonzero(d_pt), np.count_nonzero(d_tp)) == (82, 76, 6, 0)
    ours = hausdorff(pred, truth, 1.0, 95)
    assert ours == pytest.approx(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
    assert ours > 4.0
    assert np.percentile(np.r_[d_pt, d_tp], 95) == 0.0


def test_assd_is_pooled_not_mean_of_directed_means():
    """Paper 001 eq. 13 pools both boundaries; medpy averages the two directed means."""
    truth = np.zeros((30, 30), bool)
    truth[10:14, 10:14] = True
    pred = np.zeros_like(truth)
    pred[5:25, 5:25] = True  # larger boundary than truth
    d_pt, d_tp = brute_directed(pred, truth, ANISO_2D), brute_directed(truth, pred, ANISO_2D)
    pooled = (d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size)
    medpy_style = (d_pt.mean() + d_tp.mean()) / 2
    assert assd(pred, truth, ANISO_2D) == pytest.approx(pooled, abs=1e-12)
    assert abs(pooled - medpy_style) > 0.5


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_spheres_against_monai_if_installed():
    monai_metrics = pytest.importorskip("monai.metrics")
    torch = pytest.importorskip("torch")
    shape = (24, 40, 40)
    a, b = ball(shape, (12, 20, 20), 8), ball(shape, (13, 18, 21), 7)
    y_pred, y = (torch.from_numpy(m[None, None].astype(np.float32)) for m in (a, b))
    for q in (None, 95):
        ref = float(monai_metrics.compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=q, spacing=list(ANISO_3D)))
        assert hausdorff(a, b, ANISO_3D, q or 100) == pytest.approx(ref, rel=1e-6)
    ref_assd = float(monai_metrics.compute_average_surface_distance(
        y_pred, y, include_background=True, symmetric=True, spacing=list(ANISO_3D)))
    assert assd(a, b, ANISO_3D) == pytest.approx(ref_assd, rel=1e-6)


# ---------------------------------------------------------------- empty masks
@pytest.mark.parametrize("shape", [(8, 9), (4, 8, 9)])
def test_both_empty(shape):
    empty = np.zeros(shape, bool)
    assert dice(empty, empty) == 1.0
    assert jaccard(empty, empty) == 1.0
    assert overlap_error(empty, empty) == 0.0
    assert np.isnan(precision(empty, empty)) and np.isnan(recall(empty, empty))
    assert pixel_accuracy(empty, empty) == 1.0
    spacing = (1.0,) * len(shape)
    assert np.isnan(hausdorff(empty, empty, spacing))
    assert np.isnan(hausdorff(empty, empty, spacing, 95))
    assert np.isnan(assd(empty, empty, spacing))


@pytest.mark.parametrize("shape", [(8, 9), (4, 8, 9)])
def test_one_empty(shape):
    empty = np.zeros(shape, bool)
    full = np.zeros(shape, bool)
    full[1:3, 2:5] = True
    spacing = (1.0,) * len(shape)
    for pred, truth in ((empty, full), (full, empty)):
        assert dice(pred, truth) == 0.0
        assert jaccard(pred, truth) == 0.0
        assert hausdorff(pred, truth, spacing) == np.inf
        assert hausdorff(pred, truth, spacing, 95) == np.inf
        assert assd(pred, truth, spacing) == np.inf
    d_pt, d_tp = surface_distances(full, empty, spacing)
    assert d_tp.size == 0 and d_pt.size == boundary(full).sum() and np.all(np.isinf(d_pt))
    assert np.isnan(precision(empty, full)) and recall(empty, full) == 0.0


# ---------------------------------------------------------------- overlap metrics
def test_overlap_metrics_match_set_definitions():
    rng = np.random.default_rng(4)
    for shape in ((13, 17), (5, 6, 7)):
        p, t = random_blob(rng, shape, 0.4), random_blob(rng, shape, 0.3)
        inter, union = (p & t).sum(), (p | t).sum()
        assert dice(p, t) == pytest.approx(2 * inter / (p.sum() + t.sum()))
        assert jaccard(p, t) == pytest.approx(inter / union)
        assert overlap_error(p, t) == pytest.approx(1 - inter / union)
        assert precision(p, t) == pytest.approx(inter / p.sum())
        assert recall(p, t) == pytest.approx(inter / t.sum())
        assert segmentation.specificity(p, t) == pytest.approx((~p & ~t).sum() / (~t).sum())
        assert pixel_accuracy(p, t) == pytest.approx((p == t).mean())
        assert confusion_counts(p, t) == ((p & t).sum(), (p & ~t).sum(), (~p & t).sum(), (~p & ~t).sum())


def test_dice_and_jaccard_accept_torch_tensors_and_01_arrays():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    p, t = random_blob(rng, (6, 10, 10), 0.4), random_blob(rng, (6, 10, 10), 0.4)
    expected_dice, expected_jaccard = dice(p, t), jaccard(p, t)
    assert dice(torch.from_numpy(p), torch.from_numpy(t)) == pytest.approx(expected_dice)
    assert jaccard(torch.from_numpy(p).float(), torch.from_numpy(t).long()) == pytest.approx(expected_jaccard)
    assert dice(p.astype(np.uint8), t.astype(np.float32)) == pytest.approx(expected_dice)
    assert hausdorff(torch.from_numpy(p), t, 1.0) == pytest.approx(hausdorff(p, t, 1.0))
    with pytest.raises(NodulekitError, match="0/1"):
        dice(torch.from_numpy(p).float() * 0.5, torch.from_numpy(t))


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_one_line_errors():
    a = np.zeros((4, 5), bool)
    with pytest.raises(NodulekitError, match="shape mismatch"):
        dice(a, np.zeros((5, 4), bool))
    with pytest.raises(NodulekitError, match="shape mismatch"):
        hausdorff(a, np.zeros((4, 5, 1), bool), 1.0)
    with pytest.raises(NodulekitError, match="spacing"):
        hausdorff(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(NodulekitError, match="spacing"):
        assd(a, a, (1.0, -1.0))
    with pytest.raises(NodulekitError, match="percentile"):
        hausdorff(a, a, 1.0, percentile=0)
    with pytest.raises(NodulekitError, match="0/1"):
        dice(np.full((4, 5), 0.7), a)
