"""Training runs as the evaluation sees them: ``WORKDIR/runs/<run>/`` with ``run.json`` and
``config.toml`` (written by :mod:`nodulekit.training`).

What is read from ``run.json`` (everything else is kept in :attr:`RunInfo.meta` and shown in
the report):

- ``model`` (str): the registered model name, e.g. ``"mtnet"``; picks the predictor.
- held-out folds: ``test_fold`` if present, else ``fold``, else ``folds`` (an int or a list
  of ints). A cross-validation run that holds several models (one per fold) lists them all.
  ``fold: null`` (trained on every fold) has nothing held out and cannot be evaluated.
- ``stores``: the patch stores the run used, as a list or a ``{name: ...}`` dict of paths or
  of records ``{"path": ..., "augmented": bool}`` (what :mod:`nodulekit.training.runs` writes).
  Relative paths are relative to WORKDIR, then to the run folder; a folder means
  ``<folder>/patches.h5``. ``eval_store`` (a path) overrides the choice below.
- time: ``started_utc``, ``created_utc`` or ``finished_utc`` (ISO text) orders runs for
  "the most recent run" (as training's ``latest_run``); without them, run.json's mtime.

Evaluation store (the one whose held-out rows are predicted): ``eval_store``; else the dict
entry named ``eval``, ``test``, ``crop`` or ``patches``; else the first store not marked
``augmented`` (nor under ``WORKDIR/augment/``); else the first store. Augmented copies are
never scored: rows flagged by :func:`nodulekit.io.patch_store.augmented_flags` are left out (an augmented store also
carries the originals, with ``is_augmented = false``).
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodulekit.errors import InputFileError, NodulekitError

RUNS_DIR = "runs"
RUN_JSON = "run.json"
CONFIG_TOML = "config.toml"
_EVAL_STORE_NAMES = ("eval", "test", "crop", "patches")
_NOT_EVAL_NAMES = ("train", "augment", "augmented")
_TIME_KEYS = ("started_utc", "created_utc", "finished_utc")


@dataclass(frozen=True)
class RunInfo:
    """One training run: its folder, model, held-out folds, stores, config and run.json."""

    name: str
    dir: Path
    model: str
    folds: tuple[int, ...]
    stores: dict[str, Path]
    eval_store: Path
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def runs_dir(workdir: Path) -> Path:
    return Path(workdir) / RUNS_DIR


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(path, "not found (a training run folder has run.json)") from None
    except json.JSONDecodeError as error:
        raise InputFileError(path, f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise InputFileError(path, "expected a JSON object")
    return value


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise InputFileError(path, f"not valid TOML ({error})") from None


def _folds(meta: dict[str, Any], path: Path) -> tuple[int, ...]:
    for key in ("test_fold", "fold", "folds"):
        if key not in meta:
            continue
        value = meta[key]
        if value is None:
            raise InputFileError(path, f"'{key}' is null: the run trained on every fold, nothing is held out "
                                       "to evaluate on")
        values = value if isinstance(value, list) else [value]
        try:
            return tuple(int(v) for v in values)
        except (TypeError, ValueError):
            raise InputFileError(path, f"'{key}' must be an int or a list of ints, got {value!r}") from None
    raise InputFileError(path, "has no held-out fold ('test_fold', 'fold' or 'folds')")


def _store_entries(meta: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(name, path text, augmented flag or None) of each store entry of run.json."""
    raw = meta.get("stores") or {}
    items = raw.items() if isinstance(raw, dict) else ((f"store{i}", v) for i, v in enumerate(raw))
    out = []
    for name, value in items:
        text = value.get("path") if isinstance(value, dict) else value
        flag = value.get("augmented") if isinstance(value, dict) else None
        if text:
            out.append((str(name), str(text), None if flag is None else bool(flag)))
    return out


def _resolve(text: str, workdir: Path, run_dir: Path) -> Path:
    path = Path(text)
    if not path.is_absolute():
        path = next((base / path for base in (workdir, run_dir) if (base / path).exists()), workdir / path)
    return path if path.suffix == ".h5" else path / "patches.h5"


def _looks_augmented(name: str, flag: bool | None, path: Path, workdir: Path) -> bool:
    if flag is not None:
        return flag
    return path.resolve().is_relative_to((workdir / "augment").resolve()) or name.lower() in _NOT_EVAL_NAMES


def _eval_store(meta: dict[str, Any], workdir: Path, run_dir: Path) -> Path:
    if meta.get("eval_store"):
        return _resolve(str(meta["eval_store"]), workdir, run_dir)
    entries = [(name, _resolve(text, workdir, run_dir), flag) for name, text, flag in _store_entries(meta)]
    if not entries:
        raise InputFileError(run_dir / RUN_JSON, "lists no patch store to evaluate on ('stores' or 'eval_store')")
    named = [path for name, path, _ in entries if name in _EVAL_STORE_NAMES]
    plain = [path for name, path, flag in entries if not _looks_augmented(name, flag, path, workdir)]
    return (named or plain or [entries[0][1]])[0]


def load_run(workdir: Path, run_dir: Path) -> RunInfo:
    """Read a run folder (run.json, config.toml) into a :class:`RunInfo`."""
    workdir, run_dir = Path(workdir), Path(run_dir)
    path = run_dir / RUN_JSON
    meta = _read_json(path)
    if not meta.get("model"):
        raise InputFileError(path, "has no 'model'")
    stores = {name: _resolve(text, workdir, run_dir) for name, text, _ in _store_entries(meta)}
    return RunInfo(name=run_dir.name, dir=run_dir, model=str(meta["model"]), folds=_folds(meta, path),
                   stores=stores, eval_store=_eval_store(meta, workdir, run_dir),
                   config=_read_config(run_dir / CONFIG_TOML), meta=meta)


def _run_time(run_dir: Path) -> tuple[str, float]:
    try:
        meta = json.loads((run_dir / RUN_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        meta = {}
    stamp = next((str(meta[k]) for k in _TIME_KEYS if meta.get(k)), "")
    return stamp, (run_dir / RUN_JSON).stat().st_mtime


def list_runs(workdir: Path) -> list[Path]:
    """Run folders (those with run.json) under WORKDIR/runs, oldest first."""
    root = runs_dir(workdir)
    found = [p for p in root.iterdir() if (p / RUN_JSON).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: (*_run_time(p), p.name))


def resolve_run(workdir: Path, run: str | Path | None) -> Path:
    """The folder of ``run`` (a name under WORKDIR/runs or a path); None: the most recent run."""
    if run is None:
        runs = list_runs(workdir)
        if not runs:
            raise NodulekitError(f"{runs_dir(workdir)}: no training runs (folders with {RUN_JSON}); "
                                 f"run `nodulekit train` first or give --run")
        return runs[-1]
    candidates = [runs_dir(workdir) / str(run), Path(run)]
    for candidate in candidates:
        if (candidate / RUN_JSON).is_file():
            return candidate
    raise NodulekitError(f"run '{run}' not found: no {RUN_JSON} in {candidates[0]} or {candidates[1]}")


def run_key(run: RunInfo) -> str:
    """Fingerprint of what a run's predictions depend on: run.json, config.toml, checkpoints.

    Checkpoint files enter by name, size and modification time (not content: they can be
    gigabytes), so retraining into the same folder changes the key.
    """
    digest = hashlib.sha256()
    for name in (RUN_JSON, CONFIG_TOML):
        path = run.dir / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b""))
    checkpoints = run.dir / "checkpoints"
    if checkpoints.is_dir():
        for path in sorted(p for p in checkpoints.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(run.dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]
