"""Contiguous token layout for segment_anything's ViT encoder.

segment_anything's ``PatchEmbed`` returns ``conv(x).permute(0, 2, 3, 1)``: a (B, H, W, C) *view* of the
convolution's (B, C, H, W) memory, whose channel stride is H * W. Every later op keeps that layout
(element-wise ops follow their input's strides), so each residual add of the encoder reads one operand
across strides, and each layer norm and linear first copies its input. The token width (768) is never
pruned, so dense and pruned encoders pay the same: on the 2-core CPU the contiguous layout took ViT-B's
sdpa encoder from 3.17 to 2.64 s pruned and 6.34 to 5.90 s dense (benchmarks/bench_vit_fast_paths.py),
and its speedup from 0.84 to 0.94 of the FLOP ratio (0.90 once the head-by-head masks of
:mod:`medcore_tp.fast_attention` make both encoders faster again, the dense one more).
:class:`ContiguousPatchEmbed` stores the tokens contiguously once, after the convolution; the maths,
the parameters and the state-dict keys are segment_anything's.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import PatchEmbed
from torch import nn

from medcore_tp.arch import image_encoder, sam_vit

__all__ = ["ContiguousPatchEmbed", "use_contiguous_tokens", "uses_contiguous_tokens"]


class ContiguousPatchEmbed(nn.Module):
    """SAM's patch embedding (same ``proj`` convolution) with a contiguous (B, H, W, C) output."""

    def __init__(self, patch_embed: PatchEmbed) -> None:
        super().__init__()
        self.proj = patch_embed.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


def use_contiguous_tokens(model: nn.Module) -> nn.Module:
    """Swap the patch embedding of ``model``'s SAM ViT encoder for :class:`ContiguousPatchEmbed`, in place.

    ``model`` is a SAM-style model or its ViT encoder, dense or pruned. Idempotent; returns ``model``.
    Raises :class:`MedcoreError` for an encoder that is not segment_anything's ViT.
    """
    encoder = sam_vit.require_encoder(image_encoder(model), "the contiguous token layout")
    if not isinstance(encoder.patch_embed, ContiguousPatchEmbed):
        encoder.patch_embed = ContiguousPatchEmbed(encoder.patch_embed)
    return model


def uses_contiguous_tokens(model: nn.Module) -> bool:
    """Whether ``model``'s encoder is a SAM ViT with a :class:`ContiguousPatchEmbed`."""
    encoder = image_encoder(model)
    return sam_vit.is_encoder(encoder) and isinstance(encoder.patch_embed, ContiguousPatchEmbed)
