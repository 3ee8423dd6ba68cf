"""Reader agreement (paper 003, Ni et al. 2022, Table 6): the model's Dice against each reader,
beside the readers' Dice against each other on the same nodules.

Input: the patch store's ``/reader_masks`` (each read's mask on the patch grid, see
:mod:`nodulekit.io.patch_store`) and the model's mask ``seg_prob >= threshold``.

Per patch (the rows of the segmentation table: patches whose consensus mask is not empty), with
the nodule's reads ``R1 .. Rn`` (``n = n_reader_masks``, in the order of the nodule store):

- ``reader_dice``: ``[Dice(model, R1), ..., Dice(model, Rn)]``;
- ``reader_pair_dice``: ``{"R1-R2": Dice(R1, R2), ...}`` for every pair (none when n < 2).

Dice is :func:`nodulekit.metrics.dice` (both masks empty = 1, one empty = 0): on a 2D slice or a
2.5D slab a reader who did not outline that slice has an empty mask there, so a model that does
scores 0 against that reader, as another reader would.

Aggregation (:func:`reader_agreement`), the way the segmentation table aggregates Dice: the mean
over patches (one patch per nodule for cube geometries; for 2D / 2.5D stores every slice or slab
of a nodule is a patch, as in the Dice of the segmentation table), with a patient-bootstrap CI
(:func:`nodulekit.evaluation.tables.mean_entry`, the settings of the other tables):

- ``model_vs_reader[Rk]``: Dice(model, Rk) over the patches whose nodule has a k-th read;
- ``model_vs_readers``: each patch's mean over its reads, then the mean over patches (n >= 1);
- ``reader_vs_others[Rk]``: each patch's mean Dice of Rk against the nodule's other reads (n >= 2);
- ``reader_pairs["Ra-Rb"]``: Dice(Ra, Rb) over the patches whose nodule has both reads;
- ``reader_vs_reader``: each patch's mean over its pairs, then the mean over patches (n >= 2);
- ``model_minus_reader_vs_reader``: per patch with n >= 2, its ``model_vs_readers`` minus its
  ``reader_vs_reader``, then the mean: the paired comparison on the same patches.

Each entry also counts its patches (``n``), nodules (``n_nodules``) and patients; a nodule with a
single read counts for the model-vs-reader cells only. ``R1`` is each nodule's first read, not
one radiologist: LIDC's readers are anonymous and their order is not stable between scans, so a
column pools the first reads of all nodules (paper 003 does not say how its R1-R4 were assigned).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np

from nodulekit.evaluation.predictions import PredictionStore
from nodulekit.evaluation.tables import CISettings, mean_entry
from nodulekit.io.patch_store import READER_ARRAY, READER_COUNT_COLUMN, PatchStore
from nodulekit.metrics import dice

Row = dict[str, Any]
READER_DICE = "reader_dice"
READER_PAIR_DICE = "reader_pair_dice"
_CHUNK_ROWS = 32


def reader_name(k: int) -> str:
    """``R1`` for the nodule's first read (k = 0)."""
    return f"R{k + 1}"


def pair_name(a: int, b: int) -> str:
    return f"{reader_name(a)}-{reader_name(b)}"


def reader_dice(pred: Any, readers: Sequence[Any]) -> dict[str, Any]:
    """One patch: the model's Dice against each read and the Dice of every pair of reads.

    ``pred``: binary mask; ``readers``: the reads' binary masks (same shape), in order.
    Returns ``{"reader_dice": [Dice(pred, R1), ...], "reader_pair_dice": {"R1-R2": ..., ...}}``.
    """
    pred = np.asarray(pred, dtype=bool)
    masks = [np.asarray(m, dtype=bool) for m in readers]
    return {READER_DICE: [float(dice(pred, m)) for m in masks],
            READER_PAIR_DICE: {pair_name(a, b): float(dice(masks[a], masks[b]))
                               for a, b in combinations(range(len(masks)), 2)}}


