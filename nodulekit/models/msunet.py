"""Multitask 2.5D MSU-Net, the refinement stage of Ni et al. 2022 (QIMS 12:292;
papers/003_1acb948d5a20bb04.txt), and the U-Net body it shares with the 3D MU-Net
(:mod:`nodulekit.models.munet3d`, the localization stage).

:class:`MultiscaleGatedUNet` (2D or 3D, section "Multitask 2.5D MSU-Net", Fig. 2-3):

- encoder: a U-Net encoder of ``len(channels)`` levels (double 3x3 conv + BN + ReLU, 2x2 max
  pooling). With ``groups = S`` every encoder convolution is grouped, one group per slice of the
  2.5D slab ("Separable convolution": "a convolution operation for each slice-group feature
  map"), so encoder features never mix slices;
- multiscale input layer ("Multiscale input layer", Fig. 3): the input is max-pooled once per
  level (an image pyramid) and each scale goes through a 3x3 conv + BN + ReLU (grouped per
  slice: "the convolution outputs of each slice were concatenated") to the channels of the
  pooled encoder features ``X`` it joins; a gate unit fuses the two, eq. (6)-(7) with ``f`` =
  the multiscale feature and ``X`` = the top-down feature;
- decoder: rescale x2 + 3x3 conv ("the rescale operation in the decoder", Discussion), a gate
  unit with ``f`` = the encoder (skip) feature and ``X`` = the bottom-up feature, concatenation
  with the skip feature and a double conv. Decoder convolutions are ordinary ones: "in the
  decoding path, the slice-separated features merge".

:class:`MSUNet` = the body on ``(B, S, 64, 64)`` slabs (S = 4 slices as channels), a 1x1 conv to
S per-slice segmentation logits (eq. 4; a 2-class softmax per pixel is a sigmoid of one logit)
and :class:`MultitaskHeads` (eq. 1-3): ``res^alpha`` (2 residual blocks) on the deepest encoder
feature, ``res^beta`` (4 residual blocks, stride 2) on the last decoder feature, global average
pooling, concatenation (``f_share``) and one fully connected layer per characteristic, each a
2-class softmax (logits here). Labels are binarised by consensus-label's ``msunet`` cohort
(Table 3: malignancy, margin, texture >= 4 -> 1; calcification 6 -> 1).

Loss, eq. (8)-(11): ``L = log DL + lambda * FL + CL`` (:func:`msunet_loss`), lambda = 0.2, focal
alpha 0.25, gamma 2, CL the mean cross-entropy over the characteristics with a label.

Parameter counts (default widths, :func:`nodulekit.models.registry.param_counts`): segmentation
network 20.63 M, heads 1.08 M, total 21.71 M vs the paper's 21.81 M (Table 5). The paper does
not give the layer widths; the encoder/decoder widths 64..1024 and the ``up_conv`` decoder are
those of the U-Net code base whose 2D U-Net / Attention U-Net have 34,527,041 / 34,878,573
parameters, Table 5's 34.52 M / 34.87 M truncated (LeeJunHyun/Image_Segmentation); gate units use 1x1 convs with C/2 channels (as the
attention gates of [15]); the heads work at 64 channels (the decoder's output width).
docs/models.md lists every choice.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.models.blocks import (ConvNormAct, DoubleConv, GateUnit, ResidualBlock, UpConv,
                                     conv_nd, init_he, max_pool_nd, round_to_multiple)
from nodulekit.models.losses import focal_loss_with_logits, masked_cross_entropy, squared_dice_loss
from nodulekit.models.registry import (InputGeometry, ModelSpec, OutputSpec, PaperRef, PhaseSpec,
                                       register_model)

CONFIG_PATH = Path(__file__).parent / "configs" / "msunet.toml"
CHARACTERISTICS = ("malignancy", "margin", "texture", "calcification")
PAPER_003 = PaperRef(
    file="003_1acb948d5a20bb04.txt",
    citation=("Ni Y, Xie Z, Zheng D, Yang Y, Wang W. Two-stage multitask U-Net construction for "
              "pulmonary nodule segmentation and malignancy risk prediction. Quant Imaging Med "
              "Surg 2022;12(1):292-309."),
    doi="10.21037/qims-21-19")


def scaled_widths(channels: Sequence[int], width: float, groups: int) -> list[int]:
    """Encoder widths times ``width``, each a multiple of ``2 * groups`` (grouped convs, C/2 gates)."""
    return [round_to_multiple(c * width, 2 * groups) for c in channels]


class MultiscaleGatedUNet(nn.Module):
    """U-Net with a multiscale input pyramid and gate units, 2D or 3D (see the module docstring).

    Args:
        nd: spatial dimensions (2: MSU-Net on slabs, 3: MU-Net on cubes).
        in_channels: input channels (S slices for MSU-Net, 1 for MU-Net).
        channels: widths of the encoder levels, shallow to deep (``len - 1`` poolings).
        groups: channel groups of every encoder conv, gate and pyramid conv (S: per slice).
        multiscale_input: the pyramid of pooled inputs joined at every pooled level.
        gate_units: fuse with the gate unit (eq. 6-7); without it the pyramid features are
            added to ``X`` and the decoder concatenates the plain upsampled features.
        gate_kernel, gate_ratio: W1's kernel size and ``C_int = gate_ratio * C``.
        pyramid_pool: ``"max"`` (the paper's max pool) or ``"avg"`` for the input pyramid.
        upsample: interpolation of the decoder's rescale (``"nearest"``, ``"bilinear"``,
            ``"trilinear"``).

    ``encode(x)`` -> the features of every level ``[(B, C_l, *S / 2^l)]``; ``decode(features)``
    -> ``(B, C_0, *S)``.
    """

    def __init__(self, nd: int, in_channels: int, channels: Sequence[int], groups: int = 1,
                 multiscale_input: bool = True, gate_units: bool = True, gate_kernel: int = 1,
                 gate_ratio: float = 0.5, pyramid_pool: str = "max", upsample: str = "nearest") -> None:
        super().__init__()
        if len(channels) < 2:
            raise NodulekitError(f"a U-Net needs at least 2 levels, got channels {list(channels)}")
        if pyramid_pool not in ("max", "avg"):
            raise NodulekitError(f"pyramid_pool = {pyramid_pool!r}; allowed: max, avg")
        self.nd, self.groups, self.pyramid_pool = nd, groups, pyramid_pool
        c = list(channels)
        self.out_channels, self.deep_channels = c[0], c[-1]
        self.stem = DoubleConv(nd, in_channels, c[0], groups)
        self.down = nn.ModuleList(DoubleConv(nd, c[i], c[i + 1], groups) for i in range(len(c) - 1))
        self.pool = max_pool_nd(nd)(2)
        self.pyramid = (nn.ModuleList(ConvNormAct(nd, in_channels, c[i], 3, groups=groups)
                                      for i in range(len(c) - 1)) if multiscale_input else None)
        self.encoder_gates = (nn.ModuleList(self._gate(c[i], groups, gate_kernel, gate_ratio)
                                            for i in range(len(c) - 1))
                              if multiscale_input and gate_units else None)
        self.up = nn.ModuleList(UpConv(nd, c[i + 1], c[i], upsample) for i in range(len(c) - 1))
        self.decoder_gates = (nn.ModuleList(self._gate(c[i], 1, gate_kernel, gate_ratio)
                                            for i in range(len(c) - 1)) if gate_units else None)
        self.merge = nn.ModuleList(DoubleConv(nd, 2 * c[i], c[i]) for i in range(len(c) - 1))

    def _gate(self, channels: int, groups: int, kernel: int, ratio: float) -> GateUnit:
        return GateUnit(self.nd, channels, round_to_multiple(channels * ratio, groups), groups, kernel)

    def encoder_modules(self) -> list[nn.Module]:
        """The modules whose features stay per group (per slice when ``groups = S``)."""
        return [m for m in (self.stem, self.down, self.pyramid, self.encoder_gates) if m is not None]

    def decoder_modules(self) -> list[nn.Module]:
        return [m for m in (self.up, self.decoder_gates, self.merge) if m is not None]

    def _pool_input(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.nd == 2 else F.max_pool3d
        if self.pyramid_pool == "avg":
            pool = F.avg_pool2d if self.nd == 2 else F.avg_pool3d
        return pool(x, 2)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        scale = x
        for level, block in enumerate(self.down):
            top_down = self.pool(features[-1])
            if self.pyramid is not None:
                scale = self._pool_input(scale)
                multiscale = self.pyramid[level](scale)
                top_down = (self.encoder_gates[level](multiscale, top_down)
                            if self.encoder_gates is not None else top_down + multiscale)
            features.append(block(top_down))
        return features

    def decode(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        out = features[-1]
        for level in reversed(range(len(self.up))):
            skip = features[level]
            bottom_up = self.up[level](out, size=tuple(skip.shape[2:]))
            if self.decoder_gates is not None:
                bottom_up = self.decoder_gates[level](skip, bottom_up)
            out = self.merge[level](torch.cat([skip, bottom_up], dim=1))
        return out

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        features = self.encode(x)
        return features, self.decode(features)


class ResidualBranch(nn.Sequential):
    """``blocks`` basic residual blocks (the first maps ``in_channels -> channels``), each with
    ``stride``, then global average pooling: ``(B, C_in, *S) -> (B, channels)``."""

    def __init__(self, nd: int, in_channels: int, channels: int, blocks: int, stride: int) -> None:
        layers: list[nn.Module] = [ResidualBlock(nd, in_channels if i == 0 else channels, channels, stride)
                                   for i in range(blocks)]
        layers += [nn.AdaptiveAvgPool2d(1) if nd == 2 else nn.AdaptiveAvgPool3d(1), nn.Flatten(1)]
        super().__init__(*layers)


class MultitaskHeads(nn.Module):
    """Classification heads of MSU-Net, eq. (1)-(3).

    ``f_share = [res^alpha(f_enc), res^beta(f_dec)]`` (eq. 1) with ``alpha`` residual blocks on
    the deepest encoder feature and ``beta`` on the last decoder feature; one linear layer per
    task on ``f_share`` (eq. 2), its softmax being eq. (3). ``branches``: ``"both"`` (eq. 1),
    ``"encoder"`` or ``"decoder"`` (Table 7's single-branch baselines).

    ``forward(f_enc, f_dec)`` -> ``{task: (B, n_classes) logits}``.
    """

    def __init__(self, nd: int, encoder_channels: int, decoder_channels: int, tasks: Mapping[str, int],
                 cfg: Mapping[str, Any]) -> None:
        super().__init__()
        branches = str(cfg["branches"])
        if branches not in ("both", "encoder", "decoder"):
            raise NodulekitError(f"model.heads.branches = {branches!r}; allowed: both, encoder, decoder")
        width = int(cfg["channels"])
        self.encoder_branch = (ResidualBranch(nd, encoder_channels, width, int(cfg["encoder_blocks"]),
                                              int(cfg["encoder_stride"]))
                               if branches in ("both", "encoder") else None)
        self.decoder_branch = (ResidualBranch(nd, decoder_channels, width, int(cfg["decoder_blocks"]),
                                              int(cfg["decoder_stride"]))
                               if branches in ("both", "decoder") else None)
        shared = width * (2 if branches == "both" else 1)
        self.fc = nn.ModuleDict({task: nn.Linear(shared, n) for task, n in tasks.items()})

    def forward(self, f_enc: torch.Tensor, f_dec: torch.Tensor,
                tasks: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        parts = []
        if self.encoder_branch is not None:
            parts.append(self.encoder_branch(f_enc))
        if self.decoder_branch is not None:
            parts.append(self.decoder_branch(f_dec))
        shared = torch.cat(parts, dim=1)
        wanted = list(self.fc) if tasks is None else list(tasks)
        return {task: self.fc[task](shared) for task in wanted}


class MSUNet(nn.Module):
    """Multitask 2.5D MSU-Net (see the module docstring), from the ``model`` table of msunet.toml.

    ``forward(image, outputs=None)``: ``image`` ``(B, S, H, W)``, S consecutive 1 mm slices as
    channels (64x64x4 slabs, HU [-1000, 500] -> [0, 1]); returns ``seg`` ``(B, S, H, W)``
    logits (one per slice and pixel) and ``{characteristic: (B, 2)}`` logits.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = dict(config)
        self.config = cfg
        self.n_slices = int(cfg["n_slices"])
        groups = self.n_slices if cfg["separable_encoder"] else 1
        widths = scaled_widths(cfg["channels"], float(cfg["width"]), groups)
        self.unet = MultiscaleGatedUNet(
            2, self.n_slices, widths, groups, bool(cfg["multiscale_input"]), bool(cfg["gate_units"]),
            int(cfg["gate_kernel"]), float(cfg["gate_ratio"]), str(cfg["pyramid_pool"]), str(cfg["upsample"]))
        self.seg_head = conv_nd(2)(widths[0], self.n_slices, 1)
        heads = dict(cfg["heads"])
        unknown = set(heads["tasks"]) - set(CHARACTERISTICS)
        if unknown:
            raise NodulekitError(f"model.heads.tasks: unknown {sorted(unknown)}; known: {list(CHARACTERISTICS)}")
        self.tasks = {task: int(heads["n_classes"]) for task in heads["tasks"]}
        self.heads = MultitaskHeads(2, widths[-1], widths[0], self.tasks, heads) if self.tasks else None
        init_he(self)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("seg", *self.tasks)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``seg_net`` (U-Net + segmentation conv) and ``heads``: trained together (eq. 11)."""
        return {"seg_net": [*self.unet.parameters(), *self.seg_head.parameters()],
                "heads": [] if self.heads is None else list(self.heads.parameters())}

    def subnetworks(self) -> dict[str, list[nn.Module]]:
        """The segmentation network (Table 5's count) and the classification heads."""
        return {"seg_net": [self.unet, self.seg_head],
                "heads": [] if self.heads is None else [self.heads]}

    @staticmethod
    def probabilities(outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits -> probabilities: sigmoid of ``seg``, softmax of each characteristic."""
        return {name: torch.sigmoid(v) if name == "seg" else torch.softmax(v, dim=1) for name, v in outputs.items()}

    def forward(self, image: torch.Tensor, outputs: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        if image.ndim != 4 or image.shape[1] != self.n_slices:
            raise NodulekitError(f"MSU-Net expects (B, {self.n_slices}, H, W) slabs, got {tuple(image.shape)}")
        wanted = wanted_outputs(outputs, self.output_names, "MSU-Net")
        features, decoded = self.unet(image)
        result: dict[str, torch.Tensor] = {}
        if "seg" in wanted:
            result["seg"] = self.seg_head(decoded)
        tasks = [t for t in self.tasks if t in wanted]
        if tasks and self.heads is not None:
            result.update(self.heads(features[-1], decoded, tasks))
        return result


def wanted_outputs(outputs: Iterable[str] | None, names: Sequence[str], model: str) -> set[str]:
    """The output names asked for (all by default); unknown names raise, naming the known ones."""
    wanted = set(names if outputs is None else outputs)
    unknown = wanted - set(names)
    if unknown:
        raise NodulekitError(f"{model} has no output(s) {sorted(unknown)}; outputs: {list(names)}")
    return wanted


def build_msunet(model_config: Mapping[str, Any]) -> MSUNet:
    """Factory of the registry: the ``model`` table -> :class:`MSUNet`."""
    return MSUNet(model_config)


# -- loss, eq. (8)-(11) -----------------------------------------------------------------------

def seg_loss_003(logits: torch.Tensor, target: torch.Tensor, loss_cfg: Mapping[str, Any]) -> torch.Tensor:
    """Segmentation part of eq. (11): ``log DL + lambda * FL`` on logits.

    DL: eq. (8) (:func:`~nodulekit.models.losses.squared_dice_loss`); FL: eq. (9)
    (:func:`~nodulekit.models.losses.focal_loss_with_logits`). ``loss.dice_term``: ``"log"``
    = ``log(DL + log_eps)`` (eq. 11 as printed: "log is used to magnify the Dice loss";
    ``log_eps`` keeps it finite), ``"neg_log_dice"`` = ``-log(1 - DL + log_eps)`` (the common
    log-Dice loss), ``"linear"`` = DL. The value of ``"log"`` is negative (<= 0 for DL <= 1).
    """
    dl = squared_dice_loss(torch.sigmoid(logits), target, smooth=float(loss_cfg["dice_smooth"]),
                           reduction=str(loss_cfg["dice_reduction"]))
    term = str(loss_cfg["dice_term"])
    eps = float(loss_cfg["log_eps"])
    if term == "log":
        dice_part = torch.log(dl + eps)
    elif term == "neg_log_dice":
        dice_part = -torch.log(1.0 - dl + eps)
    elif term == "linear":
        dice_part = dl
    else:
        raise NodulekitError(f"loss.dice_term = {term!r}; allowed: log, neg_log_dice, linear")
    focal = focal_loss_with_logits(logits, target.to(logits.dtype), alpha=float(loss_cfg["focal_alpha"]),
                                   gamma=float(loss_cfg["focal_gamma"]),
                                   reduction=str(loss_cfg["focal_reduction"]))
    return dice_part + float(loss_cfg["focal_weight"]) * focal


def msunet_loss(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                config: Mapping[str, Any], weights: Mapping[str, float]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (11) ``L = log DL + lambda FL + CL`` for one batch (also MU-Net's, which has no CL).

    ``outputs``: model outputs; ``targets``: ``"seg"`` masks of the logits' shape (``(B, S, H,
    W)`` slabs or ``(B, 1, D, H, W)`` cubes, 0/1) and per characteristic ``(B,)`` labels (-1 =
    none); ``weights``: output -> weight (a phase's ``losses``). CL (eq. 10) is the weighted
    mean of the characteristics' cross-entropies over those with a label in the batch.
    Returns ``(total, {output: loss})``.
    """
    loss_cfg = config["loss"]
    parts: dict[str, torch.Tensor] = {}
    total: torch.Tensor | None = None
    class_sum = class_weight = None
    for name, weight in weights.items():
        if not weight or name not in outputs or name not in targets:
            continue
        if name == "seg":
            parts[name] = seg_loss_003(outputs[name], targets[name].to(outputs[name].dtype), loss_cfg)
            total = parts[name] * float(weight) if total is None else total + parts[name] * float(weight)
            continue
        ce, has_label = masked_cross_entropy(outputs[name], targets[name])
        parts[name] = ce
        class_sum = ce * float(weight) if class_sum is None else class_sum + ce * float(weight)
        w = has_label * float(weight)
        class_weight = w if class_weight is None else class_weight + w
    if class_sum is not None:
        parts["cls"] = class_sum / class_weight.clamp(min=1e-12)
        total = parts["cls"] if total is None else total + parts["cls"]
    if total is None:
        raise NodulekitError(f"no loss to compute: outputs {sorted(outputs)}, targets {sorted(targets)}, "
                             f"weights {dict(weights)}")
    return total, parts


def binarised_labels(ratings: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Table 3's binarisation of aggregated ratings: malignancy, margin, texture >= 4 -> 1
    (1-3 -> 0); calcification 6 -> 1 (1-5 -> 0); NaN -> -1. For data without consensus-label's
    ``label_msunet_*`` columns (which apply the same rule)."""
    out = {}
    for name, values in ratings.items():
        values = values.to(torch.float32)
        positive = values == 6 if name == "calcification" else values >= 4
        out[name] = torch.where(torch.isnan(values), torch.full_like(values, -1),
                                positive.to(torch.float32)).to(torch.long)
    return out


# -- phases, shapes, registration -------------------------------------------------------------

def msunet_phases(config: Mapping[str, Any]) -> tuple[PhaseSpec, ...]:
    """One phase: the whole network with eq. (11) ("Experiment implementation")."""
    tasks = list(config["model"]["heads"]["tasks"])
    losses = {"seg": 1.0, **{task: 1.0 for task in tasks}}
    trains = ("seg_net", "heads") if tasks else ("seg_net",)
    return (PhaseSpec("multitask", trains, losses, int(config["phases"]["multitask"]["epochs"]),
                      "MSU-Net, segmentation and the characteristic heads together: "
                      "log DL + 0.2 FL + mean CE (eq. 11).",
                      "'Multitask 2.5D MSU-Net'; 'Loss function' eq. (8)-(11); 'Experiment implementation'"),)


def msunet_output_shapes(config: Mapping[str, Any], batch: int,
                         patch_shape_px: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """``seg`` ``(B, S, H, W)`` and ``(B, n_classes)`` per characteristic."""
    model = config["model"]
    shapes: dict[str, tuple[int, ...]] = {"seg": (batch, int(model["n_slices"]), *patch_shape_px)}
    for task in model["heads"]["tasks"]:
        shapes[task] = (batch, int(model["heads"]["n_classes"]))
    return shapes


OUTPUTS = {
    "seg": OutputSpec("seg", "(B, S, H, W)", "per-slice nodule logits of the slab (eq. 4)"),
    **{task: OutputSpec(task, "(B, 2)", f"{task} logits of the 2-class softmax head (eq. 3; Table 3)")
       for task in CHARACTERISTICS},
}


@register_model("msunet")
def _msunet_spec() -> ModelSpec:
    return ModelSpec(
        name="msunet",
        factory=build_msunet,
        paper=PAPER_003,
        tasks={"seg": "binary", **{task: "binary" for task in CHARACTERISTICS}},
        outputs=OUTPUTS,
        geometry=InputGeometry(crop_preset="msunet", patch_shape_px=(64, 64), channels=4,
                               intensity="hu_-1000_500_to_01", model_shape_px=(64, 64),
                               resized_by="none"),
        config_path=CONFIG_PATH,
        phases=msunet_phases,
        loss=msunet_loss,
        output_shapes=msunet_output_shapes,
        test_overrides={"width": 0.0625, "heads": {"channels": 8}},
    )
