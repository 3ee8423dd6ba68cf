"""Evaluation: predictions of held-out patches, metric tables with patient-bootstrap CIs, and
the report (Markdown + self-contained HTML). See docs/evaluation.md.

Library entry: :func:`evaluate`; models plug in with :func:`register_predictor`.
"""
from __future__ import annotations

from nodulekit.evaluation.api import EvaluateParams, EvaluationResult, evaluate
from nodulekit.evaluation.compare import CompareResult, compare
from nodulekit.evaluation.predictor import (PredictionBatch, Predictor, register_predictor, registered_predictors,
                                            unregister_predictor)
from nodulekit.evaluation.runs import RunInfo

__all__ = [
    "CompareResult",
    "EvaluateParams",
    "EvaluationResult",
    "PredictionBatch",
    "Predictor",
    "RunInfo",
    "compare",
    "evaluate",
    "register_predictor",
    "registered_predictors",
    "unregister_predictor",
]
