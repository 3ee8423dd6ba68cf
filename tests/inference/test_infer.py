"""nodulekit.inference.infer / .nodules: models on a tiny phantom at given points, masks back in the scan."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _infer_helpers import threshold_predictions, write_nifti
from _inference_helpers import fake_run, preset_info, store_rows, write_store
from nodulekit.errors import InputFileError, NodulekitError
from nodulekit.inference.infer import infer
from nodulekit.inference.inputs import NoduleLocation, NoduleSpec, find_scans, load_scan
from nodulekit.inference.nodules import NodulePrediction, component_near, paint_labels, touching


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny run folders with random weights: mtnet, cascade (2 folds), munet3d, msunet, mtcnn."""
    work = tmp_path_factory.mktemp("infer-runs")
    made = {}
    for model, fold, seed in (("mtnet", 0, 0), ("cascade", 0, 0), ("cascade", 1, 1), ("munet3d", 0, 0),
                              ("msunet", 0, 0), ("mtcnn", 0, 0)):
        store = work / "crop" / model / "patches.h5"
        if not store.is_file():
            write_store(store, preset_info(model), store_rows(2, [0, 1]))
        made[f"{model}{fold}"] = fake_run(work, model, fold, f"crop/{model}/patches.h5", seed=seed)
    return made


@pytest.fixture(scope="module")
def phantom(tiny_phantom):
    return tiny_phantom, json.loads((tiny_phantom / "phantom.json").read_text())


