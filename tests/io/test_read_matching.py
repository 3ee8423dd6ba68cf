from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _io_helpers import SERIES_UID, STUDY_UID, chars, reads_by_reader, sample_reads, square
from nodulekit.io.lidc_xml import parse_lidc_xml, write_lidc_xml
from nodulekit.io.read_matching import assign_slices, merge_series_reads
from nodulekit.io.reads import Contour, NoduleRead, SeriesReads


def test_merge_identical_files_keeps_one_copy(tmp_path: Path) -> None:
    a, b = tmp_path / "188-082.xml", tmp_path / "188-083.xml"
    write_lidc_xml(sample_reads(), a)
    write_lidc_xml(sample_reads(), b, reader_ids_in_order=[3, 2, 1, 0])  # same sessions, reordered
    merged = merge_series_reads([parse_lidc_xml(a), parse_lidc_xml(b)])
    assert merged.n_readers == 4 and len(merged.reads) == len(sample_reads().reads)
    assert reads_by_reader(merged) == reads_by_reader(sample_reads())
    assert merged.sources == [str(a), str(b)]
    assert any("all 4 sessions duplicate" in n for n in merged.notes)


def test_merge_keeps_differing_sessions(tmp_path: Path) -> None:
    base = sample_reads()
    extra = SeriesReads(SERIES_UID, STUDY_UID, [
        *[r for r in base.reads if r.reader_id == 1],  # a copy of reader 1's session ...
        NoduleRead(1, "new", "nodule", [Contour(5.0, True, square(1, 1))], chars(4)),  # ... changed
        NoduleRead(0, "Nodule 001", "nodule", [Contour(-300.0, True, square(9, 12), f"{SERIES_UID}.1")],
                   chars(2)),  # identical to base reader 2
    ], n_readers=2)
    a, b = tmp_path / "a.xml", tmp_path / "b.xml"
    write_lidc_xml(base, a)
    write_lidc_xml(extra, b)
    merged = merge_series_reads([parse_lidc_xml(a), parse_lidc_xml(b)])
    assert merged.n_readers == 5
    new_reader = [r for r in merged.reads if r.reader_id == 4]
    assert sorted(r.nodule_id for r in new_reader) == ["IR-7", "new", "small-1"]
    assert any("added as reader 4" in n for n in merged.notes)
    assert any("duplicates an earlier file" in n for n in merged.notes)
    # deterministic
    again = merge_series_reads([parse_lidc_xml(a), parse_lidc_xml(b)])
    assert reads_by_reader(again) == reads_by_reader(merged)


def test_merge_rejects_other_series() -> None:
    with pytest.raises(ValueError):
        merge_series_reads([sample_reads(), sample_reads("9.9.9")])


def test_assign_slices_by_sop_uid_with_z_fallback() -> None:
    series_reads = sample_reads()
    z = np.array([-300.0, -298.75, -297.5, -296.25, 1604.5])
    sops = [f"{SERIES_UID}.{k + 1}" for k in range(4)] + ["other"]
    result = assign_slices(series_reads, sops, z)
    assert result.slice_index[0] == [0, 1, 1]
    assert result.slice_index[2] == [4]  # no SOP UID: matched by z
    assert result.n_by_z == 1 and result.n_by_sop == 6 and not result.unmatched
    # SOP UID wins over a disagreeing z, with a note; unknown UID + far z is unmatched
    shifted = z.copy()
    shifted[0] = -310.0
    result = assign_slices(series_reads, sops[:4] + ["x"], shifted[:4].tolist() + [0.0])
    assert result.slice_index[0][0] == 0 and result.notes
    assert [(u.nodule_id, u.contour_index) for u in result.unmatched] == [("IR-7", 0)]
    # z tolerance
    result = assign_slices(series_reads, ["a"] * 0 + [f"u{k}" for k in range(5)], z + 0.005)
    assert result.n_by_z == 7 and not result.unmatched
    result = assign_slices(series_reads, [f"u{k}" for k in range(5)], z + 0.02)
    assert len(result.unmatched) == 7
