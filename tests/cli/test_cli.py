"""The command line: help, status and one-line errors (through the real entry point)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from nodulekit.cli import app


def nodulekit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nodulekit", *args], capture_output=True, text=True, cwd=cwd,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


def test_help_lists_commands_with_an_example():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("ingest", "status", "phantom"):
        assert command in result.output
    ingest_help = CliRunner().invoke(app, ["ingest", "lidc", "--help"], env={"COLUMNS": "200"})
    assert "Example: nodulekit ingest lidc" in ingest_help.output


def test_missing_root_is_one_line_error(tmp_path: Path):
    result = nodulekit("ingest", "lidc", "--root", str(tmp_path / "nope"), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope: folder not found" in lines[0]


def test_empty_root_says_no_ct_series(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("hello")
    result = nodulekit("ingest", "lidc", "--root", str(tmp_path / "data"), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no CT series found" in result.stderr


def test_status_json_on_empty_workdir(tmp_path: Path):
    result = nodulekit("status", "--json", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    stages = json.loads(result.stdout)["stages"]
    assert [s["stage"] for s in stages][:2] == ["ingest", "consensus-label"]
    assert {s["state"] for s in stages} == {"missing"}


def test_workdir_from_environment(tmp_path: Path):
    result = CliRunner().invoke(app, ["ingest", "lidc", "--annotations-only", "--patients", "LIDC-IDRI-0001"],
                                env={"NODULEKIT_WORKDIR": str(tmp_path / "envwork"), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "envwork" / "ingest" / "summary.json").exists()


def test_unknown_option_is_a_usage_message_not_a_traceback(tmp_path: Path):
    result = nodulekit("status", "--bogus", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--bogus" in result.stderr


def test_workdir_that_cannot_be_created_is_one_line_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = nodulekit("phantom", "--out", str(blocker / "lidc"), "--scans", "1", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(blocker) in lines[0]
