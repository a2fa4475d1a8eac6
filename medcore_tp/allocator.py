"""Keeping freed memory inside the process (glibc's malloc), for faster and steadier CPU inference.

glibc serves each allocation above its mmap threshold (adjusted at run time, at most 32 MiB by
default) with a fresh mapping, and unmaps it when the block is freed: every page of the next such
block faults in again on first touch. The encoders allocate blocks that size in every layer at full
resolution (LiteMedSAM's MBConv stage: 64 MiB maps at 256 x 256; ViT-B's global attention: a 64 MiB
mask per head), and on the 2-core VM the faults cost a large share of eager inference:
``benchmarks/bench_allocator.py`` measures it (page faults and time per forward, each mode in its own
process). PyTorch keeps no CPU memory cache of its own, so the setting is the C library's.

:func:`keep_freed_memory` raises glibc's mmap threshold and turns its heap trimming off through
``mallopt``, in this process, from the call on: freed blocks stay in the heap for the next
allocation. The price is resident memory: the process keeps its peak until it exits, plus what
fragmentation adds (a freed block is not always reused in place: a loop of 64 MiB allocations held
128 MiB). Host memory only: a CUDA run's device memory has PyTorch's own cache and gains nothing. The environment variable
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...`` does the same from
process start; other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["MAX_MMAP_THRESHOLD", "MMAP_THRESHOLD", "keep_freed_memory", "keeps_freed_memory"]

# mallopt's parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30  # 1 GiB: above every block of a batch-1 forward (stock ViT-B's 805 MB attention map too)
MAX_MMAP_THRESHOLD = (1 << 31) - 1  # mallopt takes a C int
# -1: never trim. A finite cap (at most 2 GiB through mallopt's int) handed back the heap top after the
# stock ViT-B attention's 805 MB blocks were freed, and every forward faulted them in again (dense
# 10.04 s per forward at two threads, against 5.1 s with trimming off)
_NEVER_TRIM = -1

_applied = False


def _glibc() -> ctypes.CDLL | None:
    """The loaded C library if it is glibc (asked of the library itself, not of the executable)."""
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        libc = ctypes.CDLL("libc.so.6")
    except (AttributeError, ValueError, OSError):  # no confstr or no such name (not Linux/glibc)
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc's malloc keep freed blocks of up to ``mmap_threshold`` bytes for reuse (this process).

    Returns True when applied; False where the C library is not glibc or refuses the threshold (older
    glibc releases cap it at 32 MiB), and then nothing is changed. Raises ``ValueError`` naming
    ``mmap_threshold`` unless it is an integer from 1 MiB to 2 GiB - 1 (mallopt's C int).
    Calling it again only changes the threshold.
    """
    if isinstance(mmap_threshold, bool) or not isinstance(mmap_threshold, int) or not (
            1 << 20 <= mmap_threshold <= MAX_MMAP_THRESHOLD):
        raise ValueError(f"mmap_threshold must be an integer from {1 << 20} to {MAX_MMAP_THRESHOLD} bytes, "
                         f"got {mmap_threshold!r}")
    libc = _glibc()
    # the mmap threshold first: a glibc that refuses it is left exactly as it was (setting the trim
    # threshold alone would already switch off its dynamic mmap threshold)
    if libc is None or libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) != 1:
        return False
    if libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) != 1:
        return False
    global _applied
    _applied = True
    return True


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has been applied in this process."""
    return _applied
