"""segment_anything's ViT image encoder (SAM / MedSAM ViT-B, -L, -H): prunable groups and shapes.

Where are heads removed? Here the encoder is made traceable by Torch-Pruning and the head / MLP
channel indices are defined; :mod:`medcore_tp.graph` applies removals through the dependency graph.

The Torch-Pruning 1.6 workarounds (traceable attention) live in :mod:`medcore_tp.arch.sam_vit_tp`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from segment_anything.modeling.image_encoder import (
    Block,
    ImageEncoderViT,
)
from torch import nn

from medcore_tp.arch.layers import head_channels, resized_linear, zeroing_hooks
from medcore_tp.arch.sam_vit_tp import PrunableAttention
from medcore_tp.errors import MedcoreError

FAMILY = "sam_vit"
# The preprocessing SAM / MedSAM checkpoints were trained with: stretched to the square, min-max to [0, 1].
RESIZE_MODE = "square"
NORMALISATION = "min-max"
# The paper protects ViT-B's last two blocks (10 and 11): 2 of 12 equal blocks, a sixth of the encoder.
DEFAULT_PROTECTED_BLOCKS = 2


def is_encoder(module: nn.Module) -> bool:
    """Whether ``module`` is a segment_anything ViT image encoder."""
    return isinstance(module, ImageEncoderViT)


def require_encoder(module: nn.Module, what: str) -> ImageEncoderViT:
    """``module`` if it is a segment_anything ViT encoder; else :class:`MedcoreError` saying that ``what``
    (e.g. "the sdpa attention") is for SAM's ViT only."""
    if not is_encoder(module):
        raise MedcoreError(f"{what} is for SAM's ViT encoder, not {type(module).__name__}")
    return module


def blocks(encoder: ImageEncoderViT) -> list[Block]:
    """The transformer blocks, in order."""
    return list(encoder.blocks)


STEM_PREFIXES = ("patch_embed.", "pos_embed")


def stem_forward(encoder: ImageEncoderViT, images: torch.Tensor) -> torch.Tensor:
    """Patch embedding plus absolute position embedding: (B, H/16, W/16, C) tokens for the blocks."""
    x = encoder.patch_embed(images)
    return x if encoder.pos_embed is None else x + encoder.pos_embed


def trunk_forward(encoder: ImageEncoderViT, features: torch.Tensor) -> torch.Tensor:
    """The blocks and the neck, from :func:`stem_forward`'s tokens (as ``ImageEncoderViT.forward``)."""
    for blk in encoder.blocks:
        features = blk(features)
    return encoder.neck(features.permute(0, 3, 1, 2))


def prepare(encoder: ImageEncoderViT) -> ImageEncoderViT:
    """Swap each block's attention for :class:`PrunableAttention`, in place (idempotent)."""
    for block in encoder.blocks:
        if not isinstance(block.attn, PrunableAttention):
            block.attn = PrunableAttention.from_attention(block.attn)
    return encoder


def head_dims(encoder: ImageEncoderViT) -> list[int]:
    """Channels per head of each block (SAM's ViT uses one size everywhere); fixed by pruning."""
    return [head_dim(encoder)] * len(encoder.blocks)


def head_dim(encoder: ImageEncoderViT) -> int:
    """Channels per head (64 for SAM ViT-B and -L, 80 for -H); fixed by pruning."""
    attn = encoder.blocks[0].attn
    if isinstance(attn, PrunableAttention):
        return attn.head_dim
    return attn.qkv.out_features // (3 * attn.num_heads)


