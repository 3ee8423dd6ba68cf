"""``nodulekit status``: for each stage, missing / partial (n of m) / up to date / stale (why)."""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodulekit.pipeline.journal import ItemJournal
from nodulekit.pipeline.run import (
    JOURNAL_NAME,
    MANIFEST_NAME,
    STATE_COMPLETE,
    read_manifest,
    stage_dir,
)
from nodulekit.pipeline.spec import CODE_VERSIONS, STAGE_ORDER, base_stage

MISSING, PARTIAL, UP_TO_DATE, STALE = "missing", "partial", "up to date", "stale"


@dataclass
class StageStatus:
    stage: str
    state: str
    reasons: list[str] = field(default_factory=list)
    n_done: int | None = None
    n_items: int | None = None
    running: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    finished_utc: str | None = None

    @property
    def label(self) -> str:
        """A one-line description such as ``partial (3 of 10)`` or ``stale (upstream changed)``."""
        if self.state == PARTIAL:
            text = f"partial ({self.n_done} of {self.n_items if self.n_items is not None else '?'})"
            return text + (", running now" if self.running else "")
        if self.state == STALE:
            return f"stale ({'; '.join(self.reasons)})"
        return self.state

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "label": self.label}


def _lock_is_held(folder: Path) -> bool:
    path = folder / ".lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _stale_reasons(workdir: Path, manifest: dict[str, Any]) -> list[str]:
    reasons: list[str] = []
    name = manifest["stage"]
    current_version = CODE_VERSIONS.get(base_stage(name))
    if current_version is not None and manifest.get("code_version") != current_version:
        reasons.append(f"code version {manifest.get('code_version')} -> {current_version}")
    for upstream_name, recorded in (manifest.get("upstream") or {}).items():
        upstream = read_manifest(workdir, upstream_name)
        if upstream is None:
            reasons.append(f"upstream '{upstream_name}' is missing")
        elif upstream.get("fingerprint") != recorded:
            reasons.append(f"upstream '{upstream_name}' changed since this stage ran")
        elif upstream.get("state") != STATE_COMPLETE:
            reasons.append(f"upstream '{upstream_name}' is being redone")
    folder = stage_dir(workdir, name)
    for rel in manifest.get("outputs", []):
        if not (folder / rel).exists():
            reasons.append(f"output {rel} is missing")
    return reasons


def stage_status(workdir: Path, stage: str) -> StageStatus:
    folder = stage_dir(workdir, stage)
    manifest = read_manifest(workdir, stage)
    running = _lock_is_held(folder)
    if manifest is None:
        return StageStatus(stage, MISSING, running=running)
    common = dict(
        params=manifest.get("params", {}),
        fingerprint=manifest.get("fingerprint"),
        finished_utc=manifest.get("finished_utc"),
        running=running,
    )
    if manifest.get("state") != STATE_COMPLETE:
        n_done = len(ItemJournal(folder / JOURNAL_NAME, manifest.get("fingerprint", "")).done())
        return StageStatus(stage, PARTIAL, n_done=n_done, n_items=manifest.get("n_items"), **common)
    reasons = _stale_reasons(workdir, manifest)
    state = STALE if reasons else UP_TO_DATE
    n_items = manifest.get("n_items")
    return StageStatus(stage, state, reasons, n_done=n_items, n_items=n_items, **common)


def _stage_names(workdir: Path, stage: str) -> list[str]:
    """``stage`` itself, or its instances (``crop/mtnet``, ...) when it runs once per model."""
    folder = workdir / stage
    if (folder / MANIFEST_NAME).exists() or not folder.is_dir():
        return [stage]
    instances = sorted(f"{stage}/{p.name}" for p in folder.iterdir() if (p / MANIFEST_NAME).exists())
    return instances or [stage]


def pipeline_status(workdir: Path) -> list[StageStatus]:
    """Status of every known stage (and stage instance), in pipeline order, plus unknown stage folders."""
    workdir = Path(workdir)
    names = [name for stage in STAGE_ORDER for name in _stage_names(workdir, stage)]
    if workdir.exists():
        extra = sorted(
            p.name for p in workdir.iterdir() if (p / MANIFEST_NAME).exists() and p.name not in names
        )
        names += extra
    return [stage_status(workdir, name) for name in names]
