"""mtcnn: multi-view multi-task CNN for benign/malignant nodule classification.

Zhai, Tao, Chen, Cai & Li 2020, "Multi-Task Learning for Lung Nodule Classification on Chest
CT", IEEE Access 8:180317 (papers/002_488b1feff8a13a84.txt).

Per view (section III.B, Fig. 3), a 2D MT-CNN on a ``64 x 64`` view:

- **ShareNet**: conv 5x5 (24) -> ReLU -> 2x2 max pool, conv 3x3 (32) -> ReLU -> pool,
  conv 3x3 (64) -> ReLU -> pool: ``(1, 64, 64) -> (64, 8, 8)`` ("same" padding, a choice).
- **ClsNet**: FC 4096 -> 256 -> 16 -> 2 with ReLU, dropout 0.5 after the first and the second
  FC (section III.D); softmax over the two classes gives the view's malignancy probability p_v.
- **ImgNet** (absent when ``alpha = 0``, the ST-CNN baseline): the mirror of ShareNet, three
  x2 upsamplings each followed by a deconvolution (64 -> 32 -> 24 -> 1, 3x3 / 3x3 / 5x5),
  ReLU between, sigmoid reconstruction (here: its logits).

Loss per view, eq. (1)/(3): ``CE(y, p_v) + alpha * mean over pixels BCE(view, reconstruction)``,
alpha = 0.3 (section IV.D). Weights Kaiming-initialised, biases 0 (section III.D).

**The nine views in one module.** Every layer is grouped by view: convs and deconvs with
``groups = 9`` and :class:`GroupedLinear` FCs, so view v's parameters are a disjoint slice and
only view v's input and loss reach them. The training loss is the *sum* over views of the
per-view losses, so each view's gradients are exactly those of its own eq. (3): one optimiser
step (Adam is per-parameter) trains the nine 2D MT-CNNs as nine separate runs would, in one
process (:func:`view_state_dict` extracts view v as a one-view model; a test checks the
equivalence). What the views share is the schedule: the engine's early stopping and kept best
epoch follow the summed validation loss; :class:`ViewEarlyStopping` (with
:func:`mtcnn_validation`'s per-view losses) gives each view its own, as separate runs would
have, once the engine calls it after each epoch.

**Fusion** (section III.C, eq. 4, Algorithm 1): ``P = sum_v w_v p_v`` with ``w_v = AUC_v /
sum AUC``, each view's AUC on the *training* set. The weights are the buffer ``view_weights``
(saved with the model; a plain mean until set) and are computed after training by
:func:`compute_view_weights` from training-set predictions (the engine's post-training hook).

Outputs (logits): ``view_logits`` ``(B, 9, 2)``, ``recon`` ``(B, 9, 64, 64)`` (only with
``alpha > 0``), ``malignancy`` ``(B,)`` = ``logit(P)``, the fused probability as a logit.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.metrics import auc
from nodulekit.models.registry import (InputGeometry, ModelSpec, OutputSpec, PaperRef, PhaseSpec,
                                       register_model)

CONFIG_PATH = Path(__file__).parent / "configs" / "mtcnn.toml"
OUTPUT_TASKS = {"view_logits": "malignancy", "recon": "reconstruction", "malignancy": "malignancy"}
PROB_CLAMP = 1e-6  # the fused probability is clamped to [1e-6, 1 - 1e-6] before the logit


class GroupedLinear(nn.Module):
    """``groups`` independent linear layers: ``(B, G, in) -> (B, G, out)``.

    ``weight`` ``(G, in, out)``, ``bias`` ``(G, out)``; group g sees only its own inputs.
    """

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(groups, out_features))
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / in_features))  # Kaiming normal, fan-in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bgi,gio->bgo", x, self.weight) + self.bias

    def extra_repr(self) -> str:
        g, i, o = self.weight.shape
        return f"groups={g}, in_features={i}, out_features={o}"


def share_net(views: int, channels: Sequence[int], kernels: Sequence[int]) -> nn.Sequential:
    """ShareNet (section III.B): per view, conv k x k ("same") -> ReLU -> 2x2 max pool, per layer."""
    layers: list[nn.Module] = []
    c_in = 1
    for c_out, k in zip(channels, kernels):
        layers += [nn.Conv2d(views * c_in, views * c_out, k, padding=k // 2, groups=views), nn.ReLU(),
                   nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*layers)


def img_net(views: int, channels: Sequence[int], kernels: Sequence[int], upsample: str) -> nn.Sequential:
    """ImgNet (section III.B): ShareNet mirrored, per layer x2 upsampling -> deconvolution
    (stride 1, "same"), ReLU between, one output channel per view (reconstruction logits)."""
    mirrored = list(reversed([1, *channels]))          # e.g. 64, 32, 24, 1
    layers: list[nn.Module] = []
    for index, k in enumerate(reversed(list(kernels))):
        c_in, c_out = mirrored[index], mirrored[index + 1]
        layers += [nn.Upsample(scale_factor=2, mode=upsample),
                   nn.ConvTranspose2d(views * c_in, views * c_out, k, padding=k // 2, groups=views)]
        if index < len(kernels) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def cls_net(views: int, in_features: int, units: Sequence[int], dropout: float,
            dropout_after: Sequence[int]) -> nn.Sequential:
    """ClsNet (section III.B/D): grouped FCs ``in -> 256 -> 16 -> 2``, ReLU and dropout after the
    FC layers numbered (from 1) in ``dropout_after``."""
    layers: list[nn.Module] = []
    n_in = in_features
    for number, n_out in enumerate(units, start=1):
        layers.append(GroupedLinear(views, n_in, n_out))
        if number < len(units):
            layers.append(nn.ReLU())
            if number in dropout_after and dropout > 0:
                layers.append(nn.Dropout(dropout))
        n_in = n_out
    return nn.Sequential(*layers)


class MTCNN(nn.Module):
    """The nine per-view 2D MT-CNNs of the module docstring, built from the ``model`` table.

    ``forward(image)``: ``(B, V, S, S)`` views (or ``(B, 1, V, S, S)``), intensities in [0, 1]
    -> ``{"view_logits": (B, V, 2), "recon": (B, V, S, S), "malignancy": (B,)}`` logits
    (``recon`` only when ``alpha > 0``).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = dict(config)
        _check_config(cfg)
        self.config = cfg
        self.views = int(cfg["views"])
        self.size = int(cfg["input_size_px"])
        channels = [int(c) for c in cfg["share_channels"]]
        kernels = [int(k) for k in cfg["share_kernels"]]
        self.share = share_net(self.views, channels, kernels)
        self.feature_size = self.size // 2 ** len(channels)
        self.feature_channels = channels[-1]
        self.cls = cls_net(self.views, channels[-1] * self.feature_size ** 2, [int(u) for u in cfg["cls_units"]],
                           float(cfg["dropout"]), [int(n) for n in cfg["dropout_after"]])
        self.img = (img_net(self.views, channels, kernels, str(cfg["upsample"]))
                    if float(cfg["alpha"]) > 0 else None)
        self.register_buffer("view_weights", torch.full((self.views,), 1.0 / self.views))
        init_mtcnn(self)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for name in OUTPUT_TASKS if name != "recon" or self.img is not None)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``share`` (ShareNet), ``cls`` (ClsNet), ``img`` (ImgNet; empty for ST-CNN)."""
        return {"share": list(self.share.parameters()), "cls": list(self.cls.parameters()),
                "img": [] if self.img is None else list(self.img.parameters())}

    def subnetworks(self) -> dict[str, list[nn.Module]]:
        """The three parts of Fig. 3 (all nine views each)."""
        parts = {"share_net": [self.share], "cls_net": [self.cls]}
        if self.img is not None:
            parts["img_net"] = [self.img]
        return parts

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._views(image)
        features = self.share(x)                                    # (B, V * C, s, s), view-major
        flat = features.reshape(x.shape[0], self.views, -1)       # (B, V, C * s * s)
        view_logits = self.cls(flat)                               # (B, V, 2)
        out = {"view_logits": view_logits}
        if self.img is not None:
            out["recon"] = self.img(features)                      # (B, V, S, S)
        probs = view_probabilities(view_logits)
        out["malignancy"] = probability_logit(fuse_views(probs, self.view_weights))
        return out

    def _views(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim == 5 and image.shape[1] == 1:
            image = image[:, 0]
        expected = (self.views, self.size, self.size)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected:
            raise NodulekitError(f"mtcnn expects (B, {self.views}, {self.size}, {self.size}) views, "
                                 f"got {tuple(image.shape)}")
        return image


def init_mtcnn(model: MTCNN) -> None:
    """Kaiming (He) normal weights for every conv, deconv and FC (fan-in of one view, ReLU
    gain), biases 0 (section III.D)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
        elif isinstance(m, nn.ConvTranspose2d):  # weight (V * C_in, C_out, k, k)
            fan_in = m.weight.shape[0] // m.groups * m.weight.shape[2] * m.weight.shape[3]
        elif isinstance(m, GroupedLinear):
            fan_in = m.weight.shape[1]
        else:
            continue
        with torch.no_grad():
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
            m.bias.zero_()


