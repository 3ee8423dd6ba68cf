"""MT-Net (Tang & Zhang 2024, J. Imaging 10:234; papers/000_ad9b1f6357988dd8.txt).

Three sub-networks (section 3.2.1, Fig. 1):

- **Coarse Seg-net** (section 3.2.2, Fig. 2-3): DeepLabv3+ with the modified aligned Xception
  (:class:`~nodulekit.models.xception.AlignedXception`; stride-2 separable convs instead of max
  pooling), ASPP, the DeepLabv3+ decoder and a new 1x1 conv -> 1 channel. Output
  ``seg_coarse``.
- **Fine Seg-net** (section 3.2.3, Fig. 4): the *same* encoder and decoder modules (shared
  parameters, the same tensors) plus the Fine-layer, which concatenates the deepest encoder
  features with the coarse mask (resized to their size), then 1x1 conv + BN + ReLU, and feeds
  the decoder. Output ``seg``. Because the encoder is shared and sees the same image, its
  features are computed once and decoded twice (without / with the Fine-layer).
- **Class-net** (section 3.2.4, Fig. 5): a separate modified Xception
  (:class:`~nodulekit.models.xception.ClassXception`: exit-flow max pooling removed, last two
  separable convs dilated, rate 2, padding 2) on the CT (3 channels) + the coarse mask as a
  4th channel, whose first-layer weights start as the mean of the CT channels' weights;
  global average pooling, FC -> 1. Output ``malignancy``.

All outputs are **logits** (the sigmoid belongs to losses and metrics). The coarse mask passed to
the Fine-layer and Class-net is ``sigmoid(seg_coarse)``, detached (config ``model.coarse_mask``).

Training order (section 3.2.1 "First ... Then ... Finally", section 3.2.5), as
:func:`mtnet_phases`:

1. ``coarse``: Coarse Seg-net (parameter groups ``encoder`` + ``decoder``) on the segmentation
   training set with the hybrid loss of eq. (1) on ``seg_coarse``.
2. ``fine_cls``: with Coarse Seg-net trained, the coarse masks it produces feed Fine Seg-net's
   Fine-layer and Class-net's 4th channel. Fine Seg-net (``encoder``, ``decoder`` - shared, so
   training continues from phase 1 - and the new ``fine_layer``) is trained with eq. (1) on
   ``seg``; Class-net (``class_net``) with BCE on ``malignancy`` on the classification set.
   The two tasks use their own batches (16 and 32). Since the shared encoder/decoder keep
   changing, ``seg_coarse`` stays supervised in this phase (weight
   ``loss.fine_phase_coarse_weight``, 1.0; a choice, the paper does not say), so the coarse
   masks stay meaningful at test time, when the trained MT-Net computes coarse, then fine and
   class outputs in one pass (section 3.2.5).

Ablations (config switches, combinable): ``model.fine_layer = false`` (Table 5: segmentation by
Coarse Seg-net alone; ``seg`` is then the coarse logits and phase ``fine_cls`` trains Class-net
only) and ``model.class_uses_coarse_mask = false`` (Table 4: Class-net on the 3-channel CT).

Where the paper is vague, the choice is a config value in ``configs/mtnet.toml`` with the reason
beside it, and listed in docs/models.md.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.models.blocks import ASPP, DeepLabDecoder, FineLayer, init_weights, scaled_channels
from nodulekit.models.losses import bce_loss, seg_loss
from nodulekit.models.pretrained import load_pretrained
from nodulekit.models.registry import (InputGeometry, ModelSpec, OutputSpec, PaperRef, PhaseSpec,
                                       register_model)
from nodulekit.models.xception import AlignedXception, ClassXception, init_extra_channels_as_mean

CONFIG_PATH = Path(__file__).parent / "configs" / "mtnet.toml"
OUTPUT_TASKS = {"seg_coarse": "seg", "seg": "seg", "malignancy": "malignancy"}


class DeepLabV3Plus(nn.Module):
    """Coarse Seg-net: aligned Xception + ASPP + decoder + 1x1 conv -> 1 logit per pixel.

    Parts: ``backbone`` and ``aspp`` (the DeepLabv3+ encoder), ``decoder`` and ``head``.
    ``(B, C, S, S) -> (B, 1, S, S)`` logits (the head's stride-4 output upsampled bilinearly).
    """

    def __init__(self, in_channels: int, width: float, seg: Mapping[str, Any]) -> None:
        super().__init__()
        self.backbone = AlignedXception(in_channels, width, int(seg["output_stride"]),
                                        int(seg["middle_units"]), bool(seg["depthwise_bn_relu"]))
        aspp_channels = scaled_channels(int(seg["aspp_channels"]), width)
        separable = bool(seg["separable_aspp_decoder"])
        self.aspp = ASPP(self.backbone.out_channels, aspp_channels, tuple(seg["aspp_rates"]),
                         separable=separable, dropout=float(seg["aspp_dropout"]))
        self.decoder = DeepLabDecoder(
            aspp_channels, self.backbone.low_level_channels,
            scaled_channels(int(seg["low_level_channels"]), width),
            scaled_channels(int(seg["decoder_channels"]), width), int(seg["decoder_convs"]),
            separable=separable)
        self.head = nn.Conv2d(self.decoder.out_channels, 1, 1)

    def decode(self, encoded: torch.Tensor, low_level: torch.Tensor,
               size_hw: tuple[int, int], head: nn.Module | None = None) -> torch.Tensor:
        """Decoder + head (``head`` overrides ``self.head``) -> logits ``(B, 1, *size_hw)``."""
        logits = (self.head if head is None else head)(self.decoder(encoded, low_level))
        return F.interpolate(logits, size=size_hw, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep, low_level = self.backbone(x)
        return self.decode(self.aspp(deep), low_level, (x.shape[-2], x.shape[-1]))


class MTNet(nn.Module):
    """MT-Net; see the module docstring. Built from the ``model`` table of ``configs/mtnet.toml``.

    ``forward(image, coarse_mask=None, outputs=None)``:

    - ``image``: ``(B, 1, H, W)`` HU-normalised patches (64x64 in the ``mtnet`` crop preset),
      resized to ``S = input_size_px`` (224) inside, bilinearly, and replicated to
      ``ct_channels`` (3);
    - ``coarse_mask``: optional ``(B, 1, h, w)`` in [0, 1] to use instead of Coarse Seg-net's
      (e.g. masks cached after phase 1); resized to ``S``;
    - ``outputs``: names to compute (default all): ``seg_coarse``, ``seg`` ``(B, 1, S, S)``
      logits (``(B, 1, H, W)`` when ``output_resolution = "input"``) and ``malignancy``
      ``(B,)`` logits. When only ``malignancy`` is asked for, the coarse mask comes from
      Coarse Seg-net in eval mode, without gradient.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = dict(config)
        self.config = cfg
        width = float(cfg["width"])
        self.ct_channels = int(cfg["ct_channels"])
        self.input_size_px = int(cfg["input_size_px"])
        self.seg = DeepLabV3Plus(self.ct_channels, width, cfg["seg"])
        encoder_channels = (self.seg.aspp.out_channels if cfg["fine_layer_position"] == "aspp"
                            else self.seg.backbone.out_channels)
        self.fine_layer = FineLayer(encoder_channels) if cfg["fine_layer"] else None
        self.fine_head = (nn.Conv2d(self.seg.decoder.out_channels, 1, 1)
                          if cfg["fine_layer"] and cfg["fine_head"] == "separate" else None)
        self.class_uses_coarse_mask = bool(cfg["class_uses_coarse_mask"])
        cls = cfg["cls"]
        self.class_net = ClassXception(
            self.ct_channels + int(self.class_uses_coarse_mask), 1, width,
            int(cls["middle_blocks"]), bool(cls["exit_pool"]), int(cls["exit_dilation"]),
            float(cls["dropout"]))
        _check_choices(cfg)
        init_weights(self)
        init_extra_channels_as_mean(self.class_net.conv1, self.ct_channels)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(OUTPUT_TASKS)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Groups a training phase trains or freezes (``PhaseSpec.trains``)."""
        fine = [*_params(self.fine_layer), *_params(self.fine_head)]
        return {
            "encoder": [*self.seg.backbone.parameters(), *self.seg.aspp.parameters()],
            "decoder": [*self.seg.decoder.parameters(), *self.seg.head.parameters()],
            "fine_layer": fine,
            "class_net": list(self.class_net.parameters()),
        }

    def subnetworks(self) -> dict[str, list[nn.Module]]:
        """The paper's three sub-networks as module lists (Fine Seg-net reuses Coarse's)."""
        fine = [self.seg] + [m for m in (self.fine_layer, self.fine_head) if m is not None]
        return {"coarse_seg_net": [self.seg], "fine_seg_net": fine, "class_net": [self.class_net]}

    def forward(self, image: torch.Tensor, coarse_mask: torch.Tensor | None = None,
                outputs: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = self._wanted(outputs)
        x = self._model_input(image)
        size = (x.shape[-2], x.shape[-1])
        fine_wanted = "seg" in wanted and self.fine_layer is not None
        mask_wanted = fine_wanted or ("malignancy" in wanted and self.class_uses_coarse_mask)
        coarse_wanted = "seg_coarse" in wanted or ("seg" in wanted and self.fine_layer is None)
        result: dict[str, torch.Tensor] = {}
        deep = low_level = encoded = coarse_logits = None
        if coarse_wanted or fine_wanted:
            deep, low_level = self.seg.backbone(x)
        if coarse_wanted or (mask_wanted and coarse_mask is None and deep is not None):
            encoded = self.seg.aspp(deep)
            coarse_logits = self.seg.decode(encoded, low_level, size)
        elif mask_wanted and coarse_mask is None:  # Class-net alone
            coarse_logits = self._coarse_prior_logits(x)
        mask = self._prior(coarse_mask, coarse_logits, size) if mask_wanted else None
        if coarse_logits is not None and "seg_coarse" in wanted:
            result["seg_coarse"] = self._to_output_size(coarse_logits, image)
        if "seg" in wanted:
            if self.fine_layer is None:
                result["seg"] = self._to_output_size(coarse_logits, image)  # Table 5 ablation
            else:
                fine = self._fine_logits(deep, low_level, encoded, mask, size)
                result["seg"] = self._to_output_size(fine, image)
        if "malignancy" in wanted:
            cls_input = torch.cat([x, mask], dim=1) if self.class_uses_coarse_mask else x
            result["malignancy"] = self.class_net(cls_input).squeeze(1)
        return {name: result[name] for name in self.output_names if name in result}

    @torch.no_grad()
    def _coarse_prior_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Coarse Seg-net's logits as an inference product: eval mode, no gradient.

        Used when only ``malignancy`` is asked for (Class-net batches): the mask is the trained
        Coarse Seg-net's prediction, so neither ASPP dropout nor the classification batches'
        BatchNorm statistics touch it or the Seg-nets.
        """
        was_training = self.seg.training
        self.seg.eval()
        try:
            return self.seg(x)
        finally:
            self.seg.train(was_training)

    def _wanted(self, outputs: Iterable[str] | None) -> set[str]:
        wanted = set(self.output_names if outputs is None else outputs)
        unknown = wanted - set(self.output_names)
        if unknown:
            raise NodulekitError(f"MT-Net has no output(s) {sorted(unknown)}; "
                                 f"outputs: {list(self.output_names)}")
        return wanted

    def _model_input(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, ct_channels, S, S)`` (section 3.1.2: resampled to 224x224)."""
        if image.ndim != 4 or image.shape[1] != 1:
            raise NodulekitError(f"MT-Net expects (B, 1, H, W) images, got {tuple(image.shape)}")
        size = (self.input_size_px, self.input_size_px)
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return image.expand(-1, self.ct_channels, -1, -1)

    def _prior(self, coarse_mask: torch.Tensor | None, coarse_logits: torch.Tensor | None,
               size: tuple[int, int]) -> torch.Tensor:
        """The coarse mask fed to the Fine-layer and Class-net: ``(B, 1, S, S)``, detached."""
        if coarse_mask is not None:
            mask = coarse_mask.detach().to(torch.float32)
            if tuple(mask.shape[-2:]) != size:
                mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
            return mask
        assert coarse_logits is not None
        probs = torch.sigmoid(coarse_logits.detach())
        if self.config["coarse_mask"] == "binary":
            return (probs > float(self.config["coarse_mask_threshold"])).to(probs.dtype)
        return probs

    def _fine_logits(self, deep: torch.Tensor, low_level: torch.Tensor,
                     encoded: torch.Tensor | None, mask: torch.Tensor,
                     size: tuple[int, int]) -> torch.Tensor:
        """Fine Seg-net: Fine-layer on the deepest features, then the shared decoder."""
        assert self.fine_layer is not None
        if self.config["fine_layer_position"] == "aspp":
            encoded = self.seg.aspp(deep) if encoded is None else encoded
            fused = self.fine_layer(encoded, _resize_mask(mask, encoded, self.config))
        else:
            fused = self.seg.aspp(self.fine_layer(deep, _resize_mask(mask, deep, self.config)))
        return self.seg.decode(fused, low_level, size, head=self.fine_head)

    def _to_output_size(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if self.config["output_resolution"] == "input" and logits.shape[-2:] != image.shape[-2:]:
            return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def _params(module: nn.Module | None) -> list[nn.Parameter]:
    return [] if module is None else list(module.parameters())


def _resize_mask(mask: torch.Tensor, like: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
    """Coarse mask ``(B, 1, S, S)`` -> the size of ``like`` (``model.fine_mask_resize``)."""
    size = like.shape[-2:]
    mode = config["fine_mask_resize"]
    if mode == "area":
        return F.adaptive_avg_pool2d(mask, size)
    if mode == "max":
        return F.adaptive_max_pool2d(mask, size)
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)


_CHOICES = {
    "output_resolution": ("model", "input"),
    "coarse_mask": ("probability", "binary"),
    "fine_layer_position": ("aspp", "backbone"),
    "fine_mask_resize": ("area", "bilinear", "max"),
    "fine_head": ("shared", "separate"),
}


def _check_choices(cfg: Mapping[str, Any]) -> None:
    for key, allowed in _CHOICES.items():
        if cfg[key] not in allowed:
            raise NodulekitError(f"model.{key} = {cfg[key]!r}; allowed: {', '.join(allowed)}")


def build_mtnet(model_config: Mapping[str, Any]) -> MTNet:
    """Factory of the registry: the ``model`` table -> :class:`MTNet`, pretrained files loaded."""
    model = MTNet(model_config)
    for path in model_config["pretrained"]:
        load_pretrained(model, path)
    return model


# -- phases, loss, geometry ------------------------------------------------------------------

def mtnet_phases(config: Mapping[str, Any]) -> tuple[PhaseSpec, ...]:
    """The training order of section 3.2.1 / 3.2.5 (see the module docstring), ablations applied."""
    epochs = int(config["train"]["epochs"])
    coarse = PhaseSpec(
        "coarse", ("encoder", "decoder"), {"seg_coarse": 1.0}, epochs,
        "Coarse Seg-net on the segmentation set, Dice + gamma * Rank (eq. 1).",
        "§3.2.1 'First, Coarse Seg-net is trained'; §3.2.2; §3.2.5")
    trains: list[str] = []
    losses: dict[str, float] = {}
    if config["model"]["fine_layer"]:
        trains += ["encoder", "decoder", "fine_layer"]
        losses["seg"] = 1.0
        coarse_weight = float(config["loss"]["fine_phase_coarse_weight"])
        if coarse_weight:
            losses["seg_coarse"] = coarse_weight
    trains.append("class_net")
    losses["malignancy"] = 1.0
    mask_use = ("the coarse masks feed the Fine-layer and Class-net's 4th channel"
                if config["model"]["class_uses_coarse_mask"] else "Class-net on the CT alone")
    fine_cls = PhaseSpec(
        "fine_cls", tuple(trains), losses, epochs,
        f"Fine Seg-net (eq. 1) and Class-net (BCE) after Coarse Seg-net; {mask_use}.",
        "§3.2.1 'Then ... Fine Seg-net ... Finally ... Class-net'; §3.2.3; §3.2.4; §3.2.5")
    return coarse, fine_cls


def resize_mask(mask: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """0/1 mask ``(B, 1, h, w)`` -> ``(B, 1, *size_hw)`` float 0/1: bilinear, threshold 0.5.

    The labels are resampled with the images to 224x224 (section 3.1.2).
    """
    if tuple(mask.shape[-2:]) == tuple(size_hw):
        return mask.to(torch.float32)
    resized = F.interpolate(mask.to(torch.float32), size=size_hw, mode="bilinear",
                            align_corners=False)
    return (resized >= 0.5).to(torch.float32)


def mtnet_loss(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
               config: Mapping[str, Any], weights: Mapping[str, float]
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the per-output losses of one batch (section 3.2.6).

    ``outputs``: from :meth:`MTNet.forward`; ``targets``: by task, ``"seg"`` masks
    ``(B, 1, h, w)`` (resized to the logits' size by :func:`resize_mask` when they differ) and/or
    ``"malignancy"`` labels ``(B,)``; ``weights``: output -> weight (a phase's ``losses``).
    Outputs without a target in this batch are skipped. Returns ``(total, {output: loss})``.
    """
    loss_cfg = config["loss"]
    parts: dict[str, torch.Tensor] = {}
    for name, weight in weights.items():
        task = OUTPUT_TASKS[name]
        if not weight or name not in outputs or task not in targets:
            continue
        logits = outputs[name]
        if task == "seg":
            target = resize_mask(targets[task], (logits.shape[-2], logits.shape[-1]))
            parts[name] = seg_loss(logits, target, gamma=float(loss_cfg["gamma"]),
                                   k=int(loss_cfg["rank_k"]), margin=float(loss_cfg["rank_margin"]),
                                   eps=float(loss_cfg["dice_eps"]),
                                   dice_reduction=str(loss_cfg["dice_reduction"]))
        else:
            parts[name] = bce_loss(logits, targets[task])
    if not parts:
        raise NodulekitError(f"no loss to compute: outputs {sorted(outputs)}, targets "
                             f"{sorted(targets)}, weights {dict(weights)}")
    total = sum(float(weights[name]) * loss for name, loss in parts.items())
    return total, parts  # type: ignore[return-value]


