"""The predictions store (this module owns its schema): one HDF5 file per evaluated run,
``WORKDIR/runs/<run>/evaluation/predictions.h5``::

    /store_index        int64   (N,)              row of the patch store (the truth reference)
    /seg_prob           float16 (N, *patch_shape)  predicted foreground probability (if the
                                                   model segments); one patch per chunk, Blosc LZ4
    /class_prob/<task>  float32 (N, C)             class probabilities per classification task
    attrs: schema, kind = "nodulekit-predictions", provenance_json (run name, folder, model,
           held-out folds, run key, patch store path / key / preset / geometry, predictor,
           cache key), tasks_json ({task: C}), has_seg, patch_shape_json, created_utc,
           nodulekit_version

Rows are in the order the predictor produced them; ``store_index`` links each row to its
image, mask and table row in the patch store named in the provenance. Written atomically
(a temporary file renamed at the end), so a reader never sees a half-written store.
float16 keeps probabilities to about 3 significant digits (relative error < 5e-4), enough for
a 0.5 threshold and calibration plots, and halves the size.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from nodulekit import __version__
from nodulekit.atomic import atomic_path
from nodulekit.errors import InputFileError, NodulekitError
from nodulekit.evaluation.predictor import PredictionBatch, check_batch

PREDICTIONS_SCHEMA = 1
PREDICTIONS_KIND = "nodulekit-predictions"
_COMPRESSION = hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)


def _create_datasets(out: h5py.File, first: PredictionBatch, n_rows: int,
                     patch_shape: tuple[int, ...]) -> None:
    if first.seg_prob is not None:
        out.create_dataset("seg_prob", shape=(n_rows, *patch_shape), dtype=np.float16,
                           chunks=(1, *patch_shape), **_COMPRESSION)
    group = out.create_group("class_prob")
    for task, prob in first.class_prob.items():
        group.create_dataset(task, shape=(n_rows, prob.shape[1]), dtype=np.float32)


def _check_same_outputs(first: PredictionBatch, batch: PredictionBatch) -> None:
    same_tasks = {t: p.shape[1] for t, p in first.class_prob.items()} == \
        {t: p.shape[1] for t, p in batch.class_prob.items()}
    if (first.seg_prob is None) != (batch.seg_prob is None) or not same_tasks:
        raise NodulekitError("predictor: every batch must have the same outputs (seg_prob, tasks, classes)")


def write_predictions(path: Path, batches: Iterable[PredictionBatch], expected_indices: np.ndarray,
                      patch_shape: tuple[int, ...], provenance: Mapping[str, Any]) -> int:
    """Write the predictor's batches to ``path`` atomically; returns the number of rows.

    Every index of ``expected_indices`` must be predicted exactly once (else NodulekitError and
    nothing is written).
    """
    expected = np.unique(np.asarray(expected_indices, dtype=np.int64))
    n_rows = expected.size
    written = np.zeros(0, dtype=np.int64)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as out:
        store_index = out.create_dataset("store_index", shape=(n_rows,), dtype=np.int64)
        first: PredictionBatch | None = None
        start = 0
        for raw in batches:
            batch = check_batch(raw, patch_shape)
            if first is None:
                first = batch
                _create_datasets(out, batch, n_rows, patch_shape)
            _check_same_outputs(first, batch)
            stop = start + batch.indices.size
            if stop > n_rows:
                raise NodulekitError(f"predictor: more rows than the {n_rows} requested")
            store_index[start:stop] = batch.indices
            if batch.seg_prob is not None:
                out["seg_prob"][start:stop] = batch.seg_prob.astype(np.float16)
            for task, prob in batch.class_prob.items():
                out["class_prob"][task][start:stop] = prob
            written = np.r_[written, batch.indices]
            start = stop
        if first is None or not np.array_equal(np.sort(written), expected):
            missing = np.setdiff1d(expected, written).size
            raise NodulekitError(f"predictor: rows must cover the {n_rows} requested indices exactly once "
                                 f"({written.size} predicted, {missing} missing)")
        _write_attrs(out, first, patch_shape, provenance)
    return n_rows


def _write_attrs(out: h5py.File, first: PredictionBatch, patch_shape: tuple[int, ...],
                 provenance: Mapping[str, Any]) -> None:
    out.attrs["schema"] = PREDICTIONS_SCHEMA
    out.attrs["kind"] = PREDICTIONS_KIND
    out.attrs["provenance_json"] = json.dumps(dict(provenance), default=str)
    out.attrs["tasks_json"] = json.dumps({t: int(p.shape[1]) for t, p in first.class_prob.items()})
    out.attrs["has_seg"] = first.seg_prob is not None
    out.attrs["patch_shape_json"] = json.dumps(list(patch_shape))
    out.attrs["created_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.attrs["nodulekit_version"] = __version__


class PredictionStore:
    """Read access: ``store_index``, ``tasks``, ``has_seg``, ``provenance``, ``class_prob(task)``, ``seg_prob(rows)``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise InputFileError(self.path, f"cannot open as HDF5 ({error})") from None
        attrs = self._file.attrs
        if attrs.get("kind") != PREDICTIONS_KIND or attrs.get("schema") != PREDICTIONS_SCHEMA:
            self._file.close()
            raise InputFileError(self.path, f"not a nodulekit predictions store (schema {PREDICTIONS_SCHEMA})")
        self.provenance: dict[str, Any] = json.loads(attrs["provenance_json"])
        self.tasks: dict[str, int] = json.loads(attrs["tasks_json"])
        self.has_seg = bool(attrs["has_seg"])
        self.patch_shape = tuple(json.loads(attrs["patch_shape_json"]))
        self.created_utc = str(attrs["created_utc"])
        self.store_index: np.ndarray = self._file["store_index"][()]

    def __len__(self) -> int:
        return int(self.store_index.size)

    def class_prob(self, task: str) -> np.ndarray:
        """(N, C) float32 class probabilities of ``task``."""
        return self._file["class_prob"][task][()]

    def seg_prob(self, rows: slice | np.ndarray) -> np.ndarray:
        """(n, *patch_shape) float32 foreground probabilities of the given rows (sorted rows for arrays)."""
        if not self.has_seg:
            raise NodulekitError(f"{self.path}: the model made no segmentation")
        return self._file["seg_prob"][rows].astype(np.float32)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PredictionStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_predictions(path: Path) -> PredictionStore:
    return PredictionStore(path)


def cache_key_of(path: Path) -> str | None:
    """The cache key recorded in a predictions store, or None when absent or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["provenance_json"]).get("cache_key")
    except (OSError, KeyError, json.JSONDecodeError):
        return None
