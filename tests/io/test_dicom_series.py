from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from _io_helpers import SERIES_UID, STUDY_UID, make_hu, write_series
from nodulekit.errors import InputFileError
from nodulekit.io import dicom_series
from nodulekit.io.dicom_discovery import SeriesFiles, discover_series
from nodulekit.io.dicom_series import load_series

Z0 = -300.0
DZ = 1.25


def _only_series(root: Path) -> SeriesFiles:
    found = discover_series(root)
    assert len(found.series) == 1, found
    return found.series[0]


def _load(root: Path):
    return load_series(_only_series(root))


def _codes(volume) -> list[str]:
    return volume.problem_codes()


# ------------------------------------------------------------------------------ ordering

@pytest.mark.parametrize("case", ["reversed", "shuffled"])
def test_slices_ordered_by_position_not_names_or_instance_numbers(tmp_path: Path, case: str) -> None:
    hu = make_hu(10)
    order = np.arange(10)[::-1] if case == "reversed" else np.random.default_rng(3).permutation(10)
    z = Z0 + DZ * order
    # file names and instance numbers ascend in the written order, i.e. they lie about z
    write_series(tmp_path, hu[order], z_positions_mm=z, file_names=[f"{k + 1}.dcm" for k in range(10)],
                 instance_numbers=list(range(1, 11)), sop_uids=[f"1.2.{k}" for k in order])
    volume = _load(tmp_path)
    np.testing.assert_array_equal(volume.hu_zyx, hu)
    assert volume.hu_zyx.dtype == np.int16
    np.testing.assert_allclose(volume.z_positions_mm, Z0 + DZ * np.arange(10))
    assert volume.spacing_zyx_mm == pytest.approx((DZ, 0.7, 0.8))
    assert volume.origin_xyz_mm == pytest.approx((-170.0, -160.0, Z0))
    assert volume.direction_xyz == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert volume.sop_uids == [f"1.2.{k}" for k in range(10)]
    assert volume.problems == []
    assert (volume.patient_id, volume.series_uid, volume.study_uid) == ("LIDC-IDRI-0001", SERIES_UID,
                                                                         STUDY_UID)


def test_large_positive_z_and_old_file_names(tmp_path: Path) -> None:
    hu = make_hu(6)
    names = ["104.dcm", "11.dcm", "2.dcm", "57.dcm", "3.dcm", "1.dcm"]
    write_series(tmp_path, hu, origin_xyz_mm=(0, 0, 1487.5), spacing_zyx_mm=(2.5, 0.7, 0.7),
                 file_names=names)
    volume = _load(tmp_path)
    np.testing.assert_array_equal(volume.hu_zyx, hu)
    assert volume.z_positions_mm[0] == 1487.5


def test_per_slice_rescale(tmp_path: Path) -> None:
    hu = make_hu(4)
    write_series(tmp_path, hu, rescale_slope=[1, 1, 2, 1], rescale_intercept=[-1024, -1000, -2048, 0],
                 pixel_dtype="int16")
    volume = _load(tmp_path)
    expected = hu.copy()
    expected[2] = np.rint((hu[2] + 2048) / 2) * 2 - 2048  # slope 2 loses the odd values
    np.testing.assert_array_equal(volume.hu_zyx, expected)


def test_rescale_clips_to_int16(tmp_path: Path) -> None:
    hu = make_hu(2)
    write_series(tmp_path, hu, rescale_slope=[1, 4], rescale_intercept=0, pixel_dtype="int16")
    ds = pydicom.dcmread(sorted(tmp_path.iterdir())[1])
    raw = ds.pixel_array.copy()
    raw[0, 0] = 30000  # 4 * 30000 does not fit int16
    ds.PixelData = raw.tobytes()
    ds.save_as(sorted(tmp_path.iterdir())[1])
    volume = _load(tmp_path)
    assert volume.hu_zyx[1, 0, 0] == 32767


def test_z_spacing_from_positions_not_slice_thickness(tmp_path: Path) -> None:
    write_series(tmp_path, make_hu(5), spacing_zyx_mm=(0.625, 0.7, 0.7), slice_thickness_mm=1.25)
    volume = _load(tmp_path)
    assert volume.spacing_zyx_mm[0] == pytest.approx(0.625)
    assert volume.slice_thickness_mm == 1.25 and volume.problems == []


