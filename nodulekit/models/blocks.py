"""Building blocks shared by the models: separable convolutions, ASPP, the DeepLabv3+ decoder
and MT-Net's Fine-layer.

Plain PyTorch (no torchvision / timm). Tensors are ``(B, C, H, W)`` unless stated otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1 (``width`` 1.0 gives the paper's widths)."""
    return max(1, int(round(channels * width)))


def same_padding(kernel_size: int, dilation: int) -> int:
    """Padding that keeps the spatial size of a stride-1 convolution (``dilation * (k - 1) / 2``)."""
    return dilation * (kernel_size - 1) // 2


class ConvBNReLU(nn.Sequential):
    """``k x k`` convolution (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=same_padding(kernel_size, dilation), dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class SeparableConv2d(nn.Module):
    """Depthwise ``k x k`` convolution then pointwise ``1 x 1`` convolution, both without bias.

    ``depthwise_bn_relu`` adds BatchNorm + ReLU between the two, as in the modified aligned
    Xception of DeepLabv3+ (Chen et al. 2018, section 3.2, point 3: "extra batch normalization
    and ReLU activation are added after each 3x3 depthwise convolution"); the original Xception
    (Chollet 2017) has nothing in between. ``padding`` defaults to ``dilation * (k - 1) / 2``
    ("same"; for ``k = 3`` and ``dilation = 2`` that is the padding 2 of MT-Net section 3.2.4).

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``
    with the default padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, padding: int | None = None,
                 depthwise_bn_relu: bool = False) -> None:
        super().__init__()
        pad = same_padding(kernel_size, dilation) if padding is None else padding
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride,
                                   padding=pad, dilation=dilation, groups=in_channels, bias=False)
        self.depthwise_norm: nn.Module = (
            nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU()) if depthwise_bn_relu
            else nn.Identity())
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise_norm(self.depthwise(x)))


