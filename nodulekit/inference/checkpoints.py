"""Finding and checking a trained model's weights: run folders, checkpoint files, format versions.

A run folder (:mod:`nodulekit.training.runs`) holds ``run.json`` (the model name, folds, stores,
the versions it was trained with), ``config.toml`` (the resolved config; its ``model`` table
builds the network) and the weights::

    WORKDIR/runs/<model>-fold<k>-<UTC>/model.pt              final weights (after every phase)
    WORKDIR/runs/<model>-fold<k>-<UTC>/checkpoints/model.pt  (accepted too)
    WORKDIR/runs/<model>-fold<k>-<UTC>/checkpoints/best-<phase>.pt, last.pt, epoch-*.pt

Every one is written by :func:`nodulekit.training.checkpoint.save_checkpoint`: a dict with
``format`` (:data:`~nodulekit.training.checkpoint.CHECKPOINT_FORMAT`), ``model`` (the
state_dict) and ``config``, loaded here with ``torch.load(weights_only=True)`` (no code runs).

Checks, each a one-line :class:`~nodulekit.errors.NodulekitError`:

- the path is a run folder (``run.json``) or a ``.pt`` file inside one (beside ``run.json`` or in
  its ``checkpoints/``); the run has ``config.toml``; a run folder has final weights;
- the checkpoint's ``format`` is the one this nodulekit reads (else: written by an incompatible
  version, named from run.json's ``environment.nodulekit``);
- the checkpoint's ``model`` table equals config.toml's (else: a checkpoint of another run);
- the state_dict fits the network built from the config: same keys and shapes (else: weights of
  another model, or of an incompatible nodulekit version).
"""
from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nodulekit.errors import NodulekitError

RUN_JSON = "run.json"
CONFIG_TOML = "config.toml"
FINAL_WEIGHTS = ("model.pt", "checkpoints/model.pt")
#: Model-table keys naming weights the factory would load while building (the checkpoint holds
#: every weight, so they are not loaded at inference): MT-Net's ``pretrained``, dgnet's
#: ``transfer.init_from``.
BUILD_TIME_WEIGHTS = (("pretrained",), ("transfer", "init_from"))


def locate(path: Path) -> tuple[Path, Path]:
    """``(run folder, weights file)`` of ``path``: a run folder or a checkpoint file inside one."""
    path = Path(path)
    if not path.exists():
        raise NodulekitError(f"{path}: not found (give a training run folder or a checkpoint .pt inside one)")
    if path.is_dir():
        if not (path / RUN_JSON).is_file():
            raise NodulekitError(f"{path}: not a training run folder (no {RUN_JSON}); give WORKDIR/runs/<run> "
                                 "or a checkpoint file inside it")
        for name in FINAL_WEIGHTS:
            if (path / name).is_file():
                return path, path / name
        others = sorted(p.name for p in (path / "checkpoints").glob("*.pt")) if (path / "checkpoints").is_dir() else []
        status = read_run_json(path).get("status", "unknown")
        hint = (f"; pass one of its checkpoints instead: {', '.join('checkpoints/' + o for o in others)}"
                if others else "")
        raise NodulekitError(f"{path}: run has no final weights (model.pt; status '{status}'){hint}")
    for run_dir in (path.parent, path.parent.parent):
        if (run_dir / RUN_JSON).is_file():
            return run_dir, path
    raise NodulekitError(f"{path}: not inside a training run folder (no {RUN_JSON} beside it or one level up); "
                         "the run's config.toml is needed to build the model")


def read_run_json(run_dir: Path) -> dict[str, Any]:
    try:
        value = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise NodulekitError(f"{Path(run_dir) / RUN_JSON}: unreadable ({error})") from None
    if not isinstance(value, dict) or not value.get("model"):
        raise NodulekitError(f"{Path(run_dir) / RUN_JSON}: not a training run record (no 'model')")
    return value


