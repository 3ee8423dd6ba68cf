"""A training phase: what it trains (:class:`Phase`), its settings from the config
(:class:`PhaseSettings`), and the helpers that freeze parameters and wrap its step.

See :mod:`nodulekit.training.engine` for how the Trainer runs phases, and docs/training.md.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.training.config import phase_config

StepFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
MetricsFn = Callable[[nn.Module, Any], Mapping[str, float]]
Trainable = Sequence[str] | Callable[[nn.Module], Iterable[nn.Parameter]] | None
DEFAULT_STREAM = "default"


@dataclass
class Phase:
    """One training phase of a model (details: :mod:`nodulekit.training.engine`, docs/training.md).

    ``step(model, batch) -> {"loss": t, ...}``; ``trainable``: parameter-name prefixes, a callable
    ``model -> parameters``, or None (all); ``metrics(model, val_batches) -> {name: float}``
    (None: the step's mean losses); ``data``: a stream name (step gets a batch) or a tuple of
    names (step gets ``{name: batch}``); ``augment``: apply the Trainer's ``train_transform``;
    ``frozen_eval``: keep sub-modules without trainable parameters in eval mode.
    """

    name: str
    step: StepFn
    trainable: Trainable = None
    metrics: MetricsFn | None = None
    data: str | tuple[str, ...] = DEFAULT_STREAM
    augment: bool = True
    frozen_eval: bool = True

    @property
    def streams(self) -> tuple[str, ...]:
        return (self.data,) if isinstance(self.data, str) else tuple(self.data)


@dataclass(frozen=True)
class PhaseSettings:
    """A phase's settings from the resolved config (``[phases.<name>]`` over ``[train]``)."""

    seed: int
    epochs: int
    batch_size: int | Mapping[str, int]
    max_steps: int
    grad_clip_norm: float
    precision: str
    compile: bool
    val_max_batches: int
    load_best_at_end: bool
    find_unused_parameters: bool
    drop_last: bool
    optimizer: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    early_stopping: Mapping[str, Any]
    keep_best: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], phase_name: str) -> "PhaseSettings":
        c = phase_config(config, phase_name)
        if c.get("precision", "bf16") not in ("bf16", "fp32"):
            raise NodulekitError(f"train.precision = {c.get('precision')!r}: expected \"bf16\" or \"fp32\"")
        _check_names(phase_name, c)
        batch = c.get("batch_size", 16)
        return cls(int(c.get("seed", 0)), int(c.get("epochs", 0)) or 1,
                   dict(batch) if isinstance(batch, Mapping) else int(batch), int(c.get("max_steps", 0)),
                   float(c.get("grad_clip_norm", 0.0)), str(c.get("precision", "bf16")),
                   bool(c.get("compile", False)), int(c.get("val_max_batches", 0)),
                   bool(c.get("load_best_at_end", True)), bool(c.get("find_unused_parameters", False)),
                   bool(c.get("drop_last", True)),
                   dict(c.get("optimizer", {})), dict(c.get("scheduler", {})), dict(c.get("early_stopping", {})),
                   {str(k): str(v) for k, v in dict(c.get("keep_best", {})).items()})

    def batch_size_of(self, stream: str) -> int:
        if isinstance(self.batch_size, Mapping):
            if stream not in self.batch_size:
                raise NodulekitError(f"batch_size has no entry for data stream {stream!r} "
                                     f"(it has {', '.join(self.batch_size)})")
            return int(self.batch_size[stream])
        return self.batch_size


def select_trainable(model: nn.Module, trainable: Trainable) -> list[nn.Parameter]:
    """Set ``requires_grad`` on exactly the phase's parameters and return them (model order)."""
    named = list(model.named_parameters())
    if trainable is None:
        chosen = {id(p) for _, p in named}
    elif callable(trainable):
        chosen = {id(p) for p in trainable(model)}
    else:
        prefixes = list(trainable)
        unmatched = [p for p in prefixes if not any(n == p or n.startswith(p + ".") for n, _ in named)]
        if unmatched:
            raise NodulekitError(f"trainable prefix(es) {unmatched} match no parameter of the model")
        chosen = {id(p) for n, p in named if any(n == q or n.startswith(q + ".") for q in prefixes)}
    out = []
    for _, param in named:
        param.requires_grad_(id(param) in chosen)
        if id(param) in chosen:
            out.append(param)
    return out


def set_train_mode(model: nn.Module, frozen_eval: bool) -> None:
    """Train mode, with sub-modules whose parameters are all frozen in eval mode."""
    model.train()
    if not frozen_eval:
        return
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


class StepModule(nn.Module):
    """``step(model, batch)`` as a module, so DDP / torch.compile wrap the whole step."""

    def __init__(self, model: nn.Module, step: StepFn) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, batch: Any) -> Mapping[str, torch.Tensor]:
        return self.step(self.model, batch)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``precision == "bf16"``; nothing elsewhere."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_names(phase_name: str, c: Mapping[str, Any]) -> None:
    """Fail before training when a phase names an unknown optimizer, schedule or mode."""
    from nodulekit.training.optim import OPTIMIZERS, SCHEDULERS, EarlyStopping

    optimizer = str(c.get("optimizer", {}).get("name", "adam")).lower()
    scheduler = str(c.get("scheduler", {}).get("name", "none")).lower()
    if optimizer not in OPTIMIZERS:
        raise NodulekitError(f"phase {phase_name!r}: optimizer.name = {optimizer!r}; expected one of "
                             f"{', '.join(OPTIMIZERS)}")
    if scheduler not in SCHEDULERS:
        raise NodulekitError(f"phase {phase_name!r}: scheduler.name = {scheduler!r}; expected one of "
                             f"{', '.join(SCHEDULERS)}")
    EarlyStopping.from_config(c.get("early_stopping", {}))
    if scheduler == "plateau":
        from nodulekit.training.optim import plateau_monitor

        plateau_monitor(c.get("scheduler", {}))
    for group, metric in dict(c.get("keep_best", {})).items():
        if not str(metric).startswith("val_"):
            raise NodulekitError(f"phases.{phase_name}.keep_best.{group} = {metric!r}: expected a validation "
                                 "metric (val_...)")
