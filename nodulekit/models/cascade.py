"""Segmentation-masked 3D cascade of Wang et al. 2021 (CMIG 88:101814; papers/004_fd1825ff702860b4.txt).

Two networks (section 2, Fig. 2):

- **Segmenter** (section 2.2, Fig. 2b): a 3D U-Net of 15 conv blocks, 8 in the encoder and 7 in
  the decoder; blocks 1-14 are 3x3x3 conv + BN + ReLU with dilations
  ``[1,1,2,2,2,2,4,4,2,2,2,2,1,1]`` and "same" padding, block 15 is a 1x1x1 conv to C = 2
  channels (background, nodule) with a channel softmax. 3 max poolings after blocks 2, 4, 6 and
  3 x2 upsamplings before blocks 9, 11, 13, each concatenated with the encoder feature from
  before the matching pooling. The last layer starts as in [36] (weights N(0, 0.01), the nodule
  bias at ``-log((1 - prior) / prior)``). Output ``seg``: ``(B, 2, D, H, W)`` logits.
- **Classifier** (section 2.1, Fig. 2a): 8 conv blocks (3x3x3 conv + BN + ReLU) of 16, 16, 32, 32,
  64, 64, 256, 256 channels, 2x2x2 max pooling after blocks 2, 4 and 6 (the "3 downsampling
  blocks"), flatten, FC 256 + ReLU + dropout 0.1, FC 256 + ReLU + dropout 0.1, FC n_classes
  (softmax). Output ``cls``: ``(B, n_classes)`` logits.

Cascade (section 2.3, eq. 3): the classifier's input is ``d = d_raw (.) s`` with ``s`` the soft
mask, the segmenter's nodule probability (the softmax's channel 1), applied to the network's
input as given (HU [-1024, 400] -> [-1, 1], eq. 5). Phases (:func:`cascade_phases`):
``seg`` (segmenter, Dice eq. 2) -> ``cls`` (segmenter frozen, classifier on the masked CT,
cross-entropy eq. 1) -> ``joint`` (both, ``L = L_cla + lambda L_seg`` eq. 4, lambda 1, lr 1e-5
halved every 30 epochs). The frozen phase relies on the trainer freezing the parameter groups a
phase does not train (no gradient, BatchNorm in eval mode); in ``joint`` the classification loss
reaches the segmenter through the mask.

Baselines of Fig. 3 and Tables 2-3 are ``model.mode`` values: ``"raw"`` (a, classifier on the CT),
``"gt_masked"`` (b, classifier on CT * ground-truth mask: ``forward(image, mask=...)``),
``"cascade"`` (c with ``joint_finetune = false``, d with true) and ``"multitask"`` (e: the
segmenter plus a classification branch of 3 FC blocks on its bottleneck, block 8, trained with the
sum of both losses).

The paper's classes (pathology subtypes of ground-glass nodules) are private; on LIDC the class
task is a label column (``data.label_column``) with ``model.n_classes`` classes, binary
malignancy by default, or e.g. texture as 3 classes. Parameter counts (default widths):
segmenter 5.84 M, classifier 6.69 M (paper: not given).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.models.blocks import ConvNormAct, init_he, scaled_channels
from nodulekit.models.losses import masked_cross_entropy, squared_dice_loss
from nodulekit.models.registry import (InputGeometry, ModelSpec, OutputSpec, PaperRef, PhaseSpec,
                                       register_model)

CONFIG_PATH = Path(__file__).parent / "configs" / "cascade.toml"
MODES = ("raw", "gt_masked", "cascade", "multitask")
N_SEG_BLOCKS = 15


class DilatedUNet3D(nn.Module):
    """The segmenter (section 2.2, Fig. 2b; see the module docstring).

    ``channels``: the 14 widths of blocks 1-14; ``dilations``: the 15 dilations (block 15's is
    1). ``forward(x)`` -> ``(logits (B, n_classes, D, H, W), bottleneck (B, C_8, D/8, H/8, W/8))``.
    D, H, W must be multiples of 8.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], dilations: Sequence[int],
                 n_classes: int = 2, upsample: str = "nearest", prior: float = 0.01) -> None:
        super().__init__()
        if len(channels) != N_SEG_BLOCKS - 1 or len(dilations) != N_SEG_BLOCKS:
            raise NodulekitError(f"the segmenter has {N_SEG_BLOCKS} conv blocks: model.seg.channels needs "
                                 f"{N_SEG_BLOCKS - 1} widths and model.seg.dilations {N_SEG_BLOCKS} values")
        if int(dilations[-1]) != 1:
            raise NodulekitError("block 15 is a 1x1x1 conv: its dilation must be 1")
        c, d = [int(v) for v in channels], [int(v) for v in dilations]
        inputs = [in_channels, c[0], c[1], c[2], c[3], c[4], c[5], c[6],   # encoder, blocks 1-8
                  c[7] + c[5], c[8], c[9] + c[3], c[10], c[11] + c[1], c[12]]  # decoder, 9-14
        self.blocks = nn.ModuleList(ConvNormAct(3, inputs[i], c[i], 3, dilation=d[i]) for i in range(14))
        self.out = nn.Conv3d(c[13], n_classes, 1)
        self.upsample = upsample
        self.bottleneck_channels = c[7]
        self.prior = prior

    def init_output_prior(self) -> None:
        """Last layer as in [36] (section 3.2): weights N(0, 0.01), bias of class 0 (background)
        0 and of the other classes ``-log((1 - prior) / prior)``: P(nodule) starts near ``prior``."""
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():
            self.out.bias[1:] = -math.log((1.0 - self.prior) / self.prior)

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        align = None if self.upsample == "nearest" else False
        return F.interpolate(x, scale_factor=2, mode=self.upsample, align_corners=align)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.blocks
        s1 = b[1](b[0](x))
        s2 = b[3](b[2](F.max_pool3d(s1, 2)))
        s3 = b[5](b[4](F.max_pool3d(s2, 2)))
        bottleneck = b[7](b[6](F.max_pool3d(s3, 2)))
        y = b[9](b[8](torch.cat([self._up(bottleneck), s3], dim=1)))
        y = b[11](b[10](torch.cat([self._up(y), s2], dim=1)))
        y = b[13](b[12](torch.cat([self._up(y), s1], dim=1)))
        return self.out(y), bottleneck


