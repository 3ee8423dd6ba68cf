"""nodulekit.labels.grouping: with and without reader ids."""
from __future__ import annotations

import numpy as np

from nodulekit.io.reads import Contour, NoduleRead
from nodulekit.labels.grouping import cluster_reads, group_reads


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
