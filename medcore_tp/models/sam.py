"""Building segment_anything SAM models by name: the ViT family and a tiny test-sized member."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


@dataclass(frozen=True)
class SamConfig:
    """Hyper-parameters of a SAM model (segment_anything's ``_build_sam`` defaults for ViT-B)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_hidden_dim: int = 256


SAM_CONFIGS: dict[str, SamConfig] = {
    "medsam": SamConfig(),
    "sam-vit-b": SamConfig(),
    "sam-vit-l": SamConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "sam-vit-h": SamConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # The same classes at test size: windowed (with padding: 8 tokens, window 3) and global attention,
    # relative-position tables, 4 heads of 16 channels.
    "tiny": SamConfig(
        embed_dim=64,
        depth=4,
        num_heads=4,
        global_attn_indexes=(1, 3),
        img_size=128,
        window_size=3,
        prompt_dim=32,
        mask_in_chans=4,
        decoder_mlp_dim=64,
        decoder_heads=2,
        iou_hidden_dim=32,
    ),
}


def prompt_encoder_and_decoder(config, side: int) -> tuple[PromptEncoder, MaskDecoder]:
    """segment_anything's prompt encoder and mask decoder for an image embedding of ``side`` x ``side``.

    ``config`` provides ``img_size``, ``prompt_dim``, ``mask_in_chans``, ``decoder_mlp_dim``,
    ``decoder_heads`` and ``iou_hidden_dim`` (SAM's and LiteMedSAM's configs both do).
    """
    prompt = PromptEncoder(
        embed_dim=config.prompt_dim,
        image_embedding_size=(side, side),
        input_image_size=(config.img_size, config.img_size),
        mask_in_chans=config.mask_in_chans,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=2, embedding_dim=config.prompt_dim, mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_heads
        ),
        transformer_dim=config.prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=config.iou_hidden_dim,
    )
    return prompt, decoder


def build_sam(config: SamConfig) -> Sam:
    """A randomly initialised SAM model with ``config`` (eval mode)."""
    side = config.img_size // config.patch_size
    encoder = ImageEncoderViT(
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        out_chans=config.prompt_dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=config.window_size,
        global_attn_indexes=config.global_attn_indexes,
    )
    prompt, decoder = prompt_encoder_and_decoder(config, side)
    model = Sam(
        image_encoder=encoder,
        prompt_encoder=prompt,
        mask_decoder=decoder,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return model.eval()
