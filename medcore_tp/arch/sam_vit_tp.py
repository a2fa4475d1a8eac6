"""Torch-Pruning 1.6 workarounds for segment_anything's ViT encoder (used by :mod:`medcore_tp.arch.sam_vit`).

Two things stop Torch-Pruning 1.6 on the stock ``Attention`` (docs/environment.md):

1. ``qkv``/``proj`` run on 4-D ``(B, H, W, C)`` tensors; the reshape index mapping then adds a
   spurious flatten mapping at every attention reshape and the index lists explode.
2. ``rel_pos_h``/``rel_pos_w`` are picked up as unwrapped parameters pruned along head_dim; their
   path corrupts the attention group.

:class:`PrunableAttention` computes exactly the same function on ``(B, N, C)`` tokens with a
head-major ``(3, heads, head_dim)`` qkv split, keeps the same parameters (same state-dict keys), and
hides the relative-position tables from Torch-Pruning's tracer only (they are shared by all heads and
untouched by whole-head removal). Only the model handed to :func:`prepare` is changed; the
segment_anything classes themselves are never patched.

What each part of :class:`PrunableAttention` works around (a Torch-Pruning upgrade re-checks these):
attention on ``(B, N, C)`` tokens (the 4-D reshape mapping), the tables detached while traced (the
rel-pos group corruption), ``q`` read once with the tables divided by the scale (TP maps ``qkv`` rows
through ``unbind`` by counting exactly three consumers), and ``num_heads`` read from the weights (TP
decrements it before its group check).
"""

from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

from medcore_tp.arch.layers import traced_by_torch_pruning


class PrunableAttention(Attention):
    """SAM's windowed/global attention, rewritten for Torch-Pruning's tracer.

    Same parameters, state-dict keys and maths as :class:`segment_anything.modeling.image_encoder.Attention`.
    ``num_heads`` is derived from the weights, so it is always what ``qkv`` holds after pruning.
    ``head_dim`` and ``scale`` never change.
    """

    head_dim: int

    @classmethod
    def from_attention(cls, attn: Attention) -> PrunableAttention:
        """Wrap the parameters of a stock ``Attention`` (shared, not copied)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        new.scale = attn.scale
        new.qkv = attn.qkv
        new.proj = attn.proj
        new.use_rel_pos = attn.use_rel_pos
        if attn.use_rel_pos:
            new.rel_pos_h = attn.rel_pos_h
            new.rel_pos_w = attn.rel_pos_w
        return new

    @property
    def num_heads(self) -> int:  # type: ignore[override]
        return self.qkv.out_features // (3 * self.head_dim)

    @num_heads.setter
    def num_heads(self, value: int) -> None:
        # Torch-Pruning and the base class may assign it; the weights are the only source of truth.
        pass

    def _rel_pos_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        if traced_by_torch_pruning(self.qkv):
            # Tracing only: no autograd edge to the tables, so they never enter a pruning group.
            return self.rel_pos_h.detach(), self.rel_pos_w.detach()
        return self.rel_pos_h, self.rel_pos_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        tokens = x.reshape(b, n, c)
        qkv = self.qkv(tokens).reshape(b, n, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        # q is read once (scaled) so that the unbind has exactly three consumers: Torch-Pruning maps
        # qkv rows through the unbind by counting them. The rel-pos tables are divided by the scale
        # instead, which is the same bias up to rounding.
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        if self.use_rel_pos:
            rel_h, rel_w = self._rel_pos_tables()
            attn = _add_rel_pos(attn, q, rel_h / self.scale, rel_w / self.scale, h, w)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(out).reshape(b, h, w, c)


def _add_rel_pos(
    attn: torch.Tensor, q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Decomposed relative-position bias on (B, heads, N, N) attention (same maths as SAM's)."""
    rh = get_rel_pos(h, h, rel_pos_h)
    rw = get_rel_pos(w, w, rel_pos_w)
    b, nh, _, d = q.shape
    r_q = q.reshape(b, nh, h, w, d)
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
    attn = attn.view(b, nh, h, w, h, w) + bias_h[..., :, None] + bias_w[..., None, :]
    return attn.view(b, nh, h * w, h * w)


__all__ = ["PrunableAttention"]
