"""The one place that decides skip / resume / redo for a stage.

Usage inside a stage::

    with StageRun(workdir, spec, force=force) as run:
        if run.up_to_date:
            return load_result(run)
        run.start(n_items=len(items))
        for item in items:
            if item.key in run.done_items():
                continue
            write_item_atomically(item)          # data durable first ...
            run.record_item(item.key, summary)   # ... then marked done
        write_aggregate_outputs()
        run.finish(outputs=["summary.json"])

The manifest ``WORKDIR/<stage>/stage.json`` is the stage's lock entry: fingerprint, parameters,
upstream fingerprints, state (``running`` until :meth:`StageRun.finish`, Snakemake's
"incomplete" marker) and timestamps.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nodulekit import __version__
from nodulekit.errors import NodulekitError
from nodulekit.atomic import atomic_write_json, remove_partials
from nodulekit.pipeline.journal import ItemJournal
from nodulekit.pipeline.lock import StageLock
from nodulekit.pipeline.spec import StageSpec, canonical_json

MANIFEST_NAME = "stage.json"
JOURNAL_NAME = ".items.jsonl"
STATE_RUNNING = "running"
STATE_COMPLETE = "complete"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stage_dir(workdir: Path, stage_name: str) -> Path:
    return Path(workdir) / stage_name


def read_manifest(workdir: Path, stage_name: str) -> dict[str, Any] | None:
    """The stage's manifest, or None when the stage never started (or the file is unreadable)."""
    path = stage_dir(workdir, stage_name) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def upstream_fingerprints(workdir: Path, spec: StageSpec) -> dict[str, str]:
    """Fingerprints of the complete upstream stages; a clear error when one is not complete."""
    fingerprints: dict[str, str] = {}
    for name in spec.upstream:
        manifest = read_manifest(workdir, name)
        if manifest is None or manifest.get("state") != STATE_COMPLETE:
            state = "has not run" if manifest is None else "is not finished"
            raise NodulekitError(
                f"{stage_dir(workdir, name)}: stage '{spec.name}' needs stage '{name}', which "
                f"{state}; run `nodulekit {name}` on this workdir first"
            )
        fingerprints[name] = manifest["fingerprint"]
    return fingerprints


@dataclass
class Provenance:
    """What an output records about how it was made (stored as HDF5 attributes)."""

    stage: str
    fingerprint: str
    params_json: str
    upstream_json: str
    nodulekit_version: str
    created_utc: str

    def as_attrs(self) -> dict[str, str]:
        """HDF5 attributes, each named ``nodulekit_<field>`` (``nodulekit_version`` keeps its name)."""
        return {key if key.startswith("nodulekit_") else f"nodulekit_{key}": value
                for key, value in self.__dict__.items()}


class StageRun:
    """Context manager holding a stage's lock while it decides and does its work."""

    def __init__(self, workdir: Path, spec: StageSpec, *, force: bool = False) -> None:
        self.workdir = Path(workdir)
        self.spec = spec
        self.force = force
        self.dir = stage_dir(self.workdir, spec.name)
        self._lock = StageLock(self.dir, spec.name)
        self.upstream: dict[str, str] = {}
        self.fingerprint = ""
        self.up_to_date = False
        self.resuming = False
        self.journal: ItemJournal | None = None
        self._manifest: dict[str, Any] = {}

    # -- deciding -----------------------------------------------------------------------
    def __enter__(self) -> "StageRun":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            self._decide()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _decide(self) -> None:
        self.upstream = upstream_fingerprints(self.workdir, self.spec)
        self.fingerprint = self.spec.fingerprint(self.upstream)
        self.journal = ItemJournal(self.dir / JOURNAL_NAME, self.fingerprint)
        previous = read_manifest(self.workdir, self.spec.name) or {}
        same = previous.get("fingerprint") == self.fingerprint and not self.force
        outputs_present = all((self.dir / rel).exists() for rel in previous.get("outputs", []))
        if same and previous.get("state") == STATE_COMPLETE and outputs_present:
            self.up_to_date = True
            self._manifest = previous
            return
        remove_partials(self.dir)
        self.resuming = same and previous.get("state") == STATE_RUNNING
        if not self.resuming:
            self.journal.reset()

    # -- doing --------------------------------------------------------------------------
    def start(self, n_items: int | None = None) -> None:
        """Mark the stage as running (before any output is written)."""
        self._manifest = {
            "stage": self.spec.name,
            "code_version": self.spec.code_version,
            "fingerprint": self.fingerprint,
            "params": json.loads(canonical_json(dict(self.spec.params))),
            "upstream": self.upstream,
            "input_key": self.spec.input_key,
            "state": STATE_RUNNING,
            "n_items": n_items,
            "outputs": [],
            "nodulekit_version": __version__,
            "started_utc": utc_now(),
            "finished_utc": None,
            "pid": os.getpid(),
        }
        atomic_write_json(self.dir / MANIFEST_NAME, self._manifest)

    def done_items(self) -> dict[str, Any]:
        assert self.journal is not None
        return self.journal.done()

    def record_item(self, item: str, result: Any = None) -> None:
        """Mark one item done; call only after its data is durably written."""
        assert self.journal is not None
        self.journal.record(item, result)

    def finish(self, outputs: list[str], summary: dict[str, Any] | None = None) -> None:
        """Mark the stage complete; ``outputs`` are paths relative to the stage folder."""
        self._manifest.update(
            state=STATE_COMPLETE, outputs=sorted(outputs), finished_utc=utc_now(), pid=None
        )
        if summary is not None:
            self._manifest["summary"] = summary
        atomic_write_json(self.dir / MANIFEST_NAME, self._manifest)

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    def provenance(self) -> Provenance:
        return Provenance(
            stage=self.spec.name,
            fingerprint=self.fingerprint,
            params_json=canonical_json(dict(self.spec.params)),
            upstream_json=canonical_json(self.upstream),
            nodulekit_version=__version__,
            created_utc=utc_now(),
        )
