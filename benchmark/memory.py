"""Give the C heap's free pages back to the operating system between federated rounds.

Each round of an R3D-18-sized federation allocates and frees ~1.3 GB of message buffers
(133 MB per client message each way). glibc keeps most of the freed pages resident in its
heaps, so a process's RSS wanders up and down by hundreds of MB while the bytes in use
stay flat (perf/RESULTS.md, the 150-round scale run). ``malloc_trim(0)`` returns them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap() -> bool:
    """``malloc_trim(0)`` where the C library is glibc; a no-op elsewhere.

    Returns whether memory was released (glibc's return value), False where unavailable."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
