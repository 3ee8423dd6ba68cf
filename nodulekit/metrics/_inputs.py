"""Input checks shared by the metric functions: binary masks, spacing, label arrays."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nodulekit.errors import NodulekitError


def is_torch_tensor(x: object) -> bool:
    """True for a ``torch.Tensor`` without importing torch (metrics must not need it)."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def as_mask(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a boolean numpy array, without copying it where possible.

    Bool arrays are returned as they are (no copy, no pass over the data). Integer and float
    arrays or torch tensors must hold only 0 and 1; 1-byte integer arrays (uint8, int8) are then
    returned as a bool view of the same memory, wider types as a bool copy. Anything else
    (e.g. probabilities) raises: threshold first.
    """
    if is_torch_tensor(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "iuf":
        raise NodulekitError(f"{name}: expected a binary mask, got dtype {arr.dtype}")
    if arr.size and not _all_zero_or_one(arr):
        raise NodulekitError(f"{name}: mask values must be 0/1 or bool (threshold probabilities first)")
    if arr.dtype.itemsize == 1:
        return arr.view(np.bool_)  # bytes 0/1 are exactly numpy's False/True
    return arr.astype(bool)


def _all_zero_or_one(arr: np.ndarray) -> bool:
    """Whether every value of a non-empty integer or float array is 0 or 1.

    Integers: min and max (two reads, no temporary arrays). Floats need the comparison
    (0.5 lies between 0 and 1; NaN fails both tests).
    """
    if arr.dtype.kind == "f":
        return bool(np.all((arr == 0) | (arr == 1)))
    if arr.dtype.kind == "i" and arr.min() < 0:
        return False
    return bool(arr.max() <= 1)


def check_same_shape(pred: Any, truth: Any) -> None:
    """Raise if the prediction and ground truth shapes differ."""
    if tuple(pred.shape) != tuple(truth.shape):
        raise NodulekitError(
            f"shape mismatch: pred {tuple(pred.shape)} vs truth {tuple(truth.shape)}"
        )


def as_spacing(spacing_zyx_mm: Sequence[float] | float, ndim: int) -> np.ndarray:
    """Spacing per array axis in mm as a float64 vector of length ``ndim``.

    A scalar means isotropic spacing. Values must be finite and > 0.
    """
    if ndim < 1:
        raise NodulekitError("masks must have at least one axis (2D (y, x) or 3D (z, y, x))")
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    if spacing.ndim == 0:
        spacing = np.full(ndim, float(spacing))
    if spacing.shape != (ndim,):
        raise NodulekitError(
            f"spacing_zyx_mm has {spacing.size} values but the masks have {ndim} axes"
        )
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise NodulekitError(f"spacing_zyx_mm must be finite and > 0, got {spacing.tolist()}")
    return spacing


def as_labels(x: Any, name: str) -> np.ndarray:
    """Class labels as a 1-D int64 array of non-negative integers."""
    if is_torch_tensor(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise NodulekitError(f"{name}: expected shape (N,), got {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise NodulekitError(f"{name}: class labels must be integers")
    elif arr.dtype.kind not in "iu":
        raise NodulekitError(f"{name}: class labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise NodulekitError(f"{name}: class labels must be >= 0")
    return arr
