"""The stage cache: the only place that decides skip / resume / redo (see STYLE.md)."""
from __future__ import annotations

from nodulekit.atomic import atomic_path, atomic_write_json, atomic_write_text
from nodulekit.pipeline.run import Provenance, StageRun, read_manifest, stage_dir
from nodulekit.pipeline.spec import CODE_VERSIONS, STAGE_ORDER, StageSpec, base_stage, files_digest
from nodulekit.pipeline.status import StageStatus, pipeline_status, stage_status

__all__ = [
    "CODE_VERSIONS",
    "STAGE_ORDER",
    "Provenance",
    "StageRun",
    "StageSpec",
    "StageStatus",
    "base_stage",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "files_digest",
    "pipeline_status",
    "read_manifest",
    "stage_dir",
    "stage_status",
]
