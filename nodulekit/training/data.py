"""Datasets over patch stores: fold/label selection, in-memory or per-batch reading, samplers.

Selection (:func:`select_split`), for cross-validation fold ``k``:

- ``train``: every row whose ``fold != k`` -- originals and, in an augmented store, the augmented
  copies (``is_augmented``) of those training-fold patients only.
- ``val``: rows with ``fold == k`` that are *not* augmented (validation reads originals only).
- ``all``: every row (``fold=None`` trains on everything, without validation).

Then rows are kept by ``kind`` (``data.kinds``, empty = all) and, for classification tasks
(``data.require_label``), rows whose label is -1 are dropped. :func:`split_datasets` builds both
sides and raises when one patient would be in both (folds are by patient, so this catches stores
whose fold columns disagree).

List the augmented store alone when it also carries the originals (``is_augmented = false``
rows, as ``nodulekit augment`` writes it), or the crop store and the augmented store together:
when a store without augmented rows (a crop store) is listed, the originals of the augmented
stores are skipped, so no patch is read twice. ``originals_only`` (post-training hooks) drops
every augmented copy.

Reading: when the selected patches fit in ``data.memory_budget_mb`` they are loaded once;
otherwise each batch is read from HDF5 (one chunk per patch), the file opened lazily in each
DataLoader worker. Both modes give identical batches::

    {"image": float32 (B, C, *spatial), "mask": float32 (B, C, *spatial) in {0, 1},
     "agreement": float32 (B, C, *spatial) in [0, 1], "label": int64 (B,), "index": int64 (B,),
     <name>: int64 (B,) for each entry ``name = column`` of data.labels}

``data.channels``: ``"add"`` puts a channel axis of 1 in front of the patch shape (2D (H, W) ->
(1, H, W), 3D (D, H, W) -> (1, D, H, W)); ``"first"`` reads the patch's first axis as channels
(2.5D slabs (S, H, W) or the nine views (9, H, W) -> C = S or 9). ``index`` is the position in the
dataset (:meth:`PatchDataset.row` gives its store and table row).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nodulekit.errors import NodulekitError
from nodulekit.io.patch_store import ARRAYS, PatchStore, augmented_flags, open_patch_store

Batch = dict[str, Any]
SPLITS = ("train", "val", "all")
_BYTES_PER_VOXEL = 4 + 1 + 4  # images float32, masks bool, agreement float32


@dataclass(frozen=True)
class DataParams:
    """The ``[data]`` section of a training config."""

    stores: tuple[Path, ...]
    label_column: str = "label"
    require_label: bool = False
    kinds: tuple[str, ...] = ()
    channels: str = "add"
    memory_budget_mb: float = 4096.0
    num_workers: int = -1  # -1: 0 when in memory, else min(4, CPUs)
    labels_by_name: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, data: Mapping[str, Any], workdir: Path | None = None) -> "DataParams":
        stores = tuple(resolve_store_path(s, workdir) for s in data.get("stores", []))
        if not stores:
            raise NodulekitError("data.stores is empty: name the patch store(s) to train on, "
                                 "e.g. --set 'data.stores=[\"augment/mtnet\"]'")
        if data.get("channels", "add") not in ("add", "first"):
            raise NodulekitError(f"data.channels = {data.get('channels')!r}: expected \"add\" or \"first\"")
        return cls(stores, str(data.get("label_column", "label")), bool(data.get("require_label", False)),
                   tuple(data.get("kinds", ())), str(data.get("channels", "add")),
                   float(data.get("memory_budget_mb", 4096)), int(data.get("num_workers", -1)),
                   dict(data.get("labels", {})))


def resolve_store_path(entry: str | Path, workdir: Path | None) -> Path:
    """A store entry -> its ``.h5`` file: relative entries are below ``workdir``; a folder means
    ``<folder>/patches.h5`` (``"augment/mtnet"`` -> ``WORKDIR/augment/mtnet/patches.h5``)."""
    path = Path(entry)
    if not path.is_absolute() and workdir is not None:
        path = Path(workdir) / path
    if path.suffix != ".h5":
        path = path / "patches.h5"
    return path


# -- selection ---------------------------------------------------------------------------------
def select_rows(table: Mapping[str, np.ndarray], split: str, fold: int | None, *, label_column: str = "label",
                require_label: bool = False, kinds: Sequence[str] = (), originals_only: bool = False,
                copies_only: bool = False) -> np.ndarray:
    """Row numbers (int64, ascending) of one store's table selected for ``split`` of ``fold``;
    ``originals_only`` / ``copies_only`` keep only the un-augmented / augmented rows."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    folds = np.asarray(table["fold"]).astype(np.int64)
    keep = np.ones(len(folds), dtype=bool)
    if split != "all":
        if fold is None:
            raise NodulekitError(f"the {split} split needs a fold")
        keep &= folds != fold if split == "train" else (folds == fold) & ~augmented_flags(table)
    if originals_only or copies_only:
        augmented = augmented_flags(table)
        keep &= (~augmented if originals_only else True) & (augmented if copies_only else True)
    if kinds:
        keep &= np.isin(np.asarray(table["kind"]).astype(str), list(kinds))
    if require_label:
        if label_column not in table:
            raise NodulekitError(f"data.label_column = {label_column!r} is not a column of the patch store "
                                 f"(columns: {', '.join(sorted(table))})")
        keep &= np.asarray(table[label_column]).astype(np.int64) >= 0
    return np.flatnonzero(keep).astype(np.int64)


