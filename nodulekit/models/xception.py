"""Xception backbones in plain PyTorch.

- :class:`AlignedXception`: the modified aligned Xception (Xception-65) of DeepLabv3+
  (Chen et al. 2018, section 3.2, Fig. 4), the encoder backbone of MT-Net's Coarse/Fine Seg-net
  (Tang & Zhang 2024, section 3.2.2, Fig. 3): every max pooling replaced by a stride-2 depthwise
  separable convolution, a deeper middle flow (16 units), BN + ReLU after each depthwise conv,
  and strides past the output stride turned into dilation.
- :class:`ClassXception`: Chollet's Xception (2017) with MT-Net's Class-net changes (section
  3.2.4, Fig. 5): the exit flow's last max pooling removed and its last two separable convs
  dilated (rate 2, padding 2). Module names follow the common PyTorch port of the ImageNet
  Xception (Cadene ``pretrainedmodels`` / timm ``legacy_xception``: ``conv1``, ``bn1``,
  ``blockN.rep.I``, ``blockN.skip``, ``blockN.skipbn``, ``conv3``, ``bn3``, ``conv4``, ``bn4``,
  ``fc``) so that ImageNet weights map by a short, documented rule (``nodulekit.models.mtnet``).

Both take ``width`` (channel multiplier; 1.0 = the papers' widths, smaller only for tests).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nodulekit.models.blocks import SeparableConv2d, scaled_channels, same_padding

Shortcut = Literal["conv", "sum", "none"]


class AlignedXceptionUnit(nn.Module):
    """One Xception module of the aligned Xception: three 3x3 separable convs and a shortcut.

    Pre-activation (ReLU before each separable conv) unless ``relu_after`` (the last exit-flow
    unit, where ReLU follows each conv). The third conv carries the stride (a stride-2 separable
    conv replaces max pooling, DeepLabv3+ section 3.2). Shortcut: 1x1 conv + BN (``"conv"``),
    identity (``"sum"``) or none.

    ``forward`` returns ``(output, second)``; ``second`` is the second conv's BN output, before the
    stride (DeepLabv3+'s low-level features come from entry-flow unit 2's second conv).
    Shapes: ``(B, C_in, H, W) -> (B, depths[2], ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, depths: tuple[int, int, int], stride: int = 1,
                 dilation: int = 1, shortcut: Shortcut = "conv", relu_after: bool = False,
                 depthwise_bn_relu: bool = True) -> None:
        super().__init__()
        convs, norms = [], []
        channels = in_channels
        for i, depth in enumerate(depths):
            convs.append(SeparableConv2d(channels, depth, 3, stride=stride if i == 2 else 1,
                                         dilation=dilation, depthwise_bn_relu=depthwise_bn_relu))
            norms.append(nn.BatchNorm2d(depth))
            channels = depth
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.relu_after = relu_after
        self.shortcut_kind = shortcut
        self.shortcut: nn.Module | None = None
        if shortcut == "conv":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, depths[2], 1, stride=stride, bias=False),
                nn.BatchNorm2d(depths[2]))
        elif shortcut == "sum" and (in_channels != depths[2] or stride != 1):
            raise ValueError("an identity shortcut needs equal channels and stride 1")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x
        second = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if not self.relu_after:
                h = F.relu(h)
            h = norm(conv(h))
            if self.relu_after:
                h = F.relu(h)
            if i == 1:
                second = h
        if self.shortcut is not None:
            h = h + self.shortcut(x)
        elif self.shortcut_kind == "sum":
            h = h + x
        return h, second


