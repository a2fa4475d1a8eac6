"""Writing files so that a crash mid-write never replaces a good file with a truncated one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

import torch


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back (single-threaded at this point).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The file ends with the mode a plain ``open(path, "w")`` would give (0666 less the umask), not the
    temporary file's private 0600, so that colleagues and containers can read shared results.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _notify(path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_listeners: list[Callable[[str], None]] = []


def on_write(listener: Callable[[str], None]) -> Callable[[], None]:
    """Call ``listener(path)`` after every file this module writes (the output-folder manifest keeps
    track of a run's files this way); returns a function that removes the listener."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def _notify(path: str) -> None:
    for listener in list(_listeners):
        listener(path)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_text(text: str, path: str | os.PathLike) -> None:
    """Write UTF-8 text atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write indented JSON atomically."""
    save_text(json.dumps(obj, indent=2) + "\n", path)