def mtnet_output_shapes(config: Mapping[str, Any], batch: int,
                        patch_shape_px: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of :meth:`MTNet.forward`'s outputs for ``batch`` patches of ``patch_shape_px``."""
    model = config["model"]
    size = (tuple(patch_shape_px) if model["output_resolution"] == "input"
            else (int(model["input_size_px"]),) * 2)
    return {"seg_coarse": (batch, 1, *size), "seg": (batch, 1, *size), "malignancy": (batch,)}


# -- registration ----------------------------------------------------------------------------

OUTPUTS = {
    "seg_coarse": OutputSpec("seg", "(B, 1, S, S)", "Coarse Seg-net logits (section 3.2.2)"),
    "seg": OutputSpec("seg", "(B, 1, S, S)",
                      "Fine Seg-net logits (section 3.2.3); the coarse ones when fine_layer=false"),
    "malignancy": OutputSpec("malignancy", "(B,)", "Class-net logit, 1 = malignant (section 3.2.4)"),
}


@register_model("mtnet")
def _mtnet_spec() -> ModelSpec:
    return ModelSpec(
        name="mtnet",
        factory=build_mtnet,
        paper=PaperRef(
            file="000_ad9b1f6357988dd8.txt",
            citation=("Tang, T.; Zhang, R. A Multi-Task Model for Pulmonary Nodule Segmentation "
                      "and Classification. J. Imaging 2024, 10, 234."),
            doi="10.3390/jimaging10090234"),
        tasks={"seg": "binary", "malignancy": "binary"},
        outputs=OUTPUTS,
        geometry=InputGeometry(crop_preset="mtnet", patch_shape_px=(64, 64), channels=1,
                               intensity="hu_normalised", model_shape_px=(224, 224),
                               resized_by="model"),
        config_path=CONFIG_PATH,
        phases=mtnet_phases,
        loss=mtnet_loss,
        output_shapes=mtnet_output_shapes,
        test_overrides={"width": 0.0625, "input_size_px": 64, "seg": {"middle_units": 1},
                        "cls": {"middle_blocks": 1}},
    )
