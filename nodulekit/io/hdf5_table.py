"""The ``/table`` group the nodule and patch stores share: one dataset per column, one row per item.

Column types follow the values: bool, int64 (every value an int), float64 (numbers, None -> NaN),
else UTF-8 strings (None -> ""). The column order is kept in the file attribute ``columns_json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import h5py
import numpy as np

from nodulekit.errors import InputFileError

_STR = h5py.string_dtype()


def column_array(values: list[Any]) -> tuple[np.ndarray, Any]:
    """``values`` as an array and the h5py dtype to store it with (None = the array's own)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present):
        return np.array([bool(v) for v in values]), None
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present) \
            and len(present) == len(values):
        return np.array(values, dtype=np.int64), None
    if present and all(isinstance(v, (int, float, np.number)) for v in present):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64), None
    return np.array(["" if v is None else str(v) for v in values], dtype=object), _STR


def table_columns(rows: Iterable[Mapping[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """Columns in first-seen order over all rows, after ``first``."""
    columns: dict[str, None] = dict.fromkeys(first)
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def write_table(out: h5py.File, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """``/table/<column>`` for every column, and ``columns_json`` on the file."""
    out.attrs["columns_json"] = json.dumps(list(columns))
    table = out.create_group("table")
    for col in columns:
        data, dtype = column_array([row.get(col) for row in rows])
        table.create_dataset(col, data=data, dtype=dtype)


def read_table(f: h5py.File) -> dict[str, np.ndarray]:
    """The table as ``{column: array}`` in the stored order (strings decoded)."""
    out: dict[str, np.ndarray] = {}
    for col in json.loads(f.attrs["columns_json"]):
        data = f["table"][col][()]
        if data.dtype == object:
            data = np.array([v.decode() if isinstance(v, bytes) else v for v in data], dtype=object)
        out[col] = data
    return out


def open_store(path: Path, schema: int, kind: str, required: Sequence[str] = ("table",)) -> h5py.File:
    """Open a nodulekit HDF5 store for reading; a one-line error naming the file when it is not
    one (not HDF5, another schema, or a missing group)."""
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as error:
        raise InputFileError(path, f"cannot open as HDF5 ({error})") from None
    if f.attrs.get("schema") != schema or any(name not in f for name in required):
        f.close()
        raise InputFileError(path, f"not a nodulekit {kind} store (schema {schema})")
    return f
