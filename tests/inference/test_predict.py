"""load_model + predict_patches for every registered model; checkpoint errors; ensembles."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _inference_helpers import fake_run, preset_info, store_rows, write_store
from nodulekit.errors import NodulekitError
from nodulekit.inference import average_predictions, load_model, predict_patches
from nodulekit.inference.predict import PatchPredictions
from nodulekit.io.patch_store import open_patch_store
from nodulekit.models.registry import list_models
from nodulekit.training.checkpoint import save_checkpoint


class Runs:
    """One synthetic store and one random-weight run per model, made on first use."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.runs: dict[str, Path] = {}

    def store(self, model: str) -> str:
        rel = f"crop/{model}/patches.h5"
        if not (self.workdir / rel).exists():
            (self.workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            rows = store_rows(3, [0, 1], slabs_per_nodule=2 if model == "msunet" else 1,
                              empty_per_nodule=1 if model == "dgnet" else 0)
            write_store(self.workdir / rel, preset_info(model), rows)
        return rel

    def run(self, model: str) -> Path:
        if model not in self.runs:
            self.runs[model] = fake_run(self.workdir, model, 0, self.store(model))
        return self.runs[model]

    def images(self, model: str) -> dict[str, np.ndarray]:
        with open_patch_store(self.workdir / self.store(model)) as store:
            return store.read(arrays=("images", "masks"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("inference-runs"))


@pytest.mark.parametrize("name", list_models())
def test_every_model_loads_and_predicts_probabilities_at_the_patch_size(runs, name):
    run_dir = runs.run(name)
    model = load_model(run_dir)
    arrays = runs.images(name)
    n = len(arrays["images"])
    assert model.name == name and model.run_dir == run_dir and model.checkpoint == run_dir / "model.pt"
    assert model.crop_preset == name and model.patch_shape == arrays["images"].shape[1:]
    assert not model.module.training and model.device == "cpu"
    assert model.store_info is not None and model.store_info.preset == name

    pred = predict_patches(model, arrays["images"], batch_size=2)
    assert len(pred) == n
    if model.has_seg:
        assert "seg" in model.tasks
        assert pred.seg_prob.shape == (n, *model.patch_shape) and pred.seg_prob.dtype == np.float32
        assert 0 <= pred.seg_prob.min() and pred.seg_prob.max() <= 1
    else:
        assert pred.seg_prob is None
    assert set(pred.class_prob) == set(model.class_tasks) == set(model.tasks) - {"seg"}
    for task, prob in pred.class_prob.items():
        assert prob.dtype == np.float32 and np.all((prob >= 0) & (prob <= 1))
        assert prob.shape == ((n,) if model.class_tasks[task] == 2 else (n, model.class_tasks[task]))



@pytest.mark.parametrize("name", list_models())
def test_weights_assigned_into_a_meta_module_equal_the_usual_load(runs, name, monkeypatch):
    """load_model builds the module on the meta device and assigns the checkpoint's tensors in
    (no random initialisation); the result equals building it and loading the weights."""
    import nodulekit.inference.predict as engine

    run_dir = runs.run(name)
    assigned = []
    real = engine._module_with_weights
    monkeypatch.setattr(engine, "_module_with_weights", lambda *a: assigned.append(real(*a)) or assigned[-1])
    fast = load_model(run_dir, fold_norms=False)
    assert assigned and assigned[0] is fast.module  # the shortcut applied to every registered model
    monkeypatch.setattr(engine, "_module_with_weights", lambda *a: None)
    usual = load_model(run_dir, fold_norms=False)
    fast_state, usual_state = fast.module.state_dict(), usual.module.state_dict()
    assert list(fast_state) == list(usual_state)
    for key, value in usual_state.items():
        assert not fast_state[key].is_meta and fast_state[key].dtype == value.dtype
        torch.testing.assert_close(fast_state[key], value, rtol=0, atol=0, msg=key)
    assert [p.requires_grad for p in fast.module.parameters()] == [p.requires_grad for p in usual.module.parameters()]
    images = runs.images(name)["images"]
    a, b = predict_patches(fast, images, batch_size=2), predict_patches(usual, images, batch_size=2)
    if a.seg_prob is not None:
        np.testing.assert_array_equal(a.seg_prob, b.seg_prob)
    for task in a.class_prob:
        np.testing.assert_array_equal(a.class_prob[task], b.class_prob[task])


def test_the_meta_shortcut_steps_aside_for_weights_that_do_not_fit(runs, tmp_path):
    """A checkpoint whose keys differ is not assigned into a meta module: the usual path names it."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs.run("mtcnn"), run_dir)
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    payload["model"].pop(next(iter(payload["model"])))
    save_checkpoint(run_dir / "model.pt", payload)
    with pytest.raises(NodulekitError, match="do not fit model 'mtcnn'.*1 missing"):
        load_model(run_dir)

def test_the_tasks_of_each_model(runs):
    expected = {"mtnet": {"seg", "malignancy"}, "dgnet": {"seg", "nodule"}, "mtcnn": {"malignancy"},
                "msunet": {"seg", "malignancy", "margin", "texture", "calcification"}, "munet3d": {"seg"},
                "cascade": {"seg", "cls"}}
    for name, tasks in expected.items():
        assert set(load_model(runs.run(name)).tasks) == tasks, name


def test_batches_do_not_change_the_predictions(runs):
    model = load_model(runs.run("dgnet"))
    images = runs.images("dgnet")["images"]
    one, all_ = predict_patches(model, images, batch_size=1), predict_patches(model, images, batch_size=64)
    np.testing.assert_allclose(one.seg_prob, all_.seg_prob, atol=1e-5)
    np.testing.assert_allclose(one.class_prob["nodule"], all_.class_prob["nodule"], atol=1e-5)


def test_mtnet_logits_at_224_are_resized_to_the_patch_as_its_input_resolution_mode(runs, tmp_path):
    """Resizing MT-Net's model-size logits back to the patch = its own output_resolution = "input"."""
    rel = runs.store("mtnet")
    shutil.copytree(runs.workdir / "crop", tmp_path / "crop")
    at_model = fake_run(tmp_path, "mtnet", 0, rel, model_overrides={"input_size_px": 96}, seed=3)
    at_input = fake_run(tmp_path, "mtnet", 0, rel, model_overrides={"input_size_px": 96, "output_resolution": "input"},
                        seed=3)
    images = runs.images("mtnet")["images"]
    a = predict_patches(load_model(at_model), images)
    b = predict_patches(load_model(at_input), images)
    assert a.seg_prob.shape == (len(images), 64, 64)
    np.testing.assert_allclose(a.seg_prob, b.seg_prob, atol=1e-6)
    np.testing.assert_allclose(a.class_prob["malignancy"], b.class_prob["malignancy"], atol=1e-6)


def test_mtcnn_malignancy_is_the_auc_weighted_mean_of_its_views(runs):
    from nodulekit.models.mtcnn import fuse_views, view_probabilities

    model = load_model(runs.run("mtcnn"))
    model.module.view_weights.copy_(torch.tensor([0.3, 0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]))
    images = runs.images("mtcnn")["images"]
    with torch.no_grad():
        expected = fuse_views(view_probabilities(model.module(torch.from_numpy(images))["view_logits"]),
                              model.module.view_weights).numpy()
    np.testing.assert_allclose(predict_patches(model, images).class_prob["malignancy"], expected, atol=1e-5)


def test_cascade_three_classes_and_the_ground_truth_masked_baseline(runs, tmp_path):
    rel = runs.store("cascade")
    shutil.copytree(runs.workdir / "crop", tmp_path / "crop")
    arrays = runs.images("cascade")
    three = load_model(fake_run(tmp_path, "cascade", 0, rel, model_overrides={"n_classes": 3}))
    assert three.class_tasks == {"cls": 3}
    prob = predict_patches(three, arrays["images"]).class_prob["cls"]
    assert prob.shape == (len(prob), 3)
    np.testing.assert_allclose(prob.sum(axis=1), 1, atol=1e-5)

    masked = load_model(fake_run(tmp_path, "cascade", 0, rel, model_overrides={"mode": "gt_masked"}))
    assert masked.needs_masks and not masked.has_seg
    with pytest.raises(NodulekitError, match="masked by the ground truth: pass masks="):
        predict_patches(masked, arrays["images"])
    assert predict_patches(masked, arrays["images"], masks=arrays["masks"]).class_prob["cls"].shape == (len(prob),)


def test_a_checkpoint_file_inside_the_run_loads_too(runs):
    run_dir = runs.run("munet3d")
    best = run_dir / "checkpoints" / "best-seg.pt"
    best.parent.mkdir(exist_ok=True)
    shutil.copy(run_dir / "model.pt", best)
    model = load_model(best)
    assert model.run_dir == run_dir and model.checkpoint == best


def test_weights_are_memory_mapped_and_a_legacy_format_file_still_loads(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.run("munet3d"), run_dir)
    mapped = load_model(run_dir)
    usual = {k: v.clone() for k, v in mapped.module.state_dict().items()}
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    torch.save(payload, run_dir / "model.pt", _use_new_zipfile_serialization=False)  # cannot be mapped
    legacy = load_model(run_dir)
    for key, value in legacy.module.state_dict().items():
        assert torch.equal(value, usual[key]), key


def test_folding_into_mapped_weights_leaves_the_checkpoint_file_as_it_was(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs.run("mtnet"), run_dir)
    before = (run_dir / "model.pt").read_bytes()
    load_model(run_dir)  # BatchNorm folded into the conv weights in place
    assert (run_dir / "model.pt").read_bytes() == before


def test_average_predictions_is_the_elementwise_mean():
    a = PatchPredictions(np.zeros((2, 3, 3), np.float32), {"m": np.array([0.2, 0.4], np.float32),
                                                           "c": np.full((2, 3), 1 / 3, np.float32)})
    b = PatchPredictions(np.ones((2, 3, 3), np.float32), {"m": np.array([0.6, 0.0], np.float32),
                                                          "c": np.full((2, 3), 1 / 3, np.float32)})
    mean = average_predictions([a, b])
    np.testing.assert_allclose(mean.seg_prob, 0.5)
    np.testing.assert_allclose(mean.class_prob["m"], [0.4, 0.2])
    assert mean.class_prob["c"].shape == (2, 3)
    with pytest.raises(NodulekitError, match="other tasks"):
        average_predictions([a, PatchPredictions(a.seg_prob, {"m": a.class_prob["m"]})])
    with pytest.raises(NodulekitError, match="other segmentation"):
        average_predictions([a, PatchPredictions(None, a.class_prob)])
    with pytest.raises(NodulekitError, match="no predictions"):
        average_predictions([])


# -- errors -----------------------------------------------------------------------------------------
def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def test_paths_that_are_not_runs_or_checkpoints(runs, tmp_path):
    with pytest.raises(NodulekitError, match="not found"):
        load_model(tmp_path / "nothing")
    with pytest.raises(NodulekitError, match="not a training run folder"):
        load_model(tmp_path)
    loose = tmp_path / "model.pt"
    shutil.copy(runs.run("mtnet") / "model.pt", loose)
    with pytest.raises(NodulekitError, match="not inside a training run folder"):
        load_model(loose)
    run_dir = _copy_run(runs.run("mtnet"), tmp_path)
    (run_dir / "model.pt").unlink()
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(NodulekitError, match="no final weights .*checkpoints/last.pt"):
        load_model(run_dir)
    with pytest.raises(NodulekitError, match="not a readable nodulekit checkpoint"):
        load_model(run_dir / "checkpoints" / "last.pt")


def test_missing_config_and_a_run_of_another_model(runs, tmp_path):
    run_dir = _copy_run(runs.run("mtnet"), tmp_path)
    with pytest.raises(NodulekitError, match="a run of model 'mtnet', not 'cascade'"):
        load_model(run_dir, model="cascade")
    (run_dir / "config.toml").unlink()
    with pytest.raises(NodulekitError, match=r"config.toml: missing"):
        load_model(run_dir)


def test_a_checkpoint_of_another_model_is_refused(runs, tmp_path):
    from nodulekit.training.config import load_toml

    run_dir = _copy_run(runs.run("mtnet"), tmp_path)
    other = torch.load(runs.run("cascade") / "model.pt", weights_only=True)
    # the other model's weights under this run's config: caught by the state_dict check
    save_checkpoint(run_dir / "model.pt", {"model": other["model"], "config": load_toml(run_dir / "config.toml")})
    with pytest.raises(NodulekitError, match=r"do not fit model 'mtnet' .*checkpoint of another model"):
        load_model(run_dir)
    # with its own config: caught by the config check
    save_checkpoint(run_dir / "model.pt", {"model": other["model"], "config": other["config"]})
    with pytest.raises(NodulekitError, match="model config differs .* another run or model"):
        load_model(run_dir)


def test_a_checkpoint_format_from_another_nodulekit_version_is_refused(runs, tmp_path):
    run_dir = _copy_run(runs.run("mtnet"), tmp_path)
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    save_checkpoint(run_dir / "model.pt", {**payload, "format": 99})
    with pytest.raises(NodulekitError, match=r"checkpoint format 99 \(trained with nodulekit 0\.1\.0\); nodulekit .* "
                                             r"reads format 1"):
        load_model(run_dir)
    torch.save({"weights": payload["model"]}, run_dir / "model.pt")
    with pytest.raises(NodulekitError, match="not a nodulekit weights checkpoint"):
        load_model(run_dir)


def test_images_of_another_shape_and_an_unavailable_device(runs):
    model = load_model(runs.run("mtnet"))
    with pytest.raises(NodulekitError, match=r"images have shape \(32, 32\) per patch, the model takes \(64, 64\)"):
        predict_patches(model, np.zeros((1, 32, 32), np.float32))
    if not torch.cuda.is_available():
        with pytest.raises(NodulekitError, match="no CUDA GPU"):
            load_model(runs.run("mtnet"), device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("name", list_models())
def test_cuda_bf16_predictions_match_the_cpu(runs, name):
    images = runs.images(name)["images"]
    cpu = predict_patches(load_model(runs.run(name)), images)
    model = load_model(runs.run(name), device="cuda")
    assert model.device.startswith("cuda")
    gpu = predict_patches(model, images)
    if cpu.seg_prob is not None:
        np.testing.assert_allclose(gpu.seg_prob, cpu.seg_prob, atol=0.05)
    for task in cpu.class_prob:
        np.testing.assert_allclose(gpu.class_prob[task], cpu.class_prob[task], atol=0.05)
