"""Training configs: TOML files, deep merge, ``--set a.b=value`` overrides, a small TOML writer.

A resolved config is built in layers, later ones winning (:func:`resolve_config`)::

    ENGINE_DEFAULTS  <  the model's default config  <  --config FILE(s)  <  --set key=value

and saved with the run as ``config.toml`` (:func:`dumps_toml`), so a run records exactly what it
trained with. Values are TOML types only: str, int, float, bool, lists and tables (no dates), so a
config also fits in a checkpoint loaded with ``torch.load(weights_only=True)``.

The engine's own keys (every model inherits them; a model's default config overrides them)::

    [train]           seed, epochs (0: each phase's own, from the model), max_steps (optimizer steps
                      per phase, 0 = no limit), grad_clip_norm (0 = off), precision ("bf16" autocast
                      on CUDA | "fp32"), compile, val_max_batches (0 = all), load_best_at_end
                      (restore the phase's best weights when it ends), find_unused_parameters (DDP),
                      drop_last (skip an epoch's last, smaller training batch)
    batch_size        the global batch (over all processes): a number, or a table by data stream
                      (``[batch_size] seg = 16, malignancy = 32``)
    [optimizer]       name = adam | adamw | sgd; lr, weight_decay, betas, momentum, nesterov
    [scheduler]       name = none (= constant) | step | multistep | cosine | plateau; step_epochs,
                      milestones (epochs), gamma (a number or one per milestone), eta_min;
                      plateau: monitor (train_<loss> or val_<metric>), mode, factor, patience,
                      threshold, min_lr
    [early_stopping]  monitor (a validation metric; "" = "val_loss"), mode = min | max,
                      patience (epochs without improvement, 0 = off), min_delta
    [phases.<name>]   per-phase overrides of any of the above, e.g. ``phases.coarse.epochs``,
                      ``phases.fine_cls.optimizer.lr`` (deep-merged over the top-level values),
                      and ``keep_best = {group = "val_<metric>"}`` (per parameter group, the
                      weights of that metric's best epoch; :mod:`nodulekit.training.engine`)
    [data]            patch stores and selection, see :mod:`nodulekit.training.data`
    [augmentation]    mode = offline | on_the_fly | both | none: offline copies (the
                      ``augment/<preset>`` store) and/or ``[augmentation.on_the_fly]``, the
                      :mod:`nodulekit.patches.gpu_augment` settings applied on the device
    [checkpoint]      keep_every_epochs (also keep a weights snapshot every N epochs, 0 = off)

Model configs put every key in these tables, plus ``[model]`` (the factory's table) and
``[loss]`` (the spec's loss); docs/training.md, "Configuration", is the convention.
"""
from __future__ import annotations

import copy
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from nodulekit.atomic import atomic_write_text
from nodulekit.errors import InputFileError, NodulekitError

Config = dict[str, Any]

#: Engine defaults, below every model's default config.
ENGINE_DEFAULTS: Config = {
    "train": {
        "seed": 0,
        "epochs": 0,
        "max_steps": 0,
        "grad_clip_norm": 0.0,
        "precision": "bf16",
        "compile": False,
        "val_max_batches": 0,
        "load_best_at_end": True,
        "find_unused_parameters": False,
        "drop_last": True,
    },
    "batch_size": 16,
    "optimizer": {"name": "adam", "lr": 1e-4, "weight_decay": 0.0, "betas": [0.9, 0.999], "momentum": 0.9,
                  "nesterov": False},
    "scheduler": {"name": "none", "step_epochs": 30, "milestones": [], "gamma": 0.1, "eta_min": 0.0,
                  "monitor": "val_loss", "mode": "min", "factor": 0.1, "patience": 10, "threshold": 1e-4,
                  "min_lr": 0.0},
    "early_stopping": {"monitor": "", "mode": "min", "patience": 0, "min_delta": 0.0},
    "phases": {},
    "data": {
        "stores": [],
        "label_column": "label",
        "labels": {},
        "require_label": False,
        "kinds": [],
        "channels": "add",
        "memory_budget_mb": 4096,
        "num_workers": -1,
    },
    "augmentation": {"mode": "offline", "on_the_fly": {}},
    "checkpoint": {"keep_every_epochs": 0},
}

#: The keys a phase reads: ``[train]``'s keys plus these top-level ones; ``[phases.<name>]`` overrides them.
PHASE_KEYS = ("batch_size", "optimizer", "scheduler", "early_stopping")

#: Tables under which ``--set`` may create keys that the defaults do not have.
OPEN_TABLES = ("phases", "augmentation.on_the_fly", "data.labels")

#: Top-level keys of a training config (the convention every model config follows).
TOP_LEVEL_KEYS = ("model", "loss", "batch_size", "train", "optimizer", "scheduler", "early_stopping", "phases",
                  "data", "augmentation", "checkpoint", "cohort")
