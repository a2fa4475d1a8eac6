"""Held-back segmentation quality during training: what recovery and distillation are for, measured on
images they do not train on.

A falling training loss does not say that the pruned model segments better (lowering the embedding
MSE alone made Dice worse on LiteMedSAM), so training that can be checked is checked on the outcome:
:func:`held_back_quality` is the mean Dice and Boundary F1 of the model's masks against the ground
truth of held-back calibration samples, and :class:`BestState` keeps the encoder weights of the best
check so that a run which clearly hurts (its last check more than 0.02 below its best) ends at its
best point instead of its last.

Conventions: masks are compared at the model's logit side L (S / 4: 64 px for LiteMedSAM, 256 px for
SAM), the resolution calibration masks are stored at; Boundary F1 uses a 1 px tolerance there (4 px of
the input frame). The score that ranks checks is the mean of Dice and Boundary F1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from medcore_tp.calibration import CalibrationBatch, train_with_frozen_norms
from medcore_tp.inference import predict_logits
from medcore_tp.metrics import boundary_f1, dice

BOUNDARY_TOLERANCE = 1

DEFAULT_CHECKS = 4  # checks along a training run, besides the one before its first step
DEFAULT_TOLERANCE = 0.02  # score drop (mean of Dice and BF1) that counts as training having hurt
# On a short run each check of 4 held-back images costs about a training step per image: on the
# built-in 20-step run, 4 checks per stage were a tenth of its time.
STEPS_PER_CHECK = 10

__all__ = ["BOUNDARY_TOLERANCE", "DEFAULT_CHECKS", "DEFAULT_TOLERANCE", "STEPS_PER_CHECK", "BestState", "check_steps",
           "checks_for", "held_back_quality", "logit_quality"]


def check_steps(steps: int, checks: int = DEFAULT_CHECKS) -> set[int]:
    """The steps (1-based, the last one included) after which a run of ``steps`` steps is checked:
    ``checks`` of them, evenly spread (fewer when the run is shorter)."""
    return {round(steps * (i + 1) / checks) for i in range(checks)} - {0} if steps > 0 and checks > 0 else set()


def held_back_quality(model: nn.Module, batches: Sequence[CalibrationBatch]) -> dict[str, float]:
    """Mean Dice, Boundary F1 and their mean (``score``) of ``model`` on every sample of ``batches``
    (eval mode, no gradients; the model's train/eval state is restored)."""
    was = model.training
    model.eval()
    try:
        logits = [predict_logits(model, batch.images, batch.boxes) for batch in batches]
    finally:
        model.train(was)
    if not logits:
        raise ValueError("batches: no sample to measure")
    return logit_quality(torch.cat(logits), torch.cat([b.masks for b in batches]))


def logit_quality(logits: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Mean Dice, Boundary F1 and their mean (``score``) of low-res ``logits`` (N, 1, h, w), foreground
    where > 0, against ``masks`` (N, h, w) at the same size."""
    if len(logits) == 0:
        raise ValueError("logits: no sample to measure")
    values: dict[str, list[float]] = {"dice": [], "boundary_f1": []}
    preds = (logits[:, 0] > 0).cpu().numpy()
    for pred, gt in zip(preds, masks.cpu().numpy().astype(bool), strict=True):
        values["dice"].append(dice(pred, gt))
        values["boundary_f1"].append(boundary_f1(pred, gt, tolerance=BOUNDARY_TOLERANCE))
    out = {k: float(np.mean(v)) for k, v in values.items()}
    out["score"] = (out["dice"] + out["boundary_f1"]) / 2
    return out


def checks_for(steps: int) -> int:
    """How many checks a run of ``steps`` steps gets by default: :data:`DEFAULT_CHECKS`, or one per
    :data:`STEPS_PER_CHECK` steps on shorter runs (at least one)."""
    return max(1, min(DEFAULT_CHECKS, steps // STEPS_PER_CHECK))


@dataclass
class BestState:
    """The encoder weights at the best of a series of checks (highest ``score``; of equal scores the
    latest), kept on the CPU.

    :meth:`restore` goes back to them only when the last check is more than ``tolerance`` below the
    best: on a handful of held-back images small differences are noise (a saturated score picks any
    check), so a run ends at its last weights unless training clearly hurt."""

    tolerance: float = DEFAULT_TOLERANCE
    step: int = -1
    score: float = -float("inf")
    checks: list[dict] = field(default_factory=list)
    _state: dict[str, torch.Tensor] | None = None

    def offer(self, step: int, quality: dict[str, float], encoder: nn.Module) -> bool:
        """Record the check at ``step``; keep ``encoder``'s weights when it is the best so far."""
        self.checks.append({"step": step, **quality})
        if quality["score"] < self.score:  # a tie goes to the later, more trained weights
            return False
        self.step, self.score = step, quality["score"]
        self._state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
        return True

    def check(self, step: int, model: nn.Module,
              held: Sequence[CalibrationBatch] | Callable[[nn.Module], dict[str, float]]) -> None:
        """Measure ``model`` (``held``: held-back batches, measured by :func:`held_back_quality`, or a
        function of the model that returns such a dict, e.g. with the loss too) and :meth:`offer` its
        encoder; the model goes back to training with frozen batch norms, as recovery and distillation
        train."""
        quality = held(model) if callable(held) else held_back_quality(model, held)
        self.offer(step, quality, model.image_encoder)
        train_with_frozen_norms(model)

    @property
    def kept_step(self) -> int:
        """The step whose weights :meth:`restore` leaves in the encoder (-1 before any check)."""
        if not self.checks:
            return -1
        last = self.checks[-1]
        return last["step"] if last["score"] >= self.score - self.tolerance else self.step

    def restore(self, encoder: nn.Module) -> None:
        """Load the best weights back into ``encoder`` when the last check is more than ``tolerance``
        below them; otherwise leave the last weights."""
        if self._state is not None and self.kept_step != self.checks[-1]["step"]:
            encoder.load_state_dict(copy.copy(self._state))
