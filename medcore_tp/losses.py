"""Every segmentation loss medcore-tp trains or scores with, in one place, each with the reason for its form.

Three losses, because three jobs ask different things (docs/method.md):

* :func:`calibration_loss` - the boundary-aware Fisher's loss (docs/method.md "Calibration"): BCE summed
  over pixels and weighted ``1 + 3 B`` on the boundary band B, plus a Dice loss with a squared
  denominator. Summed, not averaged, over pixels, so the Fisher has the paper's scale; the band weight
  is what makes the Fisher "boundary-aware".
* :func:`segmentation_losses` - plain BCE (pixel mean) + squared-denominator soft Dice, per sample:
  MedSAM's own training loss, used for fine-tuning and for the Taylor importance's gradients.
* :func:`recovery_loss` - the five-term distillation after each cascade stage (docs/method.md "Recovery"),
  at the input resolution, with a linear-denominator Dice as in the reference recipe.

Two different bands appear in the project and have two names: :func:`morphological_band` here (the
3x3 morphological gradient dilate - erode of a torch mask batch, for loss weights and sampling) and
``medcore_tp.metrics.tolerance_band`` (pixels within ``tolerance`` px of the edge, for Boundary F1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BAND_WEIGHT = 3.0  # calibration: BCE weight 1 + 3 B on the boundary band
RECOVERY_BAND_WEIGHT = 4.0  # recovery: BCE weight 1 + 4 band at the input resolution
HIGH_FREQUENCY = 0.25  # cycles per pixel: the spectral recovery term compares frequencies above this
SMOOTH = 1e-5  # Dice smoothing, as in MedSAM


def morphological_band(masks: torch.Tensor) -> torch.Tensor:
    """dilate3x3(m) - erode3x3(m) of boolean masks (B, h, w), as float (B, h, w): the pixels on either
    side of the edge. Outside the image counts as foreground for the erosion (an object touching the
    border has no band there)."""
    m = masks.float().unsqueeze(1)
    dilated = F.max_pool2d(m, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return (dilated - eroded).squeeze(1)


def _dice_squared(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Soft Dice (B,) with a squared denominator (MedSAM's form), on flattened (B, N) tensors."""
    return (2 * (p * t).sum(1) + SMOOTH) / (p.pow(2).sum(1) + t.pow(2).sum(1) + SMOOTH)


def calibration_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-sample boundary-weighted BCE (summed over pixels) + squared-denominator Dice loss: (B,)."""
    z = logits.squeeze(1)
    m = masks.to(z.dtype)
    weight = 1.0 + BAND_WEIGHT * morphological_band(masks)
    bce = (weight * F.binary_cross_entropy_with_logits(z, m, reduction="none")).flatten(1).sum(1)
    return bce + 1 - _dice_squared(torch.sigmoid(z).flatten(1), m.flatten(1))


def segmentation_losses(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE + soft Dice (squared denominator) on low-res logits (B, 1, h, w): shape (B,)."""
    target = masks.to(logits.dtype).unsqueeze(1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    return bce + (1 - _dice_squared(torch.sigmoid(logits).flatten(1), target.flatten(1)))


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of :func:`segmentation_losses`."""
    return segmentation_losses(logits, masks).mean()


def _high_frequency_mask(h: int, w: int, device) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return (fy.pow(2) + fx.pow(2)).sqrt() > HIGH_FREQUENCY


def recovery_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    embedding: torch.Tensor,
    teacher_embedding: torch.Tensor,
    masks_low: torch.Tensor,
    size: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The five-term recovery loss (module docstring) and its parts (detached 0-d tensors)."""
    m_low = masks_low.float().unsqueeze(1)
    up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    m_up = F.interpolate(m_low, size=(size, size), mode="nearest")
    bce_map = F.binary_cross_entropy_with_logits(up, m_up, reduction="none")
    p = torch.sigmoid(up).flatten(1)
    t = m_up.flatten(1)
    dice = (2 * (p * t).sum(1) + 1e-5) / (p.sum(1) + t.sum(1) + 1e-5)  # per sample
    seg = 0.5 * bce_map.mean() + 0.5 * (1 - dice).mean()
    band_up = morphological_band(m_up.squeeze(1) > 0.5).unsqueeze(1)
    boundary_bce = ((1 + RECOVERY_BAND_WEIGHT * band_up) * bce_map).mean()
    distil = F.mse_loss(embedding, teacher_embedding)
    band_low = morphological_band(masks_low).unsqueeze(1)
    logit_distil = (band_low * (logits - teacher_logits).pow(2)).mean()
    keep = _high_frequency_mask(logits.shape[-2], logits.shape[-1], logits.device)
    spec = (torch.fft.rfft2(torch.sigmoid(logits)) - torch.fft.rfft2(m_low)).abs()
    spectrum = spec[..., keep].mean()
    total = seg + 1.0 * boundary_bce + 0.5 * distil + 2.0 * logit_distil + 0.5 * spectrum
    parts = {"seg": seg, "boundary_bce": boundary_bce, "embedding": distil, "logit": logit_distil, "spectrum": spectrum}
    return total, {k: v.detach() for k, v in parts.items()}  # 0-d tensors: no device sync per step




__all__ = [
    "BAND_WEIGHT", "HIGH_FREQUENCY", "RECOVERY_BAND_WEIGHT", "calibration_loss", "morphological_band",
    "recovery_loss", "segmentation_loss", "segmentation_losses",
]
