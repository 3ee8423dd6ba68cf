"""Optimizers, LR schedules and early stopping, built from a phase's config.

- ``[optimizer]`` name = adam | adamw | sgd; lr, weight_decay, betas (adam/adamw),
  momentum and nesterov (sgd).
- ``[scheduler]`` name = none (= constant) | step | multistep | cosine, stepped once per epoch:
  ``step``: lr * gamma every ``step_epochs``; ``multistep``: lr times each ``gamma`` passed, at
  the ``milestones`` (epochs; ``gamma`` one number or one per milestone, so paper 002's
  1e-4 -> 1e-5 at half -> 5e-6 at three quarters of 150 epochs is ``milestones = [75, 112]``,
  ``gamma = [0.1, 0.5]``); ``cosine``: cosine annealing to ``eta_min`` over the phase's epochs;
  ``plateau``: ``ReduceLROnPlateau`` (``mode``, ``factor``, ``patience``, ``threshold``,
  ``min_lr``), stepped by the engine with the epoch's value of ``monitor`` -- ``train_<name>``
  (the epoch's mean training loss ``<name>``, e.g. ``train_loss``) or a validation metric
  (``val_loss``, ``val_seg_dice`` ...); see :func:`plateau_monitor`.
- ``[early_stopping]`` monitor (a validation metric; "" = val_loss), mode (min | max), patience
  (epochs without improvement before stopping; 0 = never stop), min_delta.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nodulekit.errors import NodulekitError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "constant", "step", "multistep", "cosine", "plateau")


def build_optimizer(params: Iterable[nn.Parameter], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg["name"]`` over ``params``."""
    name = str(cfg.get("name", "adam")).lower()
    lr = float(cfg.get("lr", 1e-4))
    weight_decay = float(cfg.get("weight_decay", 0.0))
    params = list(params)
    if not params:
        raise NodulekitError("this phase trains no parameter (check the phase's trainable parameter groups)")
    if name in ("adam", "adamw"):
        betas = tuple(float(b) for b in cfg.get("betas", (0.9, 0.999)))
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=betas, weight_decay=weight_decay)  # type: ignore[arg-type]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.0)),
                               nesterov=bool(cfg.get("nesterov", False)), weight_decay=weight_decay)
    raise NodulekitError(f"optimizer.name = {name!r}: expected one of {', '.join(OPTIMIZERS)}")


def multistep_factor(milestones: Sequence[int], gammas: Sequence[float]):
    """lr factor at an epoch: the product of the gammas of the milestones reached."""
    def factor(epoch: int) -> float:
        return math.prod(g for m, g in zip(milestones, gammas) if epoch >= m)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any],
                    epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch LR schedule named by ``cfg["name"]`` (None for ``none``)."""
    name = str(cfg.get("name", "none")).lower()
    if name in ("none", "constant"):
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg.get("step_epochs", 30)),
                                               gamma=float(cfg.get("gamma", 0.1)))
    if name == "multistep":
        milestones = [int(m) for m in cfg.get("milestones", [])]
        gamma = cfg.get("gamma", 0.1)
        gammas = [float(g) for g in gamma] if isinstance(gamma, (list, tuple)) else [float(gamma)] * len(milestones)
        if len(gammas) != len(milestones):
            raise NodulekitError(f"scheduler.gamma has {len(gammas)} values for {len(milestones)} milestones")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, multistep_factor(milestones, gammas))
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(epochs)),
                                                          eta_min=float(cfg.get("eta_min", 0.0)))
    if name == "plateau":
        plateau_monitor(cfg)
        mode = str(cfg.get("mode", "min"))
        if mode not in ("min", "max"):
            raise NodulekitError(f"scheduler.mode = {mode!r}: expected \"min\" or \"max\"")
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=float(cfg.get("factor", 0.1)), patience=int(cfg.get("patience", 10)),
            threshold=float(cfg.get("threshold", 1e-4)), min_lr=float(cfg.get("min_lr", 0.0)))
    raise NodulekitError(f"scheduler.name = {name!r}: expected one of {', '.join(SCHEDULERS)}")


def is_plateau(scheduler: Any) -> bool:
    """True for a scheduler stepped with a metric value (``ReduceLROnPlateau``)."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def plateau_monitor(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """``scheduler.monitor`` split into (``"train"`` | ``"val"``, name): ``train_loss`` ->
    ("train", "loss") reads the epoch's mean training loss; ``val_x`` reads validation metric ``val_x``."""
    monitor = str(cfg.get("monitor", "val_loss"))
    if monitor.startswith("train_") and len(monitor) > 6:
        return "train", monitor[len("train_"):]
    if monitor.startswith("val_") and len(monitor) > 4:
        return "val", monitor
    raise NodulekitError(f"scheduler.monitor = {monitor!r}: expected train_<loss> (e.g. train_loss) or "
                         "val_<metric> (e.g. val_loss)")


@dataclass
class EarlyStopping:
    """Tracks the best value of ``monitor``; ``stopped`` after ``patience`` epochs without
    an improvement larger than ``min_delta`` (never when ``patience`` is 0)."""

    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "EarlyStopping":
        mode = str(cfg.get("mode", "min"))
        if mode not in ("min", "max"):
            raise NodulekitError(f"early_stopping.mode = {mode!r}: expected \"min\" or \"max\"")
        return cls(str(cfg.get("monitor") or "val_loss"), mode, int(cfg.get("patience", 0)),
                   float(cfg.get("min_delta", 0.0)))

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record this epoch's value; True when it is the new best."""
        improved = self.improves(value)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
        else:
            self.bad_epochs += 1
            self.stopped = self.patience > 0 and self.bad_epochs >= self.patience
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped = bool(state["stopped"])
