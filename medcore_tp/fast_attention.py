"""Fused attention for segment_anything's ViT encoder: ``scaled_dot_product_attention`` with SAM's
decomposed relative-position bias passed as the attention mask.

segment_anything's ``Attention`` computes ``softmax(q k^T * scale + bias) v`` step by step, keeping
the logits, the biased logits and the softmax as separate (B * heads, N, N) tensors. Here the same
bias (built from the unscaled queries, exactly as ``add_decomposed_rel_pos`` does) goes into
``torch.nn.functional.scaled_dot_product_attention`` as an additive float mask, so the backend fuses
scaling, bias, softmax and the value product. The maths and the parameters are SAM's own; the
module holds the very same ``qkv``, ``proj`` and rel-pos tables (same state-dict keys), works for
dense and pruned encoders (heads are read from the weights), and is differentiable, so it serves
training as well as inference.

Only the model handed to :func:`use_sdpa` is changed; segment_anything's classes are never patched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

from medcore_tp.arch import image_encoder, sam_vit

__all__ = ["HEADWISE_MASK_ELEMENTS", "SdpaAttention", "use_sdpa", "uses_sdpa"]

# CPU inference with at least this many mask elements per head (B * N * N: 16.8 M per image for ViT's
# global blocks at 1024 px, 0.96 M for the 25 windows of a windowed block, so windowed blocks too from
# batch 5) runs head by head through one reused mask buffer.
HEADWISE_MASK_ELEMENTS = 1 << 22


class SdpaAttention(nn.Module):
    """SAM's windowed/global ViT attention computed by ``scaled_dot_product_attention``.

    Built from an existing attention module (segment_anything's ``Attention`` or medcore-tp's
    ``PrunableAttention``), sharing its parameters. ``num_heads`` is derived from ``qkv``.
    """

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        heads = attn.num_heads
        self.head_dim = attn.qkv.out_features // (3 * heads)
        self.scale = float(attn.scale)
        self.qkv = attn.qkv
        self.proj = attn.proj
        self.use_rel_pos = bool(attn.use_rel_pos)
        if self.use_rel_pos:
            self.rel_pos_h = attn.rel_pos_h
            self.rel_pos_w = attn.rel_pos_w

    @property
    def num_heads(self) -> int:
        return self.qkv.out_features // (3 * self.head_dim)

    @num_heads.setter
    def num_heads(self, value: int) -> None:
        # pruning code may assign it; the weights are the only source of truth
        pass

    def rel_pos_mask(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The decomposed rel-pos bias (B, heads, N, N) for unscaled queries ``q`` (B, heads, N, hd)."""
        b, nh = q.shape[:2]
        bias_h, bias_w = self._rel_pos_factors(q, h, w)
        return (bias_h[..., :, None] + bias_w[..., None, :]).view(b, nh, h * w, h * w)

    def _rel_pos_factors(self, q: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The bias's two factors, (B, heads, h, w, h) and (B, heads, h, w, w): their broadcast sum is the mask."""
        b, nh, _, d = q.shape
        rh = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
        rw = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
        r_q = q.reshape(b, nh, h, w, d)
        # einsum hands back permuted strides, and a broadcast add of such inputs keeps them, which made
        # the mask's reshape copy the whole (heads, N, N) mask (about 40% of a global block's time on CPU);
        # contiguous factors make the sum contiguous and the reshape a view
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh).contiguous()
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw).contiguous()
        return bias_h, bias_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x.reshape(b, n, -1)).reshape(b, n, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        # torch.compile on the CPU would unroll the head-by-head loop and lose its one reused mask
        # buffer (ViT-B 60.03% at 2 threads: 0.83 of the FLOP ratio, against 0.90 with this core run
        # eagerly between compiled projections); elsewhere the compiler sees the whole attention
        core = self._core_eager if q.device.type == "cpu" and not torch.compiler.is_exporting() else self._core
        return self.proj(core(q, k, v, h, w).transpose(1, 2).reshape(b, h, w, -1))

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """softmax(q k^T * scale + rel-pos bias) v for (B, heads, N, head_dim) inputs."""
        if self.use_rel_pos and q.shape[0] * (h * w) ** 2 >= HEADWISE_MASK_ELEMENTS and _eager_cpu_inference(q):
            return self._headwise(q, k, v, h, w)
        mask = self.rel_pos_mask(q, h, w) if self.use_rel_pos else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)

    @torch.compiler.disable
    def _core_eager(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """:meth:`_core`, never traced by ``torch.compile`` (a graph break around it)."""
        return self._core(q, k, v, h, w)

    def _headwise(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Inference only: one head at a time through one reused (B, 1, N, N) mask buffer.

        A global block of ViT-B at 1024 px would otherwise build a 12 x 4096 x 4096 mask (805 MB) per
        call; one head's mask is 67 MB, allocated once per call.
        """
        b, nh, n, _ = q.shape
        bias_h, bias_w = self._rel_pos_factors(q, h, w)
        mask = q.new_empty(b, 1, h, w, h, w)
        out = torch.empty_like(q)
        for i in range(nh):
            head = slice(i, i + 1)
            torch.add(bias_h[:, head, ..., :, None], bias_w[:, head, ..., None, :], out=mask)
            out[:, head] = F.scaled_dot_product_attention(q[:, head], k[:, head], v[:, head],
                                                          attn_mask=mask.view(b, 1, n, n), scale=self.scale)
        return out


def _eager_cpu_inference(q: torch.Tensor) -> bool:
    """Whether the head-by-head path may run: no gradients (its buffer is written in place), the CPU
    (where it was measured), and no tracing or export (an ``out=`` add does not export, and the size
    test would become a guard on the symbolic batch)."""
    return (not torch.is_grad_enabled() and q.device.type == "cpu" and not torch.jit.is_tracing()
            and not torch.compiler.is_exporting())


def use_sdpa(model: nn.Module) -> nn.Module:
    """Swap every block's attention of ``model``'s SAM ViT encoder for :class:`SdpaAttention`, in place.

    ``model`` is a SAM-style model or its ViT encoder, dense or pruned. Idempotent; returns ``model``.
    Raises :class:`MedcoreError` for an encoder that is not segment_anything's ViT (LiteMedSAM's
    TinyViT has its own attention, with a learned per-head bias table, and is left to the other backends).
    """
    encoder = sam_vit.require_encoder(image_encoder(model), "the sdpa attention")
    for block in encoder.blocks:
        if not isinstance(block.attn, SdpaAttention):
            block.attn = SdpaAttention(block.attn)
    return model


def uses_sdpa(model: nn.Module) -> bool:
    """Whether every attention of ``model``'s encoder is an :class:`SdpaAttention`."""
    encoder = image_encoder(model)
    return sam_vit.is_encoder(encoder) and all(isinstance(b.attn, SdpaAttention) for b in encoder.blocks)
