"""MedCore's recipe end to end: calibrate, score, budget by sensitivity, remove heads then MLP channels.

1. Boundary-aware Fisher of the target per calibration dataset; of the source (SAM) once, on all
   calibration images, when a source model is given.
2. Dzero / Dreset / alpha / Q per head and MLP channel (:mod:`medcore_tp.importance`).
3. Budgets shared among unprotected blocks in proportion to 1 / s_b (:mod:`medcore_tp.budget`).
4. Inside each block the lowest-Q groups go; heads are removed before MLP channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medcore_tp.calibration import CalibrationBatch
from medcore_tp.fisher import FisherResult, diagonal_fisher
from medcore_tp.graph import BlockPlan
from medcore_tp.importance import (
    DEFAULT_BETA,
    BlockStats,
    BoundaryFisherImportance,
    FirstOrderMedCoreImportance,
    MedCoreImportance,
    block_statistics,
)


@dataclass
class Calibration:
    """Fisher statistics of a target (per dataset) and optionally of its source model."""

    datasets: list[str]
    target: list[FisherResult]
    source: FisherResult | None = None
    source_state: dict[str, torch.Tensor] | None = None
    weights: list[float] | None = None

    @property
    def samples(self) -> dict[str, dict[str, int]]:
        out = {name: {"used": r.samples, "skipped": r.skipped} for name, r in zip(self.datasets, self.target, strict=True)}
        if self.source is not None:
            out["source (all datasets)"] = {"used": self.source.samples, "skipped": self.source.skipped}
        return out


def calibrate(
    model: nn.Module,
    sets: Mapping[str, Sequence[CalibrationBatch]],
    source: nn.Module | None = None,
    weights: Sequence[float] | None = None,
    progress: bool = False,
) -> Calibration:
    """Fisher of ``model`` on each calibration set, and of ``source`` on all of them together."""
    names = list(sets)
    target = [
        diagonal_fisher(model, sets[n], progress=progress, description=f"Fisher {n}",
                        total=sum(len(b.images) for b in sets[n]))
        for n in names
    ]
    src = src_state = None
    if source is not None:
        every = [b for n in names for b in sets[n]]
        src = diagonal_fisher(source, every, progress=progress, description="Fisher source",
                              total=sum(len(b.images) for b in every))
        src_state = {k: v.detach() for k, v in source.image_encoder.named_parameters()}
    return Calibration(names, target, src, src_state, list(weights) if weights is not None else None)


def statistics(model: nn.Module, calibration: Calibration) -> list[BlockStats]:
    """Per-block Dzero / Dreset / sensitivity from a calibration (dense model)."""
    return block_statistics(
        model,
        [r.fisher for r in calibration.target],
        calibration.source.fisher if calibration.source else None,
        calibration.source_state,
        [r.gradient for r in calibration.target] if all(r.gradient is not None for r in calibration.target) else None,
    )


def make_medcore_importance(
    model: nn.Module, stats: Sequence[BlockStats], kind: str = "medcore", weights: Sequence[float] | None = None,
    alpha: str | float = "auto", beta: float = DEFAULT_BETA,
) -> MedCoreImportance:
    """``medcore`` (Q), ``medcore-grad`` (Q with the first-order term) or ``boundary-fisher`` (Dzero
    only) importance from statistics."""
    if kind == "boundary-fisher":
        return BoundaryFisherImportance(model, stats, weights=weights, beta=beta)
    if kind == "medcore-grad":
        return FirstOrderMedCoreImportance(model, stats, weights=weights, alpha=alpha, beta=beta)
    return MedCoreImportance(model, stats, weights=weights, alpha=alpha, beta=beta)


def sensitivity_weights(importance: MedCoreImportance) -> list[float]:
    """Budget weights 1 / s_b (blocks with zero sensitivity get the largest finite share)."""
    s = [sc.sensitivity for sc in importance.scores]
    positive = [x for x in s if x > 0]
    floor = min(positive) if positive else 1.0
    return [1.0 / max(x, floor * 1e-6) for x in s]


def scores_table(importance: MedCoreImportance, plan: Mapping[int, BlockPlan]) -> list[dict]:
    """One row per group: block, kind, index, d_zero, d_reset, alpha, q, removed."""
    rows = []
    for b, sc in enumerate(importance.scores):
        removed = plan.get(b, BlockPlan())
        for kind, zero, reset, q, gone in (
            ("head", sc.head_zero, sc.head_reset, sc.head_q, set(removed.heads)),
            ("mlp", sc.mlp_zero, sc.mlp_reset, sc.mlp_q, set(removed.mlp)),
        ):
            for i in range(len(q)):
                rows.append({
                    "block": b, "kind": kind, "index": i, "d_zero": float(zero[i]),
                    "d_reset": float(reset[i]) if reset is not None else float("nan"),
                    "alpha": sc.alpha, "q": float(q[i]), "removed": i in gone,
                })
    return rows
