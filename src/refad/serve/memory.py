"""Keep a long-running server's resident memory flat by handing freed batch memory back.

A scoring batch allocates tens to hundreds of megabytes of activations (RLR's attention logits
are tokens x tokens per head and image) and frees them at the end. glibc keeps much of that
freed memory resident: each freed ``mmap`` block raises its mmap threshold, so later blocks of
that size come from the heap, whose free pages in the middle are never returned on their own.
Resident memory then creeps up with each new batch shape although nothing leaks.
``malloc_trim(0)`` returns the free pages of every arena. It is cheaper than fixing the mmap
threshold, which maps and faults in every large block anew (docs/serve.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return free heap pages of every arena to the system; True if glibc released any."""
    trim = _malloc_trim()
    return bool(trim is not None and trim(0) == 1)
