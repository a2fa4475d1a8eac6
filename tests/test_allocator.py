"""keep_freed_memory: glibc stops handing large freed blocks back, so re-allocating them no longer faults;
the CLI applies it except where it should not."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from medcore_tp import allocator
from medcore_tp.cli import main

GLIBC = (getattr(os, "confstr", lambda _: "")("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
REAL_KEEP = allocator.keep_freed_memory  # conftest's autouse recorder replaces the module attribute

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
for _ in range(10):  # the kept heap can grow by a few blocks before freed ones are reused in place
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
            REAL_KEEP(bad)


class _Libc:
    """A C library whose mallopt accepts every setting, or (``refuse``) refuses the mmap threshold, as
    glibc releases that cap it at 32 MiB do."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 0 if self.refuse else 1


def test_not_glibc_or_a_refused_threshold_changes_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert REAL_KEEP() is False and not allocator.keeps_freed_memory()
    libc = _Libc(refuse=True)
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    assert REAL_KEEP() is False and not allocator.keeps_freed_memory()
    # the trim threshold is left alone too: setting it would switch off glibc's dynamic mmap threshold
    assert libc.calls == [(-3, allocator.MMAP_THRESHOLD)]


def test_kept_memory_is_never_trimmed(monkeypatch):
    """Trimming off (-1), not a finite cap: mallopt's int caps it at 2 GiB, below what the stock ViT-B
    attention frees in one forward."""
    libc = _Libc(refuse=False)
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    assert REAL_KEEP(64 << 20) is True and allocator.keeps_freed_memory()
    assert libc.calls == [(-3, 64 << 20), (-1, -1)]


@pytest.mark.parametrize("args, env, applied", [
    (["export", "--model", "tiny", "--random-init", "--format", "tflite", "--out", "{out}"], {}, True),
    (["--release-freed-memory", "export", "--model", "tiny", "--random-init", "--format", "tflite",
      "--out", "{out}"], {}, False),
    (["export", "--model", "tiny", "--random-init", "--format", "tflite", "--out", "{out}"],
     {"MEDCORE_TP_RELEASE_FREED_MEMORY": "1"}, False),
    (["info", "--model", "tiny"], {}, False),
    (["prune", "--help"], {}, False),
])
def test_cli_keeps_freed_memory_except_where_it_should_not(allocator_calls, tmp_path, args, env, applied):
    res = CliRunner().invoke(main, [a.replace("{out}", str(tmp_path / "x.onnx")) for a in args], env=env)
    assert res.exit_code in (0, 2), res.output  # the export line is refused for its format, after the choice
    assert allocator_calls == ([allocator.MMAP_THRESHOLD] if applied else [])
