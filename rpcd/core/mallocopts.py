"""
The C allocator's settings for rpcd's long-running processes (the daemon and
its workers).

glibc's C{malloc} serves a block above its mmap threshold (128 KiB) with a
mapping of its own, returned to the system when freed, and raises that
threshold to the size of every such block freed, up to 32 MiB.  After the
daemon has freed one large message, the blocks that hold unfinished input
(a growing C{bytearray} per connection for a JSON value, chunks for a large
frame) come from the heap instead, where each growth leaves a hole the next
growth cannot use: 150 connections trickling 4 MiB values held 273 MiB
of input in 419 MiB of RSS, and 303 MiB with the threshold pinned (measured
in process with tracemalloc; C{benchmarks/abuse.py} shows the same rows).
L{pin_mmap_threshold} sets the threshold, which also turns the dynamic
raising off.  The cost: a block above it is an C{mmap} and an C{munmap},
microseconds beside what a message of that size costs to read or encode.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["MMAP_THRESHOLD", "pin_mmap_threshold"]

MMAP_THRESHOLD = 128 * 1024
"""glibc's default threshold, kept fixed."""

_M_MMAP_THRESHOLD = -3  # <malloc.h>

_pinned = False


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """
    Fix glibc's mmap threshold (once per process).

    @param threshold: blocks of at least this many bytes get mappings of
        their own.
    @return: whether the threshold is pinned: False where the C library is
        not glibc (no C{mallopt}), which keeps its own behaviour.
    """
    global _pinned
    if _pinned:
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _pinned = mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    return _pinned
