"""mtcnn specifics (paper 002): per-view MT-CNNs batched by view, ST-CNN, AUC-weighted fusion."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.models import create_model, get_spec
from nodulekit.models.mtcnn import (MTCNN, GroupedLinear, ViewEarlyStopping, compute_view_weights, fuse_views,
                                    load_view_state_dict, mtcnn_loss, mtcnn_post_training, mtcnn_targets,
                                    mtcnn_validation, set_view_weights, view_aucs, view_probabilities,
                                    view_state_dict, view_weights_from_auc)
from nodulekit.training.optim import build_scheduler

SPEC = get_spec("mtcnn")
#: A small instance for the fast tests: 32 x 32 views, narrow layers (same structure).
TINY = {"input_size_px": 32, "share_channels": [8, 16, 16], "cls_units": [64, 16, 2]}


def tiny(**overrides: object) -> MTCNN:
    torch.manual_seed(0)
    return create_model("mtcnn", **{**TINY, **overrides})  # type: ignore[return-value]


def tiny_config(**overrides: object) -> dict:
    return SPEC.resolve_config({"model": {**TINY, **overrides}})


# -- architecture (section III.B) ------------------------------------------------------------------

def test_default_shapes_and_parameter_counts() -> None:
    model = create_model("mtcnn")
    counts = SPEC.param_counts()
    print("mtcnn parameters (nine views):", counts)
    per_view_share = (24 * 25 + 24) + (32 * 24 * 9 + 32) + (64 * 32 * 9 + 64)
    per_view_cls = (4096 * 256 + 256) + (256 * 16 + 16) + (16 * 2 + 2)       # 64 x 8 x 8 = 4096 inputs
    per_view_img = (64 * 32 * 9 + 32) + (32 * 24 * 9 + 24) + (24 * 25 + 1)
    assert counts["share_net"] == 9 * per_view_share
    assert counts["cls_net"] == 9 * per_view_cls
    assert counts["img_net"] == 9 * per_view_img
    assert counts["total"] == 9 * (per_view_share + per_view_cls + per_view_img) == 9_945_387
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 9, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "view_logits": (2, 9, 2), "recon": (2, 9, 64, 64), "malignancy": (2,)}
    with torch.no_grad():  # the crop store's layout (B, 1, 9, S, S) is accepted too
        assert model(torch.rand(2, 1, 9, 64, 64))["view_logits"].shape == (2, 9, 2)
    with pytest.raises(NodulekitError, match="expects"):
        model(torch.rand(2, 8, 64, 64))


def test_layers_follow_section_iii_b() -> None:
    model = create_model("mtcnn")
    convs = [m for m in model.share if isinstance(m, nn.Conv2d)]
    assert [c.out_channels // 9 for c in convs] == [24, 32, 64]
    assert [c.kernel_size for c in convs] == [(5, 5), (3, 3), (3, 3)]
    assert all(c.groups == 9 for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.share) == 3
    fcs = [m for m in model.cls if isinstance(m, GroupedLinear)]
    assert [f.weight.shape[2] for f in fcs] == [256, 16, 2]
    drops = [i for i, m in enumerate(model.cls) if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(model.cls[i].p == 0.5 for i in drops)  # after FC1 and FC2 (III.D)
    deconvs = [m for m in model.img if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.in_channels // 9, d.out_channels // 9, d.kernel_size[0]) for d in deconvs] == \
        [(64, 32, 3), (32, 24, 3), (24, 1, 5)]
    assert sum(isinstance(m, nn.Upsample) for m in model.img) == 3


def test_kaiming_init_and_zero_biases() -> None:
    model = create_model("mtcnn")
    fc1 = model.cls[0]
    assert float(fc1.weight.detach().std()) == pytest.approx(math.sqrt(2 / 4096), rel=0.02)
    conv2 = model.share[3]
    assert float(conv2.weight.detach().std()) == pytest.approx(math.sqrt(2 / (24 * 9)), rel=0.05)
    deconv1 = model.img[1]
    assert float(deconv1.weight.detach().std()) == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    assert biases and all(float(b.detach().abs().max()) == 0.0 for b in biases)


def test_the_nine_grouped_views_equal_nine_separate_models() -> None:
    model = tiny().eval()
    x = torch.rand(3, 9, 32, 32)
    with torch.no_grad():
        out = model(x)
    for v in (0, 4, 8):
        single = create_model("mtcnn", **TINY, views=1).eval()
        single.load_state_dict(view_state_dict(model, v))
        with torch.no_grad():
            own = single(x[:, v:v + 1])
        torch.testing.assert_close(own["view_logits"][:, 0], out["view_logits"][:, v])
        torch.testing.assert_close(own["recon"][:, 0], out["recon"][:, v])


def test_views_are_independent_in_forward_and_backward() -> None:
    model = tiny().eval()
    x = torch.rand(2, 9, 32, 32)
    changed = x.clone()
    changed[:, 3] = torch.rand(2, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(changed)
    same = [v for v in range(9) if torch.equal(a["view_logits"][:, v], b["view_logits"][:, v])]
    assert same == [0, 1, 2, 4, 5, 6, 7, 8]
    model.zero_grad()
    out = model(x)
    (out["view_logits"][:, 3].sum() + out["recon"][:, 3].sum()).backward()
    for name, param in model.named_parameters():
        per_view = param.grad.chunk(9, dim=0)
        assert all(float(g.abs().sum()) == 0 for i, g in enumerate(per_view) if i != 3), name


def test_view_state_round_trip() -> None:
    model, other = tiny(), tiny()
    for p in other.parameters():
        nn.init.normal_(p)
    load_view_state_dict(model, 5, view_state_dict(other, 5))
    for key, tensor in model.state_dict().items():
        if key != "view_weights":
            torch.testing.assert_close(tensor.chunk(9)[5], other.state_dict()[key].chunk(9)[5])
            assert not torch.equal(tensor.chunk(9)[4], other.state_dict()[key].chunk(9)[4])


# -- config switches -----------------------------------------------------------------------------

def test_alpha_zero_is_the_st_cnn_baseline() -> None:
    model = tiny(alpha=0.0)
    assert model.img is None and "img_net" not in model.subnetworks()
    out = model(torch.rand(2, 9, 32, 32))
    assert set(out) == {"view_logits", "malignancy"} == set(model.output_names)
    (phase,) = SPEC.phases(tiny_config(alpha=0.0))
    assert dict(phase.losses) == {"view_logits": 1.0} and "img" not in phase.trains
    (mt,) = SPEC.phases(SPEC.default_config)
    assert dict(mt.losses) == {"view_logits": 1.0, "recon": 0.3} and mt.epochs == 150
    assert set(SPEC.output_shapes(tiny_config(alpha=0.0), 2, (9, 32, 32))) == set(out)


@pytest.mark.parametrize("overrides, dropouts", [({"dropout_after": [1]}, 1), ({"dropout": 0.0}, 0),
                                                 ({"dropout_after": [1, 2]}, 2)])
def test_dropout_switches(overrides: dict, dropouts: int) -> None:
    assert sum(isinstance(m, nn.Dropout) for m in tiny(**overrides).cls) == dropouts


def test_other_switches_and_bad_values() -> None:
    out = tiny(upsample="bilinear")(torch.rand(2, 9, 32, 32))
    assert out["recon"].shape == (2, 9, 32, 32)
    with pytest.raises(NodulekitError, match="divisible"):
        tiny(input_size_px=30)
    with pytest.raises(NodulekitError, match="end with 2"):
        tiny(cls_units=[64, 3])
    with pytest.raises(NodulekitError, match="upsample"):
        tiny(upsample="cubic")


def test_loss_is_eq3_per_view_summed_or_averaged() -> None:
    torch.manual_seed(0)
    view_logits, recon = torch.randn(4, 9, 2), torch.randn(4, 9, 8, 8)
    image, labels = torch.rand(4, 9, 8, 8), torch.tensor([0, 1, 1, 0])
    outputs = {"view_logits": view_logits, "recon": recon, "malignancy": torch.zeros(4)}
    config = SPEC.default_config
    weights = SPEC.phases(config)[0].losses
    total, parts = mtcnn_loss(outputs, mtcnn_targets({"image": image, "label": labels}), config, weights)
    per_view = [F.cross_entropy(view_logits[:, v], labels) + 0.3 * F.binary_cross_entropy(
        torch.sigmoid(recon[:, v]), image[:, v]) for v in range(9)]
    torch.testing.assert_close(total, torch.stack(per_view).sum())
    config["loss"]["view_reduction"] = "mean"
    mean_total, _ = mtcnn_loss(outputs, {"malignancy": labels, "image": image}, config, weights)
    torch.testing.assert_close(mean_total, total / 9)
    assert set(parts) == {"view_logits", "recon"}


def test_paper_defaults_and_lr_schedule() -> None:
    config = SPEC.default_config
    assert config["batch_size"] == 64 and config["model"]["alpha"] == 0.3
    assert config["early_stopping"]["patience"] == 10
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=config["optimizer"]["lr"])
    scheduler = build_scheduler(optimizer, config["scheduler"], config["train"]["epochs"])
    lrs = []
    for _ in range(150):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[74] == pytest.approx(1e-4)
    assert lrs[75] == pytest.approx(1e-5) and lrs[111] == pytest.approx(1e-5)
    assert lrs[112] == pytest.approx(5e-6) and lrs[149] == pytest.approx(5e-6)


# -- AUC-weighted fusion (section III.C, Algorithm 1) ------------------------------------------------

def test_equal_aucs_give_the_plain_mean() -> None:
    weights = view_weights_from_auc([0.8] * 9)
    torch.testing.assert_close(weights, torch.full((9,), 1 / 9))
    probs = torch.rand(5, 9)
    torch.testing.assert_close(fuse_views(probs, weights), probs.mean(dim=1))


def test_weights_are_proportional_to_the_auc() -> None:
    weights = view_weights_from_auc([0.5, 1.0])
    torch.testing.assert_close(weights, torch.tensor([1 / 3, 2 / 3]))
    torch.testing.assert_close(fuse_views(torch.tensor([[0.2, 0.8]]), weights), torch.tensor([0.6]))
    with pytest.warns(UserWarning, match="undefined"):
        torch.testing.assert_close(view_weights_from_auc([float("nan")] * 3), torch.full((3,), 1 / 3))


def test_view_aucs_from_training_predictions() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.1, 0.5], [0.2, 0.5], [0.8, 0.5], [0.9, 0.5]])  # view 0 perfect, view 1 chance
    assert view_aucs(labels, probs) == [1.0, 0.5]
    torch.testing.assert_close(view_weights_from_auc(view_aucs(labels, probs)), torch.tensor([2 / 3, 1 / 3]))


def test_fused_output_uses_the_weight_buffer_and_it_is_saved() -> None:
    model = tiny().eval()
    x = torch.rand(3, 9, 32, 32)
    weights = torch.tensor([0.0] * 8 + [1.0])
    set_view_weights(model, weights)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(torch.sigmoid(out["malignancy"]), view_probabilities(out["view_logits"])[:, 8])
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = tiny()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(restored.view_weights, weights)
    with pytest.raises(NodulekitError, match="summing to 1"):
        set_view_weights(model, torch.ones(9))


# -- per-view early stopping ----------------------------------------------------------------------

def test_validation_metrics_per_view() -> None:
    model = tiny().eval()
    x, labels = torch.rand(4, 9, 32, 32), torch.tensor([0, 1, 0, 1])
    metrics = mtcnn_validation(model, [{"image": x[:2], "label": labels[:2]}, {"image": x[2:], "label": labels[2:]}],
                               tiny_config())
    assert {f"loss_v{v}" for v in range(9)} | {f"auc_v{v}" for v in range(9)} | {"loss", "auc"} == set(metrics)
    with torch.no_grad():
        total, _ = mtcnn_loss(model(x), {"malignancy": labels, "image": x}, tiny_config(),
                              {"view_logits": 1.0, "recon": 0.3})
    assert metrics["loss"] == pytest.approx(float(total), rel=1e-5)
    assert metrics["loss"] == pytest.approx(sum(metrics[f"loss_v{v}"] for v in range(9)), rel=1e-6)


def test_each_view_keeps_its_own_best_epoch_and_stops_on_its_own() -> None:
    model = tiny()
    stopper = ViewEarlyStopping(views=9, patience=2)
    bias = model.cls[-1].bias  # (9, 2): its value tags the epoch
    losses_by_epoch = [[1.0] * 9, [0.5] + [0.9] * 8, [0.6] + [0.8] * 8, [0.7] + [0.7] * 8, [0.4] + [0.6] * 8]
    for epoch, losses in enumerate(losses_by_epoch):
        with torch.no_grad():
            bias.fill_(float(epoch))
        stopper.update(model, {f"loss_v{v}": value for v, value in enumerate(losses)}, epoch)
    # view 0: best at epoch 1, no improvement in epochs 2 and 3 -> stopped; epoch 4 no longer counts
    assert stopper.stopped[0] and stopper.best_epoch[0] == 1 and stopper.best[0] == 0.5
    assert not stopper.stopped[1] and stopper.best_epoch[1] == 4 and not stopper.all_stopped
    copy = ViewEarlyStopping(views=9, patience=2)
    copy.load_state_dict(stopper.state_dict())
    copy.restore(model)
    assert bias[0].tolist() == [1.0, 1.0] and bias[1].tolist() == [4.0, 4.0]


# -- overfit ---------------------------------------------------------------------------------------

def nodules(n: int = 12, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` nine-view samples ``(n, 9, size, size)``: a disc of radius 6 (malignant, label 1)
    or 3 (benign) near the centre of every view, plus noise."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.tensor([i % 2 for i in range(n)])
    samples = []
    for i in range(n):
        views = []
        for _ in range(9):
            cy, cx = (size // 2 + torch.randint(-2, 3, (2,), generator=gen)).tolist()
            disc = (((yy - cy) ** 2 + (xx - cx) ** 2) <= (6 if labels[i] else 3) ** 2).float()
            views.append((0.15 + 0.6 * disc + 0.05 * torch.randn(size, size, generator=gen)).clamp(0, 1))
        samples.append(torch.stack(views))
    return torch.stack(samples), labels


def _accuracy(model: MTCNN, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Training accuracy (eval mode): mean over views, and of the fused probability."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was)
    views = (out["view_logits"].argmax(-1) == labels[:, None]).float().mean().item()
    fused = ((out["malignancy"] > 0).long() == labels).float().mean().item()
    return views, fused


@pytest.mark.slow
def test_mtcnn_overfits_and_weights_views_by_training_auc() -> None:
    torch.manual_seed(0)
    config = tiny_config()
    model = create_model("mtcnn", config=config)
    x, labels = nodules()
    (phase,) = SPEC.phases(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = _accuracy(model, x, labels)
    losses = []
    for _ in range(50):
        total, _ = mtcnn_loss(model(x), mtcnn_targets({"image": x, "label": labels}), config, phase.losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    end = _accuracy(model, x, labels)
    print("loss", losses[0], "->", losses[-1], "accuracy (views, fused)", start, "->", end)
    assert losses[-1] < 0.5 * losses[0]
    assert end[0] > max(0.9, start[0] + 0.2) and end[1] == 1.0
    found = compute_view_weights(model, [{"image": x[:6], "label": labels[:6]},
                                         {"image": x[6:], "label": labels[6:]}])
    assert found.n_samples == 12 and len(found.aucs) == 9 and min(found.aucs) > 0.9
    assert sum(found.weights) == pytest.approx(1.0)
    torch.testing.assert_close(model.view_weights, torch.tensor(found.aucs) / sum(found.aucs))
    assert model.training  # the mode is restored
    unlabelled_last = torch.cat([labels[:-1], torch.tensor([-1])])  # label -1: left out
    record = mtcnn_post_training(model, [{"image": x, "label": unlabelled_last}], config)
    assert record["n_samples"] == 11 and len(record["view_aucs"]) == 9
    torch.testing.assert_close(model.view_weights, torch.tensor(record["view_weights"]))
