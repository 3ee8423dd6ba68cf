from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from _io_helpers import SERIES_UID, STUDY_UID, make_hu, sample_reads, write_series
from nodulekit.errors import InputFileError
from nodulekit.io.dicom_discovery import discover_series
from nodulekit.io.lidc_xml import write_lidc_xml


# ------------------------------------------------------------------------------ skipped series

def test_radiographs_localizers_and_coronal_series_skipped(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", make_hu(4))
    write_series(tmp_path / "cr", make_hu(1), series_uid="5.1", modality="CR")

    def localizer(k: int, ds: pydicom.Dataset) -> None:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    write_series(tmp_path / "ct", make_hu(1), series_uid=SERIES_UID, file_names=["scout.dcm"],
                 sop_uids=["8.8"], per_slice=localizer)

    def coronal(k: int, ds: pydicom.Dataset) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    write_series(tmp_path / "cor", make_hu(6), series_uid="5.3", per_slice=coronal)
    write_series(tmp_path / "topo", make_hu(2), series_uid="5.4", per_slice=coronal)
    found = discover_series(tmp_path)
    assert [s.series_uid for s in found.series] == [SERIES_UID]
    assert len(found.series[0].files) == 4
    reasons = {Path(s.path).name: s.reason for s in found.skipped}
    assert "radiograph" in reasons["cr"] and "LOCALIZER" in reasons["scout.dcm"]
    assert "non-axial" in reasons["cor"] and "localizer" in reasons["topo"]


# ------------------------------------------------------------------------------ layouts and filters

def _layout(root: Path, kind: str, patient: str, series_uid: str, study_uid: str, seed: int) -> Path:
    if kind == "nbia":
        folder = (root / "LIDC-IDRI" / patient / f"01-01-2000-NA-NA-{study_uid[-5:]}"
                  / f"3000566.000000-NA-{series_uid[-5:]}")
    elif kind == "old":
        folder = root / patient / study_uid / series_uid
    else:
        folder = root
    names = None if kind != "flat" else [f"{patient}-{k}.dcm" for k in range(3)]
    write_series(folder, make_hu(3, seed=seed), patient_id=patient, series_uid=series_uid, study_uid=study_uid,
                 file_names=names)
    return folder


@pytest.mark.parametrize("kind", ["nbia", "old", "flat"])
def test_layouts_and_xml_grouping(tmp_path: Path, kind: str) -> None:
    uid1, uid2 = SERIES_UID, "1.3.6.1.4.1.14519.5.2.1.6279.6001.100000000000000000000000000002"
    f1 = _layout(tmp_path, kind, "LIDC-IDRI-0002", uid1, STUDY_UID, 1)
    f2 = _layout(tmp_path, kind, "LIDC-IDRI-0001", uid2, STUDY_UID[:-1] + "9", 2)
    write_lidc_xml(sample_reads(uid1), f1 / "069.xml")
    write_lidc_xml(sample_reads(uid1), f1 / "070.xml")  # a second file for the same series
    (f2 / "cxr.xml").write_text('<IdriReadMessage xmlns="http://www.nih.gov/idri"/>')
    (tmp_path / "stray.xml").write_bytes(b"\x00not xml")
    found = discover_series(tmp_path)
    assert [(s.patient_id, s.series_uid) for s in found.series] == [("LIDC-IDRI-0001", uid2),
                                                                      ("LIDC-IDRI-0002", uid1)]
    assert [p.name for p in found.series[1].xml_files] == ["069.xml", "070.xml"]
    assert found.series[0].xml_files == []
    assert all(len(s.files) == 3 for s in found.series)
    reasons = {Path(s.path).name: s.reason for s in found.skipped}
    assert set(reasons) == {"cxr.xml", "stray.xml"}
    assert "IdriReadMessage" in reasons["cxr.xml"] and "not valid XML" in reasons["stray.xml"]
    if kind == "flat":
        assert all(s.mixed_with for s in found.series)
    else:
        assert not any(s.mixed_with for s in found.series)


def test_patient_filter_with_globs(tmp_path: Path) -> None:
    for i, patient in enumerate(["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0101"]):
        _layout(tmp_path, "nbia", patient, f"1.2.{i}", f"3.4.{i}", i)
    ids = lambda found: [s.patient_id for s in found.series]  # noqa: E731
    assert ids(discover_series(tmp_path, ["LIDC-IDRI-000*"])) == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    assert ids(discover_series(tmp_path, ["LIDC-IDRI-0101", "LIDC-IDRI-0002"])) == ["LIDC-IDRI-0002",
                                                                                   "LIDC-IDRI-0101"]
    assert ids(discover_series(tmp_path, [])) == []
    assert len(discover_series(tmp_path).series) == 3


def test_discover_missing_root(tmp_path: Path) -> None:
    with pytest.raises(InputFileError):
        discover_series(tmp_path / "nope")