def _unit_plan(middle_units: int) -> list[tuple[str, tuple[int, int, int], int, Shortcut]]:
    """Xception-65 units as (name, depths at width 1, nominal stride, shortcut) (DeepLabv3+ Fig. 4)."""
    plan: list[tuple[str, tuple[int, int, int], int, Shortcut]] = [
        ("entry1", (128, 128, 128), 2, "conv"),
        ("entry2", (256, 256, 256), 2, "conv"),
        ("entry3", (728, 728, 728), 2, "conv"),
    ]
    plan += [(f"middle{i + 1}", (728, 728, 728), 1, "sum") for i in range(middle_units)]
    plan += [("exit1", (728, 1024, 1024), 2, "conv"), ("exit2", (1536, 1536, 2048), 1, "none")]
    return plan


class AlignedXception(nn.Module):
    """Modified aligned Xception-65 backbone of DeepLabv3+ / MT-Net's Seg-nets (section 3.2.2).

    Entry flow: 3x3 conv 32 stride 2, 3x3 conv 64 (each + BN + ReLU), then units of 128, 256,
    728 channels with stride 2. Middle flow: ``middle_units`` (16) units of 728 with identity
    shortcut. Exit flow: unit (728, 1024, 1024) with stride 2, unit (1536, 1536, 2048) without
    shortcut, ReLU after each conv. No max pooling anywhere. Once the cumulative stride reaches
    ``output_stride`` (16 or 8), later strides become 1 and the dilation doubles instead
    (DeepLab's atrous conversion), so the deepest map is ``H / output_stride``.

    ``forward(x)`` returns ``(deep, low_level)``: ``(B, out_channels, H/os, W/os)`` and
    ``(B, low_level_channels, H/4, W/4)`` (entry unit 2's second conv, 256 channels at width 1).
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, output_stride: int = 16,
                 middle_units: int = 16, depthwise_bn_relu: bool = True) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride}")
        c32, c64 = scaled_channels(32, width), scaled_channels(64, width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c32),
            nn.ReLU(),
            nn.Conv2d(c32, c64, 3, padding=1, bias=False), nn.BatchNorm2d(c64), nn.ReLU(),
        )
        units: dict[str, nn.Module] = {}
        channels, current_stride, rate = c64, 2, 1
        for name, depths_1x, stride, shortcut in _unit_plan(middle_units):
            depths = tuple(scaled_channels(d, width) for d in depths_1x)
            if current_stride >= output_stride:  # atrous conversion: stride -> dilation
                unit_stride, unit_rate, rate = 1, rate, rate * stride
            else:
                unit_stride, unit_rate, current_stride = stride, 1, current_stride * stride
            units[name] = AlignedXceptionUnit(
                channels, depths, unit_stride, unit_rate, shortcut,  # type: ignore[arg-type]
                relu_after=(name == "exit2"), depthwise_bn_relu=depthwise_bn_relu)
            channels = depths[2]
        self.units = nn.ModuleDict(units)
        self.out_channels = channels
        self.low_level_channels = scaled_channels(256, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        low_level = h
        for name, unit in self.units.items():
            h, second = unit(h)
            if name == "entry2":
                low_level = second
        return h, low_level


class XceptionBlock(nn.Module):
    """Block of Chollet's Xception in the layout of the common PyTorch port (``rep``, ``skip``).

    ``rep`` = [ReLU, SeparableConv2d, BN] x ``reps`` (the first ReLU dropped when not
    ``start_with_relu``; channels grow in the first conv when ``grow_first``, else in the last),
    then ``MaxPool2d(3, stride, 1)`` when ``stride > 1`` and ``pool``. ``skip`` (1x1 conv with the
    block's stride) + ``skipbn`` when channels or stride change. ``pool=False`` removes the max
    pooling and the skip's stride (MT-Net Class-net, section 3.2.4 (1)).
    """

    def __init__(self, in_channels: int, out_channels: int, reps: int, stride: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True, pool: bool = True) -> None:
        super().__init__()
        stride = stride if pool else 1
        self.skip: nn.Module | None = None
        self.skipbn: nn.Module | None = None
        if out_channels != in_channels or stride != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels)
        widths = [in_channels] + ([out_channels] * reps if grow_first
                                  else [in_channels] * (reps - 1) + [out_channels])
        rep: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            rep += [nn.ReLU(), SeparableConv2d(c_in, c_out, 3), nn.BatchNorm2d(c_out)]
        if not start_with_relu:
            rep = rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip is None else self.skipbn(self.skip(x))  # type: ignore[misc]
        return self.rep(x) + skip


class ClassXception(nn.Module):
    """Xception (Chollet 2017) with MT-Net's Class-net modifications (section 3.2.4, Fig. 5).

    Entry: 3x3 conv 32 stride 2 and 3x3 conv 64, unpadded as in the original; blocks of 128,
    256, 728 with max pooling. Middle: ``middle_blocks`` (8) blocks of 728. Exit: block
    (728, 1024) whose max pooling is removed when not ``exit_pool`` (section 3.2.4 (1)), then
    separable convs 1536 and 2048 (+ BN + ReLU) with dilation ``exit_dilation`` and padding
    ``exit_dilation`` (section 3.2.4 (2): rate 2, padding 2). Global average pooling, dropout,
    ``fc`` -> ``num_outputs``.

    ``in_channels`` is 4 in MT-Net (CT as 3 channels + coarse mask). Shapes:
    ``(B, in_channels, 224, 224) -> (B, num_outputs)``; the last feature map is 14x14 for a
    224x224 input (7x7 in the unmodified Xception).
    """

    def __init__(self, in_channels: int = 4, num_outputs: int = 1, width: float = 1.0,
                 middle_blocks: int = 8, exit_pool: bool = False, exit_dilation: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        c = {n: scaled_channels(n, width) for n in (32, 64, 128, 256, 728, 1024, 1536, 2048)}
        self.conv1 = nn.Conv2d(in_channels, c[32], 3, stride=2, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(c[32])
        self.conv2 = nn.Conv2d(c[32], c[64], 3, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(c[64])
        blocks = [XceptionBlock(c[64], c[128], 2, 2, start_with_relu=False),
                  XceptionBlock(c[128], c[256], 2, 2),
                  XceptionBlock(c[256], c[728], 2, 2)]
        blocks += [XceptionBlock(c[728], c[728], 3, 1) for _ in range(middle_blocks)]
        blocks.append(XceptionBlock(c[728], c[1024], 2, 2, grow_first=False, pool=exit_pool))
        self.block_names = [f"block{i + 1}" for i in range(len(blocks))]
        for name, block in zip(self.block_names, blocks):
            self.add_module(name, block)
        pad = same_padding(3, exit_dilation)
        self.conv3 = SeparableConv2d(c[1024], c[1536], 3, dilation=exit_dilation, padding=pad)
        self.bn3 = nn.BatchNorm2d(c[1536])
        self.conv4 = SeparableConv2d(c[1536], c[2048], 3, dilation=exit_dilation, padding=pad)
        self.bn4 = nn.BatchNorm2d(c[2048])
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c[2048], num_outputs)
        self.out_channels = c[2048]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W) -> (B, 2048 * width, h, w)`` before global pooling."""
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        for name in self.block_names:
            h = getattr(self, name)(h)
        h = F.relu(self.bn3(self.conv3(h)))
        return F.relu(self.bn4(self.conv4(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.fc(self.dropout(pooled))


@torch.no_grad()
def init_extra_channels_as_mean(conv: nn.Conv2d, n_original: int = 3) -> None:
    """Set the weights of input channels ``n_original..`` to the mean over channels ``0..n_original-1``.

    MT-Net section 3.2.4: "The weights of the coarse masks in the 4th channel are initialized by
    averaging the weights of the other three channels". ``conv.weight``: ``(C_out, C_in, k, k)``.
    """
    if conv.in_channels <= n_original:
        return
    mean = conv.weight[:, :n_original].mean(dim=1, keepdim=True)
    conv.weight[:, n_original:] = mean.expand(-1, conv.in_channels - n_original, -1, -1)