def at(point) -> NoduleSpec:
    return NoduleSpec.parse(at=",".join(f"{v:.3f}" for v in point))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_mtnet_at_a_point_writes_every_output(tmp_path, runs, phantom):
    import pydicom
    import SimpleITK as sitk

    root, info = phantom
    ref = find_scans(root)[0]
    point = info["scans"][0]["nodules"][0]["bbox_center_xyz_mm"]
    out = tmp_path / "out"
    result = infer([runs["mtnet0"]], ref.path, at(point), out, png=True)
    uid = ref.series_uid
    names = {str(p.relative_to(out)) for p in result.files}
    assert names == {"results.csv", "results.json", f"masks/{uid}.nii.gz", f"dicom-seg/{uid}.dcm",
                     f"png/{uid}-nodule1.png"}
    assert sorted(p.name for p in out.iterdir()) == ["dicom-seg", "masks", "png", "results.csv", "results.json"]
    [row] = read_csv(out / "results.csv")
    assert row["series_uid"] == uid and row["nodule"] == "1" and float(row["x_mm"]) == pytest.approx(point[0], abs=1e-3)
    assert "malignancy_prob" in row and row["malignancy_class"] in ("0", "1") and row["source"] == "--at"
    document = json.loads((out / "results.json").read_text())
    assert document["format"] == "nodulekit-infer" and document["plan"] == "mtnet"
    assert document["models"][0]["model"] == "mtnet" and document["scans"][0]["nodules"][0]["slices"]
    mask = sitk.ReadImage(str(out / "masks" / f"{uid}.nii.gz"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(load_scan(ref).files)
    series = reader.Execute()
    assert mask.GetSize() == series.GetSize() and np.allclose(mask.GetSpacing(), series.GetSpacing())
    assert np.allclose(mask.GetOrigin(), series.GetOrigin()) and np.allclose(mask.GetDirection(), series.GetDirection())
    seg = pydicom.dcmread(out / "dicom-seg" / f"{uid}.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert result.timings["predict"] > 0 and len(result.rows) == 1


def test_labels_at_the_nodules_of_a_folder_of_series(tmp_path, runs, phantom, monkeypatch):
    """A stand-in model with known masks (CT above about -300 HU): the labels sit on the phantom's
    nodules and the mask's diameter is the readers' consensus diameter."""
    import SimpleITK as sitk

    import nodulekit.inference.predict as engine

    monkeypatch.setattr(engine, "predict_patches", threshold_predictions)
    root, _ = phantom
    refs = find_scans(root)
    truth = {}
    lines = ["seriesuid,coordX,coordY,coordZ,diameter_mm"]
    for ref in refs:
        [loc] = NoduleSpec.parse(nodules=ref.series.xml_files[0]).locate(load_scan(ref))
        truth[ref.series_uid] = loc
        lines.append(f"{ref.series_uid},{loc.xyz_mm[0]},{loc.xyz_mm[1]},{loc.xyz_mm[2]},{loc.diameter_mm}")
    (tmp_path / "nodules.csv").write_text("\n".join(lines) + "\n")
    result = infer([runs["mtnet0"]], root, NoduleSpec.parse(nodules=tmp_path / "nodules.csv"), tmp_path / "out")
    assert len(result.rows) == 3 and len(result.scans) == 3
    for row in read_csv(tmp_path / "out" / "results.csv"):
        loc = truth[row["series_uid"]]
        mask = sitk.ReadImage(str(tmp_path / "out" / "masks" / f"{row['scan']}.nii.gz"))
        index = mask.TransformPhysicalPointToIndex(loc.xyz_mm)
        assert sitk.GetArrayFromImage(mask)[index[::-1]] == 1
        assert float(row["diameter_mm"]) == pytest.approx(loc.diameter_mm, abs=1.5)
        assert float(row["mask_distance_mm"]) == 0 and float(row["volume_mm3"]) > 20
        assert float(row["centroid_z_mm"]) == pytest.approx(loc.xyz_mm[2], abs=2.5)
    # the XML itself gives the same nodule
    ref = refs[1]
    xml = infer([runs["mtnet0"]], ref.path, NoduleSpec.parse(nodules=ref.series.xml_files[0]), tmp_path / "xml")
    [row] = xml.rows
    assert row["source"].endswith("nodule 1 (4 reads)")
    assert row["diameter_mm"] == pytest.approx(next(r for r in result.rows if r["scan"] == ref.name)["diameter_mm"])


def test_reoriented_nifti_input(tmp_path, runs, phantom, monkeypatch):
    import SimpleITK as sitk

    import nodulekit.inference.predict as engine

    monkeypatch.setattr(engine, "predict_patches", threshold_predictions)
    root, info = phantom
    ref = find_scans(root)[1]
    source = write_nifti(load_scan(ref), tmp_path / "scan.nii.gz", "RAS")
    point = info["scans"][1]["nodules"][0]["bbox_center_xyz_mm"]
    result = infer([runs["mtnet0"]], source, at(point), tmp_path / "out")
    assert "dicom_seg" not in result.scans[0]["files"]
    mask = sitk.ReadImage(str(tmp_path / "out" / "masks" / "scan.nii.gz"))
    original = sitk.ReadImage(str(source))
    assert mask.GetDirection() == original.GetDirection() and mask.GetOrigin() == original.GetOrigin()
    assert sitk.GetArrayFromImage(mask)[mask.TransformPhysicalPointToIndex(point)[::-1]] == 1


def test_bad_inputs_write_nothing(tmp_path, runs, phantom):
    root, info = phantom
    ref = find_scans(root)[0]
    out = tmp_path / "out"
    with pytest.raises(NodulekitError, match=r"--at: \(0, 0, 500\) mm is outside scan"):
        infer([runs["mtnet0"]], ref.path, NoduleSpec.parse(at="0,0,500"), out)
    assert not out.exists()
    point = info["scans"][0]["nodules"][0]["bbox_center_xyz_mm"]
    infer([runs["mtnet0"]], ref.path, at(point), out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    csv_path = tmp_path / "far.csv"
    csv_path.write_text(f"seriesuid,coordX,coordY,coordZ\n{ref.series_uid},{point[0]},{point[1]},{point[2]}\n"
                        f"{ref.series_uid},400,0,{point[2]}\n")
    with pytest.raises(NodulekitError, match="far.csv line 3: .* is outside scan"):
        infer([runs["mtnet0"]], ref.path, NoduleSpec.parse(nodules=csv_path), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the earlier outputs, untouched
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    with pytest.raises(InputFileError, match="broken.nii.gz: not a readable image"):
        infer([runs["mtnet0"]], broken, NoduleSpec.parse(at="0,0,0"), tmp_path / "out2")
    truncated = tmp_path / "truncated"
    shutil.copytree(ref.path, truncated)
    for path in truncated.glob("*.dcm"):
        path.write_bytes(path.read_bytes()[:-20000])
    with pytest.raises(InputFileError, match="no slice with readable pixel data"):
        infer([runs["mtnet0"]], truncated, at(point), tmp_path / "out3")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "masks").mkdir()
    with pytest.raises(NodulekitError, match="not written by nodulekit infer"):
        infer([runs["mtnet0"]], ref.path, at(point), tmp_path / "foreign")


def test_model_errors(tmp_path, runs, phantom):
    root, info = phantom
    ref = find_scans(root)[0]
    spec = at(info["scans"][0]["nodules"][0]["bbox_center_xyz_mm"])
    old = tmp_path / "old-run"
    shutil.copytree(runs["mtnet0"], old)
    payload = torch.load(old / "model.pt", weights_only=True)
    torch.save({**payload, "format": 99}, old / "model.pt")
    with pytest.raises(NodulekitError, match="checkpoint format 99"):
        infer([old], ref.path, spec, tmp_path / "out")
    with pytest.raises(NodulekitError, match="mixes cascade, mtnet"):
        infer([runs["mtnet0"], runs["cascade0"]], ref.path, spec, tmp_path / "out")
    with pytest.raises(NodulekitError, match="add the munet3d run as another --model"):
        infer([runs["msunet0"]], ref.path, spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ensemble_two_stage_and_views(tmp_path, runs, phantom):
    from nodulekit.inference.chain import link_coarse_run

    root, info = phantom
    ref = find_scans(root)[1]
    spec = at(info["scans"][1]["nodules"][0]["bbox_center_xyz_mm"])
    single = [infer([runs[f"cascade{k}"]], ref.path, spec, tmp_path / f"c{k}").rows[0] for k in (0, 1)]
    both = infer([runs["cascade0"], runs["cascade1"]], ref.path, spec, tmp_path / "ensemble")
    assert "ensemble of 2 runs" in both.plan
    probs = [k for k in both.rows[0] if "_prob" in k]
    assert probs and all(both.rows[0][k] == pytest.approx((single[0][k] + single[1][k]) / 2, abs=1e-6) for k in probs)
    chained = infer([runs["munet3d0"], runs["msunet0"]], ref.path, spec, tmp_path / "two")
    assert "two stages" in chained.plan and (tmp_path / "two" / "masks" / f"{ref.name}.nii.gz").is_file()
    assert {"malignancy_prob", "margin_prob", "texture_prob", "calcification_prob"} <= set(chained.rows[0])
    link_coarse_run(runs["msunet0"], runs["munet3d0"])
    linked = infer([runs["msunet0"]], ref.path, spec, tmp_path / "linked")
    assert linked.rows[0]["malignancy_prob"] == pytest.approx(chained.rows[0]["malignancy_prob"], nan_ok=True)
    views = infer([runs["mtcnn0"]], ref.path, spec, tmp_path / "views")
    assert "malignancy_prob" in views.rows[0] and views.rows[0]["diameter_mm"] is None
    assert not (tmp_path / "views" / "masks").exists() and views.scans[0]["files"] == {}


def test_components_growth_and_overlaps():
    mask = np.zeros((9, 9), bool)
    mask[1:3, 1:3] = True
    mask[5:8, 5:8] = True
    near, distance = component_near(mask, (6.0, 6.0), (1.0, 1.0))
    assert near.sum() == 9 and distance == 0
    near, distance = component_near(mask, (3.4, 3.4), (1.0, 1.0))
    assert near.sum() == 4 and distance == pytest.approx(np.hypot(1.4, 1.4))
    assert np.isnan(component_near(np.zeros((3, 3), bool), (1, 1), (1, 1))[1])
    previous = np.zeros((9, 9), bool)
    previous[4, 4] = True
    assert touching(mask, previous).sum() == 9 and not touching(mask, np.zeros_like(mask)).any()
    # two nodules claim one voxel: the higher probability wins, both masks updated
    a = NodulePrediction(1, NoduleLocation((0, 0, 0)), np.zeros(3), box=(slice(0, 2), slice(0, 2), slice(0, 2)),
                         prob=np.full((2, 2, 2), 0.6, np.float32), mask=np.ones((2, 2, 2), bool))
    b = NodulePrediction(2, NoduleLocation((0, 0, 0)), np.zeros(3), box=(slice(1, 3), slice(1, 3), slice(1, 3)),
                         prob=np.full((2, 2, 2), 0.9, np.float32), mask=np.ones((2, 2, 2), bool))
    labels = paint_labels([a, b], (3, 3, 3))
    assert labels[1, 1, 1] == 2 and labels[0, 0, 0] == 1 and a.mask.sum() == 7 and b.mask.sum() == 8
    assert (labels == 1).sum() == 7 and (labels == 2).sum() == 8


def test_precision_staging_and_refused_modes(tmp_path, runs, phantom):
    from nodulekit.inference.nodules import _max_steps, geometry_of, resolve_precision
    from nodulekit.inference.predict import load_model

    root, info = phantom
    ref = find_scans(root)[1]
    spec = at(info["scans"][1]["nodules"][0]["bbox_center_xyz_mm"])
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(NodulekitError, match="--precision 'fp16'"):
        resolve_precision("fp16", "cpu")
    stale = tmp_path / "out" / ".infer-partial-999999999"
    stale.mkdir(parents=True)
    fp32 = infer([runs["cascade0"]], ref.path, spec, tmp_path / "out", precision="fp32")
    assert not stale.exists() and json.loads((tmp_path / "out" / "results.json").read_text())["precision"] == "fp32"
    bf16 = infer([runs["cascade0"]], ref.path, spec, tmp_path / "bf16", precision="bf16")
    probs = [k for k in fp32.rows[0] if "_prob" in k]
    assert all(abs(fp32.rows[0][k] - bf16.rows[0][k]) < 0.05 for k in probs)
    masked = fake_run(runs["cascade0"].parent.parent, "cascade", 2, "crop/cascade/patches.h5",
                      model_overrides={"mode": "gt_masked"})
    with pytest.raises(NodulekitError, match="model.mode = gt_masked"):
        infer([masked], ref.path, spec, tmp_path / "masked")
    # 2D growth limit: the nodule's radius + 1 slice, else half the patch width
    mtnet = load_model(runs["mtnet0"])
    scan = load_scan(ref)
    geometry = geometry_of(mtnet)
    assert _max_steps(geometry, scan, 10.0) == int(np.ceil(5.0 / scan.grid.spacing_zyx_mm[0])) + 1
    dz, dy = scan.grid.spacing_zyx_mm[:2]
    assert _max_steps(geometry, scan, None) == int(np.ceil(64 * dy / 2 / dz))


class _DiscPlan:
    """A stand-in 2D model: every patch gets a disc of ``radius_px`` at its centre (a tube through
    the slices, like a vessel a weak model would follow), or the whole patch with ``radius_px=None``."""

    name = "mtnet"

    def __init__(self, radius_px: float | None) -> None:
        from nodulekit.patches.presets import PRESETS

        self.geometry = PRESETS["mtnet"]
        self.radius_px = radius_px

    def disc(self) -> np.ndarray:
        size = self.geometry.size
        yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
        return np.ones((size, size), bool) if self.radius_px is None else np.hypot(yy, xx) <= self.radius_px

    def predict(self, images, **_):
        from nodulekit.inference.predict import PatchPredictions

        return PatchPredictions(np.repeat(self.disc()[None].astype(np.float32), len(images), axis=0))


def test_slice_growth_stops_at_the_centre_extent_and_flags_patch_edges(phantom):
    from nodulekit.inference.nodules import Z_GROWTH_PER_INPLANE_EXTENT, predict_scan

    root, info = phantom
    ref = find_scans(root)[1]
    scan = load_scan(ref)
    dz, dy = scan.grid.spacing_zyx_mm[:2]
    centre = NoduleLocation(tuple(info["scans"][1]["nodules"][0]["bbox_center_xyz_mm"]))
    plan = _DiscPlan(3)
    tube = predict_scan(plan, scan, [centre]).nodules[0]
    extent_px = int(plan.disc().any(axis=1).sum())
    steps = int(np.ceil(Z_GROWTH_PER_INPLANE_EXTENT * extent_px * dy / dz)) + 1
    half_patch_steps = int(np.ceil(64 * dy / 2 / dz))
    assert steps < half_patch_steps  # the new limit is the one that acts
    centre_k = int(round(float(scan.grid.mm_to_index(tube.centre_zyx_mm)[0])))
    expected = [k for k in range(centre_k - steps, centre_k + steps + 1) if 0 <= k < scan.grid.shape_zyx[0]]
    assert [s["slice"] for s in tube.slices] == expected
    assert tube.measures["mask_at_patch_edge"] == 0.0
    # a known diameter keeps its own limit (radius + 1 slice)
    sized = NoduleLocation(centre.xyz_mm, diameter_mm=30.0)
    assert len(predict_scan(_DiscPlan(3), scan, [sized]).nodules[0].slices) > len(expected)
    # a mask filling the patch is flagged
    filled = predict_scan(_DiscPlan(None), scan, [centre]).nodules[0]
    assert filled.measures["mask_at_patch_edge"] == 1.0 and filled.measures["diameter_mm"] > 40
