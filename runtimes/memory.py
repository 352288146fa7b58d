"""This process's resident memory, and giving malloc's free memory back to the system (Linux, glibc)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

__all__ = ["STATM", "release_free_memory", "resident_bytes"]

STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident memory (RSS)."""
    return int(STATM.read_text().split()[1]) * _PAGE


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl and others have none
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Give the memory malloc holds free back to the system (glibc's malloc_trim), so that RSS
    counts live memory: glibc keeps what was freed mapped, in every thread's arena."""
    if _TRIM is not None:
        _TRIM(0)
