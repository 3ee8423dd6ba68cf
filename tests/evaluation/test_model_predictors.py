"""``evaluate`` with the built-in models' predictors (nodulekit.evaluation.predictors): random-weight
runs on synthetic stores for every model family, the two-stage msunet, and short phantom runs of
mtnet (2D) and cascade (3D) trained for a few steps, through ``nodulekit evaluate --report``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from _inference_helpers import fake_run, preset_info, store_rows, write_store  # noqa: E402
from nodulekit.errors import NodulekitError  # noqa: E402
from nodulekit.evaluation import EvaluateParams, evaluate  # noqa: E402
from nodulekit.evaluation.predictors import BUILTIN_MODELS, MSUNetPredictor  # noqa: E402

PARAMS = EvaluateParams(n_boot=20)
TRUTH = {"mtnet": {"malignancy": "label"}, "dgnet": {"nodule": "kind==nodule"}, "mtcnn": {"malignancy": "label"},
         "msunet": {t: f"label_msunet_{t}" for t in ("malignancy", "margin", "texture", "calcification")},
         "munet3d": {}, "cascade": {"cls": "label_mtcnn_malignancy"}}


pytestmark = pytest.mark.one_torch_thread


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store per model (4 patients, folds 0 and 1); msunet slabs centred where their cubes say."""
    workdir = tmp_path_factory.mktemp("model-predictors")
    for model in BUILTIN_MODELS:
        rows = store_rows(4, [0, 1], slabs_per_nodule=2 if model == "msunet" else 1,
                          empty_per_nodule=1 if model == "dgnet" else 0)
        if model == "msunet":
            for row in rows:  # slab centre = nodule centre + the slab's offset (1 mm slices)
                row["centre_z_mm"] += row["slice_offset"] + 1.5
        (workdir / "crop" / model).mkdir(parents=True)
        write_store(workdir / "crop" / model / "patches.h5", preset_info(model), rows)
    return workdir


