"""dgnet: detection-guided multitask segmentation with STD regularisation.

Zhang, Yang, Guo, Xavier, Bolen & Li 2024, "Detection-Guided Deep Learning-Based Model with
Spatial Regularization for Lung Nodule Segmentation" (papers/001_9e7f04f196afa1d6.txt).

Architecture (section 3.1, Fig. 2), on 2D ``128 x 128`` slices (nodule and empty slices):

- **Classifier** C1..C5 + FC: a ResNet-50 (:mod:`nodulekit.models.resnet`) giving the logit of
  "this slice patch contains a nodule" (sigmoid = c). C1 = the 7x7 stem (S/2), C2 = max pool +
  layer1 (S/4), C3 = layer2 (S/8), C4 = layer3, C5 = layer4, FC = the final linear layer.
- **Segmenter** S1..S9: ResU-Net (Zhang et al. 2018) with its seven residual units and ResUNet++'s
  two ASPPs: encoder S1 (S, 64 ch), S2 (S/2, 128), S3 (S/4, 256), S4 (S/8, 512, the bridge),
  S5 = ASPP (rates 1, 5, 10, 15) at the end of the encoder; decoder S6 (S/4, 256), S7 (S/2, 128),
  S8 (S, 64), each upsampling x2 and concatenating the encoder feature of its size, and S9 = ASPP
  at the end of the decoder + the 1x1 conv to one channel (the feature map ``u``). Stride-2
  convs of S2..S4 are depthwise separable (section 3.1).
- **Feature combination blocks** (section 3.2, Fig. 3) between same-size features: S2 with C1,
  S3 with C2, S4 with C3 (config ``combine_at``; S5 can take C3 too). The combined feature
  replaces the segmenter's (it feeds the next block and the skip connection).
- **STD-regularised sigmoid** (section 3.3, eq. 4-5; :class:`~nodulekit.models.blocks.STDSigmoid`):
  10 fixed-point steps inside the graph, Gaussian ``k_sigma``, prior ``lambda2 (1 - c)`` with
  ``c = sigmoid(nodule logit)`` detached; lambda1 = 1 fixed, lambda2 and sigma learnable
  (section 3.3), eps fixed at 1.

Outputs (all **logits**): ``seg`` ``(B, 1, H, W)`` = the STD layer's last sigmoid argument
(``sigmoid(seg)`` is the regularised probability ``x^T``; without STD it is ``u``), ``nodule``
``(B,)``. The loss (:func:`dgnet_loss`, eq. 7) is Dice(sigmoid(seg)) + BCE-with-logits(seg) +
BCE-with-logits(nodule); the nodule target is "the mask has a foreground pixel" when the batch
does not carry one.

Ablations (Table 3, config switches, combinable): ``model.combine_at = []`` (no combination
blocks), ``model.std.enabled = false`` (no STD), ``model.std.prior = false`` (STD with
lambda2 = 0). Transfer learning (section 4.5): ``model.transfer.init_from`` (weights of a
previous run) and ``model.transfer.freeze`` (any of S1..S9, C1..C5, FC; see :func:`freeze`);
the phase is then ``finetune`` with its own schedule (``[phases.finetune]``, section 4.2).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.models.blocks import (FeatureCombination, ResidualUnit, STDSigmoid, SummedASPP,
                                     scaled_channels)
from nodulekit.models.losses import bce_loss, dice_loss
from nodulekit.models.registry import (InputGeometry, ModelSpec, OutputSpec, PaperRef, PhaseSpec,
                                       register_model)
from nodulekit.models.resnet import resnet50

CONFIG_PATH = Path(__file__).parent / "configs" / "dgnet.toml"
OUTPUT_TASKS = {"seg": "seg", "nodule": "nodule"}
SEG_BLOCKS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9")
#: Classifier block -> ResNet attribute (section 4.5 names C1 "the first classification block").
CLS_BLOCKS = {"C1": "stem", "C2": "layer1", "C3": "layer2", "C4": "layer3", "C5": "layer4", "FC": "fc"}
#: Segmenter block -> the classifier block whose output has the same size (section 3.2).
COMBINE_PARTNERS = {"S2": "C1", "S3": "C2", "S4": "C3", "S5": "C3"}
FREEZABLE = (*SEG_BLOCKS, *CLS_BLOCKS)
#: The weights file inside a run folder (nodulekit.training.runs.FINAL_MODEL).
RUN_MODEL_FILE = "model.pt"


class UpBlock(nn.Module):
    """A ResU-Net decoder unit: upsample to the skip's size, concatenate, residual unit.

    ``(B, C_in, h, w)`` and skip ``(B, C_skip, 2h, 2w)`` -> ``(B, C_out, 2h, 2w)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.unit = ResidualUnit(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        align = False if self.mode == "bilinear" else None
        up = F.interpolate(x, size=skip.shape[-2:], mode=self.mode, align_corners=align)
        return self.unit(torch.cat([up, skip], dim=1))


def build_segmenter(cfg: Mapping[str, Any]) -> tuple[nn.ModuleDict, dict[str, int]]:
    """The blocks S1..S9 of the ResU-Net segmenter (module docstring), widths scaled, and the
    output channels of each block."""
    width = float(cfg["width"])
    c1, c2, c3, c4 = (scaled_channels(int(c), width) for c in cfg["seg_channels"])
    separable = bool(cfg["separable_downsampling"])
    rates = tuple(int(r) for r in cfg["aspp_rates"])
    merge, mode = str(cfg["aspp_merge"]), str(cfg["upsample"])
    blocks = nn.ModuleDict({
        "S1": ResidualUnit(int(cfg["in_channels"]), c1, preactivate=False),
        "S2": ResidualUnit(c1, c2, stride=2, separable_stride=separable),
        "S3": ResidualUnit(c2, c3, stride=2, separable_stride=separable),
        "S4": ResidualUnit(c3, c4, stride=2, separable_stride=separable),
        "S5": SummedASPP(c4, c4, rates, merge),
        "S6": UpBlock(c4, c3, c3, mode),
        "S7": UpBlock(c3, c2, c2, mode),
        "S8": UpBlock(c2, c1, c1, mode),
        "S9": nn.Sequential(SummedASPP(c1, c1, rates, merge), nn.Conv2d(c1, 1, 1)),
    })
    channels = dict(zip(SEG_BLOCKS, (c1, c2, c3, c4, c4, c3, c2, c1, 1)))
    return blocks, channels


def build_std(std: Mapping[str, Any]) -> STDSigmoid | None:
    """The STD layer from ``model.std`` (None when disabled); ``prior = false`` fixes lambda2 = 0."""
    if not std["enabled"]:
        return None
    prior = bool(std["prior"])
    return STDSigmoid(
        iterations=int(std["iterations"]), eps=float(std["eps"]), lambda1=float(std["lambda1"]),
        lambda2=float(std["lambda2"]) if prior else 0.0, sigma=float(std["sigma"]),
        kernel_size=int(std["kernel_size"]), learn_eps=bool(std["learn_eps"]),
        learn_lambda1=bool(std["learn_lambda1"]), learn_lambda2=bool(std["learn_lambda2"]) and prior,
        learn_sigma=bool(std["learn_sigma"]), padding=str(std["padding"]))


class DGNet(nn.Module):
    """dgnet (see the module docstring), built from the ``model`` table of ``configs/dgnet.toml``.

    ``forward(image)``: ``(B, in_channels, H, W)`` slices (``H, W`` multiples of 8; 128 in the
    ``dgnet`` crop preset) -> ``{"seg": (B, 1, H, W) logits, "nodule": (B,) logit}``.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = dict(config)
        _check_config(cfg)
        self.config = cfg
        self.classifier = resnet50(int(cfg["in_channels"]), 1, float(cfg["width"]))
        self.segmenter, seg_channels = build_segmenter(cfg)
        cls_channels = dict(zip(("C1", "C2", "C3", "C4", "C5"), self.classifier.stage_channels))
        self.combination = nn.ModuleDict({
            name: FeatureCombination(seg_channels[name], cls_channels[COMBINE_PARTNERS[name]])
            for name in cfg["combine_at"]})
        self.std = build_std(cfg["std"])
        self.use_prior = bool(cfg["std"]["prior"])
        self.frozen: tuple[str, ...] = ()

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(OUTPUT_TASKS)

    def blocks(self) -> dict[str, nn.Module]:
        """The named blocks of section 4.5: S1..S9, C1..C5, FC."""
        named: dict[str, nn.Module] = {name: self.segmenter[name] for name in SEG_BLOCKS}
        named.update({name: getattr(self.classifier, attr) for name, attr in CLS_BLOCKS.items()})
        return named

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Groups a phase trains or freezes (``PhaseSpec.trains``): the blocks of :meth:`blocks`,
        ``combination`` and ``std`` (its learnable scalars)."""
        groups = {name: list(module.parameters()) for name, module in self.blocks().items()}
        groups["combination"] = list(self.combination.parameters())
        groups["std"] = [] if self.std is None else list(self.std.parameters())
        return groups

    def subnetworks(self) -> dict[str, list[nn.Module]]:
        """Classifier, segmenter (with the STD layer) and the combination blocks."""
        seg = [self.segmenter] + ([self.std] if self.std is not None else [])
        return {"classifier": [self.classifier], "segmenter": seg, "combination": [self.combination]}

    def train(self, mode: bool = True) -> DGNet:
        """As ``nn.Module.train``, but blocks frozen by :func:`freeze` stay in eval mode
        (their BatchNorm statistics do not move either)."""
        super().train(mode)
        blocks = self.blocks()
        for name in self.frozen:
            blocks[name].eval()
        return self

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.ndim != 4 or image.shape[1] != int(self.config["in_channels"]):
            raise NodulekitError(f"dgnet expects (B, {self.config['in_channels']}, H, W) slices, "
                                 f"got {tuple(image.shape)}")
        cls_features = self.classifier.stages(image)
        nodule = self.classifier.head(cls_features[-1]).squeeze(1)
        partners = dict(zip(("C1", "C2", "C3", "C4", "C5"), cls_features))
        u = self._segment(image, partners)
        if self.std is None:
            seg = u
        else:
            c = torch.sigmoid(nodule.detach()) if self.use_prior else None  # section 3.3: c detached
            seg = self.std(u, c)
        return {"seg": seg, "nodule": nodule}

    def _segment(self, image: torch.Tensor, partners: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """S1..S9 with the combination blocks -> the feature map ``u`` ``(B, 1, H, W)``."""
        seg = self.segmenter
        skips = []
        h = image
        for name in ("S1", "S2", "S3", "S4", "S5"):
            h = self._combine(name, seg[name](h), partners)
            skips.append(h)
        for name, skip in zip(("S6", "S7", "S8"), (skips[2], skips[1], skips[0])):
            h = seg[name](h, skip)
        return seg["S9"](h)

    def _combine(self, name: str, feature: torch.Tensor, partners: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if name not in self.combination:
            return feature
        return self.combination[name](feature, partners[COMBINE_PARTNERS[name]])


_CHOICES = {"aspp_merge": ("sum", "concat"), "upsample": ("nearest", "bilinear")}


def _check_config(cfg: Mapping[str, Any]) -> None:
    for key, allowed in _CHOICES.items():
        if cfg[key] not in allowed:
            raise NodulekitError(f"model.{key} = {cfg[key]!r}; allowed: {', '.join(allowed)}")
    if len(cfg["seg_channels"]) != 4:
        raise NodulekitError(f"model.seg_channels needs 4 values (S1..S4), got {cfg['seg_channels']}")
    unknown = [n for n in cfg["combine_at"] if n not in COMBINE_PARTNERS]
    if unknown:
        raise NodulekitError(f"model.combine_at: {unknown} have no same-size classifier feature; "
                             f"allowed: {', '.join(COMBINE_PARTNERS)}")
    check_block_names(cfg["transfer"]["freeze"], "model.transfer.freeze")
    if cfg["std"]["padding"] not in ("replicate", "reflect", "circular", "constant"):
        raise NodulekitError(f"model.std.padding = {cfg['std']['padding']!r}: a torch pad mode")


def check_block_names(names: Iterable[str], where: str) -> list[str]:
    """``names`` as a list, each one of S1..S9, C1..C5, FC (else a ``NodulekitError``)."""
    names = [str(n) for n in names]
    unknown = [n for n in names if n not in FREEZABLE]
    if unknown:
        raise NodulekitError(f"{where}: unknown block(s) {unknown}; blocks: {', '.join(FREEZABLE)}")
    return names


# -- transfer learning (section 4.5) -----------------------------------------------------------

def freeze(model: DGNet, names: Iterable[str]) -> list[str]:
    """Freeze dgnet blocks (section 4.5, Table 2: any of S1, S5, S9, C1, FC, ... ).

    Their parameters get ``requires_grad = False`` and the blocks stay in eval mode (BatchNorm
    statistics frozen too, also after ``model.train()``). Returns the frozen parameter names.
    An optimizer built afterwards over ``p.requires_grad`` parameters leaves them unchanged.
    """
    names = check_block_names(names, "freeze")
    blocks = model.blocks()
    frozen_ids = set()
    for name in names:
        blocks[name].requires_grad_(False)
        blocks[name].eval()
        frozen_ids |= {id(p) for p in blocks[name].parameters()}
    model.frozen = tuple(dict.fromkeys([*model.frozen, *names]))
    return [n for n, p in model.named_parameters() if id(p) in frozen_ids]


def load_init_weights(model: DGNet, path: str | Path) -> list[str]:
    """Initialise ``model`` from a previous run (section 4.5: pre-train, then fine-tune).

    ``path``: a weights file (``model.pt``, ``best-*.pt`` or a plain state dict; wrappers
    ``{"model": ...}`` / ``{"state_dict": ...}`` and a ``module.`` prefix are unwrapped) or a run
    folder (its ``model.pt``). Every key must match in name and shape, except the STD layer's
    (section 4.2: "STD regularization was not applied during pre-training", so a pre-trained
    file may lack them, or carry ones this model does not have): those that fit are loaded, the
    others ignored. Returns the STD keys left at their initial values.
    """
    file = Path(path)
    if file.is_dir():
        file = file / RUN_MODEL_FILE
    if not file.is_file():
        raise NodulekitError(f"{path}: no weights to initialise dgnet from (a .pt file or a run folder "
                             f"with {RUN_MODEL_FILE})")
    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as exc:  # pickle errors, truncated files
        raise NodulekitError(f"{file}: not a weights-only PyTorch checkpoint ({exc})") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    std_loaded = {k: v for k, v in state.items() if k.startswith("std.") and k in own and v.shape == own[k].shape}
    state = {k: v for k, v in state.items() if not k.startswith("std.")}
    expected = {k: v for k, v in own.items() if not k.startswith("std.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        details = "; ".join(f"{label}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("shape mismatch", mismatched)) if keys)
        raise NodulekitError(f"{file}: weights do not fit this dgnet ({details})")
    model.load_state_dict({**state, **std_loaded}, strict=False)
    return [k for k in own if k.startswith("std.") and k not in std_loaded]


def build_dgnet(model_config: Mapping[str, Any]) -> DGNet:
    """Factory of the registry: the ``model`` table -> :class:`DGNet`, initialised from
    ``transfer.init_from`` when set, with ``transfer.freeze`` applied."""
    model = DGNet(model_config)
    transfer = model_config["transfer"]
    if transfer["init_from"]:
        load_init_weights(model, transfer["init_from"])
    if transfer["freeze"]:
        freeze(model, transfer["freeze"])
    return model


# -- phases, targets, loss, shapes --------------------------------------------------------------

def phase_name(config: Mapping[str, Any]) -> str:
    """``finetune`` when the model starts from a previous run (section 4.2), else ``train``."""
    return "finetune" if config["model"]["transfer"]["init_from"] else "train"


def trainable_groups(config: Mapping[str, Any]) -> tuple[str, ...]:
    """Parameter groups trained: every block except ``transfer.freeze``, the combination blocks
    (if any) and the STD scalars (if any is learnable)."""
    model = config["model"]
    frozen = set(check_block_names(model["transfer"]["freeze"], "model.transfer.freeze"))
    groups = [name for name in FREEZABLE if name not in frozen]
    if model["combine_at"]:
        groups.append("combination")
    std = model["std"]
    learnable = std["learn_eps"] or std["learn_lambda1"] or std["learn_sigma"] or (
        std["learn_lambda2"] and std["prior"])
    if std["enabled"] and learnable:
        groups.append("std")
    return tuple(groups)


def dgnet_phases(config: Mapping[str, Any]) -> tuple[PhaseSpec, ...]:
    """One joint phase (section 4.2): Dice + BCE on ``seg`` and BCE on ``nodule`` (eq. 7)."""
    name = phase_name(config)
    phase_table = config.get("phases", {}).get(name, {})
    epochs = int(phase_table.get("epochs", config["train"]["epochs"]))
    loss = config["loss"]
    description = ("fine-tune from a previous run (section 4.5)" if name == "finetune"
                   else "classifier and segmenter trained jointly")
    if config["model"]["transfer"]["freeze"]:
        description += f", frozen: {', '.join(config['model']['transfer']['freeze'])}"
    return (PhaseSpec(name, trainable_groups(config), {"seg": 1.0, "nodule": float(loss["cls_weight"])},
                      epochs, description + "; L = Dice + BCE(seg) + BCE(cls), eq. (7).",
                      "§4.2 eq. (7); §4.5"),)


def nodule_present(mask: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` masks -> ``(B,)`` float: 1 where the slice has a foreground pixel."""
    return (mask.reshape(mask.shape[0], -1) > 0.5).any(dim=1).to(torch.float32)


def dgnet_targets(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Targets of a training batch (``nodulekit.training.data``): ``seg`` = ``mask``;
    ``nodule`` = the mask has a foreground pixel (``kind`` nodule vs empty slice)."""
    mask = batch["mask"]
    return {"seg": mask, "nodule": nodule_present(mask)}


def dgnet_loss(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
               config: Mapping[str, Any], weights: Mapping[str, float]
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (7): ``L = L_Dice + l1 L_BCE^seg + l2 L_BCE^class`` (l1 = l2 = 1, section 4.2).

    ``outputs``: :meth:`DGNet.forward`'s logits. ``targets``: ``seg`` masks ``(B, 1, H, W)`` 0/1,
    optional ``nodule`` ``(B,)`` (default: :func:`nodule_present` of the masks). ``weights``:
    output -> weight (the phase's ``losses``). The STD output is a logit (its last sigmoid
    argument), so Dice uses ``sigmoid(seg)`` = ``x^T`` and the BCE is ``with_logits``. Returns
    ``(total, {"seg": Dice + l1 BCE, "nodule": BCE})``.
    """
    loss_cfg = config["loss"]
    parts: dict[str, torch.Tensor] = {}
    if weights.get("seg") and "seg" in outputs and "seg" in targets:
        logits, mask = outputs["seg"], targets["seg"].to(outputs["seg"].dtype)
        dice = dice_loss(torch.sigmoid(logits), mask, eps=float(loss_cfg["dice_eps"]),
                         reduction=str(loss_cfg["dice_reduction"]))
        bce = F.binary_cross_entropy_with_logits(logits, mask)
        parts["seg"] = float(loss_cfg["dice_weight"]) * dice + float(loss_cfg["bce_seg_weight"]) * bce
    if weights.get("nodule") and "nodule" in outputs:
        label = targets.get("nodule")
        if label is None and "seg" in targets:
            label = nodule_present(targets["seg"])
        if label is not None:
            parts["nodule"] = bce_loss(outputs["nodule"], label.to(outputs["nodule"].dtype))
    if not parts:
        raise NodulekitError(f"no loss to compute: outputs {sorted(outputs)}, targets {sorted(targets)}, "
                             f"weights {dict(weights)}")
    total = sum(float(weights[name]) * loss for name, loss in parts.items())
    return total, parts  # type: ignore[return-value]


def dgnet_output_shapes(config: Mapping[str, Any], batch: int,
                        patch_shape_px: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of :meth:`DGNet.forward`'s outputs for ``batch`` slices of ``patch_shape_px``."""
    return {"seg": (batch, 1, *patch_shape_px), "nodule": (batch,)}


# -- registration ------------------------------------------------------------------------------

OUTPUTS = {
    "seg": OutputSpec("seg", "(B, 1, H, W)",
                      "segmentation logits: the STD layer's last sigmoid argument (eq. 5), u without STD"),
    "nodule": OutputSpec("nodule", "(B,)", "ResNet-50 logit: the slice patch contains a nodule (section 3.1)"),
}


@register_model("dgnet")
def _dgnet_spec() -> ModelSpec:
    return ModelSpec(
        name="dgnet",
        factory=build_dgnet,
        paper=PaperRef(
            file="001_9e7f04f196afa1d6.txt",
            citation=("Zhang, J.; Yang, M.; Guo, W.; Xavier, B. A.; Bolen, M.; Li, X. Detection-Guided "
                      "Deep Learning-Based Model with Spatial Regularization for Lung Nodule "
                      "Segmentation. 2024.")),
        tasks={"seg": "binary", "nodule": "binary"},
        outputs=OUTPUTS,
        geometry=InputGeometry(crop_preset="dgnet", patch_shape_px=(128, 128), channels=1,
                               intensity="hu_normalised", model_shape_px=(128, 128), resized_by="model"),
        config_path=CONFIG_PATH,
        phases=dgnet_phases,
        loss=dgnet_loss,
        output_shapes=dgnet_output_shapes,
        test_overrides={"width": 0.0625, "std": {"iterations": 3}},
        targets=dgnet_targets,
    )
