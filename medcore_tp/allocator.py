"""Keeping freed memory inside the process (glibc's malloc), for faster and steadier CPU inference.

glibc serves each allocation above its mmap threshold (adjusted at run time, at most 32 MiB by
default) with a fresh mapping, and unmaps it when the block is freed: every page of the next such
block faults in again on first touch. The encoders allocate blocks that size in every layer at full
resolution (LiteMedSAM's MBConv stage: 64 MiB maps at 256 x 256; ViT-B's global attention: a 64 MiB
mask per head), and on the 2-core VM the faults cost a large share of eager inference:
``benchmarks/bench_allocator.py`` measures it (page faults and time per forward, each mode in its own
process). PyTorch keeps no CPU memory cache of its own, so the setting is the C library's.

:func:`keep_freed_memory` raises glibc's mmap and trim thresholds through ``mallopt``, in this process,
from the call on: freed blocks stay in the heap for the next allocation. The price is that the process
keeps its peak memory resident until it exits. The environment variable
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...`` does the same from
process start; other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory", "keeps_freed_memory"]

# mallopt's parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30  # 1 GiB: above every block of a batch-1 forward (stock ViT-B's 805 MB attention map too)
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes a C int; 2 GiB of free heap top before it is given back

_applied = False


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc's malloc keep freed blocks of up to ``mmap_threshold`` bytes for reuse (this process).

    Returns True when applied, False where the C library is not glibc (nothing is changed). Raises
    ``ValueError`` naming ``mmap_threshold`` unless it is an integer from 1 MiB to 2 GiB - 1 (mallopt's
    C int). Calling it again only changes the threshold.
    """
    if isinstance(mmap_threshold, bool) or not isinstance(mmap_threshold, int) or not (
            1 << 20 <= mmap_threshold <= TRIM_THRESHOLD):
        raise ValueError(f"mmap_threshold must be an integer from {1 << 20} to {TRIM_THRESHOLD} bytes, "
                         f"got {mmap_threshold!r}")
    libc = _glibc()
    if libc is None:
        return False
    global _applied
    # trim first: a freed block at the heap's top would otherwise be handed back at once
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    _applied = _applied or ok
    return ok


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has been applied in this process."""
    return _applied
