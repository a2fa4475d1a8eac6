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


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a pruned model from its checkpoint, with segment_anything's own classes."""
    obj = read_checkpoint(path)
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
    obj = read_checkpoint(checkpoint)
    if not is_pruned_checkpoint(obj):
        return load_dense(build_model(name), obj, checkpoint, name), None  # read once, not twice
    base = (obj.get("arch") or {}).get("base")
    if base is None or model_config(base) != model_config(name):
        raise MedcoreError(f"checkpoint {checkpoint}: was pruned from {base}, which is not the architecture of model {name}")
    return _rebuild(obj, checkpoint), obj["arch"]
