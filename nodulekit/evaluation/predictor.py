"""How a model plugs into ``evaluate``: the :class:`Predictor` protocol and its registry.

A model registers a *factory* under its model name (the ``model`` of run.json)::

    from nodulekit.evaluation import PredictionBatch, register_predictor

    @register_predictor("mtnet")
    class MTNetPredictor:
        def __init__(self, run: RunInfo):          # load the run's checkpoint(s) once
            ...
        def predict(self, store, indices, fold):   # -> iterable of PredictionBatch
            for chunk in np.array_split(indices, max(1, len(indices) // 32)):
                images = store.read(chunk, arrays=("images",))["images"]
                logits = model(torch.from_numpy(images)...)            # {"seg": ..., "malignancy": ...}
                yield PredictionBatch(
                    indices=chunk,
                    seg_prob=torch.sigmoid(logits["seg"])[:, 0].numpy(),          # (B, *patch_shape)
                    class_prob={"malignancy": torch.sigmoid(logits["malignancy"])[:, 0].numpy()})

Contract (checked by :func:`check_batch`):

- ``predict(store, indices, fold)`` is called once per held-out fold with the store rows
  ``indices`` (int64, ascending) of that fold; it yields :class:`PredictionBatch` es whose
  ``indices`` together cover each requested index exactly once, in any order.
- ``seg_prob``: foreground probabilities in [0, 1] with the store's patch shape
  (``store.info.patch_shape``; resize back if the model works at another size), or None.
- ``class_prob``: per task name, P(class 1) as (B,) or (B, 1) for a binary task, or (B, C)
  class probabilities (rows summing to 1) for C classes. Probabilities, not logits.
- Optional attributes: ``label_columns`` ({task: store table column holding the truth},
  default: see :func:`nodulekit.evaluation.rows.truth_column`); ``version`` (text that
  changes when the predictor's output changes; part of the predictions' cache key).

The built-in models' predictors (:mod:`nodulekit.evaluation.predictors`) are registered on the
registry's first use (importing them does not import torch).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.evaluation.runs import RunInfo


@dataclass
class PredictionBatch:
    """Predictions for some rows of a patch store.

    indices: (B,) row indices into the patch store; seg_prob: (B, *patch_shape) foreground
    probabilities or None; class_prob: {task: (B,) P(class 1) or (B, C) class probabilities}.
    """

    indices: np.ndarray
    seg_prob: np.ndarray | None = None
    class_prob: dict[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class Predictor(Protocol):
    """What ``evaluate`` needs from a model: predictions for held-out patch-store rows."""

    def predict(self, store: Any, indices: np.ndarray, fold: int) -> Iterable[PredictionBatch]:
        """Yield predictions for ``indices`` (rows of ``store``, a PatchStore) of held-out ``fold``."""
        ...


PredictorFactory = Callable[[RunInfo], Predictor]
_REGISTRY: dict[str, PredictorFactory] = {}
#: Modules registering the built-in models' predictors, imported on the registry's first use.
BUILTIN_PREDICTOR_MODULES = ("nodulekit.evaluation.predictors",)
_builtins_loaded = False


def _load_builtin_predictors() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in BUILTIN_PREDICTOR_MODULES:
        importlib.import_module(module)


def register_predictor(model_name: str) -> Callable[[PredictorFactory], PredictorFactory]:
    """Decorator: register ``factory(run) -> Predictor`` for runs whose run.json model is ``model_name``.

    Registering a name again replaces the previous factory (tests register throw-away ones).
    """
    def decorate(factory: PredictorFactory) -> PredictorFactory:
        _load_builtin_predictors()  # first, so a later built-in import never replaces this one
        _REGISTRY[model_name] = factory
        return factory
    return decorate


def unregister_predictor(model_name: str) -> None:
    _load_builtin_predictors()
    _REGISTRY.pop(model_name, None)


def registered_predictors() -> list[str]:
    _load_builtin_predictors()
    return sorted(_REGISTRY)


def registered_factory(model_name: str) -> PredictorFactory | None:
    """The factory registered for ``model_name``, or None."""
    _load_builtin_predictors()
    return _REGISTRY.get(model_name)


def predictor_for(run: RunInfo, predictor: Predictor | PredictorFactory | None = None) -> Predictor:
    """The predictor for ``run``: the one given (an instance, or a factory called with ``run``), else the registry's."""
    if predictor is None:
        _load_builtin_predictors()
        if run.model not in _REGISTRY:
            known = ", ".join(registered_predictors()) or "none"
            raise NodulekitError(
                f"no predictor registered for model '{run.model}' (run {run.name}); registered: {known}. "
                "A model registers one with nodulekit.evaluation.register_predictor")
        predictor = _REGISTRY[run.model]
    if not isinstance(predictor, type) and isinstance(predictor, Predictor):
        return predictor  # an instance (a class also has a `predict` attribute, so check it is not one)
    model = predictor(run)
    if not isinstance(model, Predictor):
        raise NodulekitError(f"predictor factory for '{run.model}' returned {type(model).__name__}, "
                             "which has no predict(store, indices, fold)")
    return model


def predictor_identity(predictor: Predictor) -> str:
    """Class name and ``version`` attribute: part of the predictions' cache key."""
    kind = type(predictor)
    return f"{kind.__module__}.{kind.__qualname__}:{getattr(predictor, 'version', '')}"


def _binary_or_multiclass(task: str, prob: np.ndarray, n_rows: int) -> np.ndarray:
    """Class probabilities as (B, C), C >= 2: a (B,) or (B, 1) P(class 1) becomes [1 - p, p]."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim == 2 and prob.shape[1] == 1:
        prob = prob[:, 0]
    if prob.ndim == 1:
        prob = np.stack([1.0 - prob, prob], axis=1)
    if prob.ndim != 2 or prob.shape[0] != n_rows or prob.shape[1] < 2:
        raise NodulekitError(f"predictor: class_prob['{task}'] must be (B,), (B, 1) or (B, C); got {prob.shape}")
    if not np.all(np.isfinite(prob)) or prob.min() < 0 or prob.max() > 1:
        raise NodulekitError(f"predictor: class_prob['{task}'] must be probabilities in [0, 1] (apply sigmoid/softmax)")
    return prob


def check_batch(batch: PredictionBatch, patch_shape: tuple[int, ...]) -> PredictionBatch:
    """Validate one batch against the contract; returns it with class_prob as (B, C) float32."""
    indices = np.asarray(batch.indices, dtype=np.int64).reshape(-1)
    n = indices.size
    seg = batch.seg_prob
    if seg is not None:
        seg = np.asarray(seg)
        if seg.shape != (n, *patch_shape):
            raise NodulekitError(f"predictor: seg_prob has shape {seg.shape}, expected {(n, *patch_shape)} "
                                 "(the store's patch shape)")
        if seg.size and (not np.all(np.isfinite(seg)) or seg.min() < 0 or seg.max() > 1):
            raise NodulekitError("predictor: seg_prob must be probabilities in [0, 1] (apply sigmoid)")
    probs: Mapping[str, np.ndarray] = {t: _binary_or_multiclass(t, p, n) for t, p in batch.class_prob.items()}
    if seg is None and not probs:
        raise NodulekitError("predictor: a batch has neither seg_prob nor class_prob")
    return PredictionBatch(indices=indices, seg_prob=seg, class_prob=dict(probs))
