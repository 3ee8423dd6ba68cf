"""The report of a 3-class cascade run (texture on LIDC, paper 004's 3-class task 1) beside the
binary one: paper numbers by number of classes, class names from the label spec, the config
keys changed from the paper defaults; end to end on the texture phantom of test_texture_cascade."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nodulekit.evaluation.paper_numbers import ANY_TASK, paper_result
from nodulekit.evaluation.report import class_names, classification_rows, paper_column
from nodulekit.labels.cohorts import class_names_for_column
from test_texture_cascade import TEXTURE, _cli, copy_of

pytestmark = pytest.mark.one_torch_thread

#: The --set overrides of the run below, besides TEXTURE; --epochs 1 --max-steps 2 change train.epochs,
#: train.max_steps and every phase's epochs (cascade.toml's phases: seg, cls, joint, multitask).
OVERRIDES = ["--set", "model.width=0.125", "--set", "optimizer.lr=3e-4"]
CHANGED_KEYS = {"model.width", "model.n_classes", "data.label_column", "optimizer.lr", "train.epochs", "train.max_steps",
                "phases.seg.epochs", "phases.cls.epochs", "phases.joint.epochs", "phases.multitask.epochs"}


def _entry(estimate: float) -> dict:
    return {"estimate": estimate, "low": estimate - 0.1, "high": estimate + 0.1, "n": 30, "n_patients": 10}


def _summary(n_classes: int) -> dict:
    keys = ["auc", "accuracy", "sensitivity", "specificity", "average_f1", "mcc"] + (["f1"] if n_classes == 2 else [])
    return {"n_classes": n_classes, "metrics": {k: _entry(0.5) for k in keys}}


def _metrics(n_classes: int, column: str) -> dict:
    return {"model": "cascade", "tasks": {"cls": {"n_classes": n_classes, "truth_column": column}}}


def _paper_cells(n_classes: int, column: str) -> dict[str, str]:
    rows = classification_rows(_metrics(n_classes, column), "cls", _summary(n_classes))
    return {row[0]: row[2] for row in rows}


def test_paper_004_task_1_for_three_classes_and_task_2_for_two():
    three = paper_result("cascade", n_classes=3)
    values = three.classification[ANY_TASK]
    assert {k: v.value for k, v in values.items()} == {"accuracy": 0.5867, "average_f1": 0.5830, "mcc": 0.3430}
    assert all("Table 2" in v.source and "task 1)" in v.source for v in values.values())
    assert three.label == "paper 004 task 1, 3 classes, private pathology data (not LIDC-IDRI)"
    assert three.task_values("cls", 1, n_classes=3) == values and three.task_values("cls", 1, n_classes=2) == {}
    binary = paper_result("cascade")
    assert binary is paper_result("cascade", n_classes=2) and binary.label.startswith("paper, private pathology")
    assert binary.classification[ANY_TASK]["auc"].value == 0.8129
    assert binary.task_values("cls", 1, n_classes=3) == {}  # never the binary numbers beside a 3-class run
    assert paper_result("cascade", n_classes=4) is None and paper_result("mtnet", n_classes=3) is None


def test_three_class_rows_show_task_1_and_no_paper_auc_binary_rows_unchanged():
    three = _paper_cells(3, "label_luna16_texture")
    assert three["AUC (%)"] == "–"
    assert three["ACC (accuracy) (%)"] == "58.7" and three["macro F1 (%)"] == "58.3"
    assert three["MCC"].startswith("0.343") and "task 1)" in three["source of the paper's values"]
    binary = _paper_cells(2, "label_mtcnn_malignancy")
    assert binary["AUC (%)"] == "81.3" and binary["ACC (accuracy) (%)"] == "78.2"
    assert binary["macro F1 (%)"] == "77.5" and binary["MCC"].startswith("0.483")
    assert binary["source of the paper's values"] == "Table 2, split 1, (d)"
    assert paper_column(_metrics(3, "label_luna16_texture")).startswith("paper 004 task 1, 3 classes")
    assert paper_column(_metrics(2, "label_mtcnn_malignancy")) == \
        "paper, private pathology-confirmed ground-glass nodules (not LIDC-IDRI)"
    assert paper_column(_metrics(4, "x")) == "paper (no reported numbers for 4 classes)"


def test_class_names_from_the_label_spec():
    assert class_names_for_column("label_luna16_texture") == ["non-solid", "part-solid", "solid"]
    assert class_names_for_column("label_custom_texture", 3) == ["non-solid", "part-solid", "solid"]  # --label texture3
    assert class_names_for_column("label_custom_texture", 2) is None  # a custom binary texture label: the user's ranges
    assert class_names_for_column("label_mtcnn_malignancy") is None and class_names_for_column("label") is None
    assert class_names("cls", 3, "label_luna16_texture") == ["0 non-solid", "1 part-solid", "2 solid"]
    assert class_names("cls", 3, "label") == ["0", "1", "2"]
    assert class_names("malignancy", 2, "label_msunet_malignancy") == ["0 benign", "1 malignant"]  # CLASS_NAMES, as before
    assert class_names("cls", 2, "label_mtcnn_malignancy") == ["0", "1"]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory, texture_workdir: Path) -> Path:
    """A 3-class cascade run trained with --set on the texture phantom, evaluated with --report."""
    workdir = copy_of(texture_workdir, tmp_path_factory.mktemp("texture-report"))
    _cli("train", "cascade", "--fold", "0", "--epochs", "1", "--max-steps", "2", *OVERRIDES, *TEXTURE,
         "--workdir", str(workdir))
    run = max((workdir / "runs").iterdir())
    out = _cli("evaluate", "--run", run.name, "--boot", "20", "--report", "--workdir", str(workdir))
    assert "paper 004 task 1, 3 classes" in out.output  # the CLI's table has the same paper column
    return run / "evaluation"


def _table_after(markdown: str, header_start: str) -> list[list[str]]:
    """Rows (cells) of the Markdown table whose header starts with ``header_start``."""
    block = markdown.split(f"| {header_start}", 1)[1].split("\n\n", 1)[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in block.splitlines()[2:]]


def test_report_of_a_three_class_run(report_dir):
    markdown, html = (report_dir / "report.md").read_text(), (report_dir / "report.html").read_text()
    for text in (markdown, html):
        assert "paper 004 task 1, 3 classes, private pathology data" in text
        assert "AAH+AIS vs MIA vs IAC" in text and "no AUC for its 3-class task" in text
        assert "Table 2, split 1, (d)" not in text and "MIA+IAC" not in text  # nothing of the binary task 2)
        assert "0 non-solid: 1, 1 part-solid: 1, 2 solid: 1" in text  # class counts by name
    classification = markdown.split("## Classification", 1)[1]
    paper = {row[0]: row[2] for row in _table_after(classification, "metric | this run")}
    assert paper["AUC (%)"] == "–" and paper["ACC (accuracy) (%)"] == "58.7" and paper["macro F1 (%)"] == "58.3"
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["tasks"]["cls"] == {"n_classes": 3, "truth_column": "label_luna16_texture"}


def test_report_lists_exactly_the_changed_config_keys_first(report_dir):
    markdown, html = (report_dir / "report.md").read_text(), (report_dir / "report.html").read_text()
    changed = {row[0]: row[1:] for row in _table_after(markdown, "config key (changed from the paper defaults)")}
    assert set(changed) == CHANGED_KEYS
    assert changed["optimizer.lr"][:2] == ["0.0003", "0.0001"] and changed["optimizer.lr"][2].startswith("§3.2")
    assert changed["model.n_classes"][:2] == ["3", "2"]
    assert changed["data.label_column"][:2] == ["label_luna16_texture", "label_mtcnn_malignancy"]
    # the other keys follow under a heading (Markdown) / folded in <details> (HTML), none of them changed
    heading = re.search(r"#### The other (\d+) config keys \(unchanged from the paper defaults\)", markdown)
    unchanged = {row[0] for row in _table_after(markdown[heading.end():], "config key | value")}
    assert len(unchanged) == int(heading.group(1)) > 40 and not unchanged & CHANGED_KEYS
    assert {"batch_size", "model.joint_finetune", "scheduler.factor", "data.stores"} <= unchanged
    assert markdown.index("changed from the paper defaults") < heading.start()
    assert re.search(r"<details><summary>The other \d+ config keys [^<]*</summary><table>", html)
    assert "href=" not in html.lower() and all(s.startswith("data:image/png;base64,")
                                               for s in re.findall(r'src="([^"]*)"', html))
