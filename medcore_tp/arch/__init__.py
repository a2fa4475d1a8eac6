"""Architecture adapters: one module per encoder family, each implementing :class:`Adapter`.

An adapter module answers, for its family: how to make the encoder traceable by Torch-Pruning
(``prepare``), which layers hold whole heads and MLP channels (``head_root``, ``mlp_root``), what the
encoder holds now (``heads_per_block``, ``mlp_per_block``), how to rebuild a pruned shape (``resize``),
which layers must keep their width (``ignored_layers``), and the paper-convention FLOPs. Every member
is documented in :mod:`medcore_tp.arch.protocol`; docs/adding-an-architecture.md says how to add one.
"""

from __future__ import annotations

from torch import nn

from medcore_tp.arch import sam_vit, tiny_vit
from medcore_tp.arch.protocol import Adapter
from medcore_tp.errors import MedcoreError

ADAPTERS: tuple[Adapter, ...] = (sam_vit, tiny_vit)


def image_encoder(model: nn.Module) -> nn.Module:
    """The image encoder of a SAM-style model, or ``model`` itself when it is an encoder."""
    for adapter in ADAPTERS:
        if adapter.is_encoder(model):
            return model
    encoder = getattr(model, "image_encoder", None)
    if encoder is not None and any(a.is_encoder(encoder) for a in ADAPTERS):
        return encoder
    raise MedcoreError(f"{type(model).__name__} is not a supported image encoder or SAM-style model")


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter module of the encoder family of ``model`` (a SAM-style model or its encoder)."""
    encoder = image_encoder(model)
    for adapter in ADAPTERS:
        if adapter.is_encoder(encoder):
            return adapter
    raise AssertionError("unreachable")


__all__ = ["ADAPTERS", "Adapter", "adapter_for", "image_encoder"]
