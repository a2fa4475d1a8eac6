"""Shared fixtures: a tiny SAM built from the real segment_anything classes."""

from __future__ import annotations

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


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = build_model("tiny")
    randomise_rel_pos(model)
    return model


@pytest.fixture
def tiny_input():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