def test_twelve_bit_signed_and_generic_decoder_agree(tmp_path: Path, monkeypatch) -> None:
    hu = np.clip(make_hu(3), -2000, 2000).astype(np.int16)

    def twelve_bits(k: int, ds: pydicom.Dataset) -> None:
        ds.BitsStored, ds.HighBit = 12, 11

    write_series(tmp_path, hu, rescale_intercept=0, pixel_dtype="int16", per_slice=twelve_bits)
    fast = _load(tmp_path)
    monkeypatch.setattr(dicom_series, "_native_pixel_location", lambda *a: (None, None))
    generic = _load(tmp_path)
    np.testing.assert_array_equal(fast.hu_zyx, hu)
    np.testing.assert_array_equal(generic.hu_zyx, hu)


# ------------------------------------------------------------------------------ problems

def test_duplicate_positions_keep_lower_instance_number(tmp_path: Path) -> None:
    hu = make_hu(6)
    write_series(tmp_path, hu, instance_numbers=[10, 11, 12, 13, 14, 15])
    dup = make_hu(1, seed=9)
    write_series(tmp_path, dup, z_positions_mm=[Z0 + 2 * DZ], file_names=["0-dup.dcm"], sop_uids=["9.9"],
                 instance_numbers=[20])
    volume = _load(tmp_path)
    np.testing.assert_array_equal(volume.hu_zyx, hu)
    assert _codes(volume) == ["duplicate_slices"]
    assert "0-dup.dcm" in volume.problems[0].detail and "9.9" not in volume.sop_uids
    assert volume.spacing_zyx_mm[0] == pytest.approx(DZ)
    # the duplicate with the lower InstanceNumber wins
    write_series(tmp_path, dup, z_positions_mm=[Z0 + 2 * DZ], file_names=["0-dup.dcm"], sop_uids=["9.9"],
                 instance_numbers=[1])
    volume = _load(tmp_path)
    np.testing.assert_array_equal(volume.hu_zyx[2], dup[0])
    assert "9.9" in volume.sop_uids


def test_missing_slice(tmp_path: Path) -> None:
    hu = make_hu(8)
    paths = write_series(tmp_path, hu)
    paths[4].unlink()
    volume = _load(tmp_path)
    assert _codes(volume) == ["missing_slices"]
    assert "-296.25 -> -293.75 mm" in volume.problems[0].detail and "about 1 missing" in volume.problems[0].detail
    np.testing.assert_array_equal(volume.hu_zyx, np.delete(hu, 4, axis=0))
    assert volume.spacing_zyx_mm[0] == pytest.approx(DZ)


def test_uneven_spacing(tmp_path: Path) -> None:
    z = [0.0, 1.25, 2.5, 3.0, 4.25, 5.5, 6.75]
    write_series(tmp_path, make_hu(7), z_positions_mm=z)
    volume = _load(tmp_path)
    assert _codes(volume) == ["uneven_spacing"]
    assert "2.5 -> 3 mm" in volume.problems[0].detail
    assert volume.spacing_zyx_mm[0] == pytest.approx(1.25)


def test_tilted_orientation_is_recorded(tmp_path: Path) -> None:
    angle = math.radians(10)
    col = (0.0, math.cos(angle), -math.sin(angle))
    normal = np.cross((1, 0, 0), col)
    hu = make_hu(5)

    def tilt(k: int, ds: pydicom.Dataset) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, *[round(c, 6) for c in col]]
        ds.ImagePositionPatient = [round(v, 4) for v in (np.array([-170, -160, Z0]) + 2.0 * k * normal)]

    order = [3, 0, 4, 1, 2]
    write_series(tmp_path, hu[order], per_slice=lambda k, ds: tilt(order[k], ds))
    found = discover_series(tmp_path)
    assert len(found.series) == 1  # oblique but near axial: ingested, with a problem
    volume = load_series(found.series[0])
    assert _codes(volume) == ["non_axial"]
    np.testing.assert_array_equal(volume.hu_zyx, hu)
    assert volume.spacing_zyx_mm[0] == pytest.approx(2.0, abs=1e-3)
    direction = np.array(volume.direction_xyz).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 2], normal, atol=1e-5)


