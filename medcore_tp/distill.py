"""Distillation of a pruned encoder towards the dense model, with the teacher's outputs cached once.

The dense model (the teacher) sees every training image once per augmented view (the image itself
and its horizontal and vertical mirror, boxes mirrored with it); its image embedding and its
decoder's low-res logits for the box are kept (:class:`TeacherTargets`), so a distillation step
costs one student forward + backward. The loss per sample (:func:`distillation_loss`):

    L = MSE(e, e_t) / mean(e_t^2)                                        embedding, scale-free
      + mean((1 + 4 band(z_t > 0)) BCE(z, sigmoid(z_t)))                 the decoder's output

with e / z the student's embedding and logits, ``_t`` the teacher's, and band the 3x3 morphological
gradient of the teacher's mask: what the decoder makes of the embedding is what is measured, and its
boundary counts five times. Only the encoder trains (AdamW, cosine schedule with a short warm-up);
batch-norm statistics stay frozen. :func:`distill` reports the loss on held-back samples before and
after, so that a user sees whether it converged on images it did not train on; given held-back
samples with their masks it also checks their Dice and Boundary F1 along the run and goes back to the
best check when the last one is clearly worse (:mod:`medcore_tp.monitor`): a lower loss is not always
a better segmentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from medcore_tp.calibration import CalibrationBatch, train_with_frozen_norms
from medcore_tp.inference import decode_logits
from medcore_tp.losses import RECOVERY_BAND_WEIGHT, morphological_band
from medcore_tp.monitor import DEFAULT_CHECKS, BestState, check_steps

VIEWS = ("identity", "hflip", "vflip")
WARMUP_FRACTION = 0.05

__all__ = ["VIEWS", "TeacherTargets", "augmented_views", "cache_teacher", "distill", "distillation_loss", "student_loss"]


def augmented_views(pool: Sequence[CalibrationBatch], views: Sequence[str] = VIEWS) -> CalibrationBatch:
    """Every sample of ``pool`` in every view (``identity``, ``hflip``, ``vflip``), boxes mirrored with
    the image (input frame, side S: x -> S - x) and masks with it."""
    images = torch.cat([b.images for b in pool])
    boxes = torch.cat([b.boxes for b in pool]).float()
    masks = torch.cat([b.masks for b in pool])
    side = images.shape[-1]
    out_i, out_b, out_m = [], [], []
    for view in views:
        if view == "identity":
            out_i.append(images), out_b.append(boxes), out_m.append(masks)
        elif view == "hflip":
            out_i.append(images.flip(-1)), out_m.append(masks.flip(-1))
            out_b.append(torch.stack([side - boxes[:, 2], boxes[:, 1], side - boxes[:, 0], boxes[:, 3]], 1))
        elif view == "vflip":
            out_i.append(images.flip(-2)), out_m.append(masks.flip(-2))
            out_b.append(torch.stack([boxes[:, 0], side - boxes[:, 3], boxes[:, 2], side - boxes[:, 1]], 1))
        else:
            raise ValueError(f"view {view}: must be one of {', '.join(VIEWS)}")
    return CalibrationBatch(torch.cat(out_i), torch.cat(out_b), torch.cat(out_m))


@dataclass
class TeacherTargets:
    """Samples and the teacher's outputs on them: images (N, 3, S, S), boxes (N, 4), embeddings
    (N, C, h, w) stored as float16 (half the memory; the loss is far above that rounding), logits
    (N, 1, L, L) float32."""

    images: torch.Tensor
    boxes: torch.Tensor
    embeddings: torch.Tensor
    logits: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: Sequence[int]) -> TeacherTargets:
        i = torch.as_tensor(list(idx), dtype=torch.long)
        return TeacherTargets(self.images[i], self.boxes[i], self.embeddings[i], self.logits[i])


@torch.no_grad()
def cache_teacher(teacher: nn.Module, samples: CalibrationBatch, batch_size: int = 4,
                  progress: bool = False) -> TeacherTargets:
    """Run the (dense) ``teacher`` once over ``samples``; its outputs, kept on the CPU."""
    device = next(teacher.parameters()).device
    was = teacher.training
    teacher.eval()
    emb, logits = [], []
    try:
        for start in tqdm(range(0, len(samples.images), batch_size), desc="teacher outputs", disable=not progress,
                          leave=False):
            x = samples.images[start : start + batch_size].to(device)
            e = teacher.image_encoder(x)
            logits.append(decode_logits(teacher, e, samples.boxes[start : start + batch_size]).float().cpu())
            emb.append(e.half().cpu())
    finally:
        teacher.train(was)
    return TeacherTargets(samples.images, samples.boxes, torch.cat(emb), torch.cat(logits))


def distillation_loss(embedding: torch.Tensor, logits: torch.Tensor, teacher_embedding: torch.Tensor,
                      teacher_logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of the module docstring, averaged over the batch, and its two parts (detached)."""
    t_emb = teacher_embedding.to(embedding)
    emb = (embedding - t_emb).pow(2).mean() / t_emb.pow(2).mean().clamp_min(1e-12)
    t_logits = teacher_logits.to(logits)
    weight = 1.0 + RECOVERY_BAND_WEIGHT * morphological_band(t_logits[:, 0] > 0).unsqueeze(1)
    out = (weight * F.binary_cross_entropy_with_logits(logits, torch.sigmoid(t_logits), reduction="none")).mean()
    return emb + out, {"embedding": emb.detach(), "logits": out.detach()}


