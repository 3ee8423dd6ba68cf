"""Skip / resume / redo decisions, the lock and status, on a toy stage."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nodulekit.errors import NodulekitError, StageLockedError
from nodulekit.pipeline import (CODE_VERSIONS, StageRun, StageSpec, atomic_write_json, base_stage, pipeline_status,
                                stage_status)
from nodulekit.atomic import atomic_path


def run_toy_stage(workdir: Path, name: str, params: dict, items: list[str], *, upstream=(),
                  force=False, fail_after: int | None = None) -> list[str]:
    """A stage writing one file per item; returns the items it actually processed."""
    processed: list[str] = []
    version = CODE_VERSIONS.get(base_stage(name), 1)  # toy stages named like real ones use their version
    with StageRun(workdir, StageSpec(name, version, params, upstream=tuple(upstream)), force=force) as run:
        if run.up_to_date:
            return processed
        run.start(n_items=len(items))
        done = run.done_items()
        for item in items:
            if item in done:
                continue
            if fail_after is not None and len(processed) == fail_after:
                raise KeyboardInterrupt
            atomic_write_json(run.dir / "items" / f"{item}.json", {"item": item, **params})
            run.record_item(item, {"ok": True})
            processed.append(item)
        atomic_write_json(run.dir / "summary.json", {"n": len(items)})
        run.finish(outputs=["summary.json"])
    return processed


def test_rerun_with_same_params_does_nothing(tmp_path: Path):
    assert run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x", "y"]) == ["x", "y"]
    assert run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x", "y"]) == []
    assert stage_status(tmp_path, "ingest").label == "up to date"


def test_changed_params_redo_everything(tmp_path: Path):
    run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x", "y"])
    assert run_toy_stage(tmp_path, "ingest", {"a": 2}, ["x", "y"]) == ["x", "y"]


def test_force_redoes(tmp_path: Path):
    run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x"])
    assert run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x"], force=True) == ["x"]


def test_interrupted_stage_resumes_without_redoing_items(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt):
        run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x", "y", "z"], fail_after=2)
    status = stage_status(tmp_path, "ingest")
    assert status.state == "partial" and (status.n_done, status.n_items) == (2, 3)
    assert status.label == "partial (2 of 3)"
    assert run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x", "y", "z"]) == ["z"]
    assert stage_status(tmp_path, "ingest").state == "up to date"


def test_interrupted_stage_with_new_params_starts_over(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt):
        run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x", "y", "z"], fail_after=2)
    assert run_toy_stage(tmp_path, "ingest", {"a": 9}, ["x", "y", "z"]) == ["x", "y", "z"]


def test_downstream_becomes_stale_when_upstream_changes(tmp_path: Path):
    run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x"])
    run_toy_stage(tmp_path, "consensus-label", {"clevel": 0.5}, ["n1"], upstream=["ingest"])
    assert stage_status(tmp_path, "consensus-label").state == "up to date"
    run_toy_stage(tmp_path, "ingest", {"a": 2}, ["x"])
    status = stage_status(tmp_path, "consensus-label")
    assert status.state == "stale"
    assert "upstream 'ingest' changed" in status.label
    # rerunning the downstream stage with the same params redoes it (new upstream fingerprint)
    assert run_toy_stage(tmp_path, "consensus-label", {"clevel": 0.5}, ["n1"], upstream=["ingest"]) == ["n1"]
    assert stage_status(tmp_path, "consensus-label").state == "up to date"


def test_downstream_needs_finished_upstream(tmp_path: Path):
    with pytest.raises(NodulekitError, match="needs stage 'ingest'"):
        run_toy_stage(tmp_path, "consensus-label", {}, ["n1"], upstream=["ingest"])


def test_missing_output_makes_stage_stale_and_rerun_redoes_it(tmp_path: Path):
    run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x"])
    (tmp_path / "ingest" / "summary.json").unlink()
    assert "output summary.json is missing" in stage_status(tmp_path, "ingest").label
    assert run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x"]) == ["x"]


def test_status_lists_every_stage(tmp_path: Path):
    run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x"])
    states = {s.stage: s.state for s in pipeline_status(tmp_path)}
    assert states["ingest"] == "up to date"
    assert states["crop"] == "missing"


def test_atomic_path_leaves_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_torn_journal_line_is_ignored(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt):
        run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x", "y", "z"], fail_after=1)
    journal = tmp_path / "ingest" / ".items.jsonl"
    with open(journal, "a") as handle:
        handle.write('{"item": "y", "finger')  # power loss mid-line
    assert stage_status(tmp_path, "ingest").n_done == 1
    assert run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x", "y", "z"]) == ["y", "z"]


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from nodulekit.pipeline import StageRun, StageSpec
    with StageRun(sys.argv[1], StageSpec("ingest", 1, {})) as run:
        run.start(n_items=1)
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_second_run_is_refused_while_first_holds_the_lock(tmp_path: Path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert stage_status(tmp_path, "ingest").running
        with pytest.raises(StageLockedError, match="already running"):
            run_toy_stage(tmp_path, "ingest", {}, ["x"])
    finally:
        holder.kill()
        holder.wait()
    # kill -9 releases the lock: the next run resumes normally
    assert run_toy_stage(tmp_path, "ingest", {}, ["x"]) == ["x"]


def test_per_model_stage_instances_coexist_and_are_listed(tmp_path: Path):
    run_toy_stage(tmp_path, "ingest", {"a": 1}, ["x"])
    run_toy_stage(tmp_path, "crop/mtnet", {"size": 64}, ["n1"], upstream=["ingest"])
    run_toy_stage(tmp_path, "crop/mtcnn", {"size": 64}, ["n1"], upstream=["ingest"])
    run_toy_stage(tmp_path, "augment/mtnet", {"factor": 9}, ["n1"], upstream=["crop/mtnet"])
    states = {s.stage: s.state for s in pipeline_status(tmp_path)}
    assert states["crop/mtnet"] == states["crop/mtcnn"] == states["augment/mtnet"] == "up to date"
    assert "crop" not in states
    # changing one instance makes only its own downstream stale
    run_toy_stage(tmp_path, "crop/mtnet", {"size": 32}, ["n1"], upstream=["ingest"])
    assert stage_status(tmp_path, "augment/mtnet").state == "stale"
    assert stage_status(tmp_path, "crop/mtcnn").state == "up to date"


def test_provenance_attributes_are_named_as_documented(tmp_path: Path):
    with StageRun(tmp_path, StageSpec("toy", 1, {"a": 1})) as run:
        run.start(n_items=0)
        attrs = run.provenance().as_attrs()
    assert set(attrs) == {"nodulekit_stage", "nodulekit_fingerprint", "nodulekit_params_json",
                          "nodulekit_upstream_json", "nodulekit_version", "nodulekit_created_utc"}
    assert json.loads(attrs["nodulekit_params_json"]) == {"a": 1}
