"""nodulekit.inference.inputs: finding and loading scans, world <-> voxel, nodule locations."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _infer_helpers import write_nifti
from nodulekit.errors import InputFileError, NodulekitError
from nodulekit.inference.inputs import NoduleSpec, check_inside, find_scans, image_suffix, load_scan


@pytest.fixture(scope="module")
def scans(tiny_phantom):
    refs = find_scans(tiny_phantom)
    return refs, [load_scan(r) for r in refs]


def manifest(root: Path) -> dict:
    return json.loads((root / "phantom.json").read_text())


def test_find_scans_layouts_and_errors(tiny_phantom, tmp_path, scans):
    refs, loaded = scans
    info = manifest(tiny_phantom)
    assert [r.series_uid for r in refs] == [s["series_uid"] for s in info["scans"]]  # by patient, then UID
    assert all(r.kind == "dicom" and r.name == r.series_uid for r in refs)
    one = find_scans(refs[0].path)
    assert len(one) == 1 and one[0].series_uid == refs[0].series_uid
    assert loaded[0].grid.shape_zyx == (24, 128, 128) and loaded[0].patient_id == "LIDC-IDRI-0001"
    with pytest.raises(InputFileError, match="not found"):
        find_scans(tmp_path / "nope")
    with pytest.raises(InputFileError, match="not one of its files"):
        find_scans(sorted(refs[0].path.glob("*.dcm"))[0])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(InputFileError, match="no CT series or image file found"):
        find_scans(tmp_path / "empty")
    assert image_suffix(Path("a/B.NII.GZ")) == ".nii.gz" and image_suffix(Path("x.raw")) is None


def test_world_voxel_frames_and_reoriented_nifti(tmp_path, scans):
    dicom = scans[1][0]
    point = np.array([43.9, 77.0, -115.0])
    index = dicom.index_zyx(point)
    assert np.allclose(dicom.grid.index_to_mm(index), point[::-1])  # identity direction: grid frame = world
    assert np.allclose(dicom.world_mm(dicom.grid_mm(point)), point)
    path = write_nifti(dicom, tmp_path / "scan.nii.gz", "RAS")
    [ref] = find_scans(path)
    assert ref.kind == "image" and ref.series_uid == "scan"
    image = load_scan(ref)
    assert image.reoriented_from == "RAS" and any("reoriented" in n for n in image.notes)
    assert np.array_equal(image.hu_zyx, dicom.hu_zyx)  # back in LPS order: the DICOM voxels exactly
    assert np.allclose(image.grid.origin_zyx_mm, dicom.grid.origin_zyx_mm)
    assert np.allclose(image.index_zyx(point), index)
    assert np.allclose(image.source_geometry.direction, np.diag([-1.0, -1.0, 1.0]).reshape(-1))
    # an oblique direction: world <-> voxel through the direction cosines
    angle = np.deg2rad(20)
    image.direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    assert np.allclose(image.world_mm(image.grid_mm(point)), point)
    assert image.contains(image.world_mm(image.grid.index_to_mm((0, 0, 0))))
    assert not image.contains(image.world_mm(image.grid.index_to_mm((-0.6, 0, 0))))


def test_contains_and_outside_error(scans):
    scan = scans[1][0]
    last = np.asarray(scan.grid.shape_zyx) - 1
    assert scan.contains(scan.world_mm(scan.grid.index_to_mm(last + 0.49)))
    assert not scan.contains(scan.world_mm(scan.grid.index_to_mm(last + [0, 0, 0.51])))
    spec = NoduleSpec.parse(at="0,0,500")
    with pytest.raises(NodulekitError, match=r"--at: \(0, 0, 500\) mm is outside scan .* z -146.2..-86.2 mm"):
        check_inside(scan, spec.locate(scan))


def test_at_parsing():
    assert NoduleSpec.parse(at="1,-2.5,3e1").points[0].xyz_mm == (1.0, -2.5, 30.0)
    assert NoduleSpec.parse(at="1 2 3").describe() == "--at 1,2,3"
    for bad in ("1,2", "a,b,c", "1,2,nan"):
        with pytest.raises(NodulekitError, match="three numbers"):
            NoduleSpec.parse(at=bad)
    with pytest.raises(NodulekitError, match="one of them"):
        NoduleSpec.parse()
    with pytest.raises(NodulekitError, match="one of them"):
        NoduleSpec.parse(nodules=Path("x.csv"), at="1,2,3")


def test_luna16_csv(tmp_path, scans):
    refs, loaded = scans
    uid = refs[0].series_uid
    path = tmp_path / "annotations.csv"
    path.write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{uid},43.9,77.0,-115.0,12.5\n"
                    f"1.2.3,0,0,0,-1\n{uid},40,70,-110,-1\n,41,71,-111\n")
    spec = NoduleSpec.parse(nodules=path)
    assert spec.kind == "csv" and len(spec.points) == 4
    located = spec.locate(loaded[0])
    assert [p.xyz_mm for p in located] == [(43.9, 77.0, -115.0), (40.0, 70.0, -110.0), (41.0, 71.0, -111.0)]
    assert [p.diameter_mm for p in located] == [12.5, None, None]
    assert located[0].source == "annotations.csv line 2"
    assert spec.select(refs) == refs  # the row without seriesuid applies to every scan
    headerless = tmp_path / "plain.csv"
    headerless.write_text(f"{uid},43.9,77.0,-115.0\n")
    plain = NoduleSpec.parse(nodules=headerless)
    assert plain.select(refs) == [refs[0]] and plain.points[0].diameter_mm is None
    other = tmp_path / "other.csv"
    other.write_text("seriesuid,coordX,coordY,coordZ\n1.2.3,0,0,0\n")
    with pytest.raises(NodulekitError, match="no nodule for the input's scan"):
        NoduleSpec.parse(nodules=other).select(refs)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"seriesuid,coordX,coordY,coordZ\n{uid},1,2,3\n{uid},1,x,3\n")
    with pytest.raises(InputFileError, match="line 3: coordX"):
        NoduleSpec.parse(nodules=bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("uid,x,y,z\n1,2,3,4\n")
    with pytest.raises(InputFileError, match="header lacks seriesuid, coordx"):
        NoduleSpec.parse(nodules=missing)
    with pytest.raises(InputFileError, match="not found"):
        NoduleSpec.parse(nodules=tmp_path / "none.csv")
    with pytest.raises(NodulekitError, match="--at gives one point"):
        NoduleSpec.parse(at="1,2,3").select(refs)


def test_lidc_xml_centroids(tiny_phantom, tmp_path, scans):
    refs, loaded = scans
    for ref, scan, info in zip(refs, loaded, manifest(tiny_phantom)["scans"]):
        spec = NoduleSpec.parse(nodules=ref.series.xml_files[0])
        assert spec.kind == "xml" and spec.select(refs) == [ref]
        located = spec.locate(scan)
        assert len(located) == info["n_nodules"]
        for loc, nodule in zip(located, info["nodules"]):
            index = scan.index_zyx(loc.xyz_mm)
            box = np.asarray(nodule["bbox_zyx"])
            assert np.all(index >= box[:, 0]) and np.all(index <= box[:, 1])  # the centroid lies in its reads' box
            assert loc.diameter_mm is not None and loc.diameter_mm > 3 and "nodule 1" in loc.source
    image = write_nifti(loaded[0], tmp_path / "scan.nii.gz", "LPS")
    with pytest.raises(NodulekitError, match="keyed to DICOM slices"):
        NoduleSpec.parse(nodules=refs[0].series.xml_files[0]).select(find_scans(image))
    not_ct = tmp_path / "cxr.xml"
    not_ct.write_text('<IdriReadMessage xmlns="http://www.nih.gov/idri"><ResponseHeader/></IdriReadMessage>')
    with pytest.raises(InputFileError, match="IdriReadMessage"):
        NoduleSpec.parse(nodules=not_ct)
