"""Row-strip execution of TinyViT's full-resolution stem (LiteMedSAM), for eager CPU inference.

LiteMedSAM's patch embedding is made of 1x1 convolutions, so its MBConv stage (``layers[0]``) runs at
the full 256 x 256 input resolution with 256 hidden channels: each intermediate map is 64 MiB, and
every convolution and GELU of the stage streams one through main memory. The stage holds 14% of the
encoder's FLOPs but took 44% of the dense encoder's eager time on the 2-core CPU (401 of 905 ms, BN
folded), and it is never pruned, so it also capped the pruned / dense speedup.

Run in strips of :data:`STRIP_ROWS` output rows, each MBConv (and the stage's ``PatchMerging``) keeps
its intermediate maps in cache: a strip computes its 1x1 convolution on the rows it needs plus the
one-row halo of the 3x3 depthwise convolution, pads with zero rows only at the image's top and bottom
(where the convolution's own padding would put them), and writes its rows of the output. The maths is
the stock modules' (outputs equal to float rounding); the parameters and state-dict keys are theirs.

Strips run only in eval mode: a batch norm in training mode normalises by the batch, and a drop-path
draws one mask per call, neither of which a strip may change. In training mode the swapped modules run
the whole map as before.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from medcore_tp.arch import image_encoder, tiny_vit
from medcore_tp.errors import MedcoreError

__all__ = ["STRIP_ROWS", "StripMBConv", "StripPatchMerging", "use_row_strips", "uses_row_strips"]

# Output rows per strip. On the 2-core CPU 16 and 32 rows ran the stage alike (a 256-row MBConv
# in 65 ms instead of 193 ms); 8 rows lost a little to per-call overhead.
STRIP_ROWS = 16


def _input_rows(o0: int, o1: int, conv: nn.Conv2d, height: int) -> tuple[int, int, int, int]:
    """Input rows ``[lo, hi)`` a 3x3 convolution reads for output rows ``[o0, o1)``, and the zero rows
    to add above and below (where they fall outside the ``height`` rows of the map)."""
    stride, pad = conv.stride[0], conv.padding[0]
    lo = o0 * stride - pad
    hi = (o1 - 1) * stride - pad + conv.kernel_size[0]
    return max(lo, 0), min(hi, height), max(-lo, 0), max(hi - height, 0)


def _conv_path_rows(path: nn.Sequential, x: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """``path`` (a ``Conv2d_BN``: the convolution, then its batch norm or, once folded, an identity) on
    a strip: zero rows added above and below, the columns padded as the convolution pads them."""
    conv, *rest = list(path)
    if top or bottom:
        x = F.pad(x, (0, 0, top, bottom))
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]), conv.dilation, conv.groups)
    for module in rest:
        y = module(y)
    return y


def _check_depthwise(path: nn.Sequential, where: str) -> None:
    conv = path[0]
    if not (isinstance(conv, nn.Conv2d) and conv.kernel_size[0] == 2 * conv.padding[0] + 1
            and conv.dilation == (1, 1)):
        raise MedcoreError(f"row strips: {where} is not a same-padded undilated convolution ({conv})")


class StripMBConv(nn.Module):
    """TinyViT's ``MBConv`` (same submodules and keys) run in strips of ``rows`` output rows in eval mode."""

    def __init__(self, block: nn.Module, rows: int = STRIP_ROWS) -> None:
        super().__init__()
        _check_depthwise(block.conv2, "MBConv.conv2")
        for name in ("conv1", "act1", "conv2", "act2", "conv3", "act3", "drop_path"):
            setattr(self, name, getattr(block, name))
        self.rows = rows
        self.train(block.training)

    def _whole(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.act3(self.drop_path(y) + x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        if self.training or height <= self.rows:
            return self._whole(x)
        out = torch.empty_like(x)
        for o0 in range(0, height, self.rows):
            o1 = min(o0 + self.rows, height)
            lo, hi, top, bottom = _input_rows(o0, o1, self.conv2[0], height)
            t = self.act1(self.conv1(x[:, :, lo:hi]))
            t = self.conv3(self.act2(_conv_path_rows(self.conv2, t, top, bottom)))
            out[:, :, o0:o1] = self.act3(t + x[:, :, o0:o1])
        return out


class StripPatchMerging(nn.Module):
    """TinyViT's ``PatchMerging`` (same submodules and keys) run in strips of ``rows`` output rows in
    eval mode; like the stock module it takes (B, C, H, W) maps or (B, H * W, C) tokens and returns
    (B, tokens, out_dim) tokens."""

    def __init__(self, merging: nn.Module, rows: int = STRIP_ROWS) -> None:
        super().__init__()
        _check_depthwise(merging.conv2, "PatchMerging.conv2")
        for name in ("conv1", "act", "conv2", "conv3"):
            setattr(self, name, getattr(merging, name))
        self.input_resolution = merging.input_resolution
        self.dim, self.out_dim = merging.dim, merging.out_dim
        self.rows = rows
        self.train(merging.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            # x.shape[0], not len(x): tracers keep the batch dynamic
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        conv2 = self.conv2[0]
        height = x.shape[2]
        out_height = (height + 2 * conv2.padding[0] - conv2.kernel_size[0]) // conv2.stride[0] + 1
        if self.training or out_height <= self.rows:
            y = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
            return y.flatten(2).transpose(1, 2)
        strips = []
        for o0 in range(0, out_height, self.rows):
            o1 = min(o0 + self.rows, out_height)
            lo, hi, top, bottom = _input_rows(o0, o1, conv2, height)
            t = self.act(self.conv1(x[:, :, lo:hi]))
            strips.append(self.conv3(self.act(_conv_path_rows(self.conv2, t, top, bottom))))
        return torch.cat(strips, dim=2).flatten(2).transpose(1, 2)


def _require_tiny_vit(model: nn.Module) -> nn.Module:
    encoder = image_encoder(model)
    if not tiny_vit.is_encoder(encoder):
        raise MedcoreError(f"row strips are for TinyViT's (LiteMedSAM's) stem, not {type(encoder).__name__}")
    return encoder


def use_row_strips(model: nn.Module, rows: int = STRIP_ROWS) -> nn.Module:
    """Swap the MBConv blocks and the ``PatchMerging`` of ``model``'s TinyViT stage ``layers[0]`` for
    their strip-wise versions (:class:`StripMBConv`, :class:`StripPatchMerging`), in place.

    ``model`` is LiteMedSAM or its TinyViT encoder, dense or pruned, with batch norms folded or not.
    Idempotent (a second call sets ``rows``); returns ``model``. Raises :class:`MedcoreError` for
    another encoder and ``ValueError`` naming ``rows`` unless it is a positive integer.
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    stage = _require_tiny_vit(model).layers[0]
    vendor = sys.modules[tiny_vit._VENDOR]
    for i, block in enumerate(stage.blocks):
        if isinstance(block, vendor.MBConv):
            stage.blocks[i] = StripMBConv(block, rows)
        elif isinstance(block, StripMBConv):
            block.rows = rows
    if isinstance(stage.downsample, StripPatchMerging):
        stage.downsample.rows = rows
    elif stage.downsample is not None:
        stage.downsample = StripPatchMerging(stage.downsample, rows)
    return model


def uses_row_strips(model: nn.Module) -> bool:
    """Whether ``model``'s encoder is a TinyViT whose stage ``layers[0]`` runs in row strips."""
    encoder = image_encoder(model)
    if not tiny_vit.is_encoder(encoder):
        return False
    stage = encoder.layers[0]
    return all(isinstance(b, StripMBConv) for b in stage.blocks) and (
        stage.downsample is None or isinstance(stage.downsample, StripPatchMerging))
