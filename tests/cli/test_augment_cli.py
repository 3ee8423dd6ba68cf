"""``nodulekit augment`` through Typer's CliRunner, on a toy crop store."""
from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from nodulekit.cli import app
from nodulekit.errors import NodulekitError
from nodulekit.io.patch_store import PatchBatch, PatchGeometryInfo, open_patch_store, write_patch_store
from nodulekit.pipeline import StageRun, StageSpec


def toy_crop(workdir, preset="mtnet", n=4):
    images = np.zeros((n, 16, 16), np.float32)
    images[:, 6:10, 6:10] = 1.0
    rows = [{"nodule_key": f"s{i}/1", "patient_id": f"P{i}", "series_uid": f"s{i}", "nodule_id": 1, "fold": i % 2,
             "label": 1, "kind": "nodule", "slice_offset": 0, "source_spacing_z_mm": 1.0,
             "source_spacing_y_mm": 0.7, "source_spacing_x_mm": 0.7} for i in range(n)]
    info = PatchGeometryInfo("2d", (16, 16), None, (-1000.0, 400.0), "01", preset, 0.5)
    with StageRun(workdir, StageSpec(f"crop/{preset}", 1, {"size": 16})) as run:
        run.start(n_items=1)
        write_patch_store(run.dir / "patches.h5", info, [PatchBatch(images, images >= 0.5, images, rows)])
        run.finish(outputs=["patches.h5"])


def test_help_has_example():
    result = CliRunner().invoke(app, ["augment", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "--val-fold" in result.output


def test_run_rerun_and_bad_option(tmp_path):
    toy_crop(tmp_path)
    runner = CliRunner()
    args = ["augment", "--for", "mtnet", "--workdir", str(tmp_path), "--seed", "3", "--val-fold", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 originals + 16 copies = 20 patches" in result.output and "recipe mtnet x8" in result.output and "1: 2+0" in result.output
    with open_patch_store(tmp_path / "augment" / "mtnet" / "patches.h5") as store:
        assert len(store) == 2 * 9 + 2
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "up to date" in again.output
    bad = runner.invoke(app, ["augment", "--for", "mtnet", "--workdir", str(tmp_path), "--ops", "spin"])
    assert isinstance(bad.exception, NodulekitError) and "--ops" in str(bad.exception)
    missing = runner.invoke(app, ["augment", "--for", "mtcnn", "--workdir", str(tmp_path)])
    assert isinstance(missing.exception, NodulekitError) and "crop --for mtcnn" in str(missing.exception)
