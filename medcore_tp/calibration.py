"""Calibration batches and gradients for gradient-based importances (Taylor).

A calibration sample is a preprocessed image in [0, 1], its tight box from the mask, and the mask at
the low-res logit size. Without user data the built-in synthetic set is used (and said so).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medcore_tp.datasets import SegmentationDataset, load_datasets
from medcore_tp.errors import MedcoreError
from medcore_tp.inference import forward_logits
from medcore_tp.losses import segmentation_loss, segmentation_losses  # noqa: F401  (re-exported)
from medcore_tp.preprocessing import InputSpec, prepare_pair
from medcore_tp.splits import calibration_subset, make_splits, select_split
from medcore_tp.synthetic import synthetic_pairs


@dataclass
class CalibrationBatch:
    """Images (B, 3, S, S) in [0, 1], boxes (B, 4) in the input frame, masks (B, L, L) bool at the
    model's logit side L."""

    images: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor


def batch_from_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]], spec: InputSpec) -> CalibrationBatch:
    """Preprocess (image, mask) pairs for a model's input frame ``spec`` (``input_spec(model)``), tight
    boxes, masks at the logit side."""
    prepared = [prepare_pair(image, mask, spec) for image, mask in pairs]
    return CalibrationBatch(
        torch.stack([torch.from_numpy(p.image) for p in prepared]),
        torch.stack([torch.from_numpy(p.box) for p in prepared]).float(),
        torch.stack([torch.from_numpy(p.mask_low) for p in prepared]),
    )


def synthetic_batch(n: int, spec: InputSpec, seed: int = 0) -> CalibrationBatch:
    """``n`` samples of the built-in synthetic set, preprocessed for the input frame ``spec``."""
    return batch_from_pairs(synthetic_pairs(n=n, size=256, seed=seed), spec)


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


def accumulate_gradients(model: nn.Module, batches: Iterable[CalibrationBatch], batch_size: int = 1) -> int:
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


def single_samples(batches: Sequence[CalibrationBatch]) -> list[CalibrationBatch]:
    """Every sample of ``batches`` as a batch of its own (on a CPU a batch of 4 runs LiteMedSAM's
    encoder about 30% slower per image than single images)."""
    return [CalibrationBatch(b.images[i : i + 1], b.boxes[i : i + 1], b.masks[i : i + 1])
            for b in batches for i in range(len(b.images))]


def batches_from_samples(samples: Sequence, spec: InputSpec, batch_size: int = 8) -> list[CalibrationBatch]:
    """Calibration batches (tight boxes) from dataset samples, for the input frame ``spec``."""
    dataset = SegmentationDataset(samples, spec, box_mode="tight")
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
    roots: Sequence[str], calib_size: int, spec: InputSpec, seed: int = 42, batch_size: int = 8,
    mask_threshold: float | None = None,
) -> CalibrationSets:
    """The first ``calib_size`` training images (seeded 60/20/20 split) of each dataset folder, for a
    model whose input frame is ``spec`` (``input_spec(model)``); masks binarised at ``mask_threshold``."""
    datasets = load_datasets(roots, mask_threshold)
    splits = make_splits(datasets, seed)
    train = select_split(datasets, splits, "train")
    batches, used = {}, {}
    for name, samples in train.items():
        chosen = calibration_subset(samples, calib_size)
        if not chosen:
            raise MedcoreError(f"data {name}: its training split is empty ({len(datasets[name])} images)", "data")
        batches[name] = batches_from_samples(chosen, spec, batch_size)
        used[name] = len(chosen)
    return CalibrationSets(batches=batches, splits=splits, requested=calib_size, used=used)
