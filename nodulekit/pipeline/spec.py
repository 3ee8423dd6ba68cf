"""What a stage is made from: its name, code version, parameters and upstream stages.

A stage's fingerprint is ``hash(name, code_version, params, upstream fingerprints, input key)``:
the same fingerprint means the stage's outputs would be identical, so a rerun can skip.
Only parameters that change the outputs belong in ``params`` (``--workers`` does not).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

#: The pipeline's stages in order; ``nodulekit status`` lists them in this order.
STAGE_ORDER: tuple[str, ...] = (
    "ingest",
    "consensus-label",
    "crop",
    "augment",
    "train",
    "evaluate",
)

#: Each stage's code version: bump it when a change to the stage's code changes its outputs,
#: so existing outputs show as stale and rerun.
CODE_VERSIONS: dict[str, int] = {
    "ingest": 1,
    "consensus-label": 3,  # 2: nodules.csv, cohorts.md published to WORKDIR/labels/; 3: label_luna16_texture
    "crop": 2,  # 2: per-reader masks on the patch grid (/reader_masks, column n_reader_masks)
    "augment": 2,  # 2: originals keep the crop store's reader masks
    "train": 1,
    "evaluate": 2,  # 2: reader agreement (paper 003 Table 6) in metrics.json and the report
}

FINGERPRINT_CHARS = 20


def base_stage(stage_name: str) -> str:
    """The stage kind of a stage name: ``crop/mtnet`` (crop's instance for mtnet) -> ``crop``.

    Stages that exist once per model (crop, augment, train) are named ``<stage>/<instance>`` and
    live in ``WORKDIR/<stage>/<instance>/``, so the patches of several models coexist.
    """
    return stage_name.split("/", 1)[0]


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot put {type(value).__name__} into stage parameters")


@dataclass(frozen=True)
class StageSpec:
    """A stage's declaration.

    ``params``: JSON-able values that determine the outputs.
    ``upstream``: names of the stages whose outputs this stage reads.
    ``input_key``: a digest of external inputs (e.g. the files of a LIDC download), or None.
    """

    name: str
    code_version: int
    params: Mapping[str, Any] = field(default_factory=dict)
    upstream: tuple[str, ...] = ()
    input_key: str | None = None

    def fingerprint(self, upstream_fingerprints: Mapping[str, str]) -> str:
        """The stage's fingerprint given its upstream stages' fingerprints."""
        missing = [name for name in self.upstream if name not in upstream_fingerprints]
        if missing:
            raise KeyError(f"no fingerprint for upstream stage(s) {missing}")
        payload = canonical_json(
            {
                "stage": self.name,
                "code_version": self.code_version,
                "params": dict(self.params),
                "upstream": {name: upstream_fingerprints[name] for name in self.upstream},
                "input_key": self.input_key,
            }
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:FINGERPRINT_CHARS]


def files_digest(paths: list[Path], root: Path) -> str:
    """A cheap key of a set of input files: relative path, size and mtime of each.

    Like DVC and weasel, this checks metadata rather than hashing gigabytes of pixels.
    """
    hasher = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        hasher.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return hasher.hexdigest()[:FINGERPRINT_CHARS]
