from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from _io_helpers import SERIES_UID, STUDY_UID, make_hu, write_series
from nodulekit.io.dicom_write import write_ct_series


def test_files_read_with_pydicom(tmp_path: Path) -> None:
    hu = np.clip(make_hu(4), -1024, None)
    paths = write_series(tmp_path, hu, slice_thickness_mm=2.5)
    assert [p.name for p in paths] == ["1-001.dcm", "1-002.dcm", "1-003.dcm", "1-004.dcm"]
    assert sorted(tmp_path.iterdir()) == paths  # no temporary files left
    ds = pydicom.dcmread(paths[2])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.PatientID == "LIDC-IDRI-0001"
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (STUDY_UID, SERIES_UID)
    assert [float(v) for v in ds.ImagePositionPatient] == [-170.0, -160.0, -297.5]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.8]
    assert float(ds.SliceThickness) == 2.5 and ds.InstanceNumber == 3
    assert ds.PixelRepresentation == 0  # hu + 1024 fits uint16
    hu_back = ds.pixel_array.astype(np.int32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu_back, hu[2])
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == 4


def test_signed_storage_and_per_slice_rescale(tmp_path: Path) -> None:
    hu = make_hu(3)
    hu[0, 0, 0] = -3000  # below intercept -1024: needs int16 storage
    paths = write_series(tmp_path, hu, rescale_slope=[1, 2, 0.5], rescale_intercept=[-1024, -1000, 0])
    first = pydicom.dcmread(paths[0])
    assert first.PixelRepresentation == 1
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        back = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(back - hu[k]).max() <= float(ds.RescaleSlope) / 2


def test_overrides_and_hook(tmp_path: Path) -> None:
    hu = make_hu(3)

    def hook(k: int, ds: pydicom.Dataset) -> None:
        ds.Modality = "CR" if k == 0 else ds.Modality

    paths = write_series(tmp_path, hu, z_positions_mm=[5.0, 1.0, 3.0], file_names=["a.dcm", "b/c.dcm", "z"],
                         sop_uids=["1.1", "1.2", "1.3"], instance_numbers=[9, 8, 7], per_slice=hook)
    assert paths[1] == tmp_path / "b" / "c.dcm"
    ds = [pydicom.dcmread(p) for p in paths]
    assert [float(d.ImagePositionPatient[2]) for d in ds] == [5.0, 1.0, 3.0]
    assert [d.InstanceNumber for d in ds] == [9, 8, 7]
    assert [d.SOPInstanceUID for d in ds] == ["1.1", "1.2", "1.3"]
    assert ds[0].Modality == "CR" and ds[1].Modality == "CT"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_ct_series(tmp_path, np.zeros((2, 2), np.int16), spacing_zyx_mm=(1, 1, 1))
    with pytest.raises(ValueError):
        write_series(tmp_path, make_hu(2), z_positions_mm=[1.0])
    with pytest.raises(ValueError):
        write_series(tmp_path, np.full((1, 2, 2), 40000), pixel_dtype="int16")


def test_simpleitk_reads_it(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    hu = make_hu(5)
    paths = write_series(tmp_path, hu)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in paths])
    reader.SetOutputPixelType(sitk.sitkInt16)
    image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.7, 1.25))
    np.testing.assert_allclose(image.GetOrigin(), (-170.0, -160.0, -300.0))


def test_decimal_string_keeps_precision_within_16_characters():
    from nodulekit.io.dicom_write import decimal_string

    assert decimal_string(32.34375) == "32.34375"
    assert decimal_string(-1487.5) == "-1487.5"
    assert float(decimal_string(0.1 + 0.2)) == pytest.approx(0.3, abs=1e-14)
    long_value = -123456.78901234567
    assert len(decimal_string(long_value)) <= 16
    assert float(decimal_string(long_value)) == pytest.approx(long_value, abs=1e-8)
