"""Run folders as the evaluation reads them (run.json as nodulekit.training writes it)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _eval_helpers import MODEL, write_run
from nodulekit.errors import InputFileError, NodulekitError
from nodulekit.evaluation.runs import list_runs, load_run, resolve_run, run_key
from nodulekit.io.patch_store import augmented_flags
from nodulekit.io.patch_store import open_patch_store


def test_training_style_run_json(tmp_path: Path):
    run_dir = write_run(tmp_path, "r", 1, "2026-01-01T00:00:00+00:00", store_rel="crop/x")
    meta = json.loads((run_dir / "run.json").read_text())
    meta["stores"] = [{"path": "augment/x", "augmented": True}, {"path": "crop/x", "augmented": False}]
    (run_dir / "run.json").write_text(json.dumps(meta))
    run = load_run(tmp_path, run_dir)
    assert run.model == MODEL and run.folds == (1,)
    assert run.eval_store == tmp_path / "crop" / "x" / "patches.h5"  # a folder means <folder>/patches.h5
    assert run.config["model"]["threshold"] == 0.5


def test_augmented_store_alone_is_used_but_augmented_rows_are_not():
    table = {"fold": [0, 0, 1], "is_augmented": [False, True, False]}
    assert augmented_flags(table).tolist() == [False, True, False]
    assert augmented_flags({"fold": [0], "augmentation": ["flip"]}).tolist() == [True]


def test_fold_null_has_nothing_held_out(tmp_path: Path):
    run_dir = write_run(tmp_path, "all", None, "2026-01-01T00:00:00+00:00")
    with pytest.raises(InputFileError, match="nothing is held out"):
        load_run(tmp_path, run_dir)


def test_most_recent_run_by_start_time(tmp_path: Path):
    write_run(tmp_path, "z-old", 0, "2026-01-01T00:00:00+00:00")
    write_run(tmp_path, "a-new", 0, "2026-03-01T00:00:00+00:00")
    assert [p.name for p in list_runs(tmp_path)] == ["z-old", "a-new"]
    assert resolve_run(tmp_path, None).name == "a-new"
    with pytest.raises(NodulekitError, match="not found"):
        resolve_run(tmp_path, "nope")
    with pytest.raises(NodulekitError, match="no training runs"):
        resolve_run(tmp_path / "empty", None)


def test_run_key_changes_with_checkpoints_and_config(tmp_path: Path):
    run = load_run(tmp_path, write_run(tmp_path, "r", 0, "2026-01-01T00:00:00+00:00"))
    key = run_key(run)
    (run.dir / "checkpoints" / "best.pt").write_bytes(b"new")
    assert run_key(run) != key


def test_store_fixture_is_readable(workdir: Path):
    run = load_run(workdir, resolve_run(workdir, None))
    with open_patch_store(run.eval_store) as store:
        assert len(store) > 0 and set(store.table["fold"]) == {0, 1}
