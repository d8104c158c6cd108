"""The scan driver's memory: what a stage frees goes back to the system before the next stage.

A scan of a million files makes many short-lived objects (paths, tables of each manifest part,
hash keys) between the tables it keeps. Freed, they stay with the allocators (Python's, the C
library's and Arrow's pool) for reuse, so the driver's resident memory would ratchet up by each
stage's peak; handing them back after each stage keeps the driver at what it holds plus one
stage's working memory. Arrow's default pool (mimalloc) kept the most: during a scan Arrow
allocates from the C library's heap instead (`bench/scale.py` measures the driver's peak).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import pyarrow as pa

_LIBC = ctypes.util.find_library("c")
_MALLOC_TRIM = getattr(ctypes.CDLL(_LIBC), "malloc_trim", None) if _LIBC else None


def give_back_freed_memory() -> None:
    """Ask Arrow's pool and the C library (glibc's ``malloc_trim``; other C libraries have none)
    to return their free memory to the system. No ``gc.collect``: a full collection next to
    TensorFlow's objects takes a noticeable pause, and it lowered the scan's peak by nothing
    measurable (`bench/scale.py`)."""
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def in_system_heap(function):
    """Run ``function`` with Arrow allocating from the C library's heap (each buffer is freed to
    the pool it came from, so switching back afterwards is safe)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        previous = pa.default_memory_pool()
        pa.set_memory_pool(pa.system_memory_pool())
        try:
            return function(*args, **kwargs)
        finally:
            pa.set_memory_pool(previous)
    return wrapper
