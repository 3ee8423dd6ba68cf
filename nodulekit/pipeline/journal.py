"""Item-level progress of a stage: an append-only JSON-lines file, fsynced per item.

The caller writes an item's data durably first (see :mod:`nodulekit.atomic`) and
only then records the item here, so a recorded item always has its data. A torn last line
(power loss mid-write) is ignored on reading. Lines carry the stage fingerprint: lines from
another fingerprint do not count.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class ItemJournal:
    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint

    def done(self) -> dict[str, Any]:
        """Finished items of this fingerprint: ``{item key: result recorded with it}``."""
        results: dict[str, Any] = {}
        if not self.path.exists():
            return results
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from an interrupted write
            if isinstance(entry, dict) and entry.get("fingerprint") == self.fingerprint:
                results[entry["item"]] = entry.get("result")
        return results

    def record(self, item: str, result: Any = None) -> None:
        line = json.dumps({"item": item, "fingerprint": self.fingerprint, "result": result})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            if handle.tell() > 0 and not self._ends_with_newline():
                handle.write("\n")  # seal a torn line so this entry parses
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def reset(self) -> None:
        if self.path.exists():
            self.path.unlink()
