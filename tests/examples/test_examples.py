"""Every example script runs and prints what it promises."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, timeout: int = 600) -> list[str]:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_bundled_annotations_example(tmp_path: Path):
    lines = run_example("bundled_annotations.py", "--workdir", str(tmp_path), "--patients", "LIDC-IDRI-00*",
                        timeout=120)
    assert lines[0].startswith("99 scans")  # LIDC-IDRI-0001 .. 0099, one scan each
    assert "reads by malignancy rating" in lines[-1]
    assert (tmp_path / "ingest" / "annotations.h5").exists()


def test_custom_cohort_example(tmp_path: Path):
    lines = run_example("custom_cohort.py", "--workdir", str(tmp_path), "--patients", "LIDC-IDRI-00*", timeout=120)
    assert lines[0].endswith("in 99 scans")
    n_cohort = int(lines[1].split()[2])
    assert 0 < n_cohort < int(lines[0].split()[0])
    folds = [line for line in lines if line.strip().startswith("fold ")]
    assert len(folds) == 5 and all("spiculated (label 1)" in line for line in folds)
    assert (tmp_path / "labels" / "nodules.csv").exists()


@pytest.mark.slow
def test_cross_validation_example(tmp_path: Path):
    lines = run_example("cross_validation.py", "--workdir", str(tmp_path), "--folds", "3", "--steps", "1")
    assert [line.split()[0] for line in lines[:4]] == ["ingest", "consensus-label", "crop/mtnet", "augment/mtnet"]
    assert sum(line.startswith("train/mtnet-fold") for line in lines) == 3
    assert sum(line.startswith("fold ") for line in lines) == 3
    assert any(line.startswith("pooled over 3 folds: Dice") for line in lines)
    report = Path(lines[-1].removeprefix("report: "))
    assert report.is_file() and report.parent.parent == tmp_path / "evaluations"
    again = run_example("cross_validation.py", "--workdir", str(tmp_path), "--folds", "3", "--steps", "1")
    assert all(" up to date " in line for line in again[:8])  # every stage cached


@pytest.mark.slow
def test_infer_folder_example(tmp_path: Path):
    if importlib.util.find_spec("nodulekit.inference.infer") is None:
        pytest.skip("nodulekit.inference.infer (nodulekit infer's library) is not in this tree yet")
    from nodulekit.phantom import write_phantom
    from nodulekit.stages.run_all import RunParams, run_pipeline

    patients = ["LIDC-IDRI-0049", "LIDC-IDRI-0148", "LIDC-IDRI-0188", "LIDC-IDRI-0250"]
    write_phantom(tmp_path / "phantom", patients=patients, matrix=96, max_slices=16)
    tiny = ("model.width=0.0625", "model.input_size_px=32", "model.seg.middle_units=1", "model.cls.middle_blocks=1",
            "batch_size={seg = 4, malignancy = 4}")
    run_pipeline(tmp_path, RunParams("mtnet", lidc_root=tmp_path / "phantom", n_folds=2, cohort="mtnet",
                                     augment=False, config_overrides=tiny, epochs=1, max_steps=1, until="train"))
    lines = run_example("infer_folder.py", "--workdir", str(tmp_path))
    n_locations = int(lines[0].split()[0])
    nodule_lines = [line for line in lines if " nodule " in line and "P(malignant)" in line]
    assert n_locations > 0 and len(nodule_lines) == n_locations
    assert lines[-1].startswith(f"{n_locations} nodules in 4 scans")
    assert (tmp_path / "infer" / "results.csv").is_file() and (tmp_path / "infer" / "masks").is_dir()
