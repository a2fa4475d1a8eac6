"""keep_freed_memory: glibc stops handing large freed blocks back, so re-allocating them no longer faults."""

from __future__ import annotations

import platform

import pytest

from medcore_tp.allocator import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# a child process: the setting is process-wide and cannot be undone
FAULTS = """
import resource, sys, torch
from medcore_tp.allocator import keep_freed_memory, keeps_freed_memory
from medcore_tp.machine import machine_info
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keeps_freed_memory() and machine_info()["keep_freed_memory"]
else:
    assert not keeps_freed_memory() and "keep_freed_memory" not in machine_info()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20)  # 64 MiB, written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(min(faults() for _ in range(3)))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_kept_memory_is_reused_without_page_faults(run_python):
    pages = (64 << 20) // 4096
    runs = {mode: run_python(FAULTS, mode) for mode in ("default", "keep")}
    for res in runs.values():
        assert res.returncode == 0, res.stderr
    default, kept = (int(runs[mode].stdout.split()[-1]) for mode in ("default", "keep"))
    assert default > pages // 2  # glibc maps every 64 MiB block afresh: each of its pages faults in
    assert kept < pages // 100


def test_keep_freed_memory_checks_its_threshold():
    for bad in (0, 1000, 1 << 31, 2.5, True):
        with pytest.raises(ValueError, match="mmap_threshold must be an integer"):
            keep_freed_memory(bad)
