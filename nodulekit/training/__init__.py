"""Training: one Trainer for every model, built by composition (see docs/training.md).

- :mod:`~nodulekit.training.config`: TOML configs, deep merge, ``--set`` overrides, TOML writer;
- :mod:`~nodulekit.training.data`: datasets over patch stores, fold/label selection, samplers;
- :mod:`~nodulekit.training.phase`: :class:`Phase` (what a model trains) and its settings;
- :mod:`~nodulekit.training.engine`: :class:`Trainer` (the loop, checkpoints, resume);
- :mod:`~nodulekit.training.from_spec`: phases and data streams of a registered model;
- :mod:`~nodulekit.training.validation`: validation metrics by output kind;
- :mod:`~nodulekit.training.optim`: optimizers, LR schedules, early stopping;
- :mod:`~nodulekit.training.checkpoint`: ``weights_only`` checkpoints and RNG states;
- :mod:`~nodulekit.training.runs`: run folders, run.json, the CSV log;
- :mod:`~nodulekit.training.distributed`: devices, DDP processes, torchrun;
- :mod:`~nodulekit.training.api`: :func:`train`, the library entry point of ``nodulekit train``.

Names are imported lazily, so ``import nodulekit.training`` does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "api", "train_folds": "api", "RunResult": "api",
    "Phase": "phase", "Trainer": "engine", "FitResult": "engine",
    "resolve_config": "config", "apply_overrides": "config", "dumps_toml": "config",
    "PatchDataset": "data", "DataParams": "data",
    "latest_run": "runs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nodulekit.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nodulekit.training.{_EXPORTS[name]}"), name)
