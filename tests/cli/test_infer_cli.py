"""``nodulekit infer`` through Typer's CliRunner and the console entry point."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nodulekit.cli import app, main
from nodulekit.errors import NodulekitError
from nodulekit.inference.inputs import find_scans


pytestmark = pytest.mark.one_torch_thread


@pytest.fixture(scope="module")
def mtnet_run(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parents[1] / "inference"))  # the inference tests' helpers
    from _inference_helpers import fake_run, preset_info, store_rows, write_store

    work = tmp_path_factory.mktemp("infer-cli")
    write_store(work / "crop" / "mtnet" / "patches.h5", preset_info("mtnet"), store_rows(2, [0, 1]))
    return fake_run(work, "mtnet", 0, "crop/mtnet/patches.h5")


def test_help_lists_the_options():
    result = CliRunner().invoke(app, ["infer", "--help"])
    assert result.exit_code == 0 and "Example" in result.output
    for option in ("--model", "--input", "--nodules", "--at", "--out", "--device", "--png"):
        assert option in result.output


def test_infer_at_a_point(tmp_path, tiny_phantom, mtnet_run, monkeypatch):
    info = json.loads((tiny_phantom / "phantom.json").read_text())
    x, y, z = info["scans"][0]["nodules"][0]["bbox_center_xyz_mm"]
    ref = find_scans(tiny_phantom)[0]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["infer", "--model", str(mtnet_run), "--input", str(ref.path),
                                      "--at", f"{x},{y},{z}", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "infer (mtnet): 1 nodule(s) in 1 scan(s)" in result.output and "malignancy_prob" in result.output
    assert "outputs: nodulekit-infer (dicom-seg/, masks/, results.csv, results.json)" in result.output
    assert (tmp_path / "nodulekit-infer" / "results.csv").is_file()  # default --out, in the current folder
    bad = CliRunner().invoke(app, ["infer", "--model", str(mtnet_run), "--input", str(ref.path), "--at", "1,2"])
    assert isinstance(bad.exception, NodulekitError) and "three numbers" in str(bad.exception)


def test_errors_are_one_line(tmp_path, tiny_phantom, mtnet_run, monkeypatch, capsys):
    ref = find_scans(tiny_phantom)[0]
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["nodulekit", "infer", "--model", str(mtnet_run), "--input", str(ref.path),
                                      "--at=0,0,500", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --at: (0, 0, 500) mm is outside scan")
    assert not out.exists()
