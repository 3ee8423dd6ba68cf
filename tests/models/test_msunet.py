"""Paper 003 (Ni et al. 2022): MSU-Net, 3D MU-Net, their loss, the stage chaining (Table 6: tests/evaluation)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nodulekit.errors import NodulekitError
from nodulekit.models import create_model, get_spec
from nodulekit.models.blocks import GateUnit
from nodulekit.models.losses import focal_loss_with_logits, squared_dice_loss
from nodulekit.models.msunet import MSUNet, binarised_labels, msunet_loss
from nodulekit.models.munet3d import MUNet3D
from nodulekit.models.two_stage import coarse_probabilities, msunet_refiner, plan_slabs, refine_cubes, roi_range

TINY = {"width": 0.0625, "heads": {"channels": 8}}  # widths 8, 8, 16, 32, 64 (2 channels per slice)


def msunet(**overrides: object) -> MSUNet:
    torch.manual_seed(0)
    heads = {**TINY["heads"], **overrides.pop("heads", {})}  # type: ignore[dict-item]
    return create_model("msunet", **{**TINY, **overrides, "heads": heads})  # type: ignore[return-value]


def munet3d(**overrides: object) -> MUNet3D:
    torch.manual_seed(0)
    return create_model("munet3d", **{"width": 0.0625, **overrides})  # type: ignore[return-value]


# -- architecture ------------------------------------------------------------------------------

@pytest.mark.parametrize("switches", [
    {}, {"separable_encoder": False}, {"multiscale_input": False}, {"gate_units": False},
    {"multiscale_input": False, "gate_units": False}, {"pyramid_pool": "avg", "upsample": "bilinear"},
    {"heads": {"branches": "encoder"}}, {"heads": {"branches": "decoder"}},
    {"heads": {"tasks": ["malignancy"]}}, {"heads": {"tasks": []}},
])
def test_msunet_shapes_for_every_switch(switches: dict) -> None:
    model = msunet(**switches).eval()
    config = get_spec("msunet").resolve_config({"model": {**TINY, **switches,
                                                          "heads": {**TINY["heads"], **switches.get("heads", {})}}})
    with torch.no_grad():
        out = model(torch.rand(2, 4, 32, 32))
    expected = get_spec("msunet").output_shapes(config, 2, (32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == expected


@pytest.mark.parametrize("switches", [{}, {"multiscale_input": False}, {"gate_units": False}])
def test_munet3d_shapes_for_every_switch(switches: dict) -> None:
    model = munet3d(**switches).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 16, 16, 16))
    assert set(out) == {"seg"} and tuple(out["seg"].shape) == (1, 1, 16, 16, 16)


def test_switches_remove_the_modules() -> None:
    plain = msunet(multiscale_input=False, gate_units=False)
    assert plain.unet.pyramid is None and plain.unet.encoder_gates is None and plain.unet.decoder_gates is None
    no_gates = msunet(gate_units=False)
    assert no_gates.unet.pyramid is not None and no_gates.unet.encoder_gates is None
    assert msunet(heads={"branches": "encoder"}).heads.decoder_branch is None
    assert len(msunet().heads.encoder_branch) == 2 + 2 and len(msunet().heads.decoder_branch) == 4 + 2  # + pool, flatten


def test_default_width_parameter_counts() -> None:
    msu = get_spec("msunet").param_counts()
    mu = get_spec("munet3d").param_counts()
    plain = get_spec("munet3d").param_counts(multiscale_input=False, gate_units=False)
    print(f"\nMSU-Net: {msu} (paper 21.81 M); 3D MU-Net: {mu} (paper 25.97 M); "
          f"plain 3D U-Net: {plain['total']} (paper 25.88 M)")
    assert msu == {"seg_net": 20_629_016, "heads": 1_080_456, "total": 21_709_472}
    assert abs(msu["total"] / 21.81e6 - 1) < 0.01
    assert mu["total"] == 25_769_287 and abs(mu["total"] / 25.97e6 - 1) < 0.01
    assert abs((mu["total"] - plain["total"]) / 0.09e6 - 1) < 0.2  # pyramid + gates: 0.10 M vs 0.09 M


def test_invalid_choices_raise() -> None:
    with pytest.raises(NodulekitError, match="branches"):
        msunet(heads={"branches": "both_and_more"})
    with pytest.raises(NodulekitError, match="unknown"):
        msunet(heads={"tasks": ["spiculation"]})
    with pytest.raises(NodulekitError, match="no output"):
        msunet()(torch.rand(2, 4, 32, 32), outputs=["lobulation"])
    with pytest.raises(NodulekitError, match="slabs"):
        msunet()(torch.rand(2, 3, 32, 32))


# -- gate unit and per-slice convolutions -------------------------------------------------------

def test_gate_unit_matches_a_hand_computation() -> None:
    """Eq. (6)-(7) written out with numpy for a 1x2-pixel map, C = 2, C_int = 2."""
    gate = GateUnit(2, channels=2, inter_channels=2)
    w1, b1 = np.array([[0.5, -1.0], [2.0, 0.25]]), np.array([0.1, -0.2])
    w2, b2 = np.array([[1.5, -0.5]]), np.array([0.3])
    with torch.no_grad():
        gate.w1.weight.copy_(torch.tensor(w1)[:, :, None, None])
        gate.w1.bias.copy_(torch.tensor(b1))
        gate.w2.weight.copy_(torch.tensor(w2)[:, :, None, None])
        gate.w2.bias.copy_(torch.tensor(b2))
    f = np.array([[[1.0, -2.0]], [[0.5, 3.0]]])   # (C, H=1, W=2)
    x = np.array([[[0.2, 1.0]], [[-1.0, 0.4]]])
    with torch.no_grad():
        out = gate(torch.tensor(f[None], dtype=torch.float32), torch.tensor(x[None], dtype=torch.float32))[0]
    for j in range(2):
        s = f[:, 0, j] + x[:, 0, j]
        hidden = np.maximum(w1 @ s + b1, 0.0)
        att = 1.0 / (1.0 + math.exp(-(w2 @ hidden + b2)[0]))
        np.testing.assert_allclose(out[:, 0, j].numpy(), x[:, 0, j] * att, rtol=1e-6)


def test_grouped_gate_has_one_map_per_group() -> None:
    gate = GateUnit(2, channels=4, inter_channels=2, groups=2)
    f, x = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    att = gate.attention(f, x)
    assert att.shape == (1, 2, 3, 3)
    out = gate(f, x)
    torch.testing.assert_close(out[:, :2], x[:, :2] * att[:, :1])
    torch.testing.assert_close(out[:, 2:], x[:, 2:] * att[:, 1:])


def _encoder_features(model: MSUNet, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.unet.encode(x)


def test_per_slice_encoder_does_not_mix_slices() -> None:
    """Perturbing slice 2 leaves every encoder feature of slice 0's channel group unchanged."""
    model = msunet().eval()
    x = torch.rand(1, 4, 32, 32)
    y = x.clone()
    y[:, 2] = torch.rand(32, 32)
    for a, b in zip(_encoder_features(model, x), _encoder_features(model, y)):
        group = a.shape[1] // 4
        torch.testing.assert_close(a[:, :group], b[:, :group], rtol=0, atol=0)       # slice 0
        assert not torch.equal(a[:, 2 * group:3 * group], b[:, 2 * group:3 * group])  # slice 2
    with torch.no_grad():  # the decoder merges the slices
        assert not torch.equal(model(x)["seg"][:, 0], model(y)["seg"][:, 0])
    mixed = msunet(separable_encoder=False).eval()
    first_x, first_y = _encoder_features(mixed, x)[0], _encoder_features(mixed, y)[0]
    assert not torch.equal(first_x[:, :first_x.shape[1] // 4], first_y[:, :first_y.shape[1] // 4])


def test_encoder_convolutions_are_grouped_by_slice() -> None:
    model = msunet()
    encoder_convs = [m for part in model.unet.encoder_modules() for m in part.modules()
                     if isinstance(m, torch.nn.Conv2d)]
    assert encoder_convs and all(conv.groups == 4 for conv in encoder_convs)
    decoder_convs = [m for part in model.unet.decoder_modules() for m in part.modules()
                     if isinstance(m, torch.nn.Conv2d)]
    assert decoder_convs and all(conv.groups == 1 for conv in decoder_convs)


# -- loss ----------------------------------------------------------------------------------------

def test_focal_and_dice_match_the_equations() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)
    by_hand = -(0.25 * (1 - p) ** 2 * torch.log(p) * target
                + 0.75 * p ** 2 * torch.log(1 - p) * (1 - target)).mean()
    torch.testing.assert_close(focal_loss_with_logits(logits, target), by_hand)
    dl = 1 - (2 * (p * target).sum() + 1) / ((p ** 2).sum() + (target ** 2).sum() + 1)
    torch.testing.assert_close(squared_dice_loss(p, target), dl)


def test_msunet_loss_is_eq_11_and_skips_missing_labels() -> None:
    config = get_spec("msunet").default_config
    torch.manual_seed(0)
    seg = torch.randn(2, 4, 8, 8)
    mask = (torch.rand(2, 4, 8, 8) > 0.7).float()
    logits = {t: torch.randn(2, 2) for t in ("malignancy", "margin", "texture")}
    labels = {"malignancy": torch.tensor([1, 0]), "margin": torch.tensor([-1, 1]), "texture": torch.tensor([-1, -1])}
    weights = {"seg": 1.0, "malignancy": 1.0, "margin": 1.0, "texture": 1.0}
    total, parts = msunet_loss({"seg": seg, **logits}, {"seg": mask, **labels}, config, weights)
    dl = squared_dice_loss(torch.sigmoid(seg), mask)
    seg_part = torch.log(dl + 1e-3) + 0.2 * focal_loss_with_logits(seg, mask)
    cl = (F.cross_entropy(logits["malignancy"], labels["malignancy"])
          + F.cross_entropy(logits["margin"][1:], labels["margin"][1:])) / 2  # texture has no label
    torch.testing.assert_close(parts["seg"], seg_part)
    torch.testing.assert_close(parts["cls"], cl)
    torch.testing.assert_close(total, seg_part + cl)
    assert parts["texture"].item() == 0.0  # no label: 0, left out of the mean


def test_labels_are_binarised_as_table_3() -> None:
    ratings = {"malignancy": torch.tensor([1.0, 3.0, 3.5, 4.0, 5.0, math.nan]),
               "calcification": torch.tensor([1.0, 3.0, 5.0, 5.5, 6.0, math.nan])}
    out = binarised_labels(ratings)
    assert out["malignancy"].tolist() == [0, 0, 0, 1, 1, -1]
    assert out["calcification"].tolist() == [0, 0, 0, 0, 1, -1]


def test_phases_train_everything_with_every_head() -> None:
    spec = get_spec("msunet")
    (phase,) = spec.phases(spec.default_config)
    assert phase.trains == ("seg_net", "heads")
    assert dict(phase.losses) == {"seg": 1.0, "malignancy": 1.0, "margin": 1.0, "texture": 1.0,
                                  "calcification": 1.0}
    (coarse,) = get_spec("munet3d").phases(get_spec("munet3d").default_config)
    assert coarse.trains == ("seg_net",) and dict(coarse.losses) == {"seg": 1.0}
    assert spec.default_config["scheduler"]["name"] == "plateau"
    assert spec.default_config["scheduler"]["patience"] == 5


# -- stage chaining ----------------------------------------------------------------------------

def test_slab_plans_follow_the_crop_preset() -> None:
    assert [p.positions.tolist() for p in plan_slabs(10, 17)] == [[10, 11, 12, 13], [14, 15, 16, 17]]
    six = plan_slabs(10, 15)  # the last slab ends at the last ROI slice (overlap 12-13)
    assert [p.positions.tolist() for p in six] == [[10, 11, 12, 13], [12, 13, 14, 15]]
    (two,) = plan_slabs(10, 11)  # z extent 9.5 .. 11.5 resampled to 4 slices
    assert two.positions.tolist() == [9.75, 10.25, 10.75, 11.25] and two.targets.tolist() == [10, 11]
    assert roi_range(torch.zeros(5, 2, 2)) is None


def test_chaining_assembles_one_mask_per_nodule() -> None:
    """Synthetic case: linear-in-z cubes; ``refine`` returns its slabs, so the fine mask must be
    the cube on the coarse ROI slices (overlaps averaged, resampled slabs mapped back) and 0
    elsewhere; class probabilities are the mean of each nodule's slabs."""
    d = 16
    z = torch.arange(d, dtype=torch.float32).reshape(d, 1, 1) / d
    cubes = torch.stack([z.expand(d, 8, 8) * (i + 1) / 3 for i in range(3)])
    coarse = torch.zeros(3, d, 8, 8)
    coarse[0, 5:11, 3:5, 3:5] = 0.9      # 6 slices -> slabs 5-8 and 7-10
    coarse[1, 7:9, 4, 4] = 0.8           # 2 slices -> one resampled slab
    calls: list[int] = []

    def refine(slabs: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(slabs.shape[0])
        assert slabs.shape[1:] == (4, 8, 8)
        score = slabs.mean(dim=(1, 2, 3))
        return {"seg": slabs.clone(), "malignancy": torch.stack([1 - score, score], dim=1)}

    out = refine_cubes(cubes, coarse, refine, fallback="none")
    assert calls == [3]                   # one call for every slab of every nodule
    fine = out["seg"]
    torch.testing.assert_close(fine[0, 5:11], cubes[0, 5:11])
    assert fine[0, :5].abs().sum() == 0 and fine[0, 11:].abs().sum() == 0
    torch.testing.assert_close(fine[1, 7:9], cubes[1, 7:9])
    assert fine[1, :7].abs().sum() == 0 and fine[1, 9:].abs().sum() == 0
    assert fine[2].abs().sum() == 0 and torch.isnan(out["malignancy"][2]).all()
    first = torch.stack([cubes[0, 5:9].mean(), cubes[0, 7:11].mean()]).mean()
    torch.testing.assert_close(out["malignancy"][0, 1], first)


def test_chaining_overlaps_are_averaged_and_empty_coarse_falls_back_to_the_centre() -> None:
    cubes = torch.zeros(1, 12, 4, 4)
    coarse = torch.zeros(1, 12, 4, 4)
    coarse[0, 2:8] = 1.0                   # slabs 2-5 and 4-7: slices 4, 5 are in both
    slab_index = iter([0.0, 1.0])

    def refine(slabs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": torch.stack([torch.full((4, 4, 4), next(slab_index)) for _ in range(slabs.shape[0])])}

    fine = refine_cubes(cubes, coarse, refine)["seg"][0]
    assert fine[2:4].eq(0.0).all() and fine[4:6].eq(0.5).all() and fine[6:8].eq(1.0).all()
    centre = refine_cubes(cubes, torch.zeros(1, 12, 4, 4), lambda s: {"seg": torch.ones_like(s)})["seg"][0]
    assert centre[4:8].eq(1.0).all() and centre[:4].eq(0).all() and centre[8:].eq(0).all()


def test_chaining_with_the_real_networks() -> None:
    coarse_model, fine_model = munet3d(), msunet()
    cubes = torch.rand(2, 16, 16, 16)
    coarse = coarse_probabilities(coarse_model, cubes)
    assert coarse.shape == (2, 16, 16, 16) and coarse_model.training is False
    out = refine_cubes(cubes, coarse, msunet_refiner(fine_model), threshold=0.0)
    assert out["seg"].shape == (2, 16, 16, 16) and set(out) == {"seg", "malignancy", "margin", "texture",
                                                                "calcification"}
    torch.testing.assert_close(out["texture"].sum(dim=1), torch.ones(2))


# -- the network learns ------------------------------------------------------------------------

def _slabs(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` noisy slabs (n, 4, size, size): a bright disc per slice; label 1 = large disc."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for i in range(n):
        cy, cx = (size // 2 + torch.randint(-4, 5, (2,), generator=gen)).tolist()
        radii = [3 + 2 * (i % 2) + k % 2 for k in range(4)]
        mask = torch.stack([(((yy - cy) ** 2 + (xx - cx) ** 2) <= r ** 2).float() for r in radii])
        images.append(0.2 + 0.6 * mask + 0.05 * torch.randn(4, size, size, generator=gen))
        masks.append(mask)
    return torch.stack(images), torch.stack(masks), torch.tensor([i % 2 for i in range(n)])


def _dice(logits: torch.Tensor, mask: torch.Tensor) -> float:
    from nodulekit.metrics import dice

    return dice(torch.sigmoid(logits.detach()) > 0.5, mask.bool())


@pytest.mark.slow
def test_msunet_overfits_four_slabs() -> None:
    torch.manual_seed(0)
    spec = get_spec("msunet")
    # 4 levels of 16..128 channels (4 per slice at the first level): 2 channels per slice learn slowly
    overrides = {"width": 0.25, "channels": [64, 128, 256, 512], "heads": {"channels": 8, "tasks": ["malignancy"]}}
    config = spec.resolve_config({"model": overrides})
    model = create_model("msunet", config=config)
    image, mask, label = _slabs()
    (phase,) = spec.phases(config)
    groups = model.parameter_groups()
    optimizer = torch.optim.Adam([p for g in phase.trains for p in groups[g]], lr=1e-2)
    history = []
    for _ in range(40):
        out = model(image)
        total, parts = msunet_loss(out, {"seg": mask, "malignancy": label}, config, phase.losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append((total.item(), parts["malignancy"].item(), _dice(out["seg"], mask)))
    assert history[-1][0] < history[0][0] - 2.0      # log DL falls (the loss is negative)
    assert history[-1][2] > 0.9 and history[-1][2] > history[0][2] + 0.5
    assert history[-1][1] < 0.5 * history[0][1]


@pytest.mark.slow
def test_munet3d_overfits_two_cubes() -> None:
    torch.manual_seed(0)
    spec = get_spec("munet3d")
    config = spec.resolve_config({"model": {"width": 0.0625}})
    model = create_model("munet3d", config=config)
    zz, yy, xx = torch.meshgrid(*(torch.arange(16),) * 3, indexing="ij")
    mask = torch.stack([(((zz - 8) ** 2 + (yy - 8) ** 2 + (xx - c) ** 2) <= 16).float() for c in (6, 9)])[:, None]
    image = 0.2 + 0.6 * mask + 0.05 * torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(40):
        out = model(image)
        total, _ = msunet_loss(out, {"seg": mask}, config, {"seg": 1.0})
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append((total.item(), _dice(out["seg"], mask)))
    assert history[-1][0] < history[0][0] - 0.3      # log DL + 0.2 FL falls (it is negative)
    assert history[-1][1] > 0.8 and history[-1][1] > history[0][1] + 0.5
