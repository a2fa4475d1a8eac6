"""Preprocessing for a model's input frame: the input spec, fitting images and masks, box prompts.

Follows docs/method.md ("Data and prompts"): image -> 3 channels -> fitted into the
model's S x S input (bicubic, anti-aliased) -> min-max to [0, 1]; mask binarised and nearest-neighbour
fitted the same way, at the input size and at the decoder's logit size; box from the ORIGINAL mask's
bounding box, scaled into the input frame (:func:`scaled_box`). Two ways to fit an image into the square (``RESIZE_MODES``):

- ``square``: stretched to S x S, aspect not kept (MedSAM's preprocessing, used for the SAM ViT models);
- ``longest-side``: the longest side becomes S, aspect kept, the rest zero-padded at the bottom and
  right (SAM's ``ResizeLongestSide`` and LiteMedSAM's recipe). Min-max normalisation comes before the
  padding. Predictions are cropped to the part the image fills before going back to its original size
  (:func:`fitted_size` tells which part).

What a given model needs is its :class:`InputSpec` (``medcore_tp.models.input_spec(model)``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from medcore_tp.errors import MedcoreError

RESIZE_MODES = ("square", "longest-side")
NORMALISATIONS = ("min-max",)


@dataclass(frozen=True)
class InputSpec:
    """A SAM-style model's input and output frame.

    ``input_size``: side S of the square input image (1024 for SAM ViT-B, 256 for LiteMedSAM).
    ``logit_size``: side of the decoder's low-res logits (S / 4 for SAM's ViT, S for LiteMedSAM),
    where calibration and training masks live.
    ``resize_mode``: how an image fits into the S x S input: ``square`` (stretched, MedSAM's recipe)
    or ``longest-side`` (aspect kept, zero-padded bottom/right, LiteMedSAM's recipe).
    ``normalisation``: ``min-max`` (each image scaled to [0, 1]; no pixel mean/std, as MedSAM does).
    """

    input_size: int
    logit_size: int
    resize_mode: str = "square"
    normalisation: str = "min-max"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise MedcoreError(f"resize_mode {self.resize_mode}: must be one of {', '.join(RESIZE_MODES)}",
                               "resize_mode")
        if self.normalisation not in NORMALISATIONS:
            raise MedcoreError(f"normalisation {self.normalisation}: must be one of {', '.join(NORMALISATIONS)}",
                               "normalisation")

def fitted_size(height: int, width: int, size: int, mode: str = "square") -> tuple[int, int]:
    """(h, w) of the part of the S x S input that an (H, W) image fills, top-left aligned.

    ``square``: (S, S). ``longest-side``: the longest side becomes S and the other
    ``int(side * S / longest + 0.5)`` (SAM's ``ResizeLongestSide`` rounding), at least 1.
    """
    if mode == "square":
        return size, size
    if mode != "longest-side":
        raise MedcoreError(f"resize_mode {mode}: must be one of {', '.join(RESIZE_MODES)}", "resize_mode")
    scale = size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image(image: np.ndarray, size: int | tuple[int, int], method: str = "torch") -> np.ndarray:
    """Resize an (H, W, 3) image to ``size`` (S for S x S, or (h, w)), bicubic and anti-aliased.

    ``method="torch"`` uses ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``
    (Keys cubic kernel widened when shrinking, like PIL); ``"skimage"`` uses
    ``skimage.transform.resize(order=3, anti_aliasing=True, preserve_range=True)`` as the MedSAM
    authors' preprocessing does, about 100-200x slower. Both results are clipped to the input's
    range, as skimage does by default.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if method == "skimage":
        from skimage.transform import resize

        out = resize(image, (h, w, image.shape[2]), order=3, mode="constant",
                     preserve_range=True, anti_aliasing=True)
        return out.astype(np.float32)
    if method != "torch":
        raise ValueError(f"unknown resize method {method!r} (torch or skimage)")
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    if tensor.shape[-2:] != (h, w):
        tensor = torch.nn.functional.interpolate(tensor, size=(h, w), mode="bicubic",
                                                 antialias=True, align_corners=False)
        tensor = tensor.clamp(float(image.min()), float(image.max()))
    return tensor[0].permute(1, 2, 0).numpy()


def preprocess_image(image: np.ndarray, size: int, method: str = "torch", mode: str = "square") -> np.ndarray:
    """Fit an (H, W, 3) image into the S x S input (``mode``, see the module docstring), min-max to
    [0, 1], zero-pad; returns (3, S, S) float32.

    A constant image becomes all zeros (the range is floored at 1e-8 as in MedSAM).
    """
    h, w = fitted_size(image.shape[0], image.shape[1], size, mode)
    resized = resize_image(image, (h, w), method)
    low, high = float(resized.min()), float(resized.max())
    out = np.zeros((3, size, size), dtype=np.float32)
    out[:, :h, :w] = ((resized - low) / max(high - low, 1e-8)).transpose(2, 0, 1)
    return out


@dataclass
class PreparedPair:
    """An (image, mask) pair in a model's input frame: image (3, S, S) in [0, 1], mask (S, S), mask at
    the logit side, and the (h, w) part of the frame the image fills."""

    image: np.ndarray
    mask: np.ndarray
    mask_low: np.ndarray
    fitted: tuple[int, int]
    box: np.ndarray | None = None  # tight box of the original mask in the input frame (scaled_box)


def prepare_pair(image: np.ndarray, mask: np.ndarray, spec: InputSpec, method: str = "torch") -> PreparedPair:
    """Fit an (H, W, 3) image and its (H, W) mask into ``spec``'s S x S input and the mask also into
    its logit frame; the box comes from the original mask (:func:`scaled_box`)."""
    size, mode = spec.input_size, spec.resize_mode
    fitted = fitted_size(mask.shape[0], mask.shape[1], size, mode)
    return PreparedPair(
        image=preprocess_image(image, size, method, mode),
        mask=fit_mask(mask, size, mode),
        mask_low=fit_mask(mask, spec.logit_size, mode),
        fitted=fitted,
        box=scaled_box(mask, fitted),
    )


def fit_mask(mask: np.ndarray, size: int, mode: str = "square") -> np.ndarray:
    """A 2-D bool mask fitted into S x S like its image (nearest neighbour, False padding)."""
    h, w = fitted_size(mask.shape[0], mask.shape[1], size, mode)
    out = np.zeros((size, size), dtype=bool)
    out[:h, :w] = mask_to_size(mask, h, w)
    return out


def mask_to_size(mask: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D bool mask, sampling each output pixel at its centre."""
    width = height if width is None else width
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.intp), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.intp), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


# --------------------------------------------------------------------------------------------
# Boxes


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """Tight box ``[x0, y0, x1, y1]`` (inclusive pixel indices) of a 2-D mask, as float32.

    An empty mask gets the full-image box ``[0, 0, W-1, H-1]``.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.array([0, 0, mask.shape[1] - 1, mask.shape[0] - 1], dtype=np.float32)
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def scaled_box(mask: np.ndarray, fitted: tuple[int, int]) -> np.ndarray:
    """Tight box of an ORIGINAL-resolution (H, W) mask, scaled into the (h, w) part of the input frame
    the image fills: ``[x0, y0, x1, y1]`` inclusive, float32.

    Taken before any resizing, so that thin extremities that nearest-neighbour downsampling of the mask
    would drop still count (LiteMedSAM's own inference scales the original box the same way). The box
    covers every input pixel that an original foreground pixel overlaps: x0 -> floor(x0 * w / W),
    x1 -> ceil((x1 + 1) * w / W) - 1. An empty mask gets the box of the whole fitted part.

    Detached specks smaller than one input pixel (fewer than (W / w) * (H / h) original pixels, e.g. a
    lone JPEG-artefact pixel in a mask's corner) are not part of the object the box frames: on the
    Kvasir-SEG masks in shared/data one such pixel at (0, 0) would otherwise turn a tight box into
    the whole image. Parts attached to the object, however thin, always count.
    """
    height, width = mask.shape
    h, w = fitted
    mask = _without_specks(mask, (width / w) * (height / h))
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.array([0, 0, w - 1, h - 1], dtype=np.float32)
    cols = np.flatnonzero(mask.any(axis=0))
    sx, sy = w / width, h / height
    x0, y0 = int(np.floor(cols[0] * sx + 1e-9)), int(np.floor(rows[0] * sy + 1e-9))
    x1, y1 = int(np.ceil((cols[-1] + 1) * sx - 1e-9)) - 1, int(np.ceil((rows[-1] + 1) * sy - 1e-9)) - 1
    return np.array([x0, y0, min(max(x1, x0), w - 1), min(max(y1, y0), h - 1)], dtype=np.float32)


def _without_specks(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """``mask`` without the 8-connected components smaller than ``min_pixels`` (all kept when every
    component is that small)."""
    if min_pixels <= 1 or not mask.any():
        return mask
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = sizes >= min_pixels
    if not keep.any():
        return mask
    return keep[labels - 1] & (labels > 0)


def widen_box(box: np.ndarray, jitter: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Move each side of ``box`` outwards by its own random whole number of pixels in [0, jitter],
    then clip to the image (``[0, W-1]`` x ``[0, H-1]``)."""
    if jitter < 0:
        raise ValueError(f"box jitter must be >= 0, got {jitter}")
    widen = rng.integers(0, jitter + 1, size=4).astype(np.float32)
    out = box.astype(np.float32) + widen * np.array([-1, -1, 1, 1], dtype=np.float32)
    return np.clip(out, 0, np.array([width - 1, height - 1, width - 1, height - 1], dtype=np.float32))


def file_rng(seed: int, name: str) -> np.random.Generator:
    """A generator fixed by (seed, file name): the same box for a file in every run and process.

    Python's ``hash()`` is salted per process, so a cryptographic hash makes the seed instead.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


