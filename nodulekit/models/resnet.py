"""ResNet-50 in plain PyTorch (He et al. 2016, "Deep Residual Learning for Image Recognition").

Used as dgnet's classifier (paper 001, section 3.1: "a ResNet-50 binary classifier whose final
activation function is Sigmoid"). Bottleneck blocks with the stride on the 3x3 conv ("ResNet
v1.5", torchvision's layout, so ImageNet weights in torchvision naming load by key), any number
of input channels and outputs, and a ``width`` multiplier for small test instances.

Stages and their outputs for an ``S x S`` input (``width = 1``):

=========  ====================================  ===========  ============
stage      layers                                channels     size
=========  ====================================  ===========  ============
``stem``   7x7 conv stride 2, BN, ReLU           64           S / 2
``layer1`` 3x3 max pool stride 2, 3 bottlenecks  256          S / 4
``layer2`` 4 bottlenecks, first stride 2         512          S / 8
``layer3`` 6 bottlenecks, first stride 2         1024         S / 16
``layer4`` 3 bottlenecks, first stride 2         2048         S / 32
``fc``     global average pool, linear           outputs
=========  ====================================  ===========  ============
"""
from __future__ import annotations

import torch
from torch import nn

from nodulekit.models.blocks import scaled_channels

RESNET50_LAYERS = (3, 4, 6, 3)
STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")


class Bottleneck(nn.Module):
    """``1x1 -> 3x3 (stride) -> 1x1 (x4 channels)`` with BN, ReLU, and a projection shortcut
    (``1x1 conv stride -> BN``) when the shape changes. ``(B, C_in, H, W) -> (B, 4 planes, H/s, W/s)``."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """A bottleneck ResNet (ResNet-50 with the default ``layers``).

    ``forward(x)``: ``(B, in_channels, H, W) -> (B, num_outputs)`` logits.
    ``stages(x)``: the five stage outputs ``[stem, layer1, layer2, layer3, layer4]`` (sizes in the
    module docstring), for networks that reuse the features (dgnet's combination blocks).
    ``stage_channels``: their channel counts.
    """

    def __init__(self, in_channels: int = 3, num_outputs: int = 1000,
                 layers: tuple[int, ...] = RESNET50_LAYERS, width: float = 1.0) -> None:
        super().__init__()
        stem_channels = scaled_channels(64, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(stem_channels), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = stem_channels
        stage_channels = [stem_channels]
        stages = []
        for index, blocks in enumerate(layers):
            planes = scaled_channels(64 * 2 ** index, width)
            stage, channels = _make_stage(channels, planes, blocks, stride=1 if index == 0 else 2)
            stages.append(stage)
            stage_channels.append(channels)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.stage_channels = tuple(stage_channels)
        self.fc = nn.Linear(channels, num_outputs)
        init_resnet(self)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of ``stem``, ``layer1`` (after the max pool), ..., ``layer4``."""
        outs = [self.stem(x)]
        outs.append(self.layer1(self.maxpool(outs[-1])))
        for layer in (self.layer2, self.layer3, self.layer4):
            outs.append(layer(outs[-1]))
        return outs

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling + ``fc``: ``(B, C, h, w) -> (B, num_outputs)``."""
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x)[-1])


def _make_stage(in_channels: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    units = [Bottleneck(in_channels, planes, stride)]
    out_channels = planes * Bottleneck.expansion
    units += [Bottleneck(out_channels, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*units), out_channels


def init_resnet(model: nn.Module) -> None:
    """He et al. initialisation: Kaiming normal (fan-out) convs, BN ones/zeros, PyTorch's
    default uniform for the linear layer, and each bottleneck's last BN scale at zero (the
    residual branch starts as identity, Goyal et al. 2017), which trains stably from scratch."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)


def resnet50(in_channels: int = 3, num_outputs: int = 1000, width: float = 1.0) -> ResNet:
    """ResNet-50: bottleneck stages of 3, 4, 6, 3 blocks."""
    return ResNet(in_channels, num_outputs, RESNET50_LAYERS, width)
