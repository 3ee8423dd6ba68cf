"""run_pipeline: every stage in order on a small phantom; a rerun does no work; an interrupted
training resumes; a parameter change reruns only what depends on it."""
from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from nodulekit.errors import NodulekitError
from _run_helpers import IntensityPredictor  # tests/stages is on sys.path (rootdir import mode)
from nodulekit.pipeline import read_manifest, stage_status
from nodulekit.stages.run_all import (PipelineInterrupted, RunParams, StageEvent, config_digest, matching_runs,
                                      parse_folds, run_pipeline)
from nodulekit.training.runs import list_runs, read_run_json

#: Four real LIDC scans whose MT-Net cohort (malignancy 1-2 vs 4-5) has both labels in both of
#: two folds, cut to 96 x 96 x 16 voxels: 46 patches, about 1 s to write.
PATIENTS = ["LIDC-IDRI-0049", "LIDC-IDRI-0148", "LIDC-IDRI-0188", "LIDC-IDRI-0250"]
TINY_MTNET = ("model.width=0.0625", "model.input_size_px=32", "model.seg.middle_units=1", "model.cls.middle_blocks=1",
              "batch_size={seg = 4, malignancy = 4}", "train.val_max_batches=2")


@pytest.fixture(scope="module")
def lidc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nodulekit.phantom import write_phantom

    root = tmp_path_factory.mktemp("run-all") / "lidc"
    write_phantom(root, patients=PATIENTS, matrix=96, max_slices=16)
    return root


def params(lidc: Path, **changes) -> RunParams:
    base = RunParams("mtnet", lidc_root=lidc, folds=(1,), n_folds=2, cohort="mtnet", augment_factor=1,
                     config_overrides=TINY_MTNET, epochs=1, max_steps=2, n_boot=20, report=False)
    return replace(base, **changes)


def run(workdir: Path, p: RunParams, **kw):
    events: list[StageEvent] = []
    kw.setdefault("predictor", IntensityPredictor)
    result = run_pipeline(workdir, p, on_event=events.append, **kw)
    return result, events


def statuses(result) -> dict[str, str]:
    return {s.stage: s.status for s in result.stages}


STAGE_NAMES = ["ingest", "consensus-label", "crop/mtnet", "augment/mtnet", "train/mtnet-fold1", "evaluate/mtnet-fold1"]


def test_runs_every_stage_then_a_rerun_does_no_work(lidc: Path, tmp_path: Path):
    first, events = run(tmp_path, params(lidc))
    assert list(statuses(first)) == STAGE_NAMES and set(statuses(first).values()) == {"ran"}
    assert [e.stage for e in events if e.kind == "start"] == STAGE_NAMES
    assert first.did_work and len(first.runs) == 1
    info = read_run_json(first.runs[0])
    assert info["status"] == "complete" and info["fold"] == 1 and info["steps"] == 4
    assert "augment/mtnet" in info["stores"]  # mtnet's config asks for offline copies
    metrics = first.metrics()
    assert metrics["folds"] == [1] and metrics["aggregate"]["segmentation"]["n"] > 0
    assert first.metrics_path == first.runs[0] / "evaluation" / "metrics.json" and first.report_html is None
    for name in STAGE_NAMES:
        assert stage_status(tmp_path, name).state == "up to date", name

    second, events = run(tmp_path, params(lidc))
    assert not second.did_work and set(statuses(second).values()) == {"up to date"}
    assert not [e for e in events if e.kind == "items"]
    assert second.runs == first.runs and list_runs(tmp_path, "mtnet") == first.runs
    assert second.metrics_path == first.metrics_path


