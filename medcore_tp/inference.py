"""Box-prompted inference with a SAM-style model (segment_anything ``Sam``, LiteMedSAM), the MedSAM way.

The preprocessed image (3, S, S) in [0, 1] goes straight into the image encoder (no pixel
mean/std, as MedSAM does), the box through the prompt encoder, and the mask decoder returns one
low-res logit map (``input_spec(model).logit_size``: S/4 for SAM's ViT, S for LiteMedSAM). Logits are upsampled bilinearly to S x S and, when asked, cropped to the
part the image fills (``longest-side`` models such as LiteMedSAM pad the rest) and resized to the
original image size; ``sigmoid > 0.5`` gives the mask. How an image fits into the input is the
model's :class:`~medcore_tp.preprocessing.InputSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcore_tp.models.spec import input_spec
from medcore_tp.preprocessing import fitted_size, preprocess_image

__all__ = [
    "decode_logits", "forward_logits", "input_size", "logit_size", "logits_to_masks", "logits_to_original", "predict_logits",
    "resize_mode", "segment", "upsample_logits",
]


def input_size(model: nn.Module) -> int:
    """The model's square input side (1024 for ViT-B, 256 for LiteMedSAM): ``input_spec(model).input_size``."""
    return input_spec(model).input_size


def logit_size(model: nn.Module) -> int:
    """Side of the decoder's low-res logits (input / 4 for SAM's ViT, the input size for LiteMedSAM)."""
    return input_spec(model).logit_size


def resize_mode(model: nn.Module) -> str:
    """How images fit into the model's input: ``square`` (SAM ViT family) or ``longest-side`` (TinyViT)."""
    return input_spec(model).resize_mode


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """:func:`forward_logits` without autograd (``torch.inference_mode``), for evaluation."""
    return forward_logits(model, images, boxes)


def forward_logits(model: nn.Module, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Low-res mask logits (B, 1, S/4, S/4) for images (B, 3, S, S) and boxes (B, 4), differentiable.

    Boxes are ``[x0, y0, x1, y1]`` in the input frame (pixels of the S x S image). Inputs are moved
    to the model's device; the result stays there. Gradients flow as usual (calibration, training);
    use :func:`predict_logits` to evaluate.
    """
    if images.ndim != 4 or images.shape[1] != 3 or boxes.shape != (images.shape[0], 4):
        raise ValueError(f"expected images (B, 3, S, S) and boxes (B, 4), got {tuple(images.shape)} and {tuple(boxes.shape)}")
    device = _device(model)
    images = images.to(device, dtype=torch.float32, non_blocking=True)
    boxes = boxes.to(device, dtype=torch.float32, non_blocking=True)
    return decode_logits(model, model.image_encoder(images), boxes)


def decode_logits(model: nn.Module, embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Low-res logits (B, 1, S/4, S/4) from image embeddings (B, C, S/16, S/16) and boxes (B, 4)."""
    boxes = boxes.to(embeddings.device, dtype=torch.float32)
    image_pe = model.prompt_encoder.get_dense_pe()
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
    # segment_anything's decoder repeats the image embedding once per prompt of the batch, so a
    # batch of B images with one box each must be decoded image by image.
    logits = [
        model.mask_decoder(
            image_embeddings=embeddings[i : i + 1],
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse[i : i + 1],
            dense_prompt_embeddings=dense[i : i + 1],
            multimask_output=False,
        )[0]
        for i in range(embeddings.shape[0])
    ]
    return torch.cat(logits, dim=0)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of (B, 1, h, w) logits to ``size`` = (H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def logits_to_original(logits: torch.Tensor, fitted: tuple[int, int], original: tuple[int, int]) -> torch.Tensor:
    """Input-frame logits (B, 1, S, S) -> (B, 1, H, W): crop the (h, w) part the image fills
    (``fitted``, see ``data.fitted_size``) and resize it bilinearly to ``original`` = (H, W)."""
    h, w = fitted
    return upsample_logits(logits[..., :h, :w], original)


def logits_to_masks(logits: torch.Tensor) -> torch.Tensor:
    """``sigmoid(logits) > 0.5`` as a bool tensor, channel dimension dropped: (B, 1, H, W) -> (B, H, W)."""
    return (torch.sigmoid(logits) > 0.5)[:, 0]


def segment(
    model: nn.Module,
    images: Sequence[np.ndarray],
    boxes: Sequence[Sequence[float]],
    batch_size: int = 4,
    resize: str = "torch",
) -> list[np.ndarray]:
    """Masks at each image's original size for (H, W, 3) images and boxes in original pixels.

    Images are fitted into the S x S input as the model expects (:func:`resize_mode`) and each box
    ``[x0, y0, x1, y1]`` is scaled with them; logits are upsampled to S x S, cropped to the image part
    and resized to (H, W). Runs on the model's device (CPU or CUDA), ``batch_size`` images at a time.
    Returns one (H, W) bool array per image.
    """
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
    spec = input_spec(model)
    size, mode = spec.input_size, spec.resize_mode
    masks: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = torch.from_numpy(np.stack([preprocess_image(np.asarray(im, dtype=np.float32), size, resize, mode)
                                           for im in chunk]))
        scaled, fits = [], []
        for im, box in zip(chunk, boxes[start : start + batch_size], strict=True):
            h, w = im.shape[:2]
            fh, fw = fitted_size(h, w, size, mode)
            fits.append((fh, fw))
            scaled.append(np.asarray(box, dtype=np.float32) * np.array([fw / w, fh / h, fw / w, fh / h], dtype=np.float32))
        logits = upsample_logits(predict_logits(model, batch, torch.from_numpy(np.stack(scaled))), (size, size))
        for i, im in enumerate(chunk):
            full = logits_to_original(logits[i : i + 1], fits[i], im.shape[:2])
            masks.append(logits_to_masks(full)[0].cpu().numpy())
    return masks
