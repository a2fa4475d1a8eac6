"""What ``medcore-tp info`` shows per block: heads, head width, window or global attention, MLP width.

Read from the built modules themselves (SAM's ``Block.window_size``, 0 meaning global attention;
TinyViT's ``window_size`` against its token grid), so a pruned checkpoint shows what it really holds.
"""

from __future__ import annotations

from torch import nn

from medcore_tp.arch import adapter_for, image_encoder

__all__ = ["block_layout"]


def _head_dims(adapter, encoder: nn.Module, n: int) -> list[int]:
    if hasattr(adapter, "head_dims"):
        return list(adapter.head_dims(encoder))
    return [int(adapter.head_dim(encoder))] * n


def _attention(block: nn.Module, grid: tuple[int, int] | None) -> str:
    window = int(getattr(block, "window_size", 0) or 0)
    resolution = getattr(block, "input_resolution", None) or grid
    if window <= 0 or (resolution is not None and window >= max(resolution)):
        return "global"
    return f"window {window}x{window}"


def block_layout(model: nn.Module) -> list[dict]:
    """One dict per encoder block: ``heads``, ``head_dim``, ``attention`` (``global`` or ``window WxW``),
    ``mlp`` (channels)."""
    encoder = image_encoder(model)
    adapter = adapter_for(encoder)
    blocks = adapter.blocks(encoder)
    heads, mlp = adapter.heads_per_block(encoder), adapter.mlp_per_block(encoder)
    dims = _head_dims(adapter, encoder, len(blocks))
    grid = None
    if hasattr(encoder, "img_size") and hasattr(encoder, "patch_embed"):
        patch = getattr(getattr(encoder.patch_embed, "proj", None), "kernel_size", None)
        if patch:
            grid = (encoder.img_size // patch[0], encoder.img_size // patch[1])
    return [{"block": b, "heads": heads[b], "head_dim": dims[b], "attention": _attention(block, grid), "mlp": mlp[b]}
            for b, block in enumerate(blocks)]
