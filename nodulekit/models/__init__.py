"""Models: the registry (``create_model``, ``list_models``, ``get_spec``) and one module per model.

Importing a model module registers it; the registry imports the built-in ones on first lookup.
See docs/models.md.
"""
from __future__ import annotations

from nodulekit.models.registry import (
    InputGeometry,
    ModelSpec,
    OutputSpec,
    PaperRef,
    PhaseSpec,
    create_model,
    get_spec,
    list_models,
    param_counts,
    register_model,
)

__all__ = [
    "InputGeometry",
    "ModelSpec",
    "OutputSpec",
    "PaperRef",
    "PhaseSpec",
    "create_model",
    "get_spec",
    "list_models",
    "param_counts",
    "register_model",
]
