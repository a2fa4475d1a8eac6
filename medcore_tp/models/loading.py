"""Reading checkpoint files and checking them against an architecture, with one-line errors."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from medcore_tp.errors import MedcoreError

PRUNED_FORMAT = "medcore-tp-pruned"


def read_checkpoint(path: str | os.PathLike) -> object:
    """``torch.load`` a checkpoint safely (weights only, on CPU), with clear errors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MedcoreError(f"checkpoint {path}: file not found")
    if os.path.isdir(path):
        raise MedcoreError(f"checkpoint {path}: is a directory, expected a .pth file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise MedcoreError(f"checkpoint {path}: the file is empty")
    # torch.save writes a zip archive (PK); files from torch < 1.6 are a bare pickle (0x80 + protocol)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise MedcoreError(f"checkpoint {path}: not a torch checkpoint (it starts with {head!r}, neither a "
                           "torch.save zip archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or truncated files
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise MedcoreError(f"checkpoint {path}: not a readable torch checkpoint, damaged or truncated? ({reason})") from None


def is_pruned_checkpoint(obj: object) -> bool:
    """Whether a loaded object is a medcore-tp pruned checkpoint."""
    return isinstance(obj, Mapping) and obj.get("format") == PRUNED_FORMAT


def dense_state_dict(obj: object, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model state dict inside a raw or training checkpoint.

    Accepts ``{key: tensor}`` (``medsam_vit_b.pth``, ``sam_vit_b_01ec64.pth``) and training
    checkpoints ``{"model": state_dict, ...}`` (or ``"state_dict"``), with or without ``module.``.
    """
    if is_pruned_checkpoint(obj):
        base = obj.get("arch", {}).get("base", "?")
        raise MedcoreError(
            f"checkpoint {path}: is a pruned medcore-tp checkpoint (base {base}), a dense one is expected; "
            "load it with medcore_tp.load_pruned"
        )
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MedcoreError(f"checkpoint {path}: holds no state dict (expected a dict of tensors or {{'model': ...}})")
    return {_strip_module(k): v for k, v in obj.items()}


def _strip_module(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, arch: str) -> None:
    """Load ``state`` into ``model`` strictly; mismatches raise one line naming the first few keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_few(shapes)}")
    if problems:
        raise MedcoreError(f"checkpoint {path}: does not match {arch}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _few(items: list[str], n: int = 3) -> str:
    head = ", ".join(items[:n])
    return head + (f" (+{len(items) - n} more)" if len(items) > n else "")


def load_dense(model: nn.Module, obj: object, path: str | os.PathLike, name: str) -> nn.Module:
    """Load an already-read dense checkpoint object (raw or training format) into ``model``; eval mode.

    ``eval()`` comes after loading because LiteMedSAM's attention caches its bias table there.
    """
    load_into(model, dense_state_dict(obj, path), path, name)
    return model.eval()