def add_reader_dice(rows: list[Row], pred: PredictionStore, store: PatchStore, threshold: float) -> bool:
    """Add ``reader_dice`` / ``reader_pair_dice`` to the rows (the predictions' order) that show a
    nodule and have reads; False (rows untouched) when the store has no reader masks or the
    model makes no segmentation."""
    if not (pred.has_seg and store.has_reader_masks and READER_COUNT_COLUMN in store.table):
        return False
    counts = np.asarray(store.table[READER_COUNT_COLUMN], dtype=np.int64)
    wanted = [r for r, row in enumerate(rows)
              if (row.get("truth_voxels") or 0) > 0 and counts[int(pred.store_index[r])] > 0]
    for start in range(0, len(wanted), _CHUNK_ROWS):
        chunk = np.asarray(wanted[start:start + _CHUNK_ROWS], dtype=np.int64)
        probs = pred.seg_prob(chunk)  # rows ascending (chunks of a sorted list)
        index = pred.store_index[chunk]
        readers = store.read(index, arrays=(READER_ARRAY,))[READER_ARRAY]
        for k, r in enumerate(chunk):
            rows[int(r)].update(reader_dice(probs[k] >= threshold, readers[k][:counts[int(index[k])]]))
    return True


def _mean_cell(values: list[float], members: list[Row], settings: CISettings) -> dict[str, Any]:
    """mean_entry of per-patch values, plus the number of nodules they come from."""
    groups = np.array([str(r.get("patient_id", i)) for i, r in enumerate(members)], dtype=object)
    entry = mean_entry(np.asarray(values, dtype=np.float64), groups, settings)
    entry["n_nodules"] = len({r.get("nodule_key") for r in members})
    return entry


def _cell(rows: Sequence[Row], value_of: Any, settings: CISettings) -> dict[str, Any]:
    members, values = [], []
    for row in rows:
        value = value_of(row)
        if value is not None and not math.isnan(value):
            members.append(row)
            values.append(value)
    return _mean_cell(values, members, settings)


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def _vs_others(row: Row, k: int) -> float | None:
    name = reader_name(k)
    return _mean([v for pair, v in row[READER_PAIR_DICE].items() if name in pair.split("-")])


def _difference(row: Row) -> float | None:
    model, readers = _mean(row[READER_DICE]), _mean(list(row[READER_PAIR_DICE].values()))
    return None if model is None or readers is None else model - readers


def reader_agreement(rows: Sequence[Row], settings: CISettings) -> dict[str, Any] | None:
    """Paper 003 Table 6 over the rows that have ``reader_dice`` (see the module docstring);
    None when no row has one."""
    scored = [r for r in rows if r.get(READER_DICE)]
    if not scored:
        return None
    n_slots = max(len(r[READER_DICE]) for r in scored)
    readers = [reader_name(k) for k in range(n_slots)]
    pairs = [pair_name(a, b) for a, b in combinations(range(n_slots), 2)]
    multi = [r for r in scored if len(r[READER_DICE]) >= 2]
    return {
        "readers": readers,
        "n": len(scored), "n_nodules": len({r.get("nodule_key") for r in scored}),
        "n_patients": len({r.get("patient_id") for r in scored}),
        "n_nodules_single_read": len({r.get("nodule_key") for r in scored if len(r[READER_DICE]) == 1}),
        "model_vs_reader": {name: _cell(scored, lambda r, k=k: r[READER_DICE][k] if k < len(r[READER_DICE])
                                        else None, settings) for k, name in enumerate(readers)},
        "model_vs_readers": _cell(scored, lambda r: _mean(r[READER_DICE]), settings),
        "reader_vs_others": {name: _cell(multi, lambda r, k=k: _vs_others(r, k) if k < len(r[READER_DICE])
                                         else None, settings) for k, name in enumerate(readers)},
        "reader_pairs": {pair: _cell(multi, lambda r, p=pair: r[READER_PAIR_DICE].get(p), settings)
                         for pair in pairs},
        "reader_vs_reader": _cell(multi, lambda r: _mean(list(r[READER_PAIR_DICE].values())), settings),
        "model_minus_reader_vs_reader": _cell(multi, _difference, settings),
    }


__all__ = ["READER_DICE", "READER_PAIR_DICE", "add_reader_dice", "pair_name", "reader_agreement", "reader_dice",
           "reader_name"]