def student_loss(model: nn.Module, targets: TeacherTargets, idx: Sequence[int]) -> tuple[torch.Tensor, dict]:
    """:func:`distillation_loss` of ``model`` (one forward, with gradients) on the samples ``idx`` of ``targets``."""
    device = next(model.parameters()).device
    part = targets.subset(idx)
    emb = model.image_encoder(part.images.to(device))
    return distillation_loss(emb, decode_logits(model, emb, part.boxes.to(device)), part.embeddings.to(device),
                             part.logits.to(device))


@torch.no_grad()
def held_back_loss(model: nn.Module, targets: TeacherTargets, batch_size: int = 4) -> float:
    """Mean :func:`distillation_loss` of ``model`` over every sample of ``targets`` (eval mode)."""
    was = model.training
    model.eval()
    try:
        total = 0.0
        for start in range(0, len(targets), batch_size):
            idx = range(start, min(start + batch_size, len(targets)))
            total += float(student_loss(model, targets, idx)[0]) * len(idx)
    finally:
        model.train(was)
    return total / max(len(targets), 1)


def distill(
    model: nn.Module,
    targets: TeacherTargets,
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 2,
    seed: int = 0,
    held_back: TeacherTargets | None = None,
    progress: bool = False,
    monitor: Sequence[CalibrationBatch] | None = None,
    checks: int = DEFAULT_CHECKS,
) -> dict:
    """Train ``model``'s encoder towards the cached teacher outputs in place for ``steps`` steps of
    ``batch_size`` samples (drawn without replacement, epoch by epoch). Returns the per-step losses
    and, with ``held_back``, its loss before and after.

    ``monitor``: held-back samples with ground-truth masks. Their Dice and Boundary F1
    (:func:`medcore_tp.monitor.held_back_quality`) are measured before the first step and ``checks``
    times along the run, and the encoder ends with the weights of the best check when the last one is
    clearly worse (:class:`medcore_tp.monitor.BestState`), which may be the weights it started with
    (recorded as ``kept_step``, 0)."""
    if steps <= 0:
        return {"steps": 0, "loss": []}
    best = BestState() if monitor else None
    check_at = check_steps(steps, checks) if best is not None else set()
    encoder = model.image_encoder
    frozen = [p for n, p in model.named_parameters() if not n.startswith("image_encoder.") and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, int(WARMUP_FRACTION * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(steps - warmup, 1))))
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    record: dict = {"steps": steps, "lr": lr, "batch_size": batch_size, "samples": len(targets)}
    if held_back is not None and len(held_back):
        record["held_back_samples"] = len(held_back)
        record["held_back_before"] = held_back_loss(model, held_back)
    was = model.training
    if best is not None:
        best.check(0, model, monitor)
    train_with_frozen_norms(model)
    losses = []
    try:
        for step in tqdm(range(1, steps + 1), desc="distillation", disable=not progress, leave=False):
            while len(order) < batch_size:
                order += torch.randperm(len(targets), generator=gen).tolist()
            idx, order = order[:batch_size], order[batch_size:]
            loss, _ = student_loss(model, targets, idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if step in check_at:
                best.check(step, model, monitor)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was)
    record["loss"] = losses
    if best is not None:
        best.restore(encoder)
        record.update(checks=best.checks, kept_step=best.kept_step)
    if held_back is not None and len(held_back):
        record["held_back_after"] = held_back_loss(model, held_back)
    return record