def test_the_builtin_predictors_register_without_importing_torch():
    code = ("import sys; from nodulekit.evaluation.predictor import registered_predictors as r; "
            "print(r(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{sorted(BUILTIN_MODELS)} False"


@pytest.mark.parametrize("model", BUILTIN_MODELS)
def test_evaluate_writes_the_metrics_of_each_model_family(workdir, model):
    run = fake_run(workdir, model, 0, f"crop/{model}/patches.h5")
    result = evaluate(workdir, run=run.name, params=PARAMS)
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["model"] == model and metrics["folds"] == [0]
    assert {t: v["truth_column"] for t, v in metrics["tasks"].items()} == TRUTH[model]
    assert metrics["has_segmentation"] == (model != "mtcnn")
    assert set(metrics["aggregate"].get("classification", {})) == set(TRUTH[model])
    if model != "mtcnn":
        assert metrics["aggregate"]["segmentation"]["metrics"]["dice"]["n"] > 0
    assert all(row["fold"] == 0 for row in metrics["rows"])


def test_predictions_are_reused_until_the_weights_change(workdir):
    run = fake_run(workdir, "mtnet", 1, "crop/mtnet/patches.h5")
    first = evaluate(workdir, run=run.name, params=PARAMS)
    again = evaluate(workdir, run=run.name, params=PARAMS)
    assert first.reused_predictions == [False] and again.reused_predictions == [True]
    assert again.metrics["aggregate"] == first.metrics["aggregate"]


def test_a_three_class_cascade_gets_multiclass_metrics(workdir):
    run = fake_run(workdir, "cascade", 0, "crop/cascade/patches.h5", model_overrides={"n_classes": 3},
                   config_overrides={"data": {"label_column": "label_texture3"}})
    metrics = evaluate(workdir, run=run.name, params=PARAMS).metrics
    assert metrics["tasks"]["cls"] == {"n_classes": 3, "truth_column": "label_texture3"}
    cls = metrics["aggregate"]["classification"]["cls"]
    assert cls["n_classes"] == 3 and "average_f1" in cls["metrics"]
    assert len(metrics["rows"][0]["cls_prob"]) == 3


def test_a_linked_msunet_run_is_scored_through_both_stages(workdir):
    from nodulekit.inference import link_coarse_run, load_model, predict_two_stage
    from nodulekit.evaluation.predictions import open_predictions
    from nodulekit.evaluation.predictors import _SlabGrid
    from nodulekit.io.patch_store import open_patch_store
    from nodulekit.models.two_stage import sample_z

    coarse = fake_run(workdir, "munet3d", 0, "crop/munet3d/patches.h5")
    fine = fake_run(workdir, "msunet", 0, "crop/msunet/patches.h5")
    single = evaluate(workdir, run=fine.name, params=PARAMS)
    link_coarse_run(fine, coarse)
    chained = evaluate(workdir, run=fine.name, params=PARAMS)
    assert chained.reused_predictions == [False]  # run.json changed, so did the cache key
    assert chained.metrics["runs"][0]["meta"]["coarse_run"] == coarse.name

    crop = workdir / "crop"
    with open_predictions(chained.predictions[0]) as pred, open_patch_store(crop / "msunet/patches.h5") as slabs, \
            open_patch_store(crop / "munet3d/patches.h5") as cubes:
        row = int(pred.store_index[0])
        grid = _SlabGrid(slabs, cubes)
        cube_row = grid.cube_row(str(slabs.table["nodule_key"][row]))
        two = predict_two_stage(load_model(coarse), load_model(fine), cubes.read([cube_row])["images"])
        expected = sample_z(torch.from_numpy(two.seg_prob[0]), torch.from_numpy(grid.positions(row, cube_row)))
        np.testing.assert_allclose(pred.seg_prob(slice(0, 1))[0], expected.numpy(), atol=2e-3)  # float16 store
        np.testing.assert_allclose(pred.class_prob("margin")[0, 1], two.class_prob["margin"][0], atol=1e-6)
    assert {r["store_index"] for r in single.metrics["rows"]} == {r["store_index"] for r in chained.metrics["rows"]}



def test_evaluate_cli_links_the_coarse_run_and_scores_the_chain(workdir):
    from typer.testing import CliRunner

    from nodulekit.cli import app

    coarse = fake_run(workdir, "munet3d", 0, "crop/munet3d/patches.h5")
    fine = fake_run(workdir, "msunet", 0, "crop/msunet/patches.h5")
    runner = CliRunner()
    args = ["evaluate", "--run", fine.name, "--boot", "20", "--report", "--workdir", str(workdir)]
    out = runner.invoke(app, [*args, "--coarse-run", coarse.name])
    assert out.exit_code == 0, out.output
    assert json.loads((fine / "run.json").read_text())["coarse_run"] == coarse.name
    report = (fine / "evaluation" / "report.md").read_text()
    assert f"| stages | two (paper 003): each held-out nodule's cube through munet3d run(s) {coarse.name};" in report
    for bad, message in ((["--coarse-run", coarse.name, "--coarse-run", coarse.name], "2 --coarse-run for 1 --run"),
                         (["--coarse-run", fine.name], "a run of 'msunet'; the coarse stage is a munet3d run")):
        out = runner.invoke(app, [*args, *bad])  # main() prints these as one line (tests/cli)
        assert isinstance(out.exception, NodulekitError) and message in str(out.exception)

def test_the_coarse_run_must_hold_out_the_same_fold(workdir):
    coarse = fake_run(workdir, "munet3d", 1, "crop/munet3d/patches.h5")
    fine = fake_run(workdir, "msunet", 0, "crop/msunet/patches.h5")
    with pytest.raises(NodulekitError, match="holds out folds \\[1\\], not fold 0"):
        evaluate(workdir, run=fine.name, params=PARAMS,
                 predictor=lambda run: MSUNetPredictor(run, coarse_run=coarse))


def test_a_store_of_another_geometry_is_refused(workdir):
    run = fake_run(workdir, "dgnet", 0, "crop/dgnet/patches.h5")
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "eval_store": "crop/mtnet/patches.h5"}))
    with pytest.raises(NodulekitError, match=r"patches of shape \(64, 64\), but dgnet .* takes \(128, 128\)"):
        evaluate(workdir, run=run.name, params=PARAMS)


# -- short phantom runs, through the CLI ----------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_workdir(tmp_path_factory, tiny_phantom) -> Path:
    """tiny phantom -> ingest -> consensus-label (3 folds: the cohorts' nodules land in folds 0-2)."""
    workdir = tmp_path_factory.mktemp("phantom-evaluate")
    for args in (["ingest", "lidc", "--root", str(tiny_phantom)], ["consensus-label", "--folds", "3"]):
        _cli(*args, "--workdir", str(workdir))
    return workdir


def _cli(*args: str):
    from typer.testing import CliRunner

    from nodulekit.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mtnet", "cascade"])
def test_phantom_crop_train_evaluate_report(phantom_workdir, model):
    from nodulekit.models.registry import get_spec
    from nodulekit.training.api import train

    _cli("crop", "--for", model, "--workdir", str(phantom_workdir))
    trained = train(phantom_workdir, model, fold=2, config_overrides={"model": dict(get_spec(model).test_overrides)},
                    epochs=1, max_steps=2, progress=False)
    assert trained.status == "complete"
    out = _cli("evaluate", "--run", trained.name, "--report", "--boot", "20", "--workdir", str(phantom_workdir))
    assert "report:" in out.output
    folder = trained.run_dir / "evaluation"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["folds"] == [2] and metrics["data"]["dataset"].startswith("nodulekit phantom")
    assert set(metrics["tasks"]) == {"mtnet": {"malignancy"}, "cascade": {"cls"}}[model]
    assert metrics["aggregate"]["segmentation"]["n"] > 0
    html = (folder / "report.html").read_text()
    assert "<img" in html and model in html and (folder / "report.md").is_file()
