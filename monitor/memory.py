"""Give freed heap memory back to the operating system (glibc), so RSS follows what is in use.

The writer frees tens of MB per batch (events, rows, parameters), allocated by several threads.
glibc keeps freed blocks in per-thread arenas for reuse, so without a trim the daemon's RSS
stays at the high-water mark of every arena. ``malloc_trim(0)`` returns the whole free pages
of all arenas; it costs a few milliseconds, so the writer calls it once per batch.
Elsewhere than glibc (macOS, musl) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    if _TRIM is not None:
        _TRIM(0)
