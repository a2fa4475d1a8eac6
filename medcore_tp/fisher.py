"""The boundary-aware calibration loss and the diagonal Fisher of the image encoder.

Where is the Fisher computed? Here. For each calibration sample n (image, tight box, mask m at the
low-res logit size, logits z, p = sigmoid(z)):

    B   = dilate3x3(m) - erode3x3(m)                                   (boundary band)
    L_n = sum_pixels (1 + 3 B) * BCE(z, m) + 1 - (2 sum(p m) + 1e-5) / (sum(p^2) + sum(m^2) + 1e-5)
    F_i = (1 / N) * sum_n (dL_n / dtheta_i)^2                          (per-sample squared gradients)
    g_i = (1 / N) * sum_n dL_n / dtheta_i                              (mean gradient, first-order term)

Samples whose gradient is not finite are skipped and counted. Each sample gets its own forward and
backward, so the result does not depend on how samples are batched, and the cost is one
forward+backward per sample plus an in-place square-and-add. Under torch.distributed the samples are
dealt out across processes and the sums and counts all-reduced.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from medcore_tp.calibration import CalibrationBatch, train_with_frozen_norms
from medcore_tp.distributed import all_reduce_sum, rank, world_size
from medcore_tp.errors import MedcoreError
from medcore_tp.inference import forward_logits
from medcore_tp.losses import BAND_WEIGHT, calibration_loss, morphological_band

boundary_band = morphological_band  # the name this band had before medcore_tp.losses
__all__ = ["BAND_WEIGHT", "FisherResult", "calibration_loss", "diagonal_fisher"]

@dataclass
class FisherResult:
    """Diagonal Fisher and mean gradient per encoder parameter (names relative to the encoder), and
    sample counts."""

    fisher: dict[str, torch.Tensor]
    samples: int
    skipped: int
    losses: list[float] = field(default_factory=list)
    gradient: dict[str, torch.Tensor] | None = None


def diagonal_fisher(
    model: nn.Module,
    batches: Iterable[CalibrationBatch],
    progress: bool = False,
    description: str = "Fisher",
    total: int | None = None,
) -> FisherResult:
    """Per-sample diagonal Fisher (and mean gradient) of ``model.image_encoder`` under :func:`calibration_loss`.

    The whole model runs (encoder, prompt encoder with the box, mask decoder) in train mode with
    batch-norm layers frozen (:func:`~medcore_tp.calibration.train_with_frozen_norms`); only encoder
    gradients are kept. Raises :class:`MedcoreError` when no
    sample has a finite gradient.
    """
    encoder = model.image_encoder
    names = [n for n, p in encoder.named_parameters() if p.requires_grad]
    params = [p for p in encoder.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    gsums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    seen = skipped = 0
    losses = []
    position, me, world = 0, rank(), world_size()  # samples are dealt out round-robin across processes
    was_training = model.training
    train_with_frozen_norms(model)
    bar = tqdm(total=total, desc=description, unit="img", disable=not progress, leave=False)
    try:
        for batch in batches:
            for i in range(len(batch.images)):
                position += 1
                if (position - 1) % world != me:
                    continue
                model.zero_grad(set_to_none=True)
                logits = forward_logits(model, batch.images[i : i + 1], batch.boxes[i : i + 1])
                loss = calibration_loss(logits, batch.masks[i : i + 1].to(logits.device))[0]
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                bar.update(1)
                if not torch.isfinite(loss) or not all(g is None or torch.isfinite(g).all() for g in grads):
                    skipped += 1
                    continue
                for acc, gacc, g in zip(sums, gsums, grads, strict=True):
                    if g is not None:
                        acc.addcmul_(g, g)
                        gacc.add_(g)
                seen += 1
                losses.append(float(loss.detach()))
                del grads, logits, loss  # free them before the next sample's forward (peak memory)
    finally:
        bar.close()
        model.train(was_training)
    counts = torch.tensor([seen, skipped], dtype=torch.float64, device=sums[0].device)
    all_reduce_sum(sums + gsums + [counts])
    seen, skipped = int(counts[0]), int(counts[1])
    if seen == 0:
        raise MedcoreError(f"calibration: all {skipped} samples gave non-finite gradients; no Fisher can be computed")
    return FisherResult({n: s / seen for n, s in zip(names, sums, strict=True)}, seen, skipped, losses,
                        {n: g / seen for n, g in zip(names, gsums, strict=True)})
