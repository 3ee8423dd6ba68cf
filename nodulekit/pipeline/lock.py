"""One run of a stage per workdir at a time, with an OS lock that dies with its process.

``fcntl.flock`` is released by the kernel when the holder exits, even after ``kill -9``,
so a crashed run never leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from nodulekit.errors import StageLockedError


class StageLock:
    """Exclusive, non-blocking lock on ``<stage dir>/.lock``."""

    def __init__(self, stage_dir: Path, stage_name: str) -> None:
        self.path = Path(stage_dir) / ".lock"
        self.stage_name = stage_name
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StageLockedError(
                f"{self.path.parent}: stage '{self.stage_name}' is already running on this "
                f"workdir (pid {holder}); wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StageLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
