"""Checkpoints that load with ``torch.load(weights_only=True)``, and the RNG states they carry.

Everything in a checkpoint is a tensor or a primitive container (dict, list, tuple, str, int,
float, bool, None): no pickled objects, so loading a checkpoint cannot run code. A training
checkpoint (``checkpoints/last.pt``, written by :mod:`nodulekit.training.engine`) holds::

    format        CHECKPOINT_FORMAT
    model         the model's state_dict (unwrapped from DDP / torch.compile)
    optimizer     the current phase's optimizer state_dict
    scheduler     its LR scheduler state_dict (or None)
    position      {"phase_index", "phase", "epoch", "batch_in_epoch", "phase_step", "step",
                   "phase_done"}: where training resumes
    early_stopping {"best", "best_epoch", "bad_epochs", "stopped"}
    epoch_totals  the running sums of the interrupted epoch (losses, images, seconds)
    log_rows      the CSV log rows so far
    rng           one :func:`rng_state` per process rank
    config        the resolved config (TOML types)
    world_size    the number of processes that wrote it

``best-<phase>.pt`` and the final ``model.pt`` hold ``{"format", "model", "phase", "epoch",
"metric", "value", "config"}``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nodulekit.atomic import atomic_path
from nodulekit.errors import InputFileError

CHECKPOINT_FORMAT = 1


def rng_state(cuda_device: torch.device | None = None) -> dict[str, Any]:
    """The RNG states of Python, NumPy (legacy global), torch CPU and the process's CUDA device.

    Only ``cuda_device`` is read (default: the current device when CUDA is initialised), so a
    DDP process never creates contexts on the other processes' GPUs.
    """
    version, words, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if (device := _cuda_device(cuda_device)) is not None else [],
    }
    return state


def _cuda_device(device: torch.device | None) -> torch.device | None:
    if device is not None:
        return device if device.type == "cuda" else None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return None


def set_rng_state(state: dict[str, Any], cuda_device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` captured (the CUDA state onto ``cuda_device`` / the current one)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(state["torch"])
    device = _cuda_device(cuda_device) if torch.cuda.is_available() else None
    if state["cuda"] and device is not None:
        torch.cuda.set_rng_state(state["cuda"][0], device)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (a crash leaves the previous checkpoint intact)."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint, loaded with ``weights_only=True``; a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise InputFileError(path, f"not a readable nodulekit checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputFileError(path, f"not a nodulekit checkpoint (format {CHECKPOINT_FORMAT})")
    return payload


def load_model_weights(model: torch.nn.Module, path: Path) -> dict[str, Any]:
    """Load a checkpoint's ``model`` weights into ``model`` (strict); returns the checkpoint."""
    payload = load_checkpoint(path)
    model.load_state_dict(payload["model"])
    return payload