_CHOICES = {"upsample": ("nearest", "bilinear")}


def _check_config(cfg: Mapping[str, Any]) -> None:
    if cfg["upsample"] not in _CHOICES["upsample"]:
        raise NodulekitError(f"model.upsample = {cfg['upsample']!r}; allowed: nearest, bilinear")
    if len(cfg["share_channels"]) != len(cfg["share_kernels"]):
        raise NodulekitError("model.share_channels and model.share_kernels need one value per conv layer")
    if int(cfg["input_size_px"]) % 2 ** len(cfg["share_channels"]):
        raise NodulekitError(f"model.input_size_px = {cfg['input_size_px']} is not divisible by "
                             f"2^{len(cfg['share_channels'])} (one 2x2 pool per ShareNet layer)")
    if int(cfg["cls_units"][-1]) != 2:
        raise NodulekitError("model.cls_units must end with 2 (benign, malignant; section III.B)")
    if not 0 <= float(cfg["alpha"]):
        raise NodulekitError(f"model.alpha = {cfg['alpha']}: must be >= 0 (0 = ST-CNN)")


def build_mtcnn(model_config: Mapping[str, Any]) -> MTCNN:
    """Factory of the registry: the ``model`` table -> :class:`MTCNN`."""
    return MTCNN(model_config)


