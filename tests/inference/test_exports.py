"""nodulekit.inference.exports: NIfTI and DICOM-SEG in the scan's geometry, result tables, PNGs."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from _infer_helpers import write_nifti
from nodulekit.inference import exports
from nodulekit.inference.inputs import NoduleLocation, find_scans, load_scan
from nodulekit.inference.nodules import NodulePrediction


@pytest.fixture(scope="module")
def scan(tiny_phantom):
    return load_scan(find_scans(tiny_phantom)[0])


def labelled(scan):
    """Two box 'nodules' in the scan's label map, and their predictions."""
    labels = np.zeros(scan.grid.shape_zyx, np.uint8)
    labels[10:13, 50:60, 40:52] = 1
    labels[4:6, 90:95, 90:100] = 2
    nodules = []
    for i in (1, 2):
        box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(labels == i))
        centre = scan.grid.index_to_mm([(s.start + s.stop - 1) / 2 for s in box])
        nodules.append(NodulePrediction(i, NoduleLocation(tuple(scan.world_mm(centre)), None, "--at"), centre,
                                        {"malignancy": np.float64(0.25 * i)}, box, None, labels[box] == i,
                                        measures={"diameter_mm": 7.5, "volume_mm3": 100.0}))
    return labels, nodules


def test_label_nifti_has_the_scan_geometry(tmp_path, scan):
    import SimpleITK as sitk

    labels, _ = labelled(scan)
    path = exports.write_label_nifti(tmp_path / "mask.nii.gz", labels, scan)
    image = sitk.ReadImage(str(path))
    series = sitk.ImageSeriesReader()
    series.SetFileNames(scan.files)
    reference = series.Execute()
    assert image.GetSize() == reference.GetSize()
    assert np.allclose(image.GetSpacing(), reference.GetSpacing())
    assert np.allclose(image.GetOrigin(), reference.GetOrigin())
    assert np.allclose(image.GetDirection(), reference.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(image), labels)


def test_label_nifti_of_a_reoriented_image_goes_back(tmp_path, scan):
    import SimpleITK as sitk

    source = write_nifti(scan, tmp_path / "ras.nii.gz", "RAS")
    image_scan = load_scan(find_scans(source)[0])
    labels, _ = labelled(image_scan)
    written = sitk.ReadImage(str(exports.write_label_nifti(tmp_path / "mask.nii.gz", labels, image_scan)))
    original = sitk.ReadImage(str(source))
    assert written.GetSize() == original.GetSize() and written.GetDirection() == original.GetDirection()
    assert written.GetOrigin() == original.GetOrigin() and written.GetSpacing() == original.GetSpacing()
    # the same world point carries label 1 in both frames
    point = image_scan.world_mm(image_scan.grid.index_to_mm((11, 55, 45)))
    index = written.TransformPhysicalPointToIndex(tuple(point))
    assert sitk.GetArrayFromImage(written)[index[::-1]] == 1


def test_dicom_seg_references_the_series(tmp_path, scan):
    import highdicom as hd

    labels, _ = labelled(scan)
    path = exports.write_dicom_seg(tmp_path / "seg.dcm", labels, scan, ["nodule 1", "nodule 2"],
                                   description="nodulekit test", software_version="0.1.0")
    ds = pydicom.dcmread(path)
    source = pydicom.dcmread(scan.files[0], stop_before_pixels=True)
    assert ds.Modality == "SEG" and len(ds.SegmentSequence) == 2
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == scan.ref.series_uid
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    referenced = {item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(scan.sop_uids)
    seg = hd.seg.segread(path)
    volume = seg.get_volume(combine_segments=True)
    assert np.array_equal(np.unique(volume.array), [0, 1, 2])
    assert int((volume.array == 1).sum()) == int((labels == 1).sum())


def test_dicom_seg_of_empty_masks_logs_nothing(tmp_path, scan, caplog):
    labels, _ = labelled(scan)
    with caplog.at_level("WARNING"):
        path = exports.write_dicom_seg(tmp_path / "seg.dcm", np.zeros_like(labels), scan, ["nodule 1"],
                                       description="nodulekit test", software_version="0.1.0")
    assert pydicom.dcmread(path).Modality == "SEG"
    assert not [r for r in caplog.records if r.name.startswith("highdicom")]
    assert logging.getLogger("highdicom").level == logging.NOTSET  # restored


def test_tables_and_columns(tmp_path, scan):
    assert exports.task_columns("malignancy", np.float64(0.7)) == {"malignancy_prob": 0.7, "malignancy_class": 1}
    assert exports.task_columns("m", np.array([0.6, 0.4])) == {"m_prob": 0.4, "m_class": 0}
    three = exports.task_columns("cls", np.array([0.2, 0.5, 0.3]))
    assert three["cls_class"] == 1 and three["cls_prob_2"] == 0.3 and "cls_prob" not in three
    undefined = exports.task_columns("m", np.float64("nan"))
    assert np.isnan(undefined["m_prob"]) and undefined["m_class"] is None
    _, nodules = labelled(scan)
    nodules[1].measures["diameter_mm"] = float("nan")
    rows = [exports.result_row(scan, n) for n in nodules]
    path = exports.write_results_csv(tmp_path / "results.csv", rows)
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    header = list(read[0])
    assert header[:9] == list(exports.ID_COLUMNS) and header[-len(exports.MEASURE_COLUMNS):] == list(exports.MEASURE_COLUMNS)
    assert header[9:11] == ["malignancy_prob", "malignancy_class"]
    assert read[0]["series_uid"] == scan.ref.series_uid and read[1]["nodule"] == "2"
    assert read[1]["malignancy_prob"] == "0.5" and read[1]["diameter_mm"] == "" and read[0]["input_diameter_mm"] == ""
    document = {"rows": rows, "x": np.float32(1.5), "p": Path("a")}
    exports.write_results_json(tmp_path / "r.json", document)
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["rows"][1]["diameter_mm"] is None and back["x"] == 1.5 and back["p"] == "a"


def test_png_overlay(tmp_path, scan):
    labels, nodules = labelled(scan)
    path = exports.write_overlay_png(tmp_path / "n1.png", scan, nodules[0], labels, "nodule 1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    exports.write_overlay_png(tmp_path / "n2.png", scan, nodules[1], None, "no mask")
    assert (tmp_path / "n2.png").is_file()