def test_truncated_pixel_data_is_named_and_skipped(tmp_path: Path) -> None:
    hu = make_hu(6)
    paths = write_series(tmp_path, hu)
    paths[2].write_bytes(paths[2].read_bytes()[:-100])
    pydicom.dcmread(paths[2])  # the header alone still reads (LIDC-FACTS 6)
    volume = _load(tmp_path)
    assert _codes(volume) == ["missing_slices", "truncated_file"]
    truncated = [p for p in volume.problems if p.code == "truncated_file"][0]
    assert str(paths[2]) in truncated.detail
    np.testing.assert_array_equal(volume.hu_zyx, np.delete(hu, 2, axis=0))
    assert str(paths[2]) not in volume.files_used


def test_unreadable_file_and_non_dicom(tmp_path: Path) -> None:
    hu = make_hu(4)
    paths = write_series(tmp_path, hu)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "._1-001.dcm").write_bytes(b"\x00" * 300)  # macOS AppleDouble: ignored
    found = discover_series(tmp_path)
    assert [s.path for s in found.skipped] == [str(tmp_path / "notes.txt")]
    assert "not a DICOM file" in found.skipped[0].reason
    # a file that became unreadable after discovery: named, the rest loads
    paths[0].write_bytes(b"DICM garbage")
    volume = load_series(found.series[0])
    assert _codes(volume) == ["unreadable_file"] and str(paths[0]) in volume.problems[0].detail
    np.testing.assert_array_equal(volume.hu_zyx, hu[1:])


def test_no_readable_slice_raises_naming_folder(tmp_path: Path) -> None:
    paths = write_series(tmp_path, make_hu(2))
    series = _only_series(tmp_path)
    for p in paths:
        p.write_bytes(p.read_bytes()[:-600])
    with pytest.raises(InputFileError) as info:
        load_series(series)
    assert str(tmp_path) in str(info.value)


def test_mixed_series_in_one_folder(tmp_path: Path) -> None:
    hu_a, hu_b = make_hu(4), make_hu(3, seed=5)
    write_series(tmp_path, hu_a)
    write_series(tmp_path, hu_b, series_uid="1.2.3.4", file_names=["b1.dcm", "b2.dcm", "b3.dcm"],
                 z_positions_mm=[Z0, Z0 + 5, Z0 + 10])
    found = discover_series(tmp_path)
    assert [s.series_uid for s in found.series] == ["1.2.3.4", SERIES_UID]
    volume_a = load_series(found.series[1])
    np.testing.assert_array_equal(volume_a.hu_zyx, hu_a)
    assert _codes(volume_a) == ["mixed_series"] and "1.2.3.4" in volume_a.problems[0].detail
    # a foreign file in the file list is dropped, not stacked
    series = found.series[1]
    series.files.append(tmp_path / "b2.dcm")
    volume = load_series(series)
    np.testing.assert_array_equal(volume.hu_zyx, hu_a)
    assert any("b2.dcm" in p.detail for p in volume.problems if p.code == "mixed_series")


def test_inconsistent_geometry_slice_dropped(tmp_path: Path) -> None:
    hu = make_hu(5)
    write_series(tmp_path, hu)
    odd = make_hu(1, n_y=16, n_x=16)
    write_series(tmp_path, odd, z_positions_mm=[Z0 + 5 * DZ], file_names=["odd.dcm"], sop_uids=["7.7"])
    volume = _load(tmp_path)
    assert _codes(volume) == ["inconsistent_geometry"] and "odd.dcm" in volume.problems[0].detail
    np.testing.assert_array_equal(volume.hu_zyx, hu)


# ------------------------------------------------------------------------------ SimpleITK parity

def test_matches_simpleitk_on_clean_series(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    hu = make_hu(9)
    order = np.random.default_rng(1).permutation(9)
    write_series(tmp_path, hu[order], z_positions_mm=Z0 + DZ * order, rescale_intercept=-1000)
    series = _only_series(tmp_path)
    volume = load_series(series)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path), SERIES_UID)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkInt16)
    image = reader.Execute()
    # SimpleITK is x, y, z; GetArrayFromImage is already z, y, x
    np.testing.assert_array_equal(volume.hu_zyx, sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(volume.spacing_zyx_mm[::-1], image.GetSpacing())
    np.testing.assert_allclose(volume.origin_xyz_mm, image.GetOrigin())
    np.testing.assert_allclose(volume.direction_xyz, image.GetDirection())
