"""On-the-fly batch augmentation (torch, on CPU here; the same code runs on the GPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nodulekit.patches.gpu_augment import PRESETS, BatchAugment, OnTheFlyConfig

ALL_ON = {"flip": {"p": 0.5, "axes": ["y", "x"]}, "rot90": {"p": 0.5}, "affine": {"p": 0.5, "max_deg": 20},
          "noise": {"p": 0.0}}


def blobs(n: int, spatial: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Off-centre Gaussian blobs in [0, 1], shape (N, 1, *spatial)."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in spatial], indexing="ij")
    out = []
    for _ in range(n):
        centre = [s / 2 + 4 * (torch.rand(1, generator=g).item() - 0.5) for s in spatial]
        r2 = sum((grid - c) ** 2 for grid, c in zip(grids, centre))
        out.append(torch.exp(-r2 / (2 * (min(spatial) / 5) ** 2)))
    return torch.stack(out)[:, None]


@pytest.mark.parametrize("spatial,axes", [((32, 32), ["y", "x"]), ((16, 16, 16), ["z", "y", "x"])])
def test_mask_and_agreement_stay_aligned_with_the_image(spatial, axes):
    images = blobs(16, spatial)
    config = {**ALL_ON, "flip": {"p": 0.5, "axes": axes}, "clevel": 0.5}
    out = BatchAugment(config, seed=3)(images, images[:, 0] >= 0.5, agreement=images[:, 0].clone())
    assert out["masks"].shape == images.shape[:1] + images.shape[2:] and out["masks"].dtype == torch.bool
    torch.testing.assert_close(out["agreement"], out["images"][:, 0], rtol=0, atol=0)
    assert torch.equal(out["masks"], out["images"][:, 0] >= 0.5)
    params = out["params"]
    assert params.affine.any() and (~params.affine).any() and (params.rot90_k > 0).any() and params.flip.any()


def test_flips_and_rot90_are_exact_per_sample():
    images = blobs(12, (20, 20), seed=1)
    masks = images >= 0.5
    out = BatchAugment({"flip": {"p": 0.5}, "rot90": {"p": 0.7}}, seed=0)(images, masks)
    params = out["params"]
    for i in range(len(images)):
        expected = images[i].numpy()
        if params.flip[i, 0]:
            expected = expected[:, ::-1]
        if params.flip[i, 1]:
            expected = expected[:, :, ::-1]
        expected = np.rot90(expected, int(params.rot90_k[i]), axes=(1, 2))
        assert np.array_equal(out["images"][i].numpy(), expected)
        assert torch.equal(out["masks"][i], out["images"][i] >= 0.5)


def test_3d_flips_and_rot90_in_every_plane_are_exact():
    images = torch.rand(24, 2, 6, 6, 6, generator=torch.Generator().manual_seed(3))
    planes = [["y", "x"], ["z", "y"], ["z", "x"]]
    out = BatchAugment({"flip": {"p": 0.5, "axes": ["z", "y", "x"]}, "rot90": {"p": 0.8, "planes": planes}},
                       seed=2)(images)
    params = out["params"]
    assert set(params.rot90_plane[params.rot90_k > 0].tolist()) == {0, 1, 2}
    for i in range(len(images)):
        expected = images[i].numpy()
        for a in range(3):
            if params.flip[i, a]:
                expected = np.flip(expected, 1 + a)
        plane = [1 + "zyx".index(axis) for axis in planes[int(params.rot90_plane[i])]]
        expected = np.rot90(expected, int(params.rot90_k[i]), axes=plane)
        assert np.array_equal(out["images"][i].numpy(), expected), i


def test_nearest_mask_mode_without_agreement():
    images = blobs(8, (24, 24), seed=2)
    out = BatchAugment({"affine": {"p": 1.0, "max_deg": 30}}, seed=1)(images, images >= 0.5)
    agree = (out["masks"] == (out["images"] >= 0.5)).float().mean()
    assert agree > 0.97 and out["masks"].sum() > 0  # nearest vs bilinear differ only on the edge


def test_same_seed_same_batch_and_sample_apply_is_forward():
    images = blobs(6, (16, 16, 16), seed=4)
    config = {**ALL_ON, "noise": {"p": 0.5, "sigma": [0.01, 0.05]}}
    first = BatchAugment(config, seed=9)(images, images >= 0.5)
    second = BatchAugment(config, seed=9)(images, images >= 0.5)
    assert torch.equal(first["images"], second["images"]) and torch.equal(first["masks"], second["masks"])
    aug = BatchAugment(config, seed=9)
    params = aug.sample(images)
    assert torch.equal(aug.apply(params, images, images >= 0.5)["images"], first["images"])
    other = BatchAugment(config, seed=10)(images, images >= 0.5)
    assert not torch.equal(other["images"], first["images"])
    explicit = BatchAugment(config)(images, images >= 0.5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(explicit["images"], first["images"])
    log = first["params"].as_log()
    assert len(log) == 6 and set(log[0]) >= {"flip", "rot90_k", "affine", "theta", "noise_sigma"}


def test_noise_touches_only_images_and_off_means_identity():
    images = blobs(4, (16, 16))
    masks = images >= 0.5
    out = BatchAugment({"noise": {"p": 1.0, "sigma": [0.05, 0.05]}}, seed=0)(images, masks, agreement=images)
    assert torch.equal(out["masks"], masks) and torch.equal(out["agreement"], images)
    assert (out["images"] - images).std() == pytest.approx(0.05, rel=0.1)
    same = BatchAugment({}, seed=0)(images, masks)
    assert torch.equal(same["images"], images) and torch.equal(same["masks"], masks)


def test_config_from_dict_and_presets():
    config = OnTheFlyConfig.from_dict({"flip": {"p": 0.5, "axes": ["z", "y", "x"]}, "rot90": {"p": 1.0},
                                       "affine": {"p": 0.3, "max_deg": 10}, "noise": {"p": 0.5, "sigma": [0, 0.02]},
                                       "image_fill": -1.0})
    assert config.flip_axes == ("z", "y", "x") and config.max_deg == 10 and config.noise_sigma == (0, 0.02)
    with pytest.raises(ValueError, match="unknown"):
        OnTheFlyConfig.from_dict({"flip": {"prob": 0.5}})
    with pytest.raises(ValueError, match="mask_mode"):
        OnTheFlyConfig.from_dict({"mask_mode": "cubic"})
    images = blobs(2, (8, 8, 8)) * 2 - 1
    out = BatchAugment(PRESETS["cascade"], seed=0)(images, images >= 0)
    assert out["images"].shape == images.shape


@pytest.mark.gpu
def test_runs_on_the_batch_device():
    images = blobs(8, (16, 16, 16)).cuda()
    out = BatchAugment({**ALL_ON, "noise": {"p": 0.5}}, seed=0)(images, images >= 0.5, agreement=images.clone())
    assert out["images"].device.type == "cuda" and out["params"].theta.device.type == "cuda"
    assert torch.equal(out["masks"], out["agreement"] >= 0.5)
