"""Every example script runs and prints what it promises."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_bundled_annotations_example(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "bundled_annotations.py"), "--workdir", str(tmp_path),
         "--patients", "LIDC-IDRI-00*"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("99 scans")  # LIDC-IDRI-0001 .. 0099, one scan each
    assert "reads by malignancy rating" in lines[-1]
    assert (tmp_path / "ingest" / "annotations.h5").exists()