def read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_TOML
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise NodulekitError(f"{path}: missing; the run's resolved config is needed to build the model") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise NodulekitError(f"{path}: unreadable ({error})") from None
    if not isinstance(config.get("model"), dict):
        raise NodulekitError(f"{path}: has no [model] table")
    return config


def trained_with(meta: Mapping[str, Any]) -> str:
    """The nodulekit version a run was trained with (run.json ``environment.nodulekit``), or "unknown"."""
    env = meta.get("environment") or meta.get("versions") or {}
    return str(env.get("nodulekit", "unknown")) if isinstance(env, Mapping) else "unknown"


def read_weights(path: Path, meta: Mapping[str, Any], device: str = "cpu") -> dict[str, Any]:
    """The checkpoint payload (``torch.load(weights_only=True)``) after the format check."""
    import torch

    from nodulekit import __version__
    from nodulekit.training.checkpoint import CHECKPOINT_FORMAT

    try:
        payload = _load_mapped(path, device)
    except Exception as error:  # unpickling errors come in many types
        raise NodulekitError(f"{path}: not a readable nodulekit checkpoint ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(payload, dict) or "format" not in payload or not isinstance(payload.get("model"), Mapping):
        raise NodulekitError(f"{path}: not a nodulekit weights checkpoint (no 'format' and 'model' state_dict)")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise NodulekitError(f"{path}: checkpoint format {payload['format']!r} (trained with nodulekit "
                             f"{trained_with(meta)}); nodulekit {__version__} reads format {CHECKPOINT_FORMAT}: "
                             "use the nodulekit version that wrote it, or retrain")
    return payload


def _load_mapped(path: Path, device: str) -> Any:
    """``torch.load(weights_only=True)`` with the file memory-mapped (a private mapping: the tensors
    are read from the page cache without a copy and changes stay in memory; MT-Net's 250 MB took
    0.24-0.36 s instead of 0.42-0.57 s); files that cannot be mapped (the legacy non-zip format) are
    read the usual way, so their error is torch's usual one."""
    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location=device, weights_only=True)


def inference_model_table(model_table: Mapping[str, Any]) -> dict[str, Any]:
    """The config's ``model`` table without the weights loaded at build time (:data:`BUILD_TIME_WEIGHTS`)."""
    table = copy.deepcopy(dict(model_table))
    for keys in BUILD_TIME_WEIGHTS:
        holder = table
        for key in keys[:-1]:
            holder = holder.get(key) if isinstance(holder.get(key), dict) else None
            if holder is None:
                break
        if holder is not None and keys[-1] in holder:
            holder[keys[-1]] = [] if isinstance(holder[keys[-1]], list) else ""
    return table


def first_difference(a: Any, b: Any, where: str = "model") -> str | None:
    """The first dotted key where two config tables differ (``None`` when equal)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{where}.{key}"
            found = first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    return None if a == b else where


def check_same_config(path: Path, checkpoint_config: Any, config: Mapping[str, Any], run_dir: Path) -> None:
    """The checkpoint's ``model`` table must be the run's (else it belongs to another run)."""
    if not isinstance(checkpoint_config, Mapping) or not isinstance(checkpoint_config.get("model"), Mapping):
        return
    diff = first_difference(checkpoint_config["model"], config["model"])
    if diff:
        raise NodulekitError(f"{path}: its model config differs from {run_dir / CONFIG_TOML} at {diff}: "
                             "a checkpoint of another run or model?")


def check_state_dict(path: Path, state: Mapping[str, Any], expected: Mapping[str, Any], model_name: str,
                     meta: Mapping[str, Any]) -> None:
    """Same keys and shapes as the network built from the config, or one line saying how they differ."""
    from nodulekit import __version__

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    example = (missing or unexpected or reshaped)[0]
    raise NodulekitError(
        f"{path}: the weights do not fit model '{model_name}' built from its config ({len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(reshaped)} of another shape, e.g. '{example}'): a checkpoint of "
        f"another model, or of an incompatible nodulekit version (trained with {trained_with(meta)}, "
        f"this is {__version__})")
