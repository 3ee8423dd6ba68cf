"""Keep freed memory for reuse while a model runs on the CPU (glibc only; elsewhere a no-op).

A CPU forward pass allocates a fresh buffer for every layer's output: MT-Net at 224 x 224 allocates
tens of MB per layer, hundreds of times per batch. glibc serves every block over its mmap threshold
(at most 32 MiB) with its own ``mmap`` and unmaps it on ``free``, so each layer's output is fresh
memory whose pages the kernel must fault in and zero again, in every batch.
:func:`reuse_freed_memory` turns that off for the duration of a block (``mallopt(M_MMAP_MAX, 0)``:
large blocks come from the heap too; ``M_TRIM_THRESHOLD`` high: freed memory stays there), so the
second batch reuses the first batch's pages. On leaving, the settings go back to glibc's defaults
and ``malloc_trim(0)`` returns the free pages to the system, so the process does not keep the
peak. Results are unchanged (only where the bytes live changes). Measured on the 2-core CPU of
benchmarks/README.md: MT-Net 0.38-0.44 -> 0.32-0.39 s per patch in repeated batches of 3-6.

Nested use is fine (only the outermost block changes and restores the settings). Not thread-safe
against another thread entering at the same time; nodulekit calls it from the main thread.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator

#: glibc's mallopt parameter numbers (malloc.h) and its documented defaults.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD_BYTES, DEFAULT_MMAP_MAX = 128 * 1024, 65536
#: Freed heap memory kept for reuse inside the block, up to this much at the top of the heap.
KEPT_TRIM_THRESHOLD_BYTES = 2**31 - 1

_depth = 0
_lock = threading.Lock()


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def available() -> bool:
    """Whether :func:`reuse_freed_memory` changes anything here (glibc)."""
    return _LIBC is not None


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Inside the block, freed memory is reused instead of unmapped (module docstring)."""
    global _depth
    if _LIBC is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _LIBC.mallopt(M_MMAP_MAX, 0)
            _LIBC.mallopt(M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD_BYTES)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _LIBC.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD_BYTES)
                _LIBC.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                _LIBC.malloc_trim(0)