class SeparableConvBNReLU(nn.Sequential):
    """:class:`SeparableConv2d` -> BatchNorm -> ReLU (ASPP branches and decoder of DeepLabv3+)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1,
                 depthwise_bn_relu: bool = True) -> None:
        super().__init__(
            SeparableConv2d(in_channels, out_channels, 3, dilation=dilation,
                            depthwise_bn_relu=depthwise_bn_relu),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


def conv3x3_bn_relu(in_channels: int, out_channels: int, dilation: int, separable: bool) -> nn.Module:
    """A 3x3 (atrous) conv + BN + ReLU, separable (DeepLabv3+ with Xception) or plain."""
    if separable:
        return SeparableConvBNReLU(in_channels, out_channels, dilation=dilation)
    return ConvBNReLU(in_channels, out_channels, 3, dilation=dilation)


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool -> 1x1 conv + BN + ReLU -> upsample.

    ``(B, C_in, h, w) -> (B, C_out, h, w)``. Needs ``B > 1`` in training mode (BatchNorm over a
    1x1 map).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.project = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.project(F.adaptive_avg_pool2d(x, 1))
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of DeepLabv3 / DeepLabv3+ (Chen et al. 2018, section 3.1).

    Branches: 1x1 conv; one 3x3 atrous conv per rate in ``rates`` (separable when ``separable``,
    DeepLabv3+ section 3.2); image pooling. Concatenated, projected by 1x1 conv + BN + ReLU to
    ``out_channels``, then dropout.

    Shapes: ``(B, in_channels, h, w) -> (B, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...],
                 separable: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [conv3x3_bn_relu(in_channels, out_channels, rate, separable) for rate in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = ConvBNReLU(out_channels * len(branches), out_channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.dropout(self.project(merged))


class DeepLabDecoder(nn.Module):
    """DeepLabv3+ decoder (Chen et al. 2018, section 3.1 and Fig. 2).

    The low-level features (stride 4) go through a 1x1 conv to ``low_level_out`` channels
    (48 in the paper); the encoder output is bilinearly upsampled to their size, concatenated,
    and refined by ``num_convs`` 3x3 convs of ``channels`` channels (separable with Xception).

    Shapes: encoder ``(B, C_enc, h, w)`` and low-level ``(B, C_low, 4h', 4w')`` ->
    ``(B, channels, 4h', 4w')`` (the low-level map's size).
    """

    def __init__(self, encoder_channels: int, low_level_channels: int, low_level_out: int,
                 channels: int, num_convs: int, separable: bool = True) -> None:
        super().__init__()
        self.low_level = ConvBNReLU(low_level_channels, low_level_out, 1)
        convs: list[nn.Module] = []
        in_channels = encoder_channels + low_level_out
        for _ in range(num_convs):
            convs.append(conv3x3_bn_relu(in_channels, channels, 1, separable))
            in_channels = channels
        self.refine = nn.Sequential(*convs)
        self.out_channels = in_channels

    def forward(self, encoded: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low = self.low_level(low_level)
        up = F.interpolate(encoded, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(torch.cat([up, low], dim=1))


class FineLayer(nn.Module):
    """MT-Net's Fine-layer (Tang & Zhang 2024, section 3.2.3, Fig. 4).

    Concatenates the deepest encoder features with the coarse mask (already resized to the
    features' size), then fuses them by 1x1 conv -> BatchNorm -> ReLU back to the features'
    channel count, so the shared decoder can consume the result. Randomly initialised.

    Shapes: features ``(B, C, h, w)``, mask ``(B, 1, h, w)`` -> ``(B, C, h, w)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fuse = ConvBNReLU(channels + 1, channels, 1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([features, mask.to(features.dtype)], dim=1))


def init_weights(module: nn.Module) -> None:
    """He init for convs, ones/zeros for BatchNorm, small normal for Linear.

    Dense convs use fan-out; depthwise (grouped) convs fan-in, since PyTorch's fan-out of a
    ``(C, 1, k, k)`` weight counts all C channels although each output sees one.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            mode = "fan_in" if m.groups > 1 else "fan_out"
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


# -- n-d blocks of papers 003 (MU-Net / MSU-Net) and 004 (cascade) ------------------------------
# ``nd`` is the number of spatial dimensions: 2 -> (B, C, H, W), 3 -> (B, C, D, H, W).

def conv_nd(nd: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[nd]


def batch_norm_nd(nd: int) -> type[nn.Module]:
    """``nn.BatchNorm2d`` or ``nn.BatchNorm3d``."""
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[nd]


def max_pool_nd(nd: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[nd]


def round_to_multiple(value: float, multiple: int) -> int:
    """``value`` rounded to a positive multiple of ``multiple`` (grouped convs need it)."""
    return max(multiple, int(round(value / multiple)) * multiple)


class ConvNormAct(nn.Sequential):
    """``k^nd`` convolution (``groups``, ``dilation``, "same" padding) -> BatchNorm -> ReLU.

    ``bias`` defaults to True, as in the U-Net family code the paper-003 baselines come from
    (LeeJunHyun/Image_Segmentation); BatchNorm makes it redundant but it is part of the count.
    Shapes: ``(B, C_in, *S) -> (B, C_out, *S / stride)``.
    """

    def __init__(self, nd: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, dilation: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__(
            conv_nd(nd)(in_channels, out_channels, kernel_size, stride=stride,
                        padding=same_padding(kernel_size, dilation), dilation=dilation,
                        groups=groups, bias=bias),
            batch_norm_nd(nd)(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvNormAct` 3^nd blocks, ``C_in -> C_out -> C_out`` (U-Net's conv block).

    ``groups > 1`` keeps channel groups apart (paper 003's per-slice "separable" convolution:
    group ``g`` of the output sees only group ``g`` of the input).
    """

    def __init__(self, nd: int, in_channels: int, out_channels: int, groups: int = 1) -> None:
        super().__init__(ConvNormAct(nd, in_channels, out_channels, 3, groups=groups),
                         ConvNormAct(nd, out_channels, out_channels, 3, groups=groups))


class UpConv(nn.Module):
    """Rescale x2 then 3^nd conv -> BN -> ReLU, ``C_in -> C_out`` (the U-Net family's ``up_conv``).

    Paper 003 (Discussion) names the decoder's upsampling a "rescale operation". ``mode``:
    ``"nearest"``, ``"bilinear"`` (2D) / ``"trilinear"`` (3D). The output is interpolated to
    ``size`` when given (odd input sizes).
    """

    def __init__(self, nd: int, in_channels: int, out_channels: int, mode: str = "nearest") -> None:
        super().__init__()
        self.mode = mode
        self.conv = ConvNormAct(nd, in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
        align = None if self.mode == "nearest" else False
        if size is None:
            up = F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=align)
        else:
            up = F.interpolate(x, size=size, mode=self.mode, align_corners=align)
        return self.conv(up)


class GateUnit(nn.Module):
    """Gate unit of paper 003 (Ni et al. 2022), eq. (6) and (7)::

        F_att = sigmoid(W2 * relu(W1 * (f + X)))        (6)
        X_o   = X (.) F_att                             (7)

    ``f`` and ``X`` have the same shape ``(B, C, *S)``. W1: ``k^nd`` conv ``C -> C_int`` with bias
    (``kernel_size``, default 1), W2: 1^nd conv ``C_int -> groups`` with bias, so ``F_att`` is a
    spatial attention map per channel group (``(B, groups, *S)``, each map broadcast over its
    group's ``C / groups`` channels). ``groups > 1`` makes W1 and W2 grouped convolutions, so
    the gate never mixes groups (MSU-Net's per-slice encoder). No normalisation: eq. (6) has none.
    """

    def __init__(self, nd: int, channels: int, inter_channels: int, groups: int = 1,
                 kernel_size: int = 1) -> None:
        super().__init__()
        if channels % groups or inter_channels % groups:
            raise ValueError(f"gate unit: channels {channels} and inter_channels {inter_channels} "
                             f"must be multiples of groups {groups}")
        conv = conv_nd(nd)
        self.groups = groups
        self.w1 = conv(channels, inter_channels, kernel_size,
                       padding=same_padding(kernel_size, 1), groups=groups)
        self.w2 = conv(inter_channels, groups, 1, groups=groups)

    def attention(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``F_att`` of eq. (6): ``(B, groups, *S)`` in (0, 1)."""
        return torch.sigmoid(self.w2(torch.relu(self.w1(f + x))))

    def forward(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        att = self.attention(f, x)
        if self.groups > 1:
            att = att.repeat_interleave(x.shape[1] // self.groups, dim=1)
        return x * att


class ResidualBlock(nn.Module):
    """Basic residual block (He et al. 2016, Fig. 2): two 3^nd conv + BN, ReLU, shortcut.

    ``stride`` on the first conv; the shortcut is the identity, or 1^nd conv (stride) + BN when
    the shape changes. ``(B, C_in, *S) -> (B, C_out, *ceil(S / stride))``.
    """

    def __init__(self, nd: int, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        conv, norm = conv_nd(nd), batch_norm_nd(nd)
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv(in_channels, out_channels, 1, stride=stride, bias=False),
                                          norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def init_he(module: nn.Module) -> None:
    """He (fan-in, ReLU) init for every conv and linear layer, zero biases, BatchNorm 1 / 0.

    Paper 004 section 3.2 ("randomly initialized by the He method [35] and bias is initialized
    to zero"); used for the paper-003 networks too (the paper names no init).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# -- dgnet (paper 001): ResU-Net residual unit, summed ASPP, feature combination, STD sigmoid --

class ResidualUnit(nn.Module):
    """ResU-Net residual unit (Zhang, Liu & Wang 2018, section II.B, Fig. 1(b)).

    Pre-activation: ``[BN -> ReLU ->] conv3x3(stride) -> BN -> ReLU -> conv3x3`` plus a shortcut
    ``conv1x1(stride) -> BN`` when the channels or the size change (identity otherwise). The
    first unit of the network (``preactivate=False``) starts with the convolution, as in ResU-Net.
    ``separable_stride=True``: a stride-2 first conv is a depthwise separable conv (3x3 depthwise,
    stride 2, then 1x1 pointwise; paper 001 section 3.1, after Xception).

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 preactivate: bool = True, separable_stride: bool = True) -> None:
        super().__init__()
        self.pre: nn.Module = (nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU()) if preactivate
                               else nn.Identity())
        if stride > 1 and separable_stride:
            self.conv1: nn.Module = SeparableConv2d(in_channels, out_channels, 3, stride=stride)
        else:
            self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.mid = nn.Sequential(nn.BatchNorm2d(out_channels), nn.ReLU())
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.mid(self.conv1(self.pre(x)))) + self.shortcut(x)


class SummedASPP(nn.Module):
    """ASPP as in ResUNet++ (Jha et al. 2019), used by dgnet (paper 001, section 3.1).

    One ``3x3`` atrous conv + BatchNorm per rate in ``rates`` (paper 001: 1, 5, 10, 15), merged
    by summation (``merge="sum"``, ResUNet++) or concatenation (``"concat"``, DeepLab), then a
    ``1x1`` conv to ``out_channels``. No image-pooling branch (ResUNet++ has none; compare
    :class:`ASPP`). Shapes: ``(B, in_channels, h, w) -> (B, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...],
                 merge: str = "sum") -> None:
        super().__init__()
        if merge not in ("sum", "concat"):
            raise ValueError(f"ASPP merge must be 'sum' or 'concat', not {merge!r}")
        self.merge = merge
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=same_padding(3, rate),
                                    dilation=rate, bias=False),
                          nn.BatchNorm2d(out_channels))
            for rate in rates)
        merged = out_channels * (len(rates) if merge == "concat" else 1)
        self.project = nn.Conv2d(merged, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        merged = torch.stack(outs).sum(0) if self.merge == "sum" else torch.cat(outs, dim=1)
        return self.project(merged)


class FeatureCombination(nn.Module):
    """dgnet's feature combination block (paper 001, section 3.2, Fig. 3).

    ``1x1`` conv on the classifier feature (``cls_channels -> cls_channels``, "transformed into a
    segmentation feature"), concatenation with the segmenter feature, ``1x1`` conv back to
    ``seg_channels`` (learns the fusion), then a ``3x3`` depthwise separable conv
    ``seg_channels -> seg_channels``. Choice (the paper shows no normalisation): BatchNorm after
    each of the three convs, ReLU after the two ``1x1`` convs only, so the output is a
    pre-activation feature like a :class:`ResidualUnit`'s.

    Shapes: segmenter ``(B, seg_channels, h, w)`` and classifier ``(B, cls_channels, h, w)`` (same
    ``h, w``: only same-size features are combined) -> ``(B, seg_channels, h, w)``.
    """

    def __init__(self, seg_channels: int, cls_channels: int) -> None:
        super().__init__()
        self.cls_project = ConvBNReLU(cls_channels, cls_channels, 1)
        self.fuse = ConvBNReLU(cls_channels + seg_channels, seg_channels, 1)
        self.refine = nn.Sequential(SeparableConv2d(seg_channels, seg_channels, 3),
                                    nn.BatchNorm2d(seg_channels))

    def forward(self, seg: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        if seg.shape[-2:] != cls.shape[-2:]:
            raise ValueError(f"feature combination needs same-size features, got "
                             f"{tuple(seg.shape[-2:])} and {tuple(cls.shape[-2:])}")
        return self.refine(self.fuse(torch.cat([seg, self.cls_project(cls)], dim=1)))


class PositiveScalar(nn.Module):
    """A scalar >= 0, either fixed (a buffer) or learnable (``softplus`` of a free parameter).

    Learnable values must start > 0 (the free parameter is ``log(exp(v) - 1)``).
    """

    def __init__(self, value: float, learnable: bool) -> None:
        super().__init__()
        self.learnable = bool(learnable)
        if value < 0:
            raise ValueError(f"a positive scalar cannot start at {value}")
        if self.learnable:
            if value <= 0:
                raise ValueError("a learnable positive scalar must start > 0")
            v = torch.tensor(float(value), dtype=torch.float64)
            raw = v + torch.log(-torch.expm1(-v))  # inverse softplus
            self.raw = nn.Parameter(raw.to(torch.float32))
        else:
            self.register_buffer("fixed", torch.tensor(float(value)))

    def forward(self) -> torch.Tensor:
        return F.softplus(self.raw) if self.learnable else self.fixed

    def extra_repr(self) -> str:
        return f"value={float(self().detach()):.4g}, learnable={self.learnable}"


def gaussian_kernel2d(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Discrete 2D Gaussian ``k_sigma`` of ``size x size`` (odd), normalised to sum 1.

    ``k(i, j) ~ exp(-(i^2 + j^2) / (2 sigma^2))`` for ``i, j`` in ``-size//2 .. size//2``;
    differentiable in ``sigma`` (a 0-d tensor, pixels). Returns ``(size, size)``.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be odd and >= 1, got {size}")
    offsets = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - size // 2
    one_d = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = one_d[:, None] * one_d[None, :]
    return kernel / kernel.sum()


class STDSigmoid(nn.Module):
    """Sigmoid with soft threshold dynamics (STD) regularisation and a classification prior.

    Paper 001, section 3.3, eq. (4)-(5): the output ``x`` approximately solves

        argmin_{0<=x<=1} -<u, x> + eps <x, ln x> + eps <1-x, ln(1-x)>
                         + lambda1 <x, k_sigma * (1 - x)> + lambda2 (1 - c) <1, x>

    by ``iterations`` fixed-point steps, from ``x^0 = sigmoid(u)`` (section 3.3):

        x^{t+1} = sigmoid((u - lambda1 k_sigma * (1 - 2 x^t) - lambda2 (1 - c)) / eps).

    Eq. (3) and (5) as printed have ``x^t`` where ``u`` belongs: setting the derivative of
    eq. (4), with its concave STD term linearised at ``x^t`` (threshold dynamics), to zero gives
    ``u``; with ``x^t`` the output would not depend on the network's feature map at all.
    ``k_sigma *`` is a depthwise convolution with a normalised Gaussian (``kernel_size``,
    ``padding`` = a ``F.pad`` mode, default "replicate"). ``c`` (B,) is the classifier's nodule
    probability, detached here (section 3.3: "excluded from backpropagation"); ``c=None`` drops
    the prior term (as ``lambda2 = 0``). The iterations stay in the graph (section 2.2).

    Returns the **logits** of the last step, ``z = (u - lambda1 k * (1 - 2 x^{T-1}) -
    lambda2 (1 - c)) / eps``, so ``sigmoid(z)`` is the regularised output ``x^T`` and losses
    can use the numerically safe ``*_with_logits`` forms. With ``lambda1 = lambda2 = 0`` the
    result is exactly ``u / eps`` (a plain ``sigmoid(u / eps)``). Shapes: ``u (B, C, H, W) ->
    (B, C, H, W)``.
    """

    def __init__(self, iterations: int = 10, eps: float = 1.0, lambda1: float = 1.0,
                 lambda2: float = 1.0, sigma: float = 1.0, kernel_size: int = 9,
                 learn_eps: bool = False, learn_lambda1: bool = False, learn_lambda2: bool = True,
                 learn_sigma: bool = True, padding: str = "replicate") -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"STD needs at least one iteration, got {iterations}")
        if eps <= 0 or sigma <= 0:
            raise ValueError("STD eps and sigma must be > 0")
        self.iterations = int(iterations)
        self.kernel_size = int(kernel_size)
        self.padding = padding
        gaussian_kernel2d(torch.tensor(1.0), self.kernel_size)  # validates the size
        self.eps = PositiveScalar(eps, learn_eps)
        self.lambda1 = PositiveScalar(lambda1, learn_lambda1)
        self.lambda2 = PositiveScalar(lambda2, learn_lambda2)
        self.sigma = PositiveScalar(sigma, learn_sigma)

    def smooth(self, y: torch.Tensor) -> torch.Tensor:
        """``k_sigma * y``: the Gaussian applied to each channel of ``y`` (B, C, H, W)."""
        channels = y.shape[1]
        kernel = gaussian_kernel2d(self.sigma().to(y.dtype), self.kernel_size)
        weight = kernel.expand(channels, 1, -1, -1)
        r = self.kernel_size // 2
        return F.conv2d(F.pad(y, (r, r, r, r), mode=self.padding), weight, groups=channels)

    def forward(self, u: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        eps, lambda1 = self.eps().to(u.dtype), self.lambda1().to(u.dtype)
        shift = torch.zeros((), dtype=u.dtype, device=u.device)
        if c is not None:
            prior = (1.0 - c.detach().to(u.dtype)).reshape(-1, *([1] * (u.ndim - 1)))
            shift = self.lambda2().to(u.dtype) * prior
        x = torch.sigmoid(u)
        z = u
        for _ in range(self.iterations):
            z = (u - lambda1 * self.smooth(1.0 - 2.0 * x) - shift) / eps
            x = torch.sigmoid(z)
        return z
