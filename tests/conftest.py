"""Shared fixtures: a tiny SAM built from the real segment_anything classes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medcore_tp.models import build_model
from medcore_tp.paths import DATA_ENV, data_root


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.needs_data("folder", ...)``: skip unless the data root (and those folders) exist."""
    root = data_root()
    for item in items:
        mark = item.get_closest_marker("needs_data")
        if mark is None:
            continue
        missing = [str(root / name) for name in mark.args if not (root / name).is_dir()]
        if not root.is_dir() or missing:
            where = missing[0] if missing else str(root)
            item.add_marker(pytest.mark.skip(reason=f"no data at {where} (set {DATA_ENV} to the data folder)"))


def randomise_rel_pos(model: torch.nn.Module, seed: int = 0) -> None:
    """SAM zero-initialises its rel-pos tables; give them values so that keeping them matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.fixture(autouse=True)
def allocator_calls(monkeypatch):
    """In-process CLI runs record the allocator call instead of making it: ``mallopt`` cannot be undone
    and would change the pytest process for every later test (subprocess tests make the real call).
    Yields the thresholds the CLI asked for."""
    from medcore_tp import allocator

    calls = []

    def record(mmap_threshold: int = allocator.MMAP_THRESHOLD) -> bool:
        calls.append(mmap_threshold)
        monkeypatch.setattr(allocator, "_applied", True)
        return True

    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator, "keep_freed_memory", record)
    return calls


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = build_model("tiny")
    randomise_rel_pos(model)
    return model


@pytest.fixture
def tiny_input():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


# OpenVINO runs in child processes only: with its CPU plugin loaded, later tests in the same pytest
# process crashed with a segmentation fault at varying places (seen three times on the 2-core machine).
OPENVINO_IN_CHILD = "from medcore_tp.runtime import openvino_bf16; print(openvino_bf16())"


def _run_python(code: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run_python():
    """``run_python(code, *args)``: ``python -c code args`` in a child process, its output captured."""
    return _run_python


@pytest.fixture(scope="session")
def openvino_has_bf16() -> bool:
    """Whether OpenVINO can run bf16 on this CPU (asked in a child process)."""
    out = _run_python(OPENVINO_IN_CHILD)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"
