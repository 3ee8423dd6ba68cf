"""Schema of the nodule store ``WORKDIR/consensus-label/nodules.h5`` (this module owns it).

::

    /nodules/<series_uid>/<nodule_id>/      one group per nodule
        consensus      bool (nz, ny, nx)          in the nodule's frame bbox_zyx
        agreement      float32 (nz, ny, nx)       fraction of the nodule's reads per voxel
        reader_masks   bool (n_reads, nz, ny, nx)
        attrs: bbox_zyx int (3, 2) inclusive (slice, row, column), read_index int (n_reads,)
               (index in the scan's reads), reader_ids int (n_reads,) (-1 = unknown),
               characteristics int8 (n_reads, 9) (0 = not rated), clevel
    /table/<column>                         one dataset per column of nodules.csv, one row per
                                            nodule, in the order of the CSV
    attrs: schema, columns_json, params_json, nodulekit_* provenance

Per-scan parts (``parts/<series_uid>.h5``, the stage's journal items) use the same ``/nodules``
layout plus ``rows_json`` (that scan's table rows); :func:`assemble_store` merges them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from nodulekit.errors import InputFileError
from nodulekit.io.hdf5_table import open_store, table_columns, write_table
from nodulekit.io.hdf5_table import read_table as read_table_group
from nodulekit.atomic import atomic_path

NODULE_SCHEMA = 1


@dataclass
class NoduleRecord:
    """One nodule's arrays as stored (see the module docstring)."""

    series_uid: str
    nodule_id: int
    bbox_zyx: np.ndarray
    consensus: np.ndarray
    agreement: np.ndarray
    reader_masks: np.ndarray
    read_index: np.ndarray
    reader_ids: np.ndarray
    characteristics: np.ndarray
    clevel: float


def _write_nodule(parent: h5py.Group, rec: NoduleRecord) -> None:
    g = parent.require_group(rec.series_uid).create_group(str(rec.nodule_id))
    opts = {"compression": "lzf"} if rec.reader_masks.size > 4096 else {}
    g.create_dataset("consensus", data=rec.consensus, **opts)
    g.create_dataset("agreement", data=rec.agreement.astype(np.float32), **opts)
    g.create_dataset("reader_masks", data=rec.reader_masks, **opts)
    g.attrs["bbox_zyx"] = np.asarray(rec.bbox_zyx, dtype=np.int64)
    g.attrs["read_index"] = np.asarray(rec.read_index, dtype=np.int64)
    g.attrs["reader_ids"] = np.asarray(rec.reader_ids, dtype=np.int64)
    g.attrs["characteristics"] = np.asarray(rec.characteristics, dtype=np.int8)
    g.attrs["clevel"] = float(rec.clevel)


def write_part(path: Path, records: Sequence[NoduleRecord], rows: list[dict[str, Any]]) -> None:
    """One scan's nodules and table rows, written atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = NODULE_SCHEMA
            f.attrs["rows_json"] = json.dumps(rows, default=_json_default)
            nodules = f.create_group("nodules")
            for rec in records:
                _write_nodule(nodules, rec)


def read_part_rows(path: Path) -> list[dict[str, Any]]:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["rows_json"])


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def assemble_store(path: Path, part_paths: Sequence[Path], rows: list[dict[str, Any]],
                   attrs: Mapping[str, Any]) -> None:
    """The final nodule store from the per-scan parts and the full table, atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as out:
            out.attrs["schema"] = NODULE_SCHEMA
            for key, value in attrs.items():
                out.attrs[key] = value
            nodules = out.create_group("nodules")
            for part in part_paths:
                with h5py.File(part, "r") as f:
                    for series_uid in f["nodules"]:
                        f.copy(f["nodules"][series_uid], nodules, name=series_uid)
            write_table(out, rows, table_columns(rows))


def _open(path: Path) -> h5py.File:
    return open_store(path, NODULE_SCHEMA, "nodule")


def read_table(path: Path) -> dict[str, np.ndarray]:
    """The nodule table as ``{column: array}`` (strings decoded)."""
    with _open(path) as f:
        return read_table_group(f)


def read_nodule(path: Path, series_uid: str, nodule_id: int) -> NoduleRecord:
    """One nodule's masks and per-reader data."""
    with _open(path) as f:
        try:
            g = f["nodules"][series_uid][str(nodule_id)]
        except KeyError:
            raise InputFileError(path, f"no nodule {series_uid}/{nodule_id}") from None
        a = g.attrs
        return NoduleRecord(series_uid, int(nodule_id), a["bbox_zyx"], g["consensus"][()], g["agreement"][()],
                            g["reader_masks"][()], a["read_index"], a["reader_ids"], a["characteristics"],
                            float(a["clevel"]))
