"""This process's resident memory, and giving malloc's free memory back to the system (Linux, glibc)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

__all__ = ["STATM", "MMAP_THRESHOLD", "map_large_allocations", "release_free_memory", "resident_bytes"]

STATM = Path("/proc/self/statm")
#: Allocations from this size up get their own mapping, given back to the system when freed.
MMAP_THRESHOLD = 4 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident memory (RSS)."""
    return int(STATM.read_text().split()[1]) * _PAGE


def _glibc(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)  # glibc; musl and others have neither
    except (OSError, AttributeError):
        return None


_TRIM = _glibc("malloc_trim")
_MALLOPT = _glibc("mallopt")


def map_large_allocations() -> None:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD. Left alone, glibc raises it (up to 32 MiB)
    each time a mapped block is freed, after which the big buffers of a later model load (its
    file read and parsed) come from the heap and stay resident once freed: 13 MiB more than
    its weights for a 100 MB ONNX model, after a start-up that had freed large blocks."""
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_free_memory() -> None:
    """Give the memory malloc holds free back to the system (glibc's malloc_trim), so that RSS
    counts live memory: glibc keeps what was freed mapped, in every thread's arena."""
    if _TRIM is not None:
        _TRIM(0)
