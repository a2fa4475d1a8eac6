"""machine_info records what a timing ran on, including allocator settings that change it."""

from __future__ import annotations

import os

from medcore_tp.machine import machine_info


def test_machine_info_records_the_allocator_settings_only_when_set(monkeypatch):
    for name in ("GLIBC_TUNABLES", "LD_PRELOAD", "OMP_NUM_THREADS", "MALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    info = machine_info()
    assert "environment" not in info and info["cpu_count"] == os.cpu_count()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=68719476736")
    assert machine_info()["environment"] == {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=68719476736"}
