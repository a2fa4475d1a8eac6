"""A whole pruning run, as ``medcore-tp prune`` does it: ratios, calibration, scoring, cascade, recovery.

The command line only parses options and prints; everything a library user would also need lives
here: settling the ratios on the bare architecture (so bad ones fail before any work), choosing the
calibration images, building the importance, the sensitivity-weighted budget, and the cascade
(heads, recovery, MLP channels, recovery).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from segment_anything.modeling import Sam

from medcore_tp.arch import adapter_for
from medcore_tp.budget import Budget, RatioRule, ratio_budget, ratio_ceiling, ratio_rule
from medcore_tp.calibration import CalibrationBatch, accumulate_gradients, calibration_sets, synthetic_batch
from medcore_tp.graph import Plan
from medcore_tp.inference import input_size, logit_size, resize_mode
from medcore_tp.profile import count_params
from medcore_tp.prune import make_importance, prune_by_budget
from medcore_tp.recipe import (
    calibrate,
    make_medcore_importance,
    scores_table,
    sensitivity_weights,
    statistics,
)
from medcore_tp.recovery import recover

FISHER_IMPORTANCES = ("medcore", "boundary-fisher")
CALIBRATED_IMPORTANCES = FISHER_IMPORTANCES + ("taylor",)


@dataclass
class Ratios:
    """Head / MLP ratios and protected blocks a run uses, and the ``--ratio`` rule behind them."""

    heads_ratio: float
    mlp_ratio: float
    protect: list[int]
    rule: RatioRule | None = None


def settle_ratios(
    arch: Sam,
    ratio: float | None,
    heads_ratio: float | None,
    mlp_ratio: float | None,
    protect: Sequence[int] | None,
    weights: Sequence[float] | None = None,
) -> Ratios:
    """Validate and settle the ratios on an architecture (a meta-device model is enough).

    Either ``ratio`` (fraction of encoder parameters, the ``--ratio`` rule) or both explicit ratios;
    ``weights`` are the per-block budget weights when known (they decide how many parameters a ratio
    removes where group sizes differ per block). Raises ``MedcoreError`` for bad values.
    """
    adapter, encoder = adapter_for(arch), arch.image_encoder
    heads, mlp = adapter.heads_per_block(encoder), adapter.mlp_per_block(encoder)
    if ratio is None:
        ratio_budget(heads, mlp, heads_ratio, mlp_ratio, protect or [])  # raises on bad values
        return Ratios(heads_ratio, mlp_ratio, list(protect or []))
    head_p, chan_p = adapter.group_params(encoder)
    rule = ratio_rule(ratio, heads, mlp, head_p, chan_p, count_params(encoder), protect, weights)
    return Ratios(rule.heads_ratio, rule.mlp_ratio, rule.protect, rule)


def default_protection(arch: Sam) -> list[int]:
    """The blocks ``--ratio`` protects unless told otherwise: the last two (10 and 11 on ViT-B)."""
    n = len(adapter_for(arch).heads_per_block(arch.image_encoder))
    return [n - 2, n - 1] if n > 2 else []


def max_ratio(arch: Sam, protect: Sequence[int]) -> float:
    """The largest ``--ratio`` reachable on ``arch`` with ``protect`` (uniform per-block weights)."""
    adapter, encoder = adapter_for(arch), arch.image_encoder
    head_p, chan_p = adapter.group_params(encoder)
    return ratio_ceiling(adapter.heads_per_block(encoder), adapter.mlp_per_block(encoder), head_p, chan_p,
                         count_params(encoder), protect)


@dataclass
class PruneRun:
    """What a run did, for the summary and the screen."""

    plan: Plan
    budget: Budget
    ratios: Ratios
    calibration: dict | None = None
    splits: dict | None = None
    scores_rows: list[dict] | None = None
    extra: dict = field(default_factory=dict)
    recovery: list[dict] = field(default_factory=list)


def calibration_batches(
    model: Sam, roots: Sequence[str], calib_size: int, batch_size: int, seed: int, log: Callable[[str], None],
    mask_threshold: float | None = None,
) -> tuple[dict[str, list[CalibrationBatch]], dict | None]:
    """Calibration batches per dataset (first training images of each folder) or the synthetic set."""
    size, low = input_size(model), logit_size(model)
    if not roots:
        log(f"calibration: {calib_size} built-in SYNTHETIC images (not medical data); use --data for real ones")
        return {"synthetic": [synthetic_batch(calib_size, size, seed=seed, low_size=low)]}, None
    sets = calibration_sets(roots, calib_size, size, batch_size=batch_size, low_size=low,
                            resize_mode=resize_mode(model), mask_threshold=mask_threshold)
    for name, used in sets.used.items():
        if used < calib_size:
            log(f"note: --calib-size {calib_size}: {name} has {used} training images, using all of them")
    return sets.batches, sets.splits


def run_prune(
    model: Sam,
    arch: Sam,
    importance: str,
    ratio: float | None,
    heads_ratio: float | None,
    mlp_ratio: float | None,
    protect: Sequence[int] | None,
    roots: Sequence[str] = (),
    source: Sam | None = None,
    data_weights: Sequence[float] | None = None,
    alpha: str | float = "auto",
    calib_size: int = 128,
    batch_size: int = 8,
    recover_steps: int = 100,
    recover_batch_size: int = 1,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = print,
    mask_threshold: float | None = None,
) -> PruneRun:
    """Prune ``model`` in place by ``importance`` under the settled ratios; see the module docstring.

    ``arch`` is the bare architecture (e.g. a meta-device copy) the ratios are settled on.
    ``recover_batch_size`` is per process (see :func:`medcore_tp.recovery.recover`).
    """
    ratios = settle_ratios(arch, ratio, heads_ratio, mlp_ratio, protect)
    batches, splits, pool = None, None, []
    if importance in CALIBRATED_IMPORTANCES or recover_steps > 0:
        batches, splits = calibration_batches(model, roots, calib_size, batch_size, seed, log, mask_threshold)
        pool = [b for bs in batches.values() for b in bs]
    calib_info, extra, budget_weights = None, {}, None
    if importance == "taylor":
        seen = accumulate_gradients(model, pool, batch_size=1)
        calib_info = {"datasets": list(batches), "samples": seen}
        imp = make_importance("taylor")
    elif importance in FISHER_IMPORTANCES:
        cal = calibrate(model, batches, source=source, weights=data_weights, progress=progress)
        imp = make_medcore_importance(model, statistics(model, cal), importance, data_weights, alpha)
        calib_info = {"datasets": list(batches), "samples": cal.samples}
        extra = {
            "source_model_used": source is not None,
            "alpha_per_block": [s.alpha for s in imp.scores],
            "sensitivity_per_block": [s.sensitivity for s in imp.scores],
        }
        if source is None and importance == "medcore":
            log("no --source-checkpoint: only Dzero is available, alpha = 1 in every block")
        budget_weights = sensitivity_weights(imp)
        if ratio is not None:
            # Where per-block group sizes differ (TinyViT stages), the sensitivity-weighted allocation
            # changes how many parameters a ratio removes: settle the ratios again with those weights.
            ratios = settle_ratios(arch, ratio, None, None, protect, budget_weights)
    else:
        imp = make_importance(importance)
    adapter = adapter_for(arch)
    budget = ratio_budget(
        adapter.heads_per_block(arch.image_encoder), adapter.mlp_per_block(arch.image_encoder),
        ratios.heads_ratio, ratios.mlp_ratio, ratios.protect, weights=budget_weights,
    )
    recovery: list[dict] = []

    def run_stage(stage: str, remove: Callable[[], None]) -> None:
        teacher = copy.deepcopy(model) if recover_steps > 0 else None
        remove()
        if teacher is not None:
            curve = recover(model, teacher, pool, steps=recover_steps, seed=seed + len(recovery),
                            progress=progress, description=f"recovery after {stage}", batch_size=recover_batch_size)
            recovery.append({"stage": stage, "steps": recover_steps, "batch_size": recover_batch_size, "loss": curve})
            log(f"recovery after removing {stage}: loss {curve[0]:.4f} (first step) -> {curve[-1]:.4f} (last)")

    plan = prune_by_budget(model, imp, budget, run_stage=run_stage)
    rows = scores_table(imp, plan) if importance in FISHER_IMPORTANCES else None
    return PruneRun(plan=plan, budget=budget, ratios=ratios, calibration=calib_info, splits=splits,
                    scores_rows=rows, extra=extra, recovery=recovery)


__all__ = ["PruneRun", "Ratios", "calibration_batches", "default_protection", "max_ratio", "run_prune",
           "settle_ratios"]
