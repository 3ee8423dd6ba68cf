"""Paper 004 (Wang et al. 2021): segmenter, classifier, masking, modes, phases and freezing."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.models import create_model, get_spec
from nodulekit.models.cascade import CascadeNet, cascade_loss
from nodulekit.models.losses import squared_dice_loss
from nodulekit.training.engine import select_trainable, set_train_mode

SPEC = get_spec("cascade")
TINY = {"width": 0.125, "input_size_px": 16}  # 16^3 crops, channels / 8


def cascade(**overrides: object) -> CascadeNet:
    torch.manual_seed(0)
    return create_model("cascade", **{**TINY, **overrides})  # type: ignore[return-value]


def config(**overrides: object) -> dict:
    return SPEC.resolve_config({"model": {**TINY, **overrides}})


def crops(n: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy crops in [-1, 1] with a bright sphere, and its mask."""
    zz, yy, xx = torch.meshgrid(*(torch.arange(size),) * 3, indexing="ij")
    c = size // 2
    masks = torch.stack([(((zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2) <= (2 + i) ** 2).float()
                         for i in range(n)])[:, None]
    gen = torch.Generator().manual_seed(0)
    return -0.8 + 1.4 * masks + 0.1 * torch.randn(masks.shape, generator=gen), masks


# -- architecture --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["raw", "gt_masked", "cascade", "multitask"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_shapes_of_every_mode(mode: str, n_classes: int) -> None:
    model = cascade(mode=mode, n_classes=n_classes).eval()
    image, mask = crops()
    with torch.no_grad():
        out = model(**model.batch_inputs({"image": image, "mask": mask}))
    expected = SPEC.output_shapes(config(mode=mode, n_classes=n_classes), 2, (16, 16, 16))
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    probs = model.probabilities(out)
    torch.testing.assert_close(probs["cls"].sum(dim=1), torch.ones(2))
    if "seg" in probs:
        assert probs["seg"].shape == (2, 1, 16, 16, 16)
    assert (model.segmenter is None) == (mode in ("raw", "gt_masked"))
    assert (model.classifier is None) == (mode == "multitask")


def test_segmenter_has_15_blocks_with_the_papers_dilations() -> None:
    seg = cascade().segmenter
    convs = [m for m in seg.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 15
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 2, 2, 2, 4, 4, 2, 2, 2, 2, 1, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [3] * 14 + [1]
    assert all(c.padding[0] == c.dilation[0] for c in convs[:14])  # "same" size
    assert convs[-1].out_channels == 2


def test_classifier_follows_fig_2a() -> None:
    model = cascade(width=1.0, input_size_px=32)
    convs = [m for m in model.classifier.features.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 256, 256]
    pools = [i for i, m in enumerate(model.classifier.features) if isinstance(m, nn.MaxPool3d)]
    assert pools == [2, 5, 8]  # after blocks 2, 4, 6
    linears = [m for m in model.classifier.head if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(256 * 4 ** 3, 256), (256, 256), (256, 2)]
    assert [m.p for m in model.classifier.head if isinstance(m, nn.Dropout)] == [0.1, 0.1]


def test_default_width_parameter_counts() -> None:
    counts = SPEC.param_counts()
    print("\ncascade default-width parameters:", counts)
    widths = [1, 16, 16, 32, 32, 64, 64, 256, 256]
    convs = sum(27 * a * b + b + 2 * b for a, b in zip(widths, widths[1:]))  # conv + bias + BN
    fcs = (256 * 64 * 256 + 256) + (256 * 256 + 256) + (256 * 2 + 2)
    assert counts["classifier"] == convs + fcs == 6_689_618
    assert counts["segmenter"] == 5_838_882
    assert counts["total"] == counts["segmenter"] + counts["classifier"]
    assert SPEC.param_counts(mode="multitask")["cls_branch"] == fcs


def test_segmenter_output_starts_at_the_prior() -> None:
    model = cascade().eval()
    with torch.no_grad():
        prob = model.soft_mask(model(crops()[0])["seg"])
    assert abs(prob.mean().item() - 0.01) < 0.01


def test_invalid_mode_missing_mask_and_wrong_input_raise() -> None:
    with pytest.raises(NodulekitError, match="model.mode"):
        cascade(mode="two_branch")
    with pytest.raises(NodulekitError, match="ground-truth mask"):
        cascade(mode="gt_masked")(crops()[0])
    with pytest.raises(NodulekitError, match="crops"):
        cascade()(torch.rand(2, 16, 16, 16))
    with pytest.raises(NodulekitError, match="no output"):
        cascade(mode="raw")(crops()[0], outputs=["seg"])


# -- masking ----------------------------------------------------------------------------------

def _classifier_input(model: CascadeNet, **inputs: torch.Tensor) -> tuple[torch.Tensor, dict]:
    seen: list[torch.Tensor] = []
    hook = model.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        out = model(**inputs)
    hook.remove()
    return seen[0], out


def test_cascade_classifier_sees_ct_times_soft_mask() -> None:
    model = cascade().eval()
    image, _ = crops()
    seen, out = _classifier_input(model, image=image)
    soft = torch.softmax(out["seg"], dim=1)[:, 1:2]
    assert 0 < soft.min() and soft.max() < 1  # a soft mask, not a thresholded one
    torch.testing.assert_close(seen, image * soft)


def test_gt_masked_classifier_sees_ct_times_ground_truth_and_raw_the_ct() -> None:
    image, mask = crops()
    model = cascade(mode="gt_masked").eval()
    seen, _ = _classifier_input(model, **model.batch_inputs({"image": image, "mask": mask}))
    torch.testing.assert_close(seen, image * mask)
    assert model.batch_inputs({"image": image, "mask": mask}).keys() == {"image", "mask"}
    raw = cascade(mode="raw").eval()
    seen, _ = _classifier_input(raw, **raw.batch_inputs({"image": image, "mask": mask}))
    torch.testing.assert_close(seen, image)


# -- phases, freezing, loss -----------------------------------------------------------------------

def test_phases_of_each_mode() -> None:
    names = {mode: [p.name for p in SPEC.phases(config(mode=mode))] for mode in ("raw", "gt_masked", "multitask")}
    assert names == {"raw": ["cls"], "gt_masked": ["cls"], "multitask": ["multitask"]}
    seg, cls, joint = SPEC.phases(config())
    assert (seg.trains, dict(seg.losses), seg.epochs) == (("segmenter",), {"seg": 1.0}, 150)
    assert (cls.trains, dict(cls.losses), cls.epochs) == (("classifier",), {"cls": 1.0}, 120)
    assert (joint.trains, dict(joint.losses), joint.epochs) == (("segmenter", "classifier"), {"cls": 1.0, "seg": 1.0}, 120)
    assert [p.name for p in SPEC.phases(config(joint_finetune=False))] == ["seg", "cls"]
    defaults = SPEC.default_config
    assert defaults["phases"]["joint"]["optimizer"]["lr"] == 1e-5
    assert defaults["phases"]["joint"]["scheduler"] == {"name": "step", "step_epochs": 30, "gamma": 0.5}
    assert (defaults["optimizer"]["lr"], defaults["optimizer"]["weight_decay"], defaults["batch_size"]) == (1e-4, 1e-4, 24)


def _trainable(phase_trains: tuple[str, ...]):
    return lambda model: [p for group in phase_trains for p in model.parameter_groups()[group]]


def test_cls_phase_freezes_the_segmenter_with_the_trainer() -> None:
    model = cascade()
    _, cls_phase, _ = SPEC.phases(config())
    params = select_trainable(model, _trainable(cls_phase.trains))
    set_train_mode(model, frozen_eval=True)
    assert not model.segmenter.training and model.classifier.training
    before = {k: v.clone() for k, v in model.segmenter.state_dict().items()}
    optimizer = torch.optim.Adam(params, lr=1e-2)
    image, _ = crops()
    out = model(image)
    assert not out["seg"].requires_grad  # no graph through the frozen segmenter
    total, _ = cascade_loss(out, {"cls": torch.tensor([0, 1])}, config(), cls_phase.losses)
    total.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.segmenter.state_dict().items())  # incl. BN stats
    assert all(p.grad is None for p in model.segmenter.parameters())


def test_joint_phase_trains_the_segmenter_through_the_mask() -> None:
    model = cascade()
    *_, joint = SPEC.phases(config())
    select_trainable(model, _trainable(joint.trains))
    set_train_mode(model, frozen_eval=True)
    image, _ = crops()
    out = model(image)
    total, _ = cascade_loss(out, {"cls": torch.tensor([0, 1])}, config(), {"cls": 1.0})  # L_cla alone
    total.backward()
    assert model.segmenter.blocks[0][0].weight.grad.abs().sum() > 0


def test_loss_is_eq_4_with_dice_of_the_nodule_channel_and_multiclass_ce() -> None:
    torch.manual_seed(0)
    seg = torch.randn(2, 2, 4, 4, 4)
    mask = (torch.rand(2, 1, 4, 4, 4) > 0.5).float()
    cls = torch.randn(2, 3)
    labels = torch.tensor([2, -1])
    total, parts = cascade_loss({"seg": seg, "cls": cls}, {"seg": mask, "cls": labels},
                                config(n_classes=3), {"cls": 1.0, "seg": 0.7})
    dice = squared_dice_loss(torch.softmax(seg, 1)[:, 1:2], mask, smooth=1e-5)
    ce = -torch.log_softmax(cls[0], 0)[2]
    torch.testing.assert_close(parts["seg"], dice)
    torch.testing.assert_close(parts["cls"], ce)
    torch.testing.assert_close(total, ce + 0.7 * dice)


# -- the cascade learns ----------------------------------------------------------------------

@pytest.mark.slow
def test_cascade_overfits_through_its_three_phases() -> None:
    """Seg phase: Dice rises; cls phase (segmenter frozen): 3-class CE falls; joint: both stay low."""
    torch.manual_seed(0)
    cfg = config(n_classes=3)
    model = create_model("cascade", config=cfg)
    image, mask = crops(n=3)
    labels = torch.tensor([0, 1, 2])  # sphere radius 2, 3, 4
    targets = {"seg": mask, "cls": labels}
    history: dict[str, list[tuple[float, float]]] = {}
    for phase, steps, lr in zip(SPEC.phases(cfg), (40, 25, 10), (1e-2, 3e-3, 1e-3)):  # joint: 10x smaller, as §3.2
        select_trainable(model, _trainable(phase.trains))
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        for _ in range(steps):
            set_train_mode(model, frozen_eval=True)
            total, parts = cascade_loss(model(image), targets, cfg, phase.losses)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            model.eval()
            with torch.no_grad():
                out = model(image)
            prob = model.soft_mask(out["seg"])
            dice = 2 * ((prob > 0.5) * mask).sum() / ((prob > 0.5).sum() + mask.sum())
            history.setdefault(phase.name, []).append((total.item(), dice.item()))
    seg, cls, joint = history["seg"], history["cls"], history["joint"]
    assert seg[-1][0] < 0.5 * seg[0][0] and seg[-1][1] > 0.8 and seg[0][1] < 0.5
    assert sum(loss for loss, _ in cls[-5:]) / 5 < 0.2 * cls[0][0]
    assert cls[-1][1] == pytest.approx(seg[-1][1])  # the frozen segmenter did not move
    assert joint[-1][0] < 0.2 and joint[-1][1] > 0.8
