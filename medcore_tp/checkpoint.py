"""Pruned checkpoints: one file with the state dict and a small architecture record, no pickled modules.

Format (a ``torch.save``'d dict, readable with ``weights_only=True``)::

    {"format": "medcore-tp-pruned", "version": 1,
     "arch": {"family": "sam_vit", "base": "medsam", "heads_per_block": [...], "mlp_per_block": [...]},
     "state_dict": {...full model state dict, segment_anything key names...}}
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from medcore_tp.arch import adapter_for
from medcore_tp.atomic import save_torch
from medcore_tp.errors import MedcoreError
from medcore_tp.models import PACKAGED, build_model, load_dense, model_config
from medcore_tp.models.loading import PRUNED_FORMAT, is_pruned_checkpoint, load_into, read_checkpoint

FORMAT_VERSION = 1


def arch_record(model: nn.Module, base: str) -> dict[str, Any]:
    """The architecture record of ``model``: base model name, heads and MLP width per block."""
    adapter = adapter_for(model)
    encoder = model.image_encoder
    return {
        "family": adapter.FAMILY,
        "base": base,
        "heads_per_block": adapter.heads_per_block(encoder),
        "mlp_per_block": adapter.mlp_per_block(encoder),
    }


def save_pruned(model: nn.Module, path: str | os.PathLike, base: str) -> None:
    """Write ``model`` (pruned or not) as a medcore-tp checkpoint, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_torch(
        {"format": PRUNED_FORMAT, "version": FORMAT_VERSION, "arch": arch_record(model, base), "state_dict": state},
        path,
    )


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file (an 8-byte header length, then a JSON header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """A safetensors file written by ``medcore-tp export --format safetensors``, in the pruned
    checkpoint's layout (``format``, ``version``, ``arch``, ``state_dict``)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        arch = json.loads(meta["arch"]) if "arch" in meta else None
    except Exception as exc:  # safetensors raises its own error types on damaged files
        raise MedcoreError(f"checkpoint {path}: not a readable safetensors file ({str(exc)[:120]})") from None
    if meta.get("format") != PRUNED_FORMAT or arch is None:
        raise MedcoreError(f"checkpoint {path}: a safetensors file without medcore-tp's architecture record")
    return {"format": PRUNED_FORMAT, "version": int(meta.get("version", -1)), "arch": arch, "state_dict": state}


def _read(path: str | os.PathLike) -> object:
    return read_safetensors(path) if is_safetensors(path) else read_checkpoint(path)


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a pruned model from its checkpoint (``.pth`` or safetensors), with segment_anything's
    own classes."""
    obj = _read(path)
    if not is_pruned_checkpoint(obj):
        raise MedcoreError(f"checkpoint {path}: is not a medcore-tp pruned checkpoint (no 'format' record)")
    return _rebuild(obj, path)


def _rebuild(obj: dict, path: str | os.PathLike) -> nn.Module:
    arch = obj.get("arch") or {}
    base = arch.get("base")
    if obj.get("version") != FORMAT_VERSION:
        raise MedcoreError(f"checkpoint {path}: pruned format version {obj.get('version')} is not supported")
    model_config(base)  # clear error for an unknown base
    model = build_model(base)
    encoder = model.image_encoder
    adapter = adapter_for(model)
    try:
        adapter.resize(encoder, list(arch["heads_per_block"]), list(arch["mlp_per_block"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MedcoreError(f"checkpoint {path}: malformed architecture record ({exc})") from None
    load_into(model, obj["state_dict"], path, f"{base} pruned to its architecture record")
    return model.eval()


def load_model(name: str, checkpoint: str | os.PathLike | None = None) -> tuple[nn.Module, dict[str, Any] | None]:
    """Load a dense or a pruned checkpoint for model ``name``; returns (model, arch record or None).

    A pruned checkpoint must come from the same architecture as ``name`` (``medsam`` and
    ``sam-vit-b`` are the same architecture).
    """
    if checkpoint is None or os.fspath(checkpoint) == PACKAGED:
        return build_model(name, checkpoint), None
    obj = _read(checkpoint)
    if not is_pruned_checkpoint(obj):
        return load_dense(build_model(name), obj, checkpoint, name), None  # read once, not twice
    base = (obj.get("arch") or {}).get("base")
    if base is None or model_config(base) != model_config(name):
        raise MedcoreError(f"checkpoint {checkpoint}: was pruned from {base}, which is not the architecture of model {name}")
    return _rebuild(obj, checkpoint), obj["arch"]
