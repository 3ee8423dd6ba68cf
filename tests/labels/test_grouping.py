"""nodulekit.labels.grouping: with and without reader ids."""
from __future__ import annotations

import numpy as np

from nodulekit.io.reads import Contour, NoduleRead
from nodulekit.labels.grouping import cluster_reads, group_reads, min_distance_matrix_mm, shared_point_pairs


def _square(x0: int, y0: int, size: int = 6, zs=(0.0, 1.0)) -> list[Contour]:
    pts = np.array([(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size), (x0, y0)], np.int32)
    return [Contour(z_mm=z, inclusion=True, points_xy_px=pts) for z in zs]


def _read(reader, x0, y0, size=6) -> NoduleRead:
    return NoduleRead(reader, "n", "nodule", _square(x0, y0, size))


def test_separate_nodules_and_shared_nodule():
    reads = [_read(0, 10, 10), _read(1, 11, 10), _read(0, 100, 100), _read(1, 101, 101)]
    g = group_reads(reads, 1.0, tol_mm=1.5)
    assert sorted(g.groups) == [[0, 1], [2, 3]] and g.reader_ids_known and not g.ambiguous


def test_one_reader_two_marks_near_each_other_stay_apart():
    # reader 0 marks two touching lesions; reader 1 outlines one of them
    reads = [_read(0, 10, 10), _read(0, 16, 10), _read(1, 10, 11)]
    g = group_reads(reads, 1.0, tol_mm=1.0)
    assert sorted(g.groups) == [[0, 2], [1]]
    assert len(g.ambiguous) == 1 and g.ambiguous[0].reads == [0, 1, 2]


def test_two_readers_touching_nodules_split_by_reader():
    # two lesions side by side, each outlined by readers 0 and 1; all four outlines touch
    reads = [_read(0, 10, 10), _read(1, 10, 10), _read(0, 16, 10), _read(1, 17, 10)]
    g = group_reads(reads, 1.0, tol_mm=1.0)
    assert sorted(g.groups) == [[0, 1], [2, 3]]
    assert all(len({reads[i].reader_id for i in grp}) == len(grp) for grp in g.groups)


def test_without_reader_ids_groups_by_proximity_and_caps_at_four():
    reads = [_read(None, 10 + i, 10) for i in range(6)] + [_read(None, 200, 200)]
    g = group_reads(reads, 0.7, tol_mm=2.5)
    assert not g.reader_ids_known
    assert all(len(grp) <= 4 for grp in g.groups) and sum(map(len, g.groups)) == 7
    assert [6] in g.groups and len(g.ambiguous) == 1 and g.ambiguous[0].reads == list(range(6))
    assert group_reads(reads, 0.7, tol_mm=2.5).groups == g.groups  # deterministic


def test_mm_tolerance_uses_pixel_spacing():
    a, b = _read(None, 10, 10), _read(None, 22, 10)  # 6 px gap
    assert len(group_reads([a, b], 1.0, tol_mm=3.0).groups) == 2
    assert len(group_reads([a, b], 0.4, tol_mm=3.0).groups) == 1  # 2.4 mm


def test_cluster_reads_pylidc_rule():
    reads = [_read(None, 10 + i, 10) for i in range(5)]
    clusters = cluster_reads(reads, 1.0, tol_mm=1.5)
    assert sorted(i for c in clusters for i in c) == list(range(5))


def _brute_min_distance_mm(reads, spacing_mm, cutoff_mm):
    from scipy.spatial.distance import cdist

    def pts(read):
        return np.concatenate([np.column_stack([np.full(len(c.points_xy_px), c.z_mm),
                                                c.points_xy_px[:, 1] * spacing_mm, c.points_xy_px[:, 0] * spacing_mm])
                               for c in read.contours])

    n = len(reads)
    out = np.full((n, n), np.inf)
    for a in range(n):
        for b in range(n):
            d = cdist(pts(reads[a]), pts(reads[b])).min()
            out[a, b] = d if (d <= cutoff_mm or a == b) else np.inf
    return out


def test_distance_matrix_matches_brute_force_and_shared_points():
    rng = np.random.default_rng(3)
    reads = []
    for _ in range(12):  # random polygons on a few slices, some overlapping, some negative coordinates
        zs = rng.choice([0.0, 1.25, 2.5, 3.75], size=rng.integers(1, 3), replace=False)
        contours = [Contour(z_mm=float(z), inclusion=True,
                            points_xy_px=(rng.integers(-3, 25, size=(rng.integers(1, 9), 2))).astype(np.int32))
                    for z in zs]
        reads.append(NoduleRead(None, "n", "nodule", contours))
    # same pixel on another slice is not a shared point; the same pixel and z is
    reads.append(NoduleRead(None, "n", "nodule", [Contour(9.0, True, np.array([[40, 40]], np.int32))]))
    reads.append(NoduleRead(None, "n", "nodule", [Contour(10.0, True, np.array([[40, 40]], np.int32))]))
    reads.append(NoduleRead(None, "n", "nodule", [Contour(10.0, True, np.array([[40, 40], [41, 40]], np.int32))]))
    for cutoff in (0.0, 1.3, 4.0, 100.0):
        ours = min_distance_matrix_mm(reads, 0.7, cutoff)
        np.testing.assert_allclose(ours, _brute_min_distance_mm(reads, 0.7, cutoff), rtol=0, atol=1e-12)
    shared = shared_point_pairs(reads)
    assert not shared[12, 13] and shared[13, 14] and shared.diagonal().all()
    assert (shared == (_brute_min_distance_mm(reads, 0.7, 0.0) == 0)).all()
