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


def _lite_tiny(pruned: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("lite-tiny", checkpoint=None)
    if pruned:
        from medcore_tp.arch import adapter_for

        adapter_for(model).resize(model.image_encoder, [1, 1, 2], [40, 96, 150])
    # random running statistics and affine terms, so that folding or splitting them can go wrong
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


@pytest.fixture
def lite_tiny():
    """``lite_tiny(pruned)``: LiteMedSAM's tiny TinyViT (eval mode) with random batch-norm statistics;
    ``pruned`` removes heads and MLP channels."""
    return _lite_tiny


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
