"""Reader agreement (paper 003 Table 6): per-patch Dice against each read, the aggregate against a
brute-force computation on the stored masks, metrics.json, the report, stores without reader masks."""
from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from _eval_helpers import STORE_REL, ThresholdPredictor, make_batch, write_run, write_store
from nodulekit.evaluation import EvaluateParams, evaluate
from nodulekit.evaluation.predictions import open_predictions
from nodulekit.evaluation.readers import reader_dice
from nodulekit.evaluation.report import aggregate_lines
from nodulekit.io.patch_store import PatchBatch, open_patch_store

FAST = EvaluateParams(n_boot=40)


def test_reader_dice_against_each_read_and_between_reads() -> None:
    pred = np.zeros((4, 4), bool)
    pred[:2] = True                        # 8 pixels
    r1 = pred.copy()                       # identical: 1.0
    r2 = np.zeros((4, 4), bool)
    r2[:1] = True                          # 4 pixels inside pred: 2*4/12
    r3 = np.zeros((4, 4), bool)            # empty vs non-empty: 0
    one = reader_dice(pred, [r1, r2, r3])
    assert one["reader_dice"] == pytest.approx([1.0, 8 / 12, 0.0])
    assert one["reader_pair_dice"] == pytest.approx({"R1-R2": 8 / 12, "R1-R3": 0.0, "R2-R3": 0.0})
    assert reader_dice(pred, [r1]) == {"reader_dice": [1.0], "reader_pair_dice": {}}
    assert reader_dice(np.zeros((4, 4), bool), [r3, r3])["reader_pair_dice"] == {"R1-R2": 1.0}  # both empty


def with_reads(batch: PatchBatch) -> PatchBatch:
    """Reader masks for the synthetic spheres: read k is the truth shifted k voxels in x; a nodule's
    number of reads cycles 1, 2, 3, 4; patient P00's six patches are two nodules of three patches
    each (as the slices of a 2D store)."""
    keys = [r["nodule_key"] for r in batch.rows]
    p00 = [i for i, r in enumerate(batch.rows) if r["patient_id"] == "P00" and r["kind"] == "nodule"]
    for j, i in enumerate(p00):
        keys[i] = f"1.2.P00/{j // 3}"
    order = {key: n for n, key in enumerate(dict.fromkeys(keys))}
    readers = np.zeros((len(batch), 4, *batch.masks.shape[1:]), bool)
    for i, row in enumerate(batch.rows):
        row["nodule_key"] = keys[i]
        n = order[keys[i]] % 4 + 1
        row["n_reader_masks"] = n
        for k in range(n):
            readers[i, k] = np.roll(batch.masks[i], k, axis=2)
    batch.reader_masks = readers
    return batch


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    """Two runs (folds 0 and 1) of the threshold model, as 'msunet', pooled, with the report."""
    workdir = tmp_path_factory.mktemp("readers")
    write_store(workdir / STORE_REL, with_reads(make_batch(seed=5)))
    runs = [write_run(workdir, f"msunet-fold{f}", f, f"2026-01-0{f + 1}T00:00:00+00:00", model="msunet").name
            for f in (0, 1)]
    return workdir, evaluate(workdir, run=runs, report=True, predictor=ThresholdPredictor, params=FAST)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2 * int((a & b).sum()) / total


def brute_force(workdir: Path, result) -> dict[str, list[tuple[float, str]]]:
    """Per cell, the (value, nodule key) of every patch, straight from predictions.h5 and the store."""
    cells: dict[str, list[tuple[float, str]]] = {}
    with open_patch_store(workdir / STORE_REL) as store:
        readers_all = store.read(arrays=("reader_masks", "masks"))
        for path in result.predictions:
            with open_predictions(path) as pred:
                probs = pred.seg_prob(slice(None))
                for r, index in enumerate(pred.store_index):
                    row = store.rows([index])[0]
                    if not readers_all["masks"][index].any():
                        continue  # no nodule in the patch: not in the segmentation table either
                    masks = readers_all["reader_masks"][index][:row["n_reader_masks"]]
                    model = [_dice(probs[r] >= 0.5, m) for m in masks]
                    pairs = {(a, b): _dice(masks[a], masks[b]) for a, b in combinations(range(len(masks)), 2)}
                    key = row["nodule_key"]
                    for k, value in enumerate(model):
                        cells.setdefault(f"model R{k + 1}", []).append((value, key))
                    cells.setdefault("model_vs_readers", []).append((float(np.mean(model)), key))
                    if len(masks) < 2:
                        continue
                    readers_mean = float(np.mean(list(pairs.values())))
                    cells.setdefault("reader_vs_reader", []).append((readers_mean, key))
                    cells.setdefault("difference", []).append((float(np.mean(model)) - readers_mean, key))
                    for (a, b), value in pairs.items():
                        cells.setdefault(f"R{a + 1}-R{b + 1}", []).append((value, key))
                    for k in range(len(masks)):
                        others = [v for (a, b), v in pairs.items() if k in (a, b)]
                        cells.setdefault(f"others R{k + 1}", []).append((float(np.mean(others)), key))
    return cells


