"""Texture as three classes, end to end through the CLI: phantom -> consensus-label -> crop --for
cascade -> train cascade (2 steps, label_luna16_texture, model.n_classes = 3) -> evaluate, which
reports the softmax multi-class metrics (macro F1, MCC, one-vs-rest AUC, accuracy, 3x3 confusion
matrix) with patient-bootstrap CIs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.one_torch_thread

#: Real scans whose LUNA16 nodules cover the three classes, one patient per class in each of 2
#: folds (median texture 1 / 1 non-solid, 3 / 3 part-solid, 5 / 5 solid; all fit a 128 x 128 x 24 frame).
PATIENTS = ["LIDC-IDRI-0131", "LIDC-IDRI-0288", "LIDC-IDRI-0048", "LIDC-IDRI-0311", "LIDC-IDRI-0001",
            "LIDC-IDRI-0004"]
TEXTURE = ["--set", "data.label_column=label_luna16_texture", "--set", "model.n_classes=3"]


def _cli(*args: str):
    from typer.testing import CliRunner

    from nodulekit.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


def build_texture_workdir(folder: Path) -> Path:
    """The phantom of PATIENTS in ``folder``, ingested and labelled, and cropped for cascade
    (``folder/work``); the custom cohort (>= 3 readers, texture3) stratifies the 2 folds by texture
    class, so each fold holds one nodule of each class. Built once per session (conftest)."""
    from nodulekit.phantom import write_phantom

    root = folder / "LIDC"
    write_phantom(root, patients=PATIENTS, seed=0, matrix=128, max_slices=24)
    workdir = folder / "work"
    _cli("ingest", "lidc", "--root", str(root), "--workdir", str(workdir))
    _cli("consensus-label", "--folds", "2", "--min-readers", "3", "--label", "texture3", "--cohort", "custom",
         "--workdir", str(workdir))
    _cli("crop", "--for", "cascade", "--workdir", str(workdir))
    return workdir


def copy_of(workdir: Path, folder: Path) -> Path:
    """A copy of ``workdir`` in ``folder`` that a test may train into."""
    import shutil

    return Path(shutil.copytree(workdir, folder / "work"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, texture_workdir: Path) -> Path:
    return copy_of(texture_workdir, tmp_path_factory.mktemp("texture-cascade"))

def test_the_cascade_store_carries_the_texture_classes(workdir):
    from nodulekit.io.patch_store import open_patch_store

    with open_patch_store(workdir / "crop" / "cascade" / "patches.h5") as store:
        table = store.table
        assert sorted(np.asarray(table["label_luna16_texture"]).tolist()) == [0, 0, 1, 1, 2, 2]
        for fold in (0, 1):
            assert sorted(np.asarray(table["label_luna16_texture"])[np.asarray(table["fold"]) == fold]) == [0, 1, 2]
        assert set(np.asarray(table["label"]).tolist()) == {-1}  # luna16 has no primary label


def test_three_class_cascade_trains_and_evaluates_with_multiclass_metrics(workdir):
    out = _cli("train", "cascade", "--fold", "0", "--epochs", "1", "--max-steps", "2", "--set", "model.width=0.125",
               *TEXTURE, "--workdir", str(workdir))
    assert "complete" in out.output
    run = max((workdir / "runs").iterdir())
    out = _cli("evaluate", "--run", run.name, "--boot", "20", "--report", "--workdir", str(workdir))
    assert "macro F1" in out.output and "MCC" in out.output

    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["tasks"] == {"cls": {"n_classes": 3, "truth_column": "label_luna16_texture"}}
    cls = metrics["aggregate"]["classification"]["cls"]
    assert cls["n_classes"] == 3 and cls["n"] == 3 and cls["class_counts"] == [1, 1, 1]
    matrix = np.array(cls["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum(axis=1).tolist() == cls["class_counts"]
    assert set(cls["metrics"]) == {"auc", "accuracy", "sensitivity", "specificity", "average_f1", "mcc"}
    for entry in cls["metrics"].values():
        assert {"estimate", "low", "high", "n", "n_patients"} <= set(entry) and entry["n_patients"] == 3
    assert cls["metrics"]["auc"]["estimate"] is not None  # one-vs-rest: every class is present
    assert cls["metrics"]["accuracy"]["estimate"] == pytest.approx(np.trace(matrix) / 3)
    assert metrics["per_fold"]["0"]["classification"]["cls"]["n_classes"] == 3

    for row in metrics["rows"]:
        assert len(row["cls_prob"]) == 3 and sum(row["cls_prob"]) == pytest.approx(1, abs=1e-5)  # softmax
        assert row["cls_pred"] == int(np.argmax(row["cls_prob"])) and row["cls_truth"] in (0, 1, 2)
    assert "macro F1" in (run / "evaluation" / "report.md").read_text()