# -- fusion (section III.C, eq. 4, Algorithm 1) ------------------------------------------------

def view_probabilities(view_logits: torch.Tensor) -> torch.Tensor:
    """``(B, V, 2)`` logits -> ``(B, V)`` P(malignant) per view (softmax, float32)."""
    return torch.softmax(view_logits.float(), dim=-1)[..., 1]


def fuse_views(view_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. (4): ``P = sum_v w_v p_v``. ``(B, V)``, ``(V,)`` summing to 1 -> ``(B,)``."""
    return (view_probs.float() * weights.to(view_probs.device, torch.float32)).sum(dim=-1)


def probability_logit(p: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` with ``p`` clamped to ``[PROB_CLAMP, 1 - PROB_CLAMP]``."""
    return torch.logit(p.float().clamp(PROB_CLAMP, 1.0 - PROB_CLAMP))


def view_weights_from_auc(aucs: Sequence[float]) -> torch.Tensor:
    """Algorithm 1, line 7: ``W_v = AUC_v / sum_v AUC_v`` -> ``(V,)`` float32.

    When an AUC is undefined (NaN: the training set has one class only) or all are 0, the
    weights are equal (a plain mean), with a warning.
    """
    values = np.asarray(aucs, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise NodulekitError(f"view AUCs must be a non-empty list, got {aucs!r}")
    if not np.all(np.isfinite(values)) or values.sum() <= 0:
        warnings.warn(f"view AUCs {values.tolist()} are undefined: equal view weights", stacklevel=2)
        return torch.full((values.size,), 1.0 / values.size)
    return torch.as_tensor(values / values.sum(), dtype=torch.float32)


@dataclass(frozen=True)
class ViewWeights:
    """What :func:`compute_view_weights` found: per-view training AUCs and the weights set."""

    aucs: tuple[float, ...]
    weights: tuple[float, ...]
    n_samples: int


@torch.no_grad()
def collect_view_probabilities(model: MTCNN, batches: Iterable[Mapping[str, torch.Tensor]]
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` (eval mode, no gradient) over ``batches`` of ``{"image", "label"}``;
    returns labels ``(N,)`` and per-view probabilities ``(N, V)``. Rows with label < 0 are
    dropped. The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    labels, probs = [], []
    try:
        device = next(model.parameters()).device
        for batch in batches:
            out = model(batch["image"].to(device))
            labels.append(batch["label"].detach().cpu().numpy().reshape(-1))
            probs.append(view_probabilities(out["view_logits"]).cpu().numpy())
    finally:
        model.train(was_training)
    if not labels:
        raise NodulekitError("no batches to compute the view weights from")
    y, p = np.concatenate(labels), np.concatenate(probs)
    keep = y >= 0
    return y[keep].astype(np.int64), p[keep]


def view_aucs(labels: np.ndarray, view_probs: np.ndarray) -> list[float]:
    """AUC of each view's probabilities (``nodulekit.metrics.auc``; NaN with one class)."""
    return [auc(labels, view_probs[:, v]) for v in range(view_probs.shape[1])]


def set_view_weights(model: MTCNN, weights: torch.Tensor) -> None:
    """Store fusion weights ``(V,)`` (non-negative, summing to 1) in the model's buffer."""
    weights = torch.as_tensor(weights, dtype=torch.float32)
    if weights.shape != model.view_weights.shape or (weights < 0).any() or \
            not math.isclose(float(weights.sum()), 1.0, rel_tol=1e-5):
        raise NodulekitError(f"view weights must be {tuple(model.view_weights.shape)} non-negative "
                             f"values summing to 1, got {weights.tolist()}")
    model.view_weights.copy_(weights.to(model.view_weights.device))


def compute_view_weights(model: MTCNN, train_batches: Iterable[Mapping[str, torch.Tensor]]) -> ViewWeights:
    """Algorithm 1, lines 4 and 7: each view's AUC on the training set, ``w_v = AUC_v / sum AUC``,
    stored in ``model.view_weights`` (so it is in every checkpoint saved afterwards).

    ``train_batches``: the training set without augmentation (``{"image", "label"}`` dicts).
    Meant for the engine's post-training hook, after the best weights are restored.
    """
    labels, probs = collect_view_probabilities(model, train_batches)
    aucs = view_aucs(labels, probs)
    weights = view_weights_from_auc(aucs)
    set_view_weights(model, weights)
    return ViewWeights(tuple(float(a) for a in aucs), tuple(weights.tolist()), int(labels.size))


def mtcnn_post_training(model: MTCNN, train_batches: Iterable[Mapping[str, torch.Tensor]],
                        config: Mapping[str, Any]) -> dict[str, Any]:
    """The hook to run once after training (Algorithm 1, lines 4 and 7), before the final
    weights are saved: :func:`compute_view_weights` on the training split (no augmentation).
    Returns what to record with the run: ``{"view_aucs", "view_weights", "n_samples"}``."""
    found = compute_view_weights(model, train_batches)
    return {"view_aucs": list(found.aucs), "view_weights": list(found.weights), "n_samples": found.n_samples}


# -- one view as its own model -----------------------------------------------------------------

def view_state_dict(model: MTCNN, view: int) -> dict[str, torch.Tensor]:
    """View ``view``'s parameters as the state dict of a one-view MTCNN (``views = 1``).

    Every parameter and buffer is view-major along its first axis (grouped convs: ``V * C``
    rows; grouped FCs: ``V`` rows), so view v is chunk v of ``V``.
    """
    if not 0 <= view < model.views:
        raise NodulekitError(f"view {view} out of range 0..{model.views - 1}")
    state = {k: v.chunk(model.views, dim=0)[view].clone() for k, v in model.state_dict().items()}
    state["view_weights"] = torch.ones(1)
    return state


def load_view_state_dict(model: MTCNN, view: int, state: Mapping[str, torch.Tensor]) -> None:
    """The inverse of :func:`view_state_dict`: write a one-view state into view ``view``."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key != "view_weights":
                tensor.chunk(model.views, dim=0)[view].copy_(state[key])


# -- per-view validation and early stopping (section III.D: each view trained separately) --------

@torch.no_grad()
def mtcnn_validation(model: MTCNN, batches: Iterable[Mapping[str, torch.Tensor]],
                     config: Mapping[str, Any]) -> dict[str, float]:
    """Validation metrics: ``loss`` (eq. 3 summed over views), ``loss_v<k>`` per view, ``auc``
    of the fused probability (current weights) and ``auc_v<k>`` per view. Batch-size weighted."""
    alpha = float(config["model"]["alpha"]) if model.img is not None else 0.0
    sums, count, labels, probs = torch.zeros(model.views, dtype=torch.float64), 0, [], []
    for batch in batches:
        out = model(batch["image"])
        per_view = view_ce_loss(out["view_logits"], batch["label"])
        if alpha > 0:
            per_view = per_view + alpha * view_recon_loss(out["recon"], batch["image"])
        n = int(batch["label"].shape[0])
        sums += per_view.double().cpu() * n
        count += n
        labels.append(batch["label"].cpu().numpy())
        probs.append(view_probabilities(out["view_logits"]).cpu().numpy())
    if count == 0:
        raise NodulekitError("no validation batches")
    y, p = np.concatenate(labels), np.concatenate(probs)
    fused = p @ model.view_weights.cpu().numpy().astype(np.float64)
    metrics = {"loss": float(sums.sum() / count), "auc": auc(y, fused)}
    metrics.update({f"loss_v{v}": float(sums[v] / count) for v in range(model.views)})
    metrics.update({f"auc_v{v}": a for v, a in enumerate(view_aucs(y, p))})
    return metrics


class ViewEarlyStopping:
    """Early stopping and best-epoch selection for each view on its own ``loss_v<k>``
    (section III.D: patience 10; the views are trained "separately").

    After each epoch, :meth:`update` snapshots the views whose validation loss improved by more
    than ``min_delta``; a view stops after ``patience`` epochs without improvement, and later
    epochs no longer count for it (as if its own run had ended). :meth:`restore` writes every
    view's best snapshot back (at the end of the phase); :attr:`all_stopped` ends the phase.
    """

    def __init__(self, views: int, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.best: list[float | None] = [None] * views
        self.best_epoch = [-1] * views
        self.bad_epochs = [0] * views
        self.stopped = [False] * views
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def all_stopped(self) -> bool:
        return self.patience > 0 and all(self.stopped)

    def update(self, model: MTCNN, metrics: Mapping[str, float], epoch: int) -> list[int]:
        """Record one epoch's ``loss_v<k>``; returns the views whose best improved."""
        improved = []
        for v in range(len(self.best)):
            value, best = float(metrics[f"loss_v{v}"]), self.best[v]
            if self.stopped[v] or math.isnan(value):
                continue
            if best is None or value < best - self.min_delta:
                self.best[v], self.best_epoch[v], self.bad_epochs[v] = value, epoch, 0
                self.snapshots[v] = view_state_dict(model, v)
                improved.append(v)
            else:
                self.bad_epochs[v] += 1
                self.stopped[v] = self.patience > 0 and self.bad_epochs[v] >= self.patience
        return improved

    def restore(self, model: MTCNN) -> None:
        """Load each view's best weights (views never validated keep their current ones)."""
        for v, state in self.snapshots.items():
            load_view_state_dict(model, v, state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best), "best_epoch": list(self.best_epoch), "bad_epochs": list(self.bad_epochs),
                "stopped": list(self.stopped), "snapshots": dict(self.snapshots)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = list(state["best"]), list(state["best_epoch"])
        self.bad_epochs, self.stopped = list(state["bad_epochs"]), list(state["stopped"])
        self.snapshots = dict(state["snapshots"])


# -- phases, targets, loss, shapes --------------------------------------------------------------

def mtcnn_phases(config: Mapping[str, Any]) -> tuple[PhaseSpec, ...]:
    """One phase: the nine views trained together (Algorithm 1 lines 2-5), eq. (3) per view."""
    alpha = float(config["model"]["alpha"])
    losses = {"view_logits": 1.0}
    trains: tuple[str, ...] = ("share", "cls")
    if alpha > 0:
        losses["recon"] = alpha
        trains += ("img",)
    kind = f"MT-CNN, alpha = {alpha:g}" if alpha > 0 else "ST-CNN (alpha = 0, no ImgNet)"
    return (PhaseSpec("views", trains, losses, int(config["train"]["epochs"]),
                      f"nine per-view 2D {kind}: CE + alpha * mean pixel BCE (eq. 3), summed over views; "
                      "then view weights from training AUCs (compute_view_weights)",
                      "§III.B eq. (1)-(3); §III.C; §III.D Algorithm 1"),)


def mtcnn_targets(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Targets of a training batch: ``malignancy`` = ``label``, ``reconstruction`` = the input views."""
    return {"malignancy": batch["label"], "reconstruction": batch["image"]}


def view_ce_loss(view_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. (2) per view (2-class cross-entropy), batch mean -> ``(V,)``."""
    b, v, _ = view_logits.shape
    target = labels.long().reshape(b, 1).expand(b, v)
    return F.cross_entropy(view_logits.float().permute(0, 2, 1), target, reduction="none").mean(dim=0)


def view_recon_loss(recon_logits: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Eq. (3)'s second term per view: pixel BCE of the reconstruction, mean over the N = 64 x 64
    pixels and the batch -> ``(V,)``. ``views`` are the inputs in [0, 1] (clamped)."""
    target = views.reshape(recon_logits.shape).to(torch.float32).clamp(0.0, 1.0)
    bce = F.binary_cross_entropy_with_logits(recon_logits.float(), target, reduction="none")
    return bce.mean(dim=(0, 2, 3))


def mtcnn_loss(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
               config: Mapping[str, Any], weights: Mapping[str, float]
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. (3) for every view, combined over views by ``loss.view_reduction``.

    ``outputs``: :meth:`MTCNN.forward`'s; ``targets``: ``malignancy`` labels ``(B,)`` 0/1 and
    ``reconstruction`` (or ``image``) = the input views; ``weights``: the phase's ``losses``
    (``view_logits`` 1, ``recon`` alpha). Returns ``(total, {"view_logits": CE, "recon": BCE})``
    with each part reduced over views the same way (``"sum"``: each view's gradient is that of
    its own eq. (3); ``"mean"``: divided by V).
    """
    reduce = _view_reduction(str(config["loss"]["view_reduction"]))
    parts: dict[str, torch.Tensor] = {}
    if weights.get("view_logits") and "view_logits" in outputs and "malignancy" in targets:
        parts["view_logits"] = reduce(view_ce_loss(outputs["view_logits"], targets["malignancy"]))
    recon_target = targets.get("reconstruction", targets.get("image"))
    if weights.get("recon") and "recon" in outputs and recon_target is not None:
        parts["recon"] = reduce(view_recon_loss(outputs["recon"], recon_target))
    if not parts:
        raise NodulekitError(f"no loss to compute: outputs {sorted(outputs)}, targets {sorted(targets)}, "
                             f"weights {dict(weights)}")
    total = sum(float(weights[name]) * loss for name, loss in parts.items())
    return total, parts  # type: ignore[return-value]


def _view_reduction(name: str) -> Any:
    if name == "sum":
        return torch.sum
    if name == "mean":
        return torch.mean
    raise NodulekitError(f"loss.view_reduction = {name!r}; allowed: sum, mean")


def mtcnn_output_shapes(config: Mapping[str, Any], batch: int,
                        patch_shape_px: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of :meth:`MTCNN.forward`'s outputs (``patch_shape_px`` = (V, S, S))."""
    model = config["model"]
    views, size = int(model["views"]), int(model["input_size_px"])
    shapes = {"view_logits": (batch, views, 2), "malignancy": (batch,)}
    if float(model["alpha"]) > 0:
        shapes["recon"] = (batch, views, size, size)
    return shapes


# -- registration ------------------------------------------------------------------------------

OUTPUTS = {
    "view_logits": OutputSpec("malignancy", "(B, V, 2)", "ClsNet logits of each view (section III.B)"),
    "recon": OutputSpec("reconstruction", "(B, V, S, S)",
                        "ImgNet reconstruction logits of each view (section III.B); absent when alpha = 0"),
    "malignancy": OutputSpec("malignancy", "(B,)",
                             "logit of the AUC-weighted mean of the views' probabilities (eq. 4)"),
}


@register_model("mtcnn")
def _mtcnn_spec() -> ModelSpec:
    return ModelSpec(
        name="mtcnn",
        factory=build_mtcnn,
        paper=PaperRef(
            file="002_488b1feff8a13a84.txt",
            citation=("Zhai, P.; Tao, Y.; Chen, H.; Cai, T.; Li, J. Multi-Task Learning for Lung Nodule "
                      "Classification on Chest CT. IEEE Access 2020, 8, 180317-180327."),
            doi="10.1109/ACCESS.2020.3027812"),
        tasks={"malignancy": "binary", "reconstruction": "image"},
        outputs=OUTPUTS,
        geometry=InputGeometry(crop_preset="mtcnn", patch_shape_px=(9, 64, 64), channels=1,
                               intensity="hu_normalised", model_shape_px=(9, 64, 64), resized_by="model"),
        config_path=CONFIG_PATH,
        phases=mtcnn_phases,
        loss=mtcnn_loss,
        output_shapes=mtcnn_output_shapes,
        test_overrides={"cls_units": [32, 16, 2]},
        targets=mtcnn_targets,
        post_training=mtcnn_post_training,
    )