def test_interrupted_training_resumes_where_it_stopped(lidc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from nodulekit.training import engine

    monkeypatch.setattr(engine.Trainer, "_stop_agreed", lambda self, step: step == 1)
    with pytest.raises(PipelineInterrupted, match="rerun the same command"):
        run(tmp_path, params(lidc))
    monkeypatch.undo()
    (stopped,) = list_runs(tmp_path, "mtnet")
    assert read_run_json(stopped)["status"] == "interrupted"
    assert stage_status(tmp_path, "train/mtnet-fold1").state == "partial"

    result, _ = run(tmp_path, params(lidc))
    assert statuses(result) == {"ingest": "up to date", "consensus-label": "up to date", "crop/mtnet": "up to date",
                                "augment/mtnet": "up to date", "train/mtnet-fold1": "resumed",
                                "evaluate/mtnet-fold1": "ran"}
    assert result.runs == [stopped] and list_runs(tmp_path, "mtnet") == [stopped]
    info = read_run_json(stopped)
    assert info["status"] == "complete" and info["steps"] == 4 and len(info["resumes"]) == 1


def test_a_change_reruns_only_what_depends_on_it(lidc: Path, tmp_path: Path):
    first, _ = run(tmp_path, params(lidc))
    fewer_boots, _ = run(tmp_path, params(lidc, n_boot=10))
    assert [s for s, v in statuses(fewer_boots).items() if v != "up to date"] == ["evaluate/mtnet-fold1"]
    new_lr, _ = run(tmp_path, params(lidc, config_overrides=TINY_MTNET + ("optimizer.lr=3e-4",)))
    assert [s for s, v in statuses(new_lr).items() if v != "up to date"] == ["train/mtnet-fold1",
                                                                           "evaluate/mtnet-fold1"]
    assert new_lr.runs != first.runs and len(list_runs(tmp_path, "mtnet")) == 2
    # the first configuration again: its run is found and adopted, nothing is trained
    back, _ = run(tmp_path, params(lidc))
    assert statuses(back)["train/mtnet-fold1"] == "up to date" and back.runs == first.runs
    assert len(list_runs(tmp_path, "mtnet")) == 2


def test_a_run_trained_by_hand_with_the_same_options_is_adopted(lidc: Path, tmp_path: Path):
    """How a torchrun job's run is picked up: `nodulekit train` with the same options, then `nodulekit run`."""
    from nodulekit.training.api import train

    run(tmp_path, params(lidc, until="augment"))
    by_hand = train(tmp_path, "mtnet", fold=1, config_overrides=list(TINY_MTNET), epochs=1, max_steps=2,
                    progress=False)
    result, _ = run(tmp_path, params(lidc))
    assert statuses(result)["train/mtnet-fold1"] == "up to date" and result.runs == [by_hand.run_dir]
    assert statuses(result)["evaluate/mtnet-fold1"] == "ran" and list_runs(tmp_path, "mtnet") == [by_hand.run_dir]


def test_without_offline_augmentation_trains_on_the_crop_store(lidc: Path, tmp_path: Path):
    result, _ = run(tmp_path, params(lidc, augment=False, until="train"))
    assert list(statuses(result)) == ["ingest", "consensus-label", "crop/mtnet", "train/mtnet-fold1"]
    info = read_run_json(result.runs[0])
    assert list(info["stores"]) == ["crop/mtnet"] and result.metrics_path is None
    # the saved config.toml is exactly the config the stage fingerprinted (how a crashed run is found again)
    manifest = read_manifest(tmp_path, "train/mtnet-fold1")["params"]
    saved = _config(result.runs[0])
    assert manifest["config_sha256"] == config_digest(saved) and manifest["stores"] == ["crop/mtnet"]
    assert matching_runs(tmp_path, "mtnet", 1, saved) == result.runs


def _config(run_dir: Path) -> dict:
    import tomllib

    return tomllib.loads((run_dir / "config.toml").read_text())


def test_until_stops_after_the_named_stage(lidc: Path, tmp_path: Path):
    result, _ = run(tmp_path, params(lidc, until="crop"))
    assert list(statuses(result)) == ["ingest", "consensus-label", "crop/mtnet"] and not result.runs


@pytest.mark.parametrize("changes, message", [
    ({"lidc_root": None}, "--lidc-root"),
    ({"folds": (2,)}, "folds are 0..1"),
    ({"until": "infer"}, "--until 'infer'"),
    ({"model": "nonet"}, "unknown model"),
])
def test_clear_errors(lidc: Path, tmp_path: Path, changes: dict, message: str):
    with pytest.raises(NodulekitError, match=message):
        run(tmp_path, params(lidc, **changes))


def test_parse_folds_as_nodulekit_train():
    assert parse_folds(None, None, 5) == () and parse_folds([2, 0], None, 5) == (2, 0)
    assert parse_folds(None, "all", 3) == (0, 1, 2) and parse_folds(None, "0,2", 5) == (0, 2)
    with pytest.raises(NodulekitError, match="not both"):
        parse_folds([1], "all", 5)
    with pytest.raises(NodulekitError, match="expected 'all'"):
        parse_folds(None, "first", 5)


TINY_MSUNET = ("model.width=0.125", "train.val_max_batches=2")
TINY_MUNET3D = ("model.width=0.0625", "train.val_max_batches=2")


@pytest.mark.slow
def test_msunet_trains_its_coarse_stage_links_it_and_evaluates_the_chain(lidc: Path, tmp_path: Path):
    p = params(lidc, model="msunet", cohort="msunet", config_overrides=TINY_MSUNET,
               coarse_config_overrides=TINY_MUNET3D, augment=False)
    first, _ = run(tmp_path, p, predictor=None)
    stages = list(statuses(first))
    assert stages == ["ingest", "consensus-label", "crop/msunet", "crop/munet3d", "train/msunet-fold1",
                      "train/munet3d-fold1", "evaluate/msunet-fold1"]
    (fine,), (coarse,) = first.runs, first.coarse_runs
    assert read_run_json(coarse)["model"] == "munet3d" and read_run_json(coarse)["fold"] == 1
    assert read_run_json(fine)["coarse_run"] == coarse.name
    assert tomllib.loads((coarse / "config.toml").read_text())["model"]["width"] == 0.0625  # its own layers
    assert tomllib.loads((fine / "config.toml").read_text())["model"]["width"] == 0.125
    assert first.metrics()["runs"][0]["meta"]["coarse_run"] == coarse.name  # the chain was scored

    second, _ = run(tmp_path, p, predictor=None)
    assert not second.did_work and second.coarse_runs == first.coarse_runs

    retrained, _ = run(tmp_path, replace(p, coarse_config_overrides=TINY_MUNET3D[:1]), predictor=None)
    changed = {stage for stage, status in statuses(retrained).items() if status != "up to date"}
    assert changed == {"train/munet3d-fold1", "evaluate/msunet-fold1"}
    assert read_run_json(fine)["coarse_run"] == retrained.coarse_runs[0].name != coarse.name


def test_coarse_options_are_for_msunet_only(lidc: Path, tmp_path: Path):
    with pytest.raises(NodulekitError, match="only msunet has a coarse stage"):
        run(tmp_path, params(lidc, coarse_config_overrides=("model.width=0.5",)))
