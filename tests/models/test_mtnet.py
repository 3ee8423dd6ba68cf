"""MT-Net specifics (paper 000, section 3.2): sharing, Fine-layer, Class-net, ablations, weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.models import create_model, get_spec
from nodulekit.models.blocks import SeparableConv2d
from nodulekit.models.mtnet import MTNet, mtnet_loss
from nodulekit.models.pretrained import load_pretrained
from nodulekit.models.xception import ClassXception

SMALL = dict(get_spec("mtnet").test_overrides)


def small(**overrides: object) -> MTNet:
    torch.manual_seed(0)
    return create_model("mtnet", **{**SMALL, **overrides})  # type: ignore[return-value]


def test_fine_seg_net_shares_the_coarse_parameters() -> None:
    model = small()
    subnets = model.subnetworks()
    coarse = {id(p) for m in subnets["coarse_seg_net"] for p in m.parameters()}
    fine = {id(p) for m in subnets["fine_seg_net"] for p in m.parameters()}
    fine_only = {id(p) for p in model.fine_layer.parameters()}
    assert coarse < fine and fine - coarse == fine_only
    assert not coarse & {id(p) for p in model.class_net.parameters()}


def test_fine_loss_trains_the_shared_encoder_and_the_fine_layer_only() -> None:
    model = small()
    out = model(torch.randn(2, 1, 64, 64), outputs=["seg"])
    out["seg"].sum().backward()
    assert model.seg.backbone.stem[0].weight.grad.abs().sum() > 0  # shared encoder
    assert model.fine_layer.fuse[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.class_net.parameters())


def test_class_loss_does_not_reach_the_seg_nets() -> None:
    model = small()
    out = model(torch.randn(2, 1, 64, 64), outputs=["malignancy"])
    assert set(out) == {"malignancy"}
    out["malignancy"].sum().backward()
    assert all(p.grad is None for p in model.seg.parameters())  # coarse mask is detached


def test_class_batches_leave_the_seg_nets_batchnorm_statistics_alone() -> None:
    model = small().train()
    before = {k: v.clone() for k, v in model.seg.state_dict().items()}
    model(torch.randn(2, 1, 64, 64), outputs=["malignancy"])
    assert model.seg.training
    assert all(torch.equal(before[k], v) for k, v in model.seg.state_dict().items())


def test_fine_layer_present_and_absent_by_config() -> None:
    model = small()
    assert isinstance(model.fine_layer, nn.Module)
    fuse = model.fine_layer.fuse
    assert isinstance(fuse[0], nn.Conv2d) and fuse[0].kernel_size == (1, 1)
    assert isinstance(fuse[1], nn.BatchNorm2d) and isinstance(fuse[2], nn.ReLU)
    assert fuse[0].in_channels == model.seg.aspp.out_channels + 1  # features + coarse mask

    ablated = small(fine_layer=False)
    assert ablated.fine_layer is None
    assert not any(name.startswith("fine_") for name, _ in ablated.named_parameters())
    ablated.eval()
    out = ablated(torch.randn(2, 1, 64, 64))
    assert torch.equal(out["seg"], out["seg_coarse"])
    phases = get_spec("mtnet").phases(
        get_spec("mtnet").resolve_config({"model": {"fine_layer": False}}))
    assert phases[1].trains == ("class_net",) and dict(phases[1].losses) == {"malignancy": 1.0}


def test_fine_layer_before_aspp_and_separate_head() -> None:
    model = small(fine_layer_position="backbone", fine_head="separate")
    assert model.fine_layer.fuse[0].in_channels == model.seg.backbone.out_channels + 1
    assert model.fine_head is not None
    out = model(torch.randn(2, 1, 64, 64))
    assert out["seg"].shape == out["seg_coarse"].shape == (2, 1, 64, 64)


def test_fine_output_depends_on_the_coarse_mask() -> None:
    model = small().eval()
    image = torch.randn(2, 1, 64, 64)
    zeros = model(image, coarse_mask=torch.zeros(2, 1, 64, 64), outputs=["seg"])["seg"]
    ones = model(image, coarse_mask=torch.ones(2, 1, 64, 64), outputs=["seg"])["seg"]
    assert not torch.allclose(zeros, ones)


def test_class_net_fourth_channel_is_the_mean_of_the_ct_channels() -> None:
    weight = small().class_net.conv1.weight
    assert weight.shape[1] == 4
    torch.testing.assert_close(weight[:, 3], weight[:, :3].mean(dim=1))
    assert small(class_uses_coarse_mask=False).class_net.conv1.weight.shape[1] == 3


def test_class_net_exit_flow_is_modified() -> None:
    net = small().class_net
    exit_block = getattr(net, net.block_names[-1])
    assert not any(isinstance(m, nn.MaxPool2d) for m in exit_block.modules())  # 3.2.4 (1)
    assert exit_block.skip.stride == (1, 1)
    for conv in (net.conv3, net.conv4):  # 3.2.4 (2): dilated separable conv, rate 2, padding 2
        assert isinstance(conv, SeparableConv2d)
        assert conv.depthwise.dilation == (2, 2) and conv.depthwise.padding == (2, 2)
    # 224x224 input keeps a 14x14 map at the end (7x7 in the unmodified Xception)
    features = ClassXception(4, 1, width=0.0625, middle_blocks=1).features(torch.randn(1, 4, 224, 224))
    assert features.shape[-2:] == (14, 14)
    original = ClassXception(4, 1, width=0.0625, middle_blocks=1, exit_pool=True, exit_dilation=1)
    assert original.features(torch.randn(1, 4, 224, 224)).shape[-2:] == (7, 7)


def test_seg_encoder_has_no_max_pooling_and_stride_two_separable_convs() -> None:
    model = small()
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.seg.modules())
    strided = [m for m in model.seg.backbone.modules()
               if isinstance(m, SeparableConv2d) and m.depthwise.stride == (2, 2)]
    assert len(strided) == 3  # entry units 1-3; exit unit 1's stride became dilation (OS 16)
    deep, low = model.seg.backbone(torch.randn(2, 3, 224, 224))
    assert deep.shape[-2:] == (14, 14) and low.shape[-2:] == (56, 56)


def test_default_geometry_outputs_at_224_or_at_the_patch_size() -> None:
    image = torch.randn(2, 1, 64, 64)
    out = small(input_size_px=224)(image)
    assert out["seg"].shape == (2, 1, 224, 224) and out["malignancy"].shape == (2,)
    out = small(output_resolution="input", input_size_px=96)(image)
    assert out["seg"].shape == (2, 1, 64, 64)


def test_loss_wiring_resizes_masks_and_skips_missing_targets() -> None:
    model = small(input_size_px=96)
    config = get_spec("mtnet").default_config
    image = torch.randn(2, 1, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 24:40, 24:40] = 1
    outputs = model(image)
    weights = get_spec("mtnet").phases(config)[1].losses
    total, parts = mtnet_loss(outputs, {"seg": mask}, config, weights)
    assert set(parts) == {"seg", "seg_coarse"}
    assert total.item() == pytest.approx((parts["seg"] + parts["seg_coarse"]).item())
    total, parts = mtnet_loss(outputs, {"malignancy": torch.tensor([0, 1])}, config, weights)
    assert set(parts) == {"malignancy"}
    with pytest.raises(NodulekitError, match="no loss"):
        mtnet_loss(outputs, {}, config, weights)


def test_invalid_choice_and_unknown_output_raise() -> None:
    with pytest.raises(NodulekitError, match="coarse_mask"):
        small(coarse_mask="soft")
    with pytest.raises(NodulekitError, match="no output"):
        small()(torch.randn(2, 1, 64, 64), outputs=["seg_fine"])


def test_phases_follow_the_papers_training_order() -> None:
    spec = get_spec("mtnet")
    coarse, fine_cls = spec.phases(spec.default_config)
    assert coarse.name == "coarse" and set(coarse.losses) == {"seg_coarse"}
    assert set(coarse.trains) == {"encoder", "decoder"}
    assert fine_cls.name == "fine_cls"
    assert set(fine_cls.trains) == {"encoder", "decoder", "fine_layer", "class_net"}
    assert set(fine_cls.losses) == {"seg", "seg_coarse", "malignancy"}
    assert set(small().parameter_groups()) >= set(coarse.trains) | set(fine_cls.trains)


def _imagenet_style_state_dict(width: float) -> dict[str, torch.Tensor]:
    """An Xception state dict named like Cadene's / timm's legacy ImageNet weights."""
    torch.manual_seed(1)
    reference = ClassXception(3, 1000, width=width, middle_blocks=1, exit_pool=True, exit_dilation=1)
    state = {}
    for key, value in reference.state_dict().items():
        key = key.replace(".depthwise.", ".conv1.").replace("fc.", "last_linear.")
        state["module." + key] = value
    return state


def test_load_pretrained_imagenet_xception(tmp_path: Path) -> None:
    path = tmp_path / "xception.pth"
    state = _imagenet_style_state_dict(SMALL["width"])
    torch.save(state, path)
    model = small()
    fc_before = model.class_net.fc.weight.clone()
    report = load_pretrained(model, path)
    assert report.naming == "imagenet-xception"
    assert set(report.ignored) == {"last_linear.weight", "last_linear.bias"}
    rgb = state["module.conv1.weight"]
    loaded = model.class_net.conv1.weight.detach()
    torch.testing.assert_close(loaded[:, :3], rgb)
    torch.testing.assert_close(loaded[:, 3], rgb.mean(dim=1))
    torch.testing.assert_close(model.class_net.conv3.depthwise.weight,
                               state["module.conv3.conv1.weight"])
    torch.testing.assert_close(model.class_net.block2.rep[1].pointwise.weight,
                               state["module.block2.rep.1.pointwise.weight"])
    assert torch.equal(model.class_net.fc.weight, fc_before)  # new 1-logit head


def test_load_pretrained_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = _imagenet_style_state_dict(SMALL["width"])
    del state["module.block1.rep.0.conv1.weight"]
    state["module.block99.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(NodulekitError) as err:
        load_pretrained(small(), path)
    message = str(err.value)
    assert "missing: class_net.block1.rep.0.depthwise.weight" in message
    assert "unexpected: class_net.block99.weight" in message


def test_load_pretrained_own_naming_round_trip(tmp_path: Path) -> None:
    source = small()
    path = tmp_path / "seg.pt"
    torch.save({"state_dict": {k: v for k, v in source.state_dict().items()
                               if k.startswith("seg.")}}, path)
    target = create_model("mtnet", **SMALL, pretrained=[str(path)])
    torch.testing.assert_close(target.seg.head.weight, source.seg.head.weight)
    with pytest.raises(NodulekitError, match="not found"):
        load_pretrained(target, tmp_path / "nope.pt")


def test_default_width_parameter_counts() -> None:
    counts = get_spec("mtnet").param_counts()
    print("MT-Net default-width parameters:", counts)
    assert counts["fine_seg_net"] - counts["coarse_seg_net"] == 256 * 257 + 2 * 256  # Fine-layer
    assert 40e6 < counts["coarse_seg_net"] < 42e6   # DeepLabv3+ / Xception-65, separable ASPP
    # ImageNet Xception without its 1000-class FC (20,806,952) + mask channel (32*9) + FC 2048->1
    assert counts["class_net"] == 20_806_952 + 32 * 9 + 2049
    assert counts["total"] == counts["fine_seg_net"] + counts["class_net"]
