"""``compare``: the same tables of several runs side by side."""
from __future__ import annotations

from pathlib import Path

import pytest

from _eval_helpers import MODEL
from nodulekit.errors import NodulekitError
from nodulekit.evaluation import EvaluateParams, compare, evaluate


def test_two_runs_side_by_side(workdir: Path):
    runs = [f"{MODEL}-fold0-20260101T000000Z", f"{MODEL}-fold1-20260102T000000Z"]
    fold0 = evaluate(workdir, run=runs[0], params=EvaluateParams(n_boot=30))
    result = compare(workdir, runs, params=EvaluateParams(n_boot=30))  # fold 1 is evaluated on the way
    assert result.runs == runs and len(result.header) == 3  # metric + two runs (no paper for the test model)
    dice_row = next(r for r in result.rows if r[0].startswith("segmentation: DI"))
    estimate = fold0.metrics["aggregate"]["segmentation"]["metrics"]["dice"]["estimate"]
    assert dice_row[1].startswith(f"{100 * estimate:.1f} [")
    assert any(r[0].startswith("malignancy: AUC") for r in result.rows)
    assert result.breakdown_rows and {p.name for p in result.out_dir.iterdir()} >= {
        "comparison.md", "comparison.html", "comparison.json"}
    assert (workdir / "runs" / runs[1] / "evaluation" / "metrics.json").exists()


def test_compare_needs_two_runs(workdir: Path):
    with pytest.raises(NodulekitError, match="at least two"):
        compare(workdir, [f"{MODEL}-fold0-20260101T000000Z"])