AUGMENTATION_MODES = ("offline", "on_the_fly", "both", "none")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Config:
    """A new dict: ``override`` over ``base``, tables merged recursively, other values replaced."""
    out: Config = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_toml(path: Path) -> Config:
    """A TOML file as a dict (dates become ISO strings); a clear error naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return _plain(tomllib.load(handle))
    except FileNotFoundError:
        raise InputFileError(path, "config file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise InputFileError(path, f"not valid TOML ({error})") from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return value


# -- overrides ---------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A command-line value: TOML syntax when it parses (``3e-4``, ``true``, ``[1, 2]``, ``"x"``),
    a plain number for forms TOML lacks (``.5``), else the bare text as a string (``adamw``)."""
    text = text.strip()
    try:
        return _plain(tomllib.loads(f"v = {text}")["v"])
    except tomllib.TOMLDecodeError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optimizer.lr=3e-4"`` -> (["optimizer", "lr"], 0.0003)."""
    key, sep, value = item.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not all(keys):
        raise NodulekitError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.optimizer.lr=3e-4")
    return keys, parse_value(value)


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> Config:
    """A new config with ``overrides`` applied (``["a.b=1"]``, or ``{"a.b": 1}`` / ``{"a": {"b": 1}}``).

    A key must already exist (a typo is an error listing the known keys), except below
    :data:`OPEN_TABLES`; a value must keep the existing type (an int is accepted for a float).
    """
    out = copy.deepcopy(dict(config))
    items = ([parse_override(o) for o in overrides] if not isinstance(overrides, Mapping)
             else [(k.split("."), v) for k, v in overrides.items()])
    for keys, value in items:
        _set_path(out, keys, value)
    return out


def _set_path(config: Config, keys: list[str], value: Any) -> None:
    dotted = ".".join(keys)
    table = config
    open_table = any(dotted.startswith(prefix + ".") for prefix in OPEN_TABLES)
    for depth, key in enumerate(keys[:-1]):
        nxt = table.get(key)
        if nxt is None and open_table:
            nxt = table[key] = {}
        if not isinstance(nxt, dict):
            raise NodulekitError(f"--set {dotted}: '{'.'.join(keys[:depth + 1])}' is not a table of the config")
        table = nxt
    leaf = keys[-1]
    if leaf not in table and not open_table:
        known = ", ".join(sorted(table)) or "none"
        raise NodulekitError(f"--set {dotted}: unknown key '{leaf}' (known here: {known})")
    table[leaf] = _coerce(dotted, table.get(leaf), value)


def _coerce(dotted: str, old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        return deep_merge(old, new)
    if old is None or isinstance(new, type(old)) and not (isinstance(new, bool) != isinstance(old, bool)):
        return new
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    raise NodulekitError(f"--set {dotted}={_toml_value(new)}: expected a {type(old).__name__} "
                         f"like {_toml_value(old)}")


def resolve_config(defaults: Sequence[Mapping[str, Any]], files: Sequence[Path] = (),
                   overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """Merge default layers, then config files, then ``--set`` overrides (:data:`ENGINE_DEFAULTS` first)."""
    config: Config = copy.deepcopy(ENGINE_DEFAULTS)
    for layer in defaults:
        config = deep_merge(config, layer)
    for path in files:
        config = deep_merge(config, load_toml(path))
    return apply_overrides(config, overrides)


def phase_config(config: Mapping[str, Any], phase_name: str) -> Config:
    """The settings of one phase: ``[phases.<name>]`` deep-merged over ``[train]`` and the
    top-level :data:`PHASE_KEYS` (``batch_size``, ``optimizer``, ``scheduler``, ``early_stopping``)."""
    base = {**config.get("train", {}), **{k: config[k] for k in PHASE_KEYS if k in config}}
    return deep_merge(base, config.get("phases", {}).get(phase_name, {}))


# -- TOML writer -------------------------------------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps_toml(config: Mapping[str, Any]) -> str:
    """TOML text of a config (tables as ``[a.b]`` sections; ``tomllib.loads`` gives it back)."""
    lines: list[str] = []
    _write_table(lines, [], config)
    return "\n".join(lines).lstrip("\n") + "\n"


def save_config(path: Path, config: Mapping[str, Any]) -> None:
    """Write ``config`` as TOML atomically."""
    atomic_write_text(Path(path), dumps_toml(config))


def _write_table(lines: list[str], prefix: list[str], table: Mapping[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    if prefix and (scalars or not tables):
        lines.append("")
        lines.append(f"[{'.'.join(_toml_key(k) for k in prefix)}]")
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _write_table(lines, [*prefix, key], value)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Path):
        return _toml_string(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise NodulekitError(f"cannot write {type(value).__name__} value {value!r} to a TOML config")


def check_config(config: Mapping[str, Any]) -> None:
    """A one-line error when a resolved config leaves the convention: unknown top-level keys
    (:data:`TOP_LEVEL_KEYS`), an unknown ``augmentation.mode``."""
    unknown = sorted(set(config) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise NodulekitError(f"config: unknown top-level key(s) {unknown}; a training config has "
                             f"{', '.join(TOP_LEVEL_KEYS)} (docs/training.md)")
    mode = config.get("augmentation", {}).get("mode", "offline")
    if mode not in AUGMENTATION_MODES:
        raise NodulekitError(f"augmentation.mode = {mode!r}: expected one of {', '.join(AUGMENTATION_MODES)}")
