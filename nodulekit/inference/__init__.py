"""Inference: trained models on patches (:mod:`nodulekit.inference.predict`), two-stage chaining
(paper 003), ensembles, and inference on new scans with exports.

Library entry points (imported on first use, so importing this package does not import torch)::

    from nodulekit.inference import load_model, predict_patches, predict_two_stage, average_predictions

See docs/evaluation.md ("Trained models") for the contract.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LoadedModel": "nodulekit.inference.predict",
    "PatchPredictions": "nodulekit.inference.predict",
    "TwoStagePredictions": "nodulekit.inference.predict",
    "average_predictions": "nodulekit.inference.predict",
    "default_device": "nodulekit.inference.predict",
    "load_model": "nodulekit.inference.predict",
    "predict_patches": "nodulekit.inference.predict",
    "predict_two_stage": "nodulekit.inference.predict",
    "link_coarse_run": "nodulekit.inference.chain",
    "linked_coarse_run": "nodulekit.inference.chain",
    "load_two_stage": "nodulekit.inference.chain",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'nodulekit.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
