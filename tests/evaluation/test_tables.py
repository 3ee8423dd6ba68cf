"""metrics.json against the metric functions computed directly, and CIs that resample patients."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from _eval_helpers import MODEL, SPACING_ZYX_MM, STORE_REL, ThresholdPredictor, make_batch, threshold_outputs, \
    write_run, write_store
from nodulekit.evaluation import EvaluateParams, evaluate
from nodulekit.evaluation.paper_numbers import paper_result
from nodulekit.evaluation.tables import CHARACTERISTIC_CATEGORIES, CISettings, ci_entry
from nodulekit.io.patch_store import read_patch_store
from nodulekit.metrics import accuracy, auc, bootstrap_ci, dice, hausdorff, mcc, sensitivity
from nodulekit.metrics import segmentation as seg

N_BOOT = 100


@pytest.fixture(scope="module")
def cv(tmp_path_factory: pytest.TempPathFactory):
    """Both folds of the synthetic store pooled (two runs), evaluated once for the module."""
    workdir = tmp_path_factory.mktemp("cv")
    write_store(workdir / STORE_REL, make_batch(big_patient_patches=12))
    runs = [write_run(workdir, f"{MODEL}-fold{f}", f, f"2026-01-0{f + 1}T00:00:00+00:00") for f in (0, 1)]
    result = evaluate(workdir, run=[r.name for r in runs], predictor=ThresholdPredictor,
                      params=EvaluateParams(n_boot=N_BOOT))
    return workdir, result, json.loads(result.metrics_path.read_text())


def direct_rows(workdir: Path) -> list[dict]:
    """Per-patch truth, prediction and metrics computed here, without nodulekit.evaluation."""
    batch = read_patch_store(workdir / STORE_REL)
    masks, scores = threshold_outputs(batch.images)
    out = []
    for i, row in enumerate(batch.rows):
        pred, truth = masks[i], batch.masks[i]
        out.append({**row, "pred": pred, "truth": truth, "score": scores[i], "dice": dice(pred, truth),
                    "hd95": hausdorff(pred, truth, SPACING_ZYX_MM, percentile=95),
                    "specificity": seg.specificity(pred, truth)})
    return out


def test_segmentation_aggregate_equals_direct_metrics(cv):
    workdir, _, metrics = cv
    rows = [r for r in direct_rows(workdir) if r["truth"].any()]
    aggregate = metrics["aggregate"]["segmentation"]["metrics"]
    assert aggregate["dice"]["estimate"] == pytest.approx(np.mean([r["dice"] for r in rows]), abs=1e-12)
    assert aggregate["specificity"]["estimate"] == pytest.approx(np.mean([r["specificity"] for r in rows]))
    hd95 = np.array([r["hd95"] for r in rows])
    assert aggregate["hd95_mm"]["estimate"] == pytest.approx(hd95[np.isfinite(hd95)].mean())
    assert aggregate["hd95_mm"]["n_inf"] == int(np.isinf(hd95).sum()) >= 1  # the dim nodule is missed
    by_index = {r["store_index"]: r for r in metrics["rows"]}
    missed = [by_index[i] for i, r in enumerate(direct_rows(workdir)) if r["truth"].any() and not r["pred"].any()]
    assert missed and all(m["pred_voxels"] == 0 and m["hd_mm"] is None and m["dice"] == 0 for m in missed)


def test_classification_aggregate_equals_direct_metrics(cv):
    workdir, _, metrics = cv
    rows = [r for r in direct_rows(workdir) if r["kind"] == "nodule" and r["label"] >= 0]
    labels = np.array([r["label"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    preds = (scores >= 0.5).astype(int)
    got = metrics["aggregate"]["classification"]["malignancy"]
    assert got["metrics"]["auc"]["estimate"] == pytest.approx(auc(labels, scores), abs=1e-6)  # float32 probs
    assert got["metrics"]["accuracy"]["estimate"] == pytest.approx(accuracy(labels, preds))
    assert got["metrics"]["sensitivity"]["estimate"] == pytest.approx(sensitivity(labels, preds))
    assert got["metrics"]["mcc"]["estimate"] == pytest.approx(mcc(labels, preds))
    assert got["n"] == len(rows) and sum(got["class_counts"]) == len(rows)
    assert metrics["tasks"]["malignancy"]["truth_column"] == "label"


def all_entries(node):
    if isinstance(node, dict):
        if "estimate" in node and "low" in node:
            yield node
        else:
            for value in node.values():
                yield from all_entries(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_entries(value)


def test_every_ci_contains_its_estimate(cv):
    _, _, metrics = cv
    entries = [e for e in all_entries({k: metrics[k] for k in ("aggregate", "per_fold", "by_characteristic")})
               if e["estimate"] is not None and e["low"] is not None]
    assert len(entries) > 50
    for entry in entries:
        assert entry["low"] - 1e-12 <= entry["estimate"] <= entry["high"] + 1e-12, entry


def test_cis_resample_patients_not_patches(cv):
    """P00 has 12 alike patches: resampling patients (P00 in or out as a whole) widens the interval."""
    workdir, _, metrics = cv
    rows = [r for r in metrics["rows"] if r["truth_voxels"] > 0]
    values = np.array([r["dice"] for r in rows])
    patients = np.array([r["patient_id"] for r in rows])
    assert (patients == "P00").sum() >= 10
    by_patient = bootstrap_ci(np.mean, values, groups=patients, n_boot=N_BOOT, seed=0)
    by_patch = bootstrap_ci(np.mean, values, groups=None, n_boot=N_BOOT, seed=0)
    got = metrics["aggregate"]["segmentation"]["metrics"]["dice"]
    assert (got["low"], got["high"]) == pytest.approx((by_patient.low, by_patient.high))
    assert got["high"] - got["low"] > 1.3 * (by_patch.high - by_patch.low)
    assert got["n_patients"] == len(set(patients))


def test_a_patients_patches_always_move_together():
    patients = np.array(["A"] * 5 + ["B", "C", "D"])
    seen: list[int] = []

    def count_a(values, groups):
        seen.append(int((groups == "A").sum()))
        return float(values.mean())

    ci_entry(count_a, np.arange(8.0), patients, groups=patients, settings=CISettings(n_boot=200))
    assert len(seen) > 200 and all(n % 5 == 0 for n in seen) and max(seen) >= 10


def test_per_fold_tables_use_each_fold_alone(cv):
    workdir, _, metrics = cv
    rows = [r for r in direct_rows(workdir) if r["truth"].any()]
    for fold in (0, 1):
        expected = np.mean([r["dice"] for r in rows if r["fold"] == fold])
        assert metrics["per_fold"][str(fold)]["segmentation"]["metrics"]["dice"]["estimate"] == pytest.approx(expected)
    assert metrics["folds"] == [0, 1]


def test_characteristic_breakdown_as_paper_003_table_9(cv):
    workdir, _, metrics = cv
    rows = [r for r in direct_rows(workdir) if r["truth"].any()]
    entries = {(e["characteristic"], e["category"]): e for e in metrics["by_characteristic"]}
    for column, key, _, rule in CHARACTERISTIC_CATEGORIES:
        members = [r for r in rows if rule(r[column])]
        if members:
            assert entries[(column, key)]["n"] == len(members)
            assert entries[(column, key)]["metrics"]["dice"]["estimate"] == pytest.approx(
                np.mean([r["dice"] for r in members]))
    assert set(paper_result("msunet").by_characteristic) <= {(c, k) for c, k, _, _ in CHARACTERISTIC_CATEGORIES}
    diameters = [e for e in metrics["by_characteristic"] if e["characteristic"] == "diameter_mm"]
    assert sum(e["n"] for e in diameters) == len(rows)


def test_empty_patches_are_scored_apart(cv):
    _, _, metrics = cv
    summary = metrics["aggregate"]["segmentation"]
    empty = [r for r in metrics["rows"] if r["kind"] == "empty"]
    assert summary["empty_patches"]["false_positive_rate"]["n"] == len(empty) == 2
    assert summary["n"] == sum(1 for r in metrics["rows"] if r["truth_voxels"] > 0)
    assert all(r["malignancy_truth"] is None for r in empty)


def test_metrics_json_is_strict_json(cv):
    _, result, _ = cv
    text = result.metrics_path.read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert not any(isinstance(v, float) and math.isnan(v) for r in result.metrics["rows"] for v in r.values())


def test_patch_spacing_by_geometry():
    from nodulekit.errors import NodulekitError
    from nodulekit.evaluation.rows import row_spacing_mm
    from nodulekit.io.patch_store import PatchGeometryInfo

    table = {"source_spacing_z_mm": np.array([2.5]), "source_spacing_y_mm": np.array([0.6]),
             "source_spacing_x_mm": np.array([0.7])}
    flat = PatchGeometryInfo("2d", (4, 4), None, (-1000.0, 400.0), "01", "p", 0.5)
    slab = PatchGeometryInfo("2.5d", (4, 4, 4), None, (-1000.0, 400.0), "01", "p", 0.5)
    cube = PatchGeometryInfo("3d", (4, 4, 4), (1.0, 1.0, 1.0), (-1000.0, 400.0), "01", "p", 0.5)
    assert row_spacing_mm(flat, table, 0) == (0.6, 0.7)
    assert row_spacing_mm(slab, table, 0) == (2.5, 0.6, 0.7)
    assert row_spacing_mm(cube, table, 0) == (1.0, 1.0, 1.0)
    with pytest.raises(NodulekitError, match="views9"):
        row_spacing_mm(PatchGeometryInfo("views9", (9, 4, 4), (1.0, 1.0, 1.0), (0.0, 1.0), "01", "p", 0.5), table, 0)
