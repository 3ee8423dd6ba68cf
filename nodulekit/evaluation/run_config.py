"""A run's training config beside its model's defaults: which keys the run changed.

The defaults are what a run of the model resolves to with no ``--config``, ``--set``,
``--epochs`` or ``--max-steps``: :data:`nodulekit.training.config.ENGINE_DEFAULTS` under the
model's TOML (``nodulekit/models/configs/<model>.toml``, the paper's settings, each value with
the paper section it comes from: ``spec.cite``), with each phase's epochs filled in as training
does. ``data.stores`` is empty in every default config and filled in when training starts
(``--stores``, docs/training.md), so the store a run used is not counted as a change.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodulekit.errors import NodulekitError

#: Dotted keys whose empty default means "chosen when training starts": a filled value is no change.
FILLED_AT_TRAINING = ("data.stores",)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (tables become dotted keys; an empty table is left out)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass(frozen=True)
class ModelDefaults:
    """The flattened default config of a model and, per dotted key, where its value comes from."""

    values: dict[str, Any]
    sources: dict[str, str]


def model_defaults(model: str) -> ModelDefaults | None:
    """The registry's defaults of ``model`` (see the module doc); None when the model is not registered."""
    try:
        from nodulekit.models.registry import get_spec
        from nodulekit.training.config import ENGINE_DEFAULTS, resolve_config
        from nodulekit.training.from_spec import fill_phase_defaults

        spec = get_spec(model)
    except (NodulekitError, ImportError):
        return None
    values = flatten(fill_phase_defaults(spec, resolve_config([spec.default_config])))
    engine = flatten(ENGINE_DEFAULTS)
    sources = {key: spec.cite.get(key) or ("nodulekit engine default" if key in engine else "phase default of the "
                                           "model (nodulekit.models)") for key in values}
    return ModelDefaults(values, sources)


@dataclass(frozen=True)
class ConfigChange:
    """One key of a run's config: its value, the default (None with ``in_defaults`` False when the
    defaults have no such key) and the default's source."""

    key: str
    value: Any
    default: Any
    in_defaults: bool
    source: str


def split_config(config: Mapping[str, Any], defaults: ModelDefaults) -> tuple[list[ConfigChange], dict[str, Any]]:
    """(the keys of ``config`` that differ from ``defaults`` or are not among them, in the config's
    order; the other keys with their values)."""
    changed, same = [], {}
    for key, value in flatten(config).items():
        default = defaults.values.get(key)
        in_defaults = key in defaults.values
        filled = key in FILLED_AT_TRAINING and in_defaults and default in ([], "", None)
        if in_defaults and (_same(value, default) or filled):
            same[key] = value
        else:
            changed.append(ConfigChange(key, value, default, in_defaults, defaults.sources.get(key, "")))
    return changed, same


def config_value_text(value: Any) -> str:
    """A config value as TOML writes it, roughly: ``true``, ``1e-05``, ``["crop/cascade"]``, ``""``; text bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: 1 == 1.0 (TOML ints where a float is expected), but True != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