def heads_per_block(encoder: ImageEncoderViT) -> list[int]:
    """Heads each block holds, read from the ``qkv`` weights."""
    hd = head_dim(encoder)
    return [blk.attn.qkv.out_features // (3 * hd) for blk in encoder.blocks]


def mlp_per_block(encoder: ImageEncoderViT) -> list[int]:
    """MLP hidden width of each block, read from ``lin1``."""
    return [blk.mlp.lin1.out_features for blk in encoder.blocks]


def group_params(encoder: ImageEncoderViT) -> tuple[list[int], list[int]]:
    """Parameters of one head (Q/K/V rows with biases, proj columns) and of one MLP channel, per block
    (the same in every block of a SAM ViT)."""
    d, hd = encoder.blocks[0].attn.qkv.in_features, head_dim(encoder)
    n = len(encoder.blocks)
    return [3 * hd * (d + 1) + hd * d] * n, [(d + 1) + d] * n


def block_prefix(encoder: ImageEncoderViT, block: int) -> str:
    """Prefix of ``block``'s parameter names in ``encoder.named_parameters()``."""
    return f"blocks.{block}."


def group_sums(encoder: ImageEncoderViT, block: int, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-parameter ``values`` (same keys and shapes as the encoder's parameters) over each group.

    Returns (per head: its Q, K, V rows of ``qkv`` with biases and its ``proj`` columns;
    per MLP channel: its ``lin1`` row with bias and its ``lin2`` column), in float64.
    """
    nh, hd = heads_per_block(encoder)[block], head_dim(encoder)
    pre = block_prefix(encoder, block)

    def get(name: str) -> torch.Tensor:
        return values[pre + name].double()

    rows = get("attn.qkv.weight").sum(1) + get("attn.qkv.bias")  # (3 * nh * hd,), [Q | K | V], head-major
    heads = rows.view(3, nh, hd).sum((0, 2)) + get("attn.proj.weight").sum(0).view(nh, hd).sum(1)
    mlp = get("mlp.lin1.weight").sum(1) + get("mlp.lin1.bias") + get("mlp.lin2.weight").sum(0)
    return heads, mlp


def attention_linears(block: Block) -> tuple[nn.Linear, nn.Linear]:
    """(qkv, proj) of a block."""
    return block.attn.qkv, block.attn.proj


def mlp_linears(block: Block) -> tuple[nn.Linear, nn.Linear]:
    """(lin1, lin2) of a block."""
    return block.mlp.lin1, block.mlp.lin2


def head_qkv_rows(head: int, num_heads: int, hd: int) -> list[int]:
    """Rows of the fused ``qkv`` weight owned by ``head``: its Q, K and V slices."""
    width = num_heads * hd
    return [part * width + i for part in range(3) for i in head_channels(head, hd)]


def qkv_row_heads(encoder: ImageEncoderViT, block: int, rows: torch.Tensor) -> torch.Tensor:
    """The head owning each fused ``qkv`` row ([Q | K | V] layout, head-major inside each part)."""
    nh, hd = heads_per_block(encoder)[block], head_dim(encoder)
    return (rows % (nh * hd)) // hd


def unwrapped_parameters(encoder: ImageEncoderViT) -> list[tuple[nn.Parameter, int]]:
    """Parameters outside standard layers, with the dimension that holds channels.

    ``pos_embed`` carries the residual width (dim 3); the neck's LayerNorm2d its own width (dim 0);
    rel-pos tables are listed with head_dim (dim 1) only so Torch-Pruning does not warn about them:
    they never enter the traced graph (see :class:`PrunableAttention`).
    """
    params: list[tuple[nn.Parameter, int]] = []
    if encoder.pos_embed is not None:
        params.append((encoder.pos_embed, 3))
    for blk in encoder.blocks:
        if blk.attn.use_rel_pos:
            params += [(blk.attn.rel_pos_h, 1), (blk.attn.rel_pos_w, 1)]
    for layer in encoder.neck:
        if not isinstance(layer, nn.Conv2d):
            params += [(p, 0) for p in layer.parameters(recurse=False)]
    return params


def head_root(encoder: ImageEncoderViT, block: int, heads: list[int]) -> tuple[nn.Linear, list[int]]:
    """Where Torch-Pruning roots the removal of ``heads`` of ``block``: ``proj``'s input channels.

    Rooting at ``proj`` (as Torch-Pruning does for attention groups) lets the graph map the channels
    back through the unbind to the Q, K and V rows of ``qkv``.
    """
    hd = head_dim(encoder)
    return encoder.blocks[block].attn.proj, [c for h in heads for c in head_channels(h, hd)]


def mlp_root(encoder: ImageEncoderViT, block: int, channels: list[int]) -> tuple[nn.Linear, list[int]]:
    """Where the removal of MLP hidden ``channels`` of ``block`` is rooted: ``lin1``'s outputs."""
    return encoder.blocks[block].mlp.lin1, list(channels)


def expected_qkv_rows(encoder: ImageEncoderViT, block: int, heads: list[int]) -> list[int]:
    """The fused ``qkv`` rows a correct head group must remove (used to check the graph)."""
    hd = head_dim(encoder)
    nh = heads_per_block(encoder)[block]
    return sorted(r for h in heads for r in head_qkv_rows(h, nh, hd))


def ignored_layers(encoder: ImageEncoderViT) -> list[nn.Module]:
    """Layers whose output channels must not move: patch embedding (the residual width) and neck."""
    return [encoder.patch_embed, encoder.neck]


def resize(encoder: ImageEncoderViT, heads: list[int], mlp: list[int]) -> None:
    """Give each block ``heads[b]`` heads and ``mlp[b]`` MLP channels (fresh, uninitialised weights).

    Used to rebuild a pruned architecture before loading its state dict; rel-pos tables, head_dim and
    scale stay as built.
    """
    if len(heads) != len(encoder.blocks) or len(mlp) != len(encoder.blocks):
        raise ValueError(f"expected {len(encoder.blocks)} blocks, got {len(heads)} head and {len(mlp)} MLP entries")
    hd = head_dim(encoder)
    for blk, nh, width in zip(encoder.blocks, heads, mlp, strict=True):
        attn, dim = blk.attn, blk.attn.qkv.in_features
        if nh != attn.qkv.out_features // (3 * hd):
            attn.qkv = resized_linear(attn.qkv, dim, 3 * nh * hd)
            attn.proj = resized_linear(attn.proj, nh * hd, dim)
            if not isinstance(attn, PrunableAttention):
                attn.num_heads = nh
        if width != blk.mlp.lin1.out_features:
            blk.mlp.lin1 = resized_linear(blk.mlp.lin1, dim, width)
            blk.mlp.lin2 = resized_linear(blk.mlp.lin2, width, dim)


@dataclass(frozen=True)
class BlockGeometry:
    """What a block's cost depends on: tokens, attention span, widths."""

    tokens: int  # N = (img/patch)^2
    attended: int  # keys each query sees: window^2, or N for global attention
    dim: int
    head_dim: int


def geometry(encoder: ImageEncoderViT) -> Iterator[BlockGeometry]:
    """Per-block geometry at the encoder's native input size."""
    patch = encoder.patch_embed.proj.kernel_size[0]
    side = encoder.img_size // patch
    hd = head_dim(encoder)
    for blk in encoder.blocks:
        span = blk.window_size**2 if blk.window_size > 0 else side * side
        yield BlockGeometry(tokens=side * side, attended=span, dim=blk.attn.qkv.in_features, head_dim=hd)


def paper_flops(encoder: ImageEncoderViT) -> dict[str, float]:
    """FLOPs (2 x MACs) in the paper's convention at the native input size.

    Counts the patch embedding, qkv/proj projections and the two attention matmuls per head
    (on the unpadded tokens; windowed heads attend window^2 keys), and both MLP projections.
    Neck, LayerNorm, softmax, biases and the relative-position bias are ignored.
    Returns ``patch_embed``, ``attention``, ``mlp``, ``total`` and ``block_<i>`` entries.
    """
    conv = encoder.patch_embed.proj
    side = encoder.img_size // conv.kernel_size[0]
    patch = 2.0 * side * side * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    out = {"patch_embed": patch, "attention": 0.0, "mlp": 0.0}
    for i, (geo, nh, width) in enumerate(
        zip(geometry(encoder), heads_per_block(encoder), mlp_per_block(encoder), strict=True)
    ):
        per_head = (
            2.0 * geo.tokens * geo.dim * 3 * geo.head_dim  # qkv
            + 2.0 * geo.tokens * geo.head_dim * geo.dim  # proj
            + 4.0 * geo.tokens * geo.attended * geo.head_dim  # q k^T and attn v
        )
        attn = nh * per_head
        mlp = width * 4.0 * geo.tokens * geo.dim
        out["attention"] += attn
        out["mlp"] += mlp
        out[f"block_{i}"] = attn + mlp
    out["total"] = out["patch_embed"] + out["attention"] + out["mlp"]
    return out


def zero_groups_hooks(encoder: ImageEncoderViT, removed_heads: dict[int, list[int]], removed_mlp: dict[int, list[int]]):
    """Forward pre-hooks that zero the given heads' outputs and MLP channels in a dense encoder.

    A dense encoder with these hooks computes what the physically pruned encoder computes; used to
    check removals. Returns the hook handles (call ``.remove()`` on each).
    """
    targets = [head_root(encoder, b, heads) for b, heads in removed_heads.items()]
    targets += [(mlp_linears(encoder.blocks[b])[1], chans) for b, chans in removed_mlp.items()]
    return zeroing_hooks(targets)