def test_reader_agreement_equals_a_brute_force_computation(evaluated):
    workdir, result = evaluated
    table = result.metrics["reader_agreement"]
    cells = brute_force(workdir, result)
    entries = {"model_vs_readers": table["model_vs_readers"], "reader_vs_reader": table["reader_vs_reader"],
               "difference": table["model_minus_reader_vs_reader"],
               **{f"model {k}": v for k, v in table["model_vs_reader"].items()},
               **{f"others {k}": v for k, v in table["reader_vs_others"].items()}, **table["reader_pairs"]}
    assert set(entries) == set(cells) and table["readers"] == ["R1", "R2", "R3", "R4"]
    for name, entry in entries.items():
        values = [v for v, _ in cells[name]]
        assert entry["estimate"] == pytest.approx(float(np.mean(values)), abs=1e-12), name
        assert entry["n"] == len(values) and entry["n_nodules"] == len({k for _, k in cells[name]}), name
        assert entry["low"] <= entry["estimate"] <= entry["high"], name
    # a nodule with one read counts for the model only; fewer patches have R4 than R1
    assert table["model_vs_readers"]["n"] == table["n"] > table["reader_vs_reader"]["n"] > 0
    assert table["model_vs_reader"]["R1"]["n"] > table["model_vs_reader"]["R4"]["n"] > 0
    assert table["n_nodules_single_read"] > 0 and table["n_nodules"] < table["n"]  # P00: 3 patches per nodule
    assert table["reader_pairs"]["R1-R2"]["estimate"] < 1.0  # shifted reads disagree


def test_rows_and_metrics_json_carry_the_per_patch_values(evaluated):
    _, result = evaluated
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["reader_agreement"]["model_vs_readers"]["estimate"] == pytest.approx(
        result.metrics["reader_agreement"]["model_vs_readers"]["estimate"])
    nodule_rows = [r for r in metrics["rows"] if r["truth_voxels"] > 0]
    assert all(len(r["reader_dice"]) in (1, 2, 3, 4) for r in nodule_rows)
    assert all("reader_dice" not in r for r in metrics["rows"] if r["truth_voxels"] == 0)
    assert all(len(r["reader_pair_dice"]) == math.comb(len(r["reader_dice"]), 2) for r in nodule_rows)


def test_report_has_the_reader_agreement_tables_beside_table_6(evaluated):
    _, result = evaluated
    md, html = result.report_md.read_text(), result.report_html.read_text()
    for text in (md, html):
        assert "Reader agreement" in text and "reader vs reader" in text and "model vs readers" in text
        assert "82.9 ± 0.4" in text and "82.5 ± 0.6" in text  # paper 003 Table 6
        assert "R1-R2" not in text and "R4" in text
    section = md.split("## Reader agreement")[1].split("\n## ")[0]
    assert "| model |" in section and "nodules" in section and "patches" in section
    agreement = result.metrics["reader_agreement"]
    assert f"{100 * agreement['model_vs_readers']['estimate']:.1f}" in section
    lines = [line for line in aggregate_lines(result.metrics) if line[0] == "reader agreement"]  # the CLI's table
    assert len(lines) == 3 and lines[0][2].startswith(f"{100 * agreement['model_vs_readers']['estimate']:.1f}")


def test_a_store_without_reader_masks_has_no_reader_table(tmp_path: Path):
    write_store(tmp_path / STORE_REL, make_batch(seed=5))
    run = write_run(tmp_path, "msunet-fold0", 0, "2026-01-01T00:00:00+00:00", model="msunet").name
    result = evaluate(tmp_path, run=run, report=True, predictor=ThresholdPredictor, params=FAST)
    assert "reader_agreement" not in result.metrics
    assert all("reader_dice" not in r for r in result.metrics["rows"])
    assert "Reader agreement" not in result.report_md.read_text()
