"""Where the development data lives: ``$MEDCORE_DATA``, else ``../shared/data`` next to the repository.

Tests, benchmarks and examples ask :func:`data_root` instead of writing a machine's path, so the same
code runs wherever the data is (``MEDCORE_DATA=/data/medical pytest``).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "MEDCORE_DATA"
_REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The data folder: ``$MEDCORE_DATA`` when set, else ``<repository>/../shared/data`` (may not exist)."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else _REPO.parent / "shared" / "data"


def data_dir(name: str) -> Path:
    """One dataset folder under :func:`data_root` (e.g. ``kvasir-seg-256``); may not exist."""
    return data_root() / name


__all__ = ["DATA_ENV", "data_dir", "data_root"]
