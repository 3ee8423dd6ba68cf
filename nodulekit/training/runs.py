"""Run folders: ``WORKDIR/runs/<model>-<fold>-<UTC timestamp>/`` and what they record.

A run folder holds::

    config.toml      the resolved config the run trains with (resume reads it back)
    run.json         model, fold, data stores with their fingerprints, versions, devices,
                     status (running | complete | interrupted | failed), progress, results
    log.csv          one row per epoch: losses, validation metrics, lr, seconds, images/s
    tensorboard/     TensorBoard events (when tensorboard is installed)
    checkpoints/     last.pt (resume point), best-<phase>.pt, epoch snapshots if asked
    model.pt         the final weights (after every phase)

The evaluation reads ``model``, ``fold``, ``stores`` and the ``*_utc`` times of run.json
(:mod:`nodulekit.evaluation.runs`). Only rank 0 writes here; nothing is written outside WORKDIR.
"""
from __future__ import annotations

import csv
import io
import json
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nodulekit import __version__
from nodulekit.atomic import atomic_write_json, atomic_write_text
from nodulekit.errors import NodulekitError

RUNS_DIR = "runs"
RUN_JSON = "run.json"
CONFIG_TOML = "config.toml"
LOG_CSV = "log.csv"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
FINAL_MODEL = "model.pt"
STATUSES = ("running", "complete", "interrupted", "failed")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fold_label(fold: int | None) -> str:
    return "all" if fold is None else f"fold{fold}"


def new_run_dir(workdir: Path, model_name: str, fold: int | None, now: datetime | None = None) -> Path:
    """Create and return a new run folder (a numbered suffix when the second is taken)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    root = Path(workdir) / RUNS_DIR
    base = f"{model_name}-{fold_label(fold)}-{stamp}"
    for n in range(1, 1000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise NodulekitError(f"{root}: cannot create a run folder named {base}")


def resolve_run(workdir: Path, run: str | Path) -> Path:
    """The folder of run ``run`` (a name under WORKDIR/runs, or a path inside it)."""
    root = (Path(workdir) / RUNS_DIR).resolve()
    path = Path(run)
    candidate = (path if path.is_absolute() else (root / path if len(path.parts) == 1 else Path.cwd() / path)).resolve()
    if not candidate.is_relative_to(root):
        raise NodulekitError(f"--resume {run}: not a run of this workdir (runs live in {root})")
    if not (candidate / RUN_JSON).is_file():
        raise NodulekitError(f"--resume {run}: {candidate} is not a run folder (no {RUN_JSON})")
    return candidate


def read_run_json(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as error:
        raise NodulekitError(f"{run_dir}: unreadable {RUN_JSON} ({error})") from None


def list_runs(workdir: Path, model_name: str | None = None) -> list[Path]:
    """Run folders of ``workdir`` (of one model when given), oldest first by start time."""
    root = Path(workdir) / RUNS_DIR
    runs = []
    for path in root.glob("*/" + RUN_JSON) if root.is_dir() else []:
        try:
            info = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if model_name is None or info.get("model") == model_name:
            runs.append((str(info.get("started_utc", "")), path.parent.name, path.parent))
    return [p for _, _, p in sorted(runs)]


def latest_run(workdir: Path, model_name: str | None = None) -> Path | None:
    """The most recently started run folder (of ``model_name`` when given), or None."""
    runs = list_runs(workdir, model_name)
    return runs[-1] if runs else None


# -- run.json ---------------------------------------------------------------------------------
def store_record(path: Path, workdir: Path) -> dict[str, Any]:
    """A patch store as run.json records it: path (relative to WORKDIR when inside), its stage
    fingerprint, a size/mtime digest, patch count and whether it holds augmented copies."""
    from nodulekit.io.patch_store import open_patch_store
    from nodulekit.pipeline.spec import files_digest
    from nodulekit.io.patch_store import augmented_flags

    path = Path(path)
    with open_patch_store(path) as store:
        fingerprint = str(store.attrs.get("nodulekit_fingerprint", ""))
        n = len(store)
        augmented = bool(augmented_flags(store.table).any())
    root = Path(workdir).resolve()
    shown = path.resolve().relative_to(root) if path.resolve().is_relative_to(root) else path.resolve()
    return {"path": str(shown), "fingerprint": fingerprint, "digest": files_digest([path.resolve()], root),
            "n_patches": n, "augmented": augmented}


def environment() -> dict[str, Any]:
    """Versions of Python, torch, numpy, h5py and nodulekit."""
    import h5py
    import numpy
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "h5py": h5py.__version__, "nodulekit": __version__, "platform": platform.platform()}


def device_record(kind: str, world_size: int) -> dict[str, Any]:
    import torch

    names = ([torch.cuda.get_device_name(i) for i in range(min(world_size, torch.cuda.device_count()))]
             if kind == "cuda" else [platform.processor() or platform.machine()])
    return {"kind": kind, "processes": world_size, "names": names}


class RunRecord:
    """``run.json`` of one run, rewritten atomically on every :meth:`update` (rank 0 only)."""

    def __init__(self, run_dir: Path, data: Mapping[str, Any] | None = None) -> None:
        self.dir = Path(run_dir)
        self.data: dict[str, Any] = dict(data or {})

    @classmethod
    def load(cls, run_dir: Path) -> "RunRecord":
        return cls(run_dir, read_run_json(run_dir))

    def update(self, **fields: Any) -> None:
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"run status {fields['status']!r} is not one of {STATUSES}")
        self.data.update(fields)
        atomic_write_json(self.dir / RUN_JSON, self.data)


# -- the per-epoch log ------------------------------------------------------------------------
FIRST_COLUMNS = ("phase", "epoch", "step")
LAST_COLUMNS = ("lr", "seconds", "data_seconds", "images_per_s")


def log_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Columns of the CSV log: phase, epoch, step, train_*, val_*, lr, seconds, data_seconds, images_per_s."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    middle = [c for c in seen if c not in FIRST_COLUMNS and c not in LAST_COLUMNS]
    middle.sort(key=lambda c: (not c.startswith("train_"), c))
    return [*FIRST_COLUMNS, *middle, *LAST_COLUMNS]


def write_log_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write every row (columns as :func:`log_columns`; missing values empty) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=log_columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    atomic_write_text(Path(path), buffer.getvalue())


def _csv_value(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_log_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class TensorBoardLog:
    """TensorBoard scalars when ``tensorboard`` is importable, else nothing."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._writer = None
            return
        self._writer = SummaryWriter(str(folder), purge_step=purge_step)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def add_row(self, row: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in FIRST_COLUMNS:
                self._writer.add_scalar(f"{row['phase']}/{key}", value, int(row["step"]))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