def fc_blocks(in_features: int, hidden: Sequence[int], n_classes: int, dropout: float) -> nn.Sequential:
    """Flatten, then ``Linear + ReLU + Dropout`` per hidden width, then ``Linear -> n_classes``
    (section 2.1: "3 fully-connected blocks", dropout 0.1 after the first two)."""
    layers: list[nn.Module] = [nn.Flatten(1)]
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = int(size)
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


class Classifier3D(nn.Module):
    """The classifier (section 2.1, Fig. 2a; see the module docstring).

    ``(B, C_in, S, S, S) -> (B, n_classes)`` logits; the first FC's input is fixed by
    ``input_size_px`` (32: ``256 * 4^3``).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], pool_every: int, hidden: Sequence[int],
                 n_classes: int, dropout: float, input_size_px: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width, size = in_channels, input_size_px
        for i, out in enumerate(int(c) for c in channels):
            layers.append(ConvNormAct(3, width, out, 3))
            width = out
            if (i + 1) % pool_every == 0 and i + 1 < len(channels):
                layers.append(nn.MaxPool3d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.head = fc_blocks(width * size ** 3, hidden, n_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CascadeNet(nn.Module):
    """Paper 004's models, one per ``model.mode`` (see the module docstring).

    ``forward(image, mask=None, outputs=None)``: ``image`` ``(B, 1, S, S, S)``; ``mask`` the
    ground-truth ``(B, 1, S, S, S)`` (mode ``gt_masked`` only). Returns ``seg`` ``(B, 2, S, S, S)``
    (modes cascade, multitask) and ``cls`` ``(B, n_classes)`` logits.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = dict(config)
        self.config = cfg
        self.mode = str(cfg["mode"])
        if self.mode not in MODES:
            raise NodulekitError(f"model.mode = {self.mode!r}; allowed: {', '.join(MODES)}")
        self.n_classes = int(cfg["n_classes"])
        width, size = float(cfg["width"]), int(cfg["input_size_px"])
        seg, cls = cfg["seg"], cfg["cls"]
        self.segmenter = self.classifier = self.cls_branch = None
        if self.mode in ("cascade", "multitask"):
            self.segmenter = DilatedUNet3D(1, [scaled_channels(c, width) for c in seg["channels"]],
                                           seg["dilations"], 2, str(seg["upsample"]), float(seg["prior"]))
        if self.mode in ("raw", "gt_masked", "cascade"):
            self.classifier = Classifier3D(1, [scaled_channels(c, width) for c in cls["channels"]],
                                           int(cls["pool_every"]), [scaled_channels(h, width) for h in cls["fc"]],
                                           self.n_classes, float(cls["dropout"]), size)
        if self.mode == "multitask":
            assert self.segmenter is not None
            bottleneck = self.segmenter.bottleneck_channels * (size // 8) ** 3
            self.cls_branch = fc_blocks(bottleneck, [scaled_channels(h, width) for h in cls["fc"]],
                                        self.n_classes, float(cls["dropout"]))
        init_he(self)
        if self.segmenter is not None:
            self.segmenter.init_output_prior()

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("seg", "cls") if self.segmenter is not None else ("cls",)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``segmenter``, ``classifier`` and (multitask) ``cls_branch``; empty when absent."""
        return {name: [] if module is None else list(module.parameters())
                for name, module in (("segmenter", self.segmenter), ("classifier", self.classifier),
                                     ("cls_branch", self.cls_branch))}

    def subnetworks(self) -> dict[str, list[nn.Module]]:
        return {name: [module] for name, module in (("segmenter", self.segmenter), ("classifier", self.classifier),
                                                   ("cls_branch", self.cls_branch)) if module is not None}

    def batch_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keyword arguments of ``forward`` taken from a training batch (the trainer's hook):
        the image, plus the ground-truth mask in mode ``gt_masked``."""
        inputs = {"image": batch["image"]}
        if self.mode == "gt_masked":
            inputs["mask"] = batch["mask"]
        return inputs

    def probabilities(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits -> probabilities: ``seg`` -> the nodule channel ``(B, 1, D, H, W)``, ``cls`` -> softmax."""
        return {name: self.soft_mask(v) if name == "seg" else torch.softmax(v, dim=1) for name, v in outputs.items()}

    def soft_mask(self, seg_logits: torch.Tensor) -> torch.Tensor:
        """``s`` of eq. (3): the softmax's nodule channel, ``(B, 1, S, S, S)`` in [0, 1]."""
        return torch.softmax(seg_logits, dim=1)[:, 1:2]

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None,
                outputs: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        if image.ndim != 5 or image.shape[1] != 1:
            raise NodulekitError(f"the cascade expects (B, 1, D, H, W) crops, got {tuple(image.shape)}")
        wanted = set(self.output_names if outputs is None else outputs)
        unknown = wanted - set(self.output_names)
        if unknown:
            raise NodulekitError(f"cascade (mode {self.mode}) has no output(s) {sorted(unknown)}; "
                                 f"outputs: {list(self.output_names)}")
        result: dict[str, torch.Tensor] = {}
        seg_logits = bottleneck = None
        if self.segmenter is not None:
            seg_logits, bottleneck = self.segmenter(image)
            if "seg" in wanted:
                result["seg"] = seg_logits
        if "cls" in wanted:
            result["cls"] = self._classify(image, mask, seg_logits, bottleneck)
        return {name: result[name] for name in self.output_names if name in result}

    def classifier_input(self, image: torch.Tensor, mask: torch.Tensor | None = None,
                         seg_logits: torch.Tensor | None = None) -> torch.Tensor:
        """What the classifier sees: the CT (raw), CT * GT mask (gt_masked), CT * soft mask (cascade)."""
        if self.mode == "raw":
            return image
        if self.mode == "gt_masked":
            if mask is None:
                raise NodulekitError("model.mode = 'gt_masked' needs the ground-truth mask: forward(image, mask=...)")
            return image * mask.to(image.dtype)
        if seg_logits is None:
            assert self.segmenter is not None
            seg_logits = self.segmenter(image)[0]
        return image * self.soft_mask(seg_logits)

    def _classify(self, image: torch.Tensor, mask: torch.Tensor | None, seg_logits: torch.Tensor | None,
                  bottleneck: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "multitask":
            assert self.cls_branch is not None and bottleneck is not None
            return self.cls_branch(bottleneck)
        assert self.classifier is not None
        return self.classifier(self.classifier_input(image, mask, seg_logits))


def build_cascade(model_config: Mapping[str, Any]) -> CascadeNet:
    """Factory of the registry: the ``model`` table -> :class:`CascadeNet`."""
    return CascadeNet(model_config)


# -- loss, phases, shapes ---------------------------------------------------------------------

def cascade_loss(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                 config: Mapping[str, Any], weights: Mapping[str, float]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of L_seg (Dice of the nodule channel, eq. 2) and L_cla (cross-entropy, eq. 1).

    ``targets``: ``"seg"`` masks ``(B, 1, D, H, W)`` (0/1) and/or ``"cls"`` labels ``(B,)`` (-1 =
    none); ``weights``: a phase's ``losses`` (joint: ``{"cls": 1, "seg": lambda}``, eq. 4).
    Returns ``(total, {output: loss})``.
    """
    loss_cfg = config["loss"]
    parts: dict[str, torch.Tensor] = {}
    for name, weight in weights.items():
        if not weight or name not in outputs or name not in targets:
            continue
        if name == "seg":
            probs = torch.softmax(outputs["seg"], dim=1)[:, 1:2]
            parts[name] = squared_dice_loss(probs, targets["seg"].to(probs.dtype),
                                            smooth=float(loss_cfg["dice_smooth"]), reduction="image")
        else:
            parts[name] = masked_cross_entropy(outputs[name], targets[name])[0]
    if not parts:
        raise NodulekitError(f"no loss to compute: outputs {sorted(outputs)}, targets {sorted(targets)}, "
                             f"weights {dict(weights)}")
    total = sum(float(weights[name]) * loss for name, loss in parts.items())
    return total, parts  # type: ignore[return-value]


def cascade_phases(config: Mapping[str, Any]) -> tuple[PhaseSpec, ...]:
    """The phases of ``model.mode`` (section 2.3, Fig. 3; epochs from ``[phases.<name>]``)."""
    model, phases = config["model"], config["phases"]
    mode = str(model["mode"])

    def phase(name: str, trains: tuple[str, ...], losses: dict[str, float], text: str, cite: str) -> PhaseSpec:
        return PhaseSpec(name, trains, losses, int(phases[name]["epochs"]), text, cite)

    if mode in ("raw", "gt_masked"):
        source = "the CT" if mode == "raw" else "CT * ground-truth mask"
        return (phase("cls", ("classifier",), {"cls": 1.0}, f"Classifier on {source} (Fig. 3{'a' if mode == 'raw' else 'b'}).",
                      "§2.1; §2.3 eq. (3); §3.2"),)
    if mode == "multitask":
        return (phase("multitask", ("segmenter", "cls_branch"), {"seg": 1.0, "cls": 1.0},
                      "Two-branch multitask baseline: U-Net + FC branch on block 8, L_seg + L_cla (Fig. 3e).",
                      "§2.3 'a network with two branches'; §3.2"),)
    out = [phase("seg", ("segmenter",), {"seg": 1.0}, "Segmenter with the Dice loss (eq. 2).", "§2.2; §2.3; §3.2"),
           phase("cls", ("classifier",), {"cls": 1.0},
                 "Segmenter frozen; classifier on CT * soft mask (eq. 3, Fig. 3c).", "§2.3; §3.2")]
    if model["joint_finetune"]:
        out.append(phase("joint", ("segmenter", "classifier"),
                         {"cls": 1.0, "seg": float(config["loss"]["joint_seg_weight"])},
                         "Joint fine-tuning, L = L_cla + lambda L_seg (eq. 4, Fig. 3d).", "§2.3 eq. (4); §3.2"))
    return tuple(out)


def cascade_output_shapes(config: Mapping[str, Any], batch: int,
                          patch_shape_px: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    model = config["model"]
    shapes: dict[str, tuple[int, ...]] = {"cls": (batch, int(model["n_classes"]))}
    if model["mode"] in ("cascade", "multitask"):
        shapes = {"seg": (batch, 2, *patch_shape_px), **shapes}
    return shapes


@register_model("cascade")
def _cascade_spec() -> ModelSpec:
    return ModelSpec(
        name="cascade",
        factory=build_cascade,
        paper=PaperRef(
            file="004_fd1825ff702860b4.txt",
            citation=("Wang D, Zhang T, Li M, Bueno R, Jayender J. 3D deep learning based classification "
                      "of pulmonary ground glass opacity nodules with automatic segmentation. Comput Med "
                      "Imaging Graph 2021;88:101814."),
            doi="10.1016/j.compmedimag.2020.101814"),
        tasks={"seg": "binary", "cls": "multiclass"},
        outputs={"seg": OutputSpec("seg", "(B, 2, D, H, W)", "segmenter logits, channel 1 = nodule (softmax)"),
                 "cls": OutputSpec("cls", "(B, n_classes)", "class logits (softmax) of the label column")},
        geometry=InputGeometry(crop_preset="cascade", patch_shape_px=(32, 32, 32), channels=1,
                               intensity="hu_-1024_400_to_pm1", model_shape_px=(32, 32, 32),
                               resized_by="none"),
        config_path=CONFIG_PATH,
        phases=cascade_phases,
        loss=cascade_loss,
        output_shapes=cascade_output_shapes,
        test_overrides={"width": 0.125},
    )
