"""Write files so that a reader never sees a half-written one.

Write to a temporary name in the same folder, flush and fsync, then ``os.replace`` onto the
final name and fsync the folder, so a crash leaves either the old file or the new one.
Temporary names are hidden (``.NAME.PID.partial``), so folder scans such as DICOM discovery skip
them, and :func:`remove_partials` deletes leftovers when a stage starts again.

This module sits below every other one (the stage cache and the I/O libraries both use it).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

PARTIAL_SUFFIX = ".partial"


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(final_path: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``final_path``.

    ``durable``: fsync the file and its folder so the rename survives a power loss (stage
    outputs). Bulk writers whose completion is marked elsewhere (the phantom's DICOM files)
    pass False. On an exception the temporary file is removed and ``final_path`` is untouched.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = final_path.with_name(f".{final_path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        yield tmp_path
        if durable:
            fsync_file(tmp_path)
        os.replace(tmp_path, final_path)
        if durable:
            fsync_dir(final_path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(final_path: Path, text: str) -> None:
    with atomic_path(final_path) as tmp_path:
        tmp_path.write_text(text)


def atomic_write_json(final_path: Path, value: Any) -> None:
    atomic_write_text(final_path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def remove_partials(folder: Path) -> int:
    """Delete leftover temporary files below ``folder``; return how many were removed."""
    if not folder.exists():
        return 0
    removed = 0
    for path in folder.rglob(f"*{PARTIAL_SUFFIX}"):
        if path.is_file():
            path.unlink()
            removed += 1
    return removed
