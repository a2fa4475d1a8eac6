"""Calibration batches and gradients for gradient-based importances (Taylor).

A calibration sample is a preprocessed image in [0, 1], its tight box from the mask, and the mask at
the low-res logit size. Without user data the built-in synthetic set is used (and said so).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from medcore_tp.data import (
    SegmentationDataset,
    calibration_subset,
    load_datasets,
    make_splits,
    prepare_pair,
    select_split,
)
from medcore_tp.errors import MedcoreError
from medcore_tp.inference import forward_logits
from medcore_tp.synthetic import synthetic_pairs


@dataclass
class CalibrationBatch:
    """Images (B, 3, S, S) in [0, 1], boxes (B, 4) in the input frame, masks (B, S/4, S/4) bool."""

    images: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor


def batch_from_pairs(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], size: int, low_size: int | None = None,
    resize_mode: str = "square",
) -> CalibrationBatch:
    """Preprocess (image, mask) pairs for a model with input side ``size`` (tight boxes); masks at
    the logit side ``low_size`` (default ``size // 4``, SAM's ViT; see ``inference.logit_size``);
    ``resize_mode`` as ``inference.resize_mode`` of the model."""
    prepared = [prepare_pair(image, mask, size, low_size or size // 4, resize_mode) for image, mask in pairs]
    return CalibrationBatch(
        torch.stack([torch.from_numpy(p.image) for p in prepared]),
        torch.stack([torch.from_numpy(p.box) for p in prepared]).float(),
        torch.stack([torch.from_numpy(p.mask_low) for p in prepared]),
    )


def synthetic_batch(n: int, size: int, seed: int = 0, low_size: int | None = None) -> CalibrationBatch:
    """``n`` samples of the built-in synthetic set, preprocessed for input side ``size``."""
    return batch_from_pairs(synthetic_pairs(n=n, size=256, seed=seed), size, low_size)


def segmentation_losses(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE + soft Dice (squared denominator) on low-res logits (B, 1, h, w): shape (B,)."""
    target = masks.to(logits.dtype).unsqueeze(1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1e-5) / (p.pow(2).sum(1) + t.pow(2).sum(1) + 1e-5)
    return bce + dice


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of :func:`segmentation_losses`."""
    return segmentation_losses(logits, masks).mean()


def train_with_frozen_norms(model: torch.nn.Module) -> None:
    """Train mode, except batch-norm layers, which stay in eval mode.

    Calibration, recovery and fine-tuning run one or a few images at a time: batch statistics of such
    batches would change the function being measured and overwrite the running statistics (LiteMedSAM's
    conv stages have batch norm; SAM's ViT has none). Everything else behaves as in training (e.g.
    TinyViT's attention biases receive gradients).
    """
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def accumulate_gradients(model: Sam, batches: Iterable[CalibrationBatch], batch_size: int = 1) -> int:
    """Fill ``.grad`` of the encoder with the summed gradient of :func:`segmentation_loss`.

    Runs in :func:`train_with_frozen_norms` mode so that every parameter receives its gradient and
    batch-norm statistics stay as they are. Returns the number of samples seen.
    """
    encoder = model.image_encoder
    was_training = model.training
    train_with_frozen_norms(model)
    model.zero_grad(set_to_none=True)
    seen = 0
    try:
        for batch in batches:
            for start in range(0, len(batch.images), batch_size):
                sl = slice(start, start + batch_size)
                logits = forward_logits(model, batch.images[sl], batch.boxes[sl])
                segmentation_loss(logits, batch.masks[sl].to(logits.device)).backward()
                seen += len(batch.images[sl])
    finally:
        model.train(was_training)
    scored = {id(p) for p in encoder.parameters()}
    for p in model.parameters():
        if id(p) not in scored:
            p.grad = None  # only the encoder is being scored
    return seen


def batches_from_samples(
    samples: Sequence, size: int, batch_size: int = 8, low_size: int | None = None, resize_mode: str = "square"
) -> list[CalibrationBatch]:
    """Calibration batches (tight boxes) from dataset samples, for input side ``size``."""
    dataset = SegmentationDataset(samples, size, box_mode="tight", low_size=low_size, resize_mode=resize_mode)
    out = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        out.append(
            CalibrationBatch(
                images=torch.stack([it["image"] for it in items]),
                boxes=torch.stack([it["box"] for it in items]).float(),
                masks=torch.stack([it["mask_low"] for it in items]),
            )
        )
    return out


@dataclass
class CalibrationSets:
    """Calibration batches per dataset name, the splits they came from, and what was asked vs used."""

    batches: dict[str, list[CalibrationBatch]]
    splits: dict
    requested: int
    used: dict[str, int]


def calibration_sets(
    roots: Sequence[str], calib_size: int, size: int, seed: int = 42, batch_size: int = 8, low_size: int | None = None,
    resize_mode: str = "square", mask_threshold: float | None = None,
) -> CalibrationSets:
    """The first ``calib_size`` training images (seeded 60/20/20 split) of each dataset folder, for a
    model with input side ``size``, logit side ``low_size`` and ``resize_mode`` (see ``inference``)."""
    datasets = load_datasets(roots, mask_threshold)
    splits = make_splits(datasets, seed)
    train = select_split(datasets, splits, "train")
    batches, used = {}, {}
    for name, samples in train.items():
        chosen = calibration_subset(samples, calib_size)
        if not chosen:
            raise MedcoreError(f"--data {name}: its training split is empty ({len(datasets[name])} images)")
        batches[name] = batches_from_samples(chosen, size, batch_size, low_size, resize_mode)
        used[name] = len(chosen)
    return CalibrationSets(batches=batches, splits=splits, requested=calib_size, used=used)
