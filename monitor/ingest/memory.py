"""Give freed heap memory back to the operating system (glibc), so RSS follows what is in use.

The writer frees tens of MB per batch (events, rows, parameters), allocated by several threads.
glibc keeps freed blocks in per-thread arenas for reuse, so without a trim the daemon's RSS
stays at the high-water mark of every arena. ``malloc_trim(0)`` returns the whole free pages
of all arenas; it costs a few milliseconds, so the writer calls it once per batch.

``malloc_trim`` cannot return the free top of a thread's arena, and by default glibc raises its
mmap threshold (up to 32 MiB) each time a large block is freed: after the first batch, the
multi-MB buffers of every batch (pickles, pipe reads) landed in arenas instead of their own
mappings and stayed there. ``tune_allocator`` fixes the thresholds and caps the arenas
(measured with bench/ingest: tens of MB less RSS at the same speed).
Elsewhere than glibc (macOS, musl) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util


def _glibc(name: str, argtypes: list):
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


_TRIM = _glibc("malloc_trim", [ctypes.c_size_t])
_MALLOPT = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
LARGE_BLOCK = 128 * 1024  # glibc's initial mmap threshold, kept: larger blocks get mappings of their own
ARENAS = 2


def tune_allocator() -> None:
    """Call once, early: blocks of LARGE_BLOCK and more are mapped and unmapped on their own,
    free tops over LARGE_BLOCK are trimmed, and threads share ARENAS arenas."""
    if _MALLOPT is not None:
        _MALLOPT(M_MMAP_THRESHOLD, LARGE_BLOCK)
        _MALLOPT(M_TRIM_THRESHOLD, LARGE_BLOCK)
        _MALLOPT(M_ARENA_MAX, ARENAS)


def release_free_memory() -> None:
    if _TRIM is not None:
        _TRIM(0)
