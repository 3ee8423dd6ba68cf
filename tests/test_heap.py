"""nodulekit.heap: inside the block large blocks come from the heap and stay for reuse; outside,
glibc's defaults (large blocks mmapped) are back."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from nodulekit import heap

pytestmark = pytest.mark.skipif(not heap.available(), reason="needs glibc")

BIG_BYTES = 64 * 1024 * 1024  # over glibc's largest mmap threshold (32 MiB)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mmapped_blocks() -> int:
    libc = heap._LIBC
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblks)


def _mmapped_while_holding_big_array() -> int:
    before = _mmapped_blocks()
    array = np.ones(BIG_BYTES, dtype=np.uint8)
    during = _mmapped_blocks()
    del array
    return during - before


def test_large_blocks_come_from_the_heap_only_inside_the_block():
    assert _mmapped_while_holding_big_array() == 1  # glibc's default: its own mapping
    with heap.reuse_freed_memory():
        assert _mmapped_while_holding_big_array() == 0
    assert _mmapped_while_holding_big_array() == 1


def test_nested_blocks_restore_only_at_the_outermost_and_after_an_error():
    with pytest.raises(RuntimeError):
        with heap.reuse_freed_memory():
            with heap.reuse_freed_memory():
                pass
            assert _mmapped_while_holding_big_array() == 0  # still inside the outer block
            raise RuntimeError("boom")
    assert heap._depth == 0
    assert _mmapped_while_holding_big_array() == 1


def test_a_freed_block_stays_and_serves_the_next_allocation():
    heap._LIBC.mallinfo2.restype = _MallInfo2
    with heap.reuse_freed_memory():
        before = heap._LIBC.mallinfo2().arena
        first = np.ones(BIG_BYTES, dtype=np.uint8)
        del first
        after_free = heap._LIBC.mallinfo2().arena
        assert after_free - before >= BIG_BYTES  # kept in the heap, not trimmed
        second = np.ones(BIG_BYTES, dtype=np.uint8)
        assert heap._LIBC.mallinfo2().arena == after_free  # served from the freed block, no new memory
        del second
