"""Schema of the patch stores written by ``crop`` and ``augment`` (this module owns it).

A patch store (``WORKDIR/crop/<preset>/patches.h5``, ``WORKDIR/augment/<preset>/patches.h5``)::

    /images      float32 (N, *patch_shape)   CT after the HU window and normalisation
    /masks       bool    (N, *patch_shape)   consensus mask (agreement >= clevel after resampling)
    /agreement   float32 (N, *patch_shape)   fraction of the nodule's reads covering each voxel
    /reader_masks bool   (N, R, *patch_shape) optional: each read's own mask on the patch grid
                                             (linear resampling of the 0/1 mask, then
                                             ``>= READER_LEVEL - MASK_TOL``; see below)
    /table/<column>                          one dataset per column, one row per patch
    attrs: schema, geometry, patch_shape_json, spacing_zyx_mm_json, hu_window_json, normalize,
           preset, clevel, columns_json, params_json, nodulekit_* provenance

``patch_shape`` by geometry: ``2d`` (H, W); ``2.5d`` (S, H, W) with S consecutive slices;
``3d`` (D, H, W); ``views9`` (9, H, W), the nine planes of :mod:`nodulekit.patches.views`.
Arrays are chunked one patch per chunk with Blosc LZ4, so a random batch reads only its patches.

Reader masks (for the reader-agreement analysis of paper 003, Table 6): row ``r`` of a patch's
``(R, *patch_shape)`` block is the nodule's ``r``-th read, in the order of the nodule store
(``nodules.h5``: ``reader_masks``, ``reader_ids``); the table column ``n_reader_masks`` says how
many rows are reads, the rows after them are padding (all False). ``R`` is the most reads of any
nodule in the store, at least :data:`READER_SLOTS` (4, LIDC's readers). A read's mask is
resampled exactly as the agreement map (the same grid and linear interpolation) and thresholded
at 0.5: a read alone at ``clevel`` 0.5, so where the reads agree each equals the consensus mask
at 0.5, and on an aligned grid (native 2D) it is the read's own pixels. Stores written before
crop code version 2, and augmented copies (``n_reader_masks`` 0), have none; :class:`PatchStore`
reads stores with and without the dataset.

Table columns every store has (more may follow, e.g. every ``label_*`` and characteristic column
of ``nodules.csv``, or ``source_index`` / ``augmentation`` in an augmented store):

=================== ======= ==============================================================
column              dtype   meaning
=================== ======= ==============================================================
nodule_key          str     ``<series_uid>/<nodule_id>``
patient_id          str     LIDC patient (folds are by patient)
series_uid          str
nodule_id           int
fold                int     patient-level fold from consensus-label
label               int     the cohort's primary label (0 benign, 1 malignant, -1 none)
kind                str     ``nodule`` (the patch shows the nodule) or ``empty`` (dgnet's
                            nearby slices without nodule)
slice_offset        int     slice index relative to the nodule's centroid slice (2D / 2.5D
                            geometries; 0 for cubes)
source_spacing_z_mm float   the scan's spacing before resampling (also _y_mm, _x_mm)
n_reader_masks      int     reads with a mask in ``/reader_masks`` (stores that have it)
=================== ======= ==============================================================
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import hdf5plugin
import numpy as np

from nodulekit.atomic import atomic_path
from nodulekit.errors import InputFileError
from nodulekit.io.hdf5_table import open_store, read_table, table_columns, write_table

PATCH_SCHEMA = 1
#: HU written where a patch reaches outside the scan (air), before the window and normalisation.
FILL_HU = -1024.0
#: A patch's mask is ``agreement >= clevel - MASK_TOL`` (the tolerance absorbs the float error of
#: resampling weights) -- the one rule crop, augment and the on-the-fly ops share.
MASK_TOL = 1e-6
#: A read's resampled 0/1 mask is in where ``>= READER_LEVEL - MASK_TOL`` (the consensus rule of one read at 0.5).
READER_LEVEL = 0.5
#: Least number of reader rows per patch in ``/reader_masks`` (LIDC has 4 readers per scan).
READER_SLOTS = 4
GEOMETRIES = ("2d", "2.5d", "3d", "views9")
#: The arrays every store has; ``/reader_masks`` is optional (:data:`READER_ARRAY`).
ARRAYS = ("images", "masks", "agreement")
READER_ARRAY = "reader_masks"
READER_COUNT_COLUMN = "n_reader_masks"
REQUIRED_COLUMNS = ("nodule_key", "patient_id", "series_uid", "nodule_id", "fold", "label", "kind",
                    "slice_offset", "source_spacing_z_mm", "source_spacing_y_mm", "source_spacing_x_mm")
PATCH_COMPRESSION = hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)
_DTYPES = {"images": np.float32, "masks": np.bool_, "agreement": np.float32, READER_ARRAY: np.bool_}


def reader_mask(resampled: np.ndarray) -> np.ndarray:
    """The patch mask of a read from its resampled 0/1 mask (see the module docstring)."""
    return np.asarray(resampled) >= READER_LEVEL - MASK_TOL


@dataclass(frozen=True)
class PatchGeometryInfo:
    """What a store's patches are: geometry, shape, spacing, HU window, normalisation."""

    geometry: str
    patch_shape: tuple[int, ...]
    spacing_zyx_mm: tuple[float, float, float] | None  # None = the scan's own spacing (2D presets)
    hu_window: tuple[float, float]
    normalize: str
    preset: str
    clevel: float

    def as_attrs(self) -> dict[str, Any]:
        return {"geometry": self.geometry, "patch_shape_json": json.dumps(list(self.patch_shape)),
                "spacing_zyx_mm_json": json.dumps(None if self.spacing_zyx_mm is None else list(self.spacing_zyx_mm)),
                "hu_window_json": json.dumps(list(self.hu_window)), "normalize": self.normalize,
                "preset": self.preset, "clevel": float(self.clevel)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "PatchGeometryInfo":
        spacing = json.loads(attrs["spacing_zyx_mm_json"])
        return cls(str(attrs["geometry"]), tuple(json.loads(attrs["patch_shape_json"])),
                   None if spacing is None else tuple(spacing), tuple(json.loads(attrs["hu_window_json"])),
                   str(attrs["normalize"]), str(attrs["preset"]), float(attrs["clevel"]))


@dataclass
class PatchBatch:
    """Patches in memory: arrays (N, *patch_shape) and their table rows.

    ``reader_masks``: optional bool (N, R, *patch_shape); then every row has ``n_reader_masks``.
    """

    images: np.ndarray
    masks: np.ndarray
    agreement: np.ndarray
    rows: list[dict[str, Any]] = field(default_factory=list)
    reader_masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


def pad_readers(reader_masks: np.ndarray, n_slots: int) -> np.ndarray:
    """``reader_masks`` (N, r, ...) with all-False rows appended up to (N, n_slots, ...)."""
    missing = n_slots - reader_masks.shape[1]
    if missing < 0:
        raise ValueError(f"{reader_masks.shape[1]} reader rows do not fit in {n_slots}")
    if not missing:
        return reader_masks
    pad = np.zeros((reader_masks.shape[0], missing, *reader_masks.shape[2:]), dtype=bool)
    return np.concatenate([reader_masks.astype(bool, copy=False), pad], axis=1)


def write_patch_store(path: Path, info: PatchGeometryInfo, parts: Sequence[PatchBatch | Path],
                      attrs: Mapping[str, Any] | None = None) -> int:
    """Write a store atomically from batches in memory or part files (stores of the same geometry).

    Returns the number of patches. Part files are read one at a time, so memory stays one part.
    Either every part has reader masks (the store then has ``/reader_masks``, padded to the most
    rows of any part and at least :data:`READER_SLOTS`) or none has.
    """
    layouts = [(len(p), _batch_slots(p)) if isinstance(p, PatchBatch) else _layout(p) for p in parts]
    n_total = int(sum(n for n, _ in layouts))
    with_readers = {slots is not None for _, slots in layouts}
    if len(with_readers) > 1:
        raise InputFileError(path, "some parts have reader masks and others not; write them all with or without")
    n_slots = max([READER_SLOTS, *(s for _, s in layouts if s is not None)]) if with_readers == {True} else None
    names = ARRAYS if n_slots is None else (*ARRAYS, READER_ARRAY)
    rows: list[dict[str, Any]] = []
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as out:
            out.attrs["schema"] = PATCH_SCHEMA
            for key, value in {**info.as_attrs(), **(attrs or {})}.items():
                out.attrs[key] = value
            datasets = {}
            for name in names:
                shape = (*((n_slots,) if name == READER_ARRAY else ()), *info.patch_shape)
                datasets[name] = out.create_dataset(name, shape=(n_total, *shape), dtype=_DTYPES[name],
                                                    chunks=(1, *shape), **PATCH_COMPRESSION)
            start = 0
            for part in parts:
                batch = part if isinstance(part, PatchBatch) else read_patch_store(part)
                _check_shape(path, batch, info.patch_shape)
                stop = start + len(batch)
                for name in ARRAYS:
                    datasets[name][start:stop] = getattr(batch, name)
                if n_slots is not None and len(batch):
                    assert batch.reader_masks is not None
                    datasets[READER_ARRAY][start:stop] = pad_readers(batch.reader_masks, n_slots)
                rows.extend(batch.rows)
                start = stop
            _write_table(out, rows)
    return n_total


def _batch_slots(batch: PatchBatch) -> int | None:
    return None if batch.reader_masks is None else int(batch.reader_masks.shape[1])


def _check_shape(path: Path, batch: PatchBatch, patch_shape: tuple[int, ...]) -> None:
    for name in ARRAYS:
        shape = tuple(getattr(batch, name).shape[1:])
        if len(batch) and shape != tuple(patch_shape):
            raise InputFileError(path, f"{name} patches have shape {shape}, the store's is {tuple(patch_shape)}")
    if len(batch.rows) != len(batch):
        raise ValueError(f"{len(batch)} patches but {len(batch.rows)} table rows")
    if batch.reader_masks is not None and len(batch):
        readers = batch.reader_masks
        if readers.ndim != len(patch_shape) + 2 or len(readers) != len(batch) \
                or tuple(readers.shape[2:]) != tuple(patch_shape):
            raise InputFileError(path, f"reader masks have shape {readers.shape}, need (N, R, *{tuple(patch_shape)})")
        counts = [row.get(READER_COUNT_COLUMN) for row in batch.rows]
        if any(not isinstance(c, (int, np.integer)) or not 0 <= c <= readers.shape[1] for c in counts):
            raise ValueError(f"rows with reader masks need {READER_COUNT_COLUMN} in 0..{readers.shape[1]}")


def _layout(path: Path) -> tuple[int, int | None]:
    """Patches of a store and its reader rows per patch (None without ``/reader_masks``)."""
    with _open(path) as f:
        slots = int(f[READER_ARRAY].shape[1]) if READER_ARRAY in f else None
        return int(f["images"].shape[0]), slots


def _write_table(out: h5py.File, rows: list[dict[str, Any]]) -> None:
    write_table(out, rows, table_columns(rows, first=REQUIRED_COLUMNS))


def _open(path: Path) -> h5py.File:
    return open_store(path, PATCH_SCHEMA, "patch", required=("table", "images"))


def augmented_flags(table: Mapping[str, Any]) -> np.ndarray:
    """Bool per row: an augmented copy (``is_augmented``; else an ``augmentation`` other than
    ``""``/``none``/``identity``). Training never validates on these; evaluation never scores them."""
    n = len(table["fold"])
    if "is_augmented" in table:
        return np.asarray(table["is_augmented"]).astype(bool)
    if "augmentation" in table:
        return np.array([str(a) not in ("", "none", "identity") for a in table["augmentation"]], dtype=bool)
    return np.zeros(n, dtype=bool)


class PatchStore:
    """Read access to a patch store: ``info``, ``table``, ``len()``, ``read(indices)``.

    Keep one open per process (h5py handles do not survive ``fork`` well: open in the worker).
    ``has_reader_masks``: the store has ``/reader_masks`` (read it with ``read(..., arrays=("reader_masks",))``).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = _open(self.path)
        self.info = PatchGeometryInfo.from_attrs(self._file.attrs)
        self.attrs = dict(self._file.attrs)
        self.table = read_table(self._file)
        self.has_reader_masks = READER_ARRAY in self._file

    def __len__(self) -> int:
        return int(self._file["images"].shape[0])

    def read(self, indices: Sequence[int] | np.ndarray | None = None,
             arrays: Sequence[str] = ARRAYS) -> dict[str, np.ndarray]:
        """The named arrays of the given patches (all when None), in the order of ``indices``."""
        if READER_ARRAY in arrays and not self.has_reader_masks:
            raise InputFileError(self.path, "has no reader masks (cropped before crop code version 2, "
                                            "or not by the crop stage); run `nodulekit crop` again")
        if indices is None:
            return {name: self._file[name][()] for name in arrays}
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"{self.path}: patch indices must be in 0..{len(self) - 1}")
        order = np.argsort(indices, kind="stable")
        sorted_unique, inverse = np.unique(indices[order], return_inverse=True)
        out: dict[str, np.ndarray] = {}
        for name in arrays:
            data = _read_patches(self._file[name], sorted_unique)
            restored = np.empty((len(indices), *data.shape[1:]), dtype=data.dtype)
            restored[order] = data[inverse]
            out[name] = restored
        return out

    def rows(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [{col: _python(values[i]) for col, values in self.table.items()} for i in indices]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PatchStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_patches(dataset: h5py.Dataset, indices: np.ndarray) -> np.ndarray:
    """Patches ``indices`` (sorted, unique) of ``dataset``, one chunk (= one patch) read at a time.

    h5py's fancy indexing (``dataset[[i, j, ...]]``) builds one selection of all the rows and is
    20-40x slower for a random batch (benchmarks/bench_crop.py); a low-level read per patch
    costs little more than decompressing its chunk.
    """
    shape = tuple(dataset.shape[1:])
    out = np.empty((len(indices), *shape), dtype=dataset.dtype)
    file_space = dataset.id.get_space()
    memory_space = h5py.h5s.create_simple((1, *shape))
    for j, i in enumerate(indices):
        file_space.select_hyperslab((int(i), *(0,) * len(shape)), (1, *shape))
        dataset.id.read(memory_space, file_space, out[j:j + 1])
    return out


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def open_patch_store(path: Path) -> PatchStore:
    """Open a patch store for reading (a clear error naming the file when it is not one)."""
    return PatchStore(path)


def read_patch_store(path: Path) -> PatchBatch:
    """A whole store in memory."""
    with PatchStore(path) as store:
        arrays = store.read(arrays=(*ARRAYS, READER_ARRAY) if store.has_reader_masks else ARRAYS)
        return PatchBatch(arrays["images"], arrays["masks"], arrays["agreement"], store.rows(range(len(store))),
                          arrays.get(READER_ARRAY))
