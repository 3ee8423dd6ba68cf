"""Paper 003's two stages: predict_two_stage on cubes, and the msunet -> munet3d run link."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _inference_helpers import fake_run, preset_info, store_rows, write_store
from nodulekit.errors import NodulekitError
from nodulekit.inference import link_coarse_run, linked_coarse_run, load_model, load_two_stage, predict_two_stage


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    """(workdir, munet3d run, msunet run): tiny random weights, fold 0 held out."""
    workdir = tmp_path_factory.mktemp("two-stage")
    for preset in ("munet3d", "msunet"):
        rel = f"crop/{preset}/patches.h5"
        (workdir / rel).parent.mkdir(parents=True)
        write_store(workdir / rel, preset_info(preset), store_rows(2, [0, 1]))
    coarse = fake_run(workdir, "munet3d", 0, "crop/munet3d/patches.h5")
    fine = fake_run(workdir, "msunet", 0, "crop/msunet/patches.h5")
    return workdir, coarse, fine


@pytest.fixture
def cubes():
    return np.random.default_rng(0).random((2, 64, 64, 64), dtype=np.float32)


def _stages(stage_runs, coarse_bias: float):
    _, coarse_run, fine_run = stage_runs
    coarse, fine = load_model(coarse_run), load_model(fine_run)
    with torch.no_grad():
        coarse.module.seg_head.weight.zero_()
        coarse.module.seg_head.bias.fill_(coarse_bias)  # coarse probability ~1 (or ~0) everywhere
    return coarse, fine


def test_every_slice_is_refined_when_the_coarse_mask_covers_the_cube(stage_runs, cubes):
    coarse, fine = _stages(stage_runs, 10.0)
    out = predict_two_stage(coarse, fine, cubes, batch_size=2)
    assert out.seg_prob.shape == out.coarse_prob.shape == (2, 64, 64, 64) and out.seg_prob.dtype == np.float32
    assert out.coarse_prob.min() > 0.99
    assert out.n_slabs.tolist() == [16, 16]
    assert (out.seg_prob > 0).all(axis=(2, 3)).all() and out.seg_prob.max() <= 1
    assert set(out.class_prob) == {"malignancy", "margin", "texture", "calcification"}
    assert all(v.shape == (2,) and np.all((v >= 0) & (v <= 1)) for v in out.class_prob.values())


def test_without_coarse_mask_the_central_slab_or_nothing_is_refined(stage_runs, cubes):
    coarse, fine = _stages(stage_runs, -10.0)
    centre = predict_two_stage(coarse, fine, cubes)
    assert centre.n_slabs.tolist() == [1, 1]
    refined = np.flatnonzero(centre.seg_prob.any(axis=(0, 2, 3)))
    assert refined.tolist() == [30, 31, 32, 33]
    assert all(np.isfinite(v).all() for v in centre.class_prob.values())

    nothing = predict_two_stage(coarse, fine, cubes, fallback="none")
    assert nothing.n_slabs.tolist() == [0, 0] and not nothing.seg_prob.any()
    assert all(np.isnan(v).all() for v in nothing.class_prob.values())


def test_the_stages_must_fit_together(stage_runs, cubes):
    _, coarse_run, fine_run = stage_runs
    coarse, fine = load_model(coarse_run), load_model(fine_run)
    with pytest.raises(NodulekitError, match="must segment 3D cubes"):
        predict_two_stage(fine, coarse, cubes)
    with pytest.raises(NodulekitError, match=r"cubes have shape \(32, 64, 64\) each"):
        predict_two_stage(coarse, fine, cubes[:, :32])


def test_an_msunet_run_links_its_munet3d_run(stage_runs, tmp_path):
    workdir, coarse_run, fine_run = stage_runs
    assert linked_coarse_run(fine_run) is None
    with pytest.raises(NodulekitError, match="no coarse \\(munet3d\\) run given or linked"):
        load_two_stage(fine_run)
    with pytest.raises(NodulekitError, match="the coarse stage is a munet3d run"):
        link_coarse_run(fine_run, fine_run)
    assert link_coarse_run(fine_run, coarse_run) == coarse_run.name
    assert json.loads((fine_run / "run.json").read_text())["coarse_run"] == coarse_run.name
    assert linked_coarse_run(fine_run) == coarse_run
    coarse, fine = load_two_stage(fine_run)
    assert (coarse.name, fine.name) == ("munet3d", "msunet") and fine.coarse is coarse

    record = json.loads((fine_run / "run.json").read_text())
    (fine_run / "run.json").write_text(json.dumps({**record, "coarse_run": "munet3d-gone"}))
    try:
        with pytest.raises(NodulekitError, match="coarse_run = 'munet3d-gone' is not a run folder"):
            linked_coarse_run(fine_run)
        assert load_two_stage(fine_run, coarse_run)[0].run_dir == coarse_run  # an explicit coarse run wins
    finally:
        (fine_run / "run.json").write_text(json.dumps({k: v for k, v in record.items() if k != "coarse_run"}))