def check_no_patient_overlap(train: "PatchDataset", val: "PatchDataset") -> None:
    """Raise when a patient has patches on both sides of a split."""
    shared = sorted(set(train.patient_ids()) & set(val.patient_ids()))
    if shared:
        shown = ", ".join(shared[:5]) + (" ..." if len(shared) > 5 else "")
        raise NodulekitError(f"{len(shared)} patient(s) are in both the training and the validation data "
                             f"({shown}): the stores' fold columns disagree")


def split_datasets(params: DataParams, fold: int | None) -> tuple["PatchDataset", "PatchDataset | None"]:
    """Training and validation datasets of ``fold`` (validation None when ``fold`` is None)."""
    if fold is None:
        return PatchDataset.from_stores(params, "all", None), None
    train = PatchDataset.from_stores(params, "train", fold)
    val = PatchDataset.from_stores(params, "val", fold)
    check_no_patient_overlap(train, val)
    if len(train) == 0 or len(val) == 0:
        raise NodulekitError(f"fold {fold}: {len(train)} training and {len(val)} validation patches; "
                             f"is fold {fold} one of the stores' folds?")
    return train, val


# -- dataset -----------------------------------------------------------------------------------
class PatchDataset(Dataset):
    """Selected rows of one or more patch stores of the same geometry.

    ``entries`` is an (N, 2) int64 array of (store number, table row). Indexing with an int gives
    one sample (no batch axis); :meth:`__getitems__` gives a whole batch (the DataLoader uses it).
    """

    def __init__(self, paths: Sequence[Path], entries: np.ndarray, tables: Sequence[Mapping[str, np.ndarray]],
                 patch_shape: tuple[int, ...], *, label_column: str = "label", channels: str = "add",
                 memory_budget_mb: float = 4096.0, labels_by_name: Mapping[str, str] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.entries = np.asarray(entries, dtype=np.int64).reshape(-1, 2)
        self.patch_shape = tuple(patch_shape)
        self.channels = channels
        self.label_column = label_column
        self.labels_by_name = dict(labels_by_name or {})
        self._rows = {col: _gather(tables, self.entries, col) for col in ("patient_id", "fold", "kind")}
        self.labels = {"label": _gather_labels(tables, self.entries, label_column)}
        for name, column in self.labels_by_name.items():
            self.labels[name] = _gather_labels(tables, self.entries, column)
        self.nbytes = len(self.entries) * math.prod(self.patch_shape) * _BYTES_PER_VOXEL
        self.in_memory = self.nbytes <= memory_budget_mb * 2**20
        self._stores: dict[int, PatchStore] = {}
        self._pid = -1
        self._arrays: dict[str, np.ndarray] | None = self._load_all() if self.in_memory else None

    @classmethod
    def from_stores(cls, params: DataParams, split: str, fold: int | None, *,
                    originals_only: bool = False) -> "PatchDataset":
        tables, shape, parts = [], None, []
        for path in params.stores:
            with open_patch_store(path) as store:
                if shape is not None and store.info.patch_shape != shape:
                    raise NodulekitError(f"{path}: patch shape {store.info.patch_shape} differs from "
                                         f"{params.stores[0]}'s {shape}")
                shape = store.info.patch_shape
                tables.append(store.table)
        augmented = [bool(augmented_flags(t).any()) for t in tables]
        plain_listed = not all(augmented)
        for number, table in enumerate(tables):
            duplicate = plain_listed and augmented[number]  # its originals are the crop store's
            rows = select_rows(table, split, fold, label_column=params.label_column,
                               require_label=params.require_label, kinds=params.kinds, originals_only=originals_only,
                               copies_only=duplicate)
            parts.append(np.stack([np.full(len(rows), number), rows], axis=1))
        entries = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
        return cls(params.stores, entries, tables, shape or (), label_column=params.label_column,
                   channels=params.channels, memory_budget_mb=params.memory_budget_mb,
                   labels_by_name=params.labels_by_name)

    def __len__(self) -> int:
        return len(self.entries)

    def patient_ids(self) -> list[str]:
        return [str(p) for p in self._rows["patient_id"]]

    def row(self, index: int) -> tuple[Path, int]:
        """The store file and table row of dataset position ``index``."""
        store, row = self.entries[index]
        return self.paths[int(store)], int(row)

    def __getitem__(self, index: int) -> Batch:
        batch = self.__getitems__([index])
        return {key: value[0] for key, value in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """A batch dict (see the module docstring) of dataset positions ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        arrays = ({name: a[idx] for name, a in self._arrays.items()} if self._arrays is not None
                  else self._read(idx))
        batch: Batch = {"image": self._tensor(arrays["images"]), "mask": self._tensor(arrays["masks"]),
                        "agreement": self._tensor(arrays["agreement"])}
        for name, labels in self.labels.items():
            batch[name] = torch.from_numpy(labels[idx])
        batch["index"] = torch.from_numpy(idx)
        return batch

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        return tensor.unsqueeze(1) if self.channels == "add" else tensor

    # -- reading -------------------------------------------------------------------------------
    def _load_all(self) -> dict[str, np.ndarray]:
        try:
            return self._read(np.arange(len(self.entries)))
        finally:
            self.close()

    def _read(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays of dataset positions ``idx``, one HDF5 read per store."""
        out = {name: np.empty((len(idx), *self.patch_shape), dtype=bool if name == "masks" else np.float32)
               for name in ARRAYS}
        stores, rows = self.entries[idx, 0], self.entries[idx, 1]
        for number in np.unique(stores):
            where = np.flatnonzero(stores == number)
            arrays = self._store(int(number)).read(rows[where])
            for name in ARRAYS:
                out[name][where] = arrays[name]
        return out

    def _store(self, number: int) -> PatchStore:
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own handles
            self._stores, self._pid = {}, os.getpid()
        if number not in self._stores:
            self._stores[number] = open_patch_store(self.paths[number])
        return self._stores[number]

    def close(self) -> None:
        if self._pid == os.getpid():
            for store in self._stores.values():
                store.close()
        self._stores = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_stores"], state["_pid"] = {}, -1
        return state


def _gather(tables: Sequence[Mapping[str, np.ndarray]], entries: np.ndarray, column: str) -> np.ndarray:
    values = [np.asarray(tables[int(s)][column])[int(r)] for s, r in entries]
    return np.array(values, dtype=object)


def _gather_labels(tables: Sequence[Mapping[str, np.ndarray]], entries: np.ndarray, column: str) -> np.ndarray:
    out = np.full(len(entries), -1, dtype=np.int64)
    for number in np.unique(entries[:, 0]) if len(entries) else []:
        table = tables[int(number)]
        if column not in table:
            raise NodulekitError(f"label column {column!r} is not in patch store {number} "
                                 f"(columns: {', '.join(sorted(table))})")
        where = np.flatnonzero(entries[:, 0] == number)
        out[where] = np.asarray(table[column])[entries[where, 1]].astype(np.int64)
    return out


# -- sampling ----------------------------------------------------------------------------------
class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one process, reproducible from ``(seed, epoch)`` alone, resumable mid-epoch.

    The epoch's order is ``randperm(n)`` from a generator seeded with ``seed + epoch`` (or
    ``0..n-1`` without shuffling), padded by repeating its start to a multiple of
    ``world_size`` as DistributedSampler does. Process ``rank`` takes every ``world_size``-th
    position from ``rank`` and cuts it into batches of ``batch_size // world_size``, so the
    union of the processes' k-th batches is exactly the one-process k-th batch of
    ``batch_size``: DDP and one process see the same global batches.
    ``set_epoch(epoch, start_batch)`` skips the first ``start_batch`` batches (resume).
    ``drop_last`` drops a last, smaller batch (BatchNorm fails on a batch of one) unless the
    data are smaller than one batch.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False) -> None:
        if batch_size % world_size:
            raise NodulekitError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start_batch = 0, 0

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _positions(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        padded = math.ceil(self.n / self.world_size) * self.world_size
        order += order[:padded - self.n]
        return order[self.rank::self.world_size]

    def batches_per_epoch(self) -> int:
        per_rank = math.ceil(self.n / self.world_size)
        if self.drop_last and per_rank >= self.local_batch_size:
            return per_rank // self.local_batch_size
        return math.ceil(per_rank / self.local_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        positions, size = self._positions(), self.local_batch_size
        for k in range(self.start_batch, self.batches_per_epoch()):
            yield positions[k * size:(k + 1) * size]

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.start_batch, 0)


def batch_collate(batch: Batch) -> Batch:
    """The DataLoader's collate: :meth:`PatchDataset.__getitems__` already returns a batch."""
    return batch


def make_loader(dataset: PatchDataset, sampler: EpochBatchSampler, *, num_workers: int = -1,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over whole batches; ``num_workers=-1``: 0 in memory, else min(4, CPUs).

    Its own generator keeps the loader from drawing on the global torch RNG (resume exactness).
    """
    if num_workers < 0:
        num_workers = 0 if dataset.in_memory else min(4, os.cpu_count() or 1)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=batch_collate, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(sampler.seed))


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a (possibly nested) batch to ``device``."""
    out: Batch = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, Mapping):
            out[key] = to_device(dict(value), device)
        else:
            out[key] = value
    return out
