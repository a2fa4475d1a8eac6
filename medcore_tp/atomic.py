"""Writing files so that a crash mid-write never replaces a good file with a truncated one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_text(text: str, path: str | os.PathLike) -> None:
    """Write UTF-8 text atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write indented JSON atomically."""
    save_text(json.dumps(obj, indent=2) + "\n", path)
