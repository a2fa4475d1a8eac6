"""A whole pruning run, as ``medcore-tp prune`` does it: ratios, calibration, scoring, cascade, recovery.

The command line only parses options into a :class:`PruneConfig` and prints; everything a library
user would also need lives here: checking the ratios on the bare architecture (so bad ones fail before
any work), choosing the calibration images, building the importance (by its registry entry), settling
the ratios once (with the budget weights when the importance gives them), the sensitivity-weighted
budget, and the cascade (heads, recovery, MLP channels, recovery).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from medcore_tp.arch import adapter_for, image_encoder
from medcore_tp.budget import (
    EVEN,
    Budget,
    RatioRule,
    ratio_budget,
    ratio_ceiling,
    ratio_rule,
    round_mlp_budget,
)
from medcore_tp.calibration import CalibrationBatch, accumulate_gradients, calibration_sets, synthetic_batch
from medcore_tp.distill import VIEWS, augmented_views, cache_teacher, distill
from medcore_tp.errors import MedcoreError
from medcore_tp.graph import Plan
from medcore_tp.importance_registry import CALIBRATED_IMPORTANCES, FISHER_IMPORTANCES, importance_entry
from medcore_tp.models.spec import input_spec
from medcore_tp.monitor import BestState, checks_for
from medcore_tp.profile import count_params
from medcore_tp.prune import prune_by_budget
from medcore_tp.recipe import (
    calibrate,
    make_medcore_importance,
    scores_table,
    sensitivity_weights,
    statistics,
)
from medcore_tp.reconstruction import ReconstructionStatistics, collect_statistics, refit, refit_paired
from medcore_tp.recovery import SCHEDULES, hold_back, recover
from medcore_tp.refit_importance import RefitImportance, refit_ranks

HELD_BACK = 4  # calibration images held back from recovery to measure it

__all__ = [
    "CALIBRATED_IMPORTANCES", "FISHER_IMPORTANCES", "PruneConfig", "PruneRun", "RatioRequest", "Ratios", "Scoring",
    "calibration_batches", "default_protection", "max_ratio", "prune_scored", "run_prune", "score_importance",
    "settle_ratios",
]


@dataclass(frozen=True)
class RatioRequest:
    """What a user asked to remove: ``ratio`` (fraction of encoder parameters, the ``--ratio`` rule)
    or both ``heads_ratio`` and ``mlp_ratio`` (fractions of ALL heads / MLP channels); ``protect``:
    blocks left untouched (None with ``ratio``: :func:`default_protection`, lifted only when R needs them)."""

    ratio: float | None = None
    heads_ratio: float | None = None
    mlp_ratio: float | None = None
    protect: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.heads_ratio is None) != (self.mlp_ratio is None):
            raise MedcoreError("heads_ratio and mlp_ratio go together", "heads_ratio")
        if self.ratio is None and self.heads_ratio is None:
            raise MedcoreError("ratio: give ratio (fraction of encoder parameters) or heads_ratio and mlp_ratio",
                               "ratio")
        if self.ratio is not None and self.heads_ratio is not None:
            raise MedcoreError("ratio: give ratio or heads_ratio and mlp_ratio, not both", "ratio")


@dataclass
class Ratios:
    """Head / MLP ratios and protected blocks a run uses, and the ``ratio`` rule behind them."""

    heads_ratio: float
    mlp_ratio: float
    protect: list[int]
    rule: RatioRule | None = None


def settle_ratios(arch: nn.Module, request: RatioRequest, weights: Sequence[float] | None = None) -> Ratios:
    """Validate ``request`` and turn it into head / MLP ratios on an architecture (a meta-device or a
    dense model; only its shapes are read).

    ``weights`` are the per-block budget weights when known: where group sizes differ per block
    (TinyViT stages) they decide how many parameters a ratio removes. Raises ``MedcoreError`` naming
    the parameter for bad values.
    """
    adapter, encoder = adapter_for(arch), image_encoder(arch)
    heads, mlp = adapter.heads_per_block(encoder), adapter.mlp_per_block(encoder)
    protect = None if request.protect is None else list(request.protect)
    if request.ratio is None:
        ratio_budget(heads, mlp, request.heads_ratio, request.mlp_ratio, protect or [])  # raises on bad values
        return Ratios(request.heads_ratio, request.mlp_ratio, list(protect or []))
    head_p, chan_p = adapter.group_params(encoder)
    rule = ratio_rule(request.ratio, heads, mlp, head_p, chan_p, count_params(encoder), protect, weights,
                      default=default_protection(arch))
    return Ratios(rule.heads_ratio, rule.mlp_ratio, rule.protect, rule)


def default_protection(arch: nn.Module) -> list[int]:
    """The blocks ``--ratio`` protects unless told otherwise: the family's last
    ``DEFAULT_PROTECTED_BLOCKS`` (10 and 11 on ViT-B; none on TinyViT), none when that would leave no
    block to prune."""
    adapter = adapter_for(arch)
    n, k = len(adapter.heads_per_block(image_encoder(arch))), adapter.DEFAULT_PROTECTED_BLOCKS
    return list(range(n - k, n)) if 0 < k < n else []


def max_ratio(arch: nn.Module, protect: Sequence[int]) -> float:
    """The largest ``--ratio`` reachable on ``arch`` with ``protect`` (uniform per-block weights)."""
    adapter, encoder = adapter_for(arch), image_encoder(arch)
    head_p, chan_p = adapter.group_params(encoder)
    return ratio_ceiling(adapter.heads_per_block(encoder), adapter.mlp_per_block(encoder), head_p, chan_p,
                         count_params(encoder), protect)


# how each allocation shares a budget among the unprotected blocks (said on screen, docs/method.md)
ALLOCATION_RULES = {
    "even": "the same fraction of heads and of MLP channels from every pruned block",
    "count": "the same number of heads and of MLP channels from every pruned block",
    "sensitivity": "removals in proportion to 1 / s_b (MedCore's block sensitivity)",
}
ALLOCATIONS = tuple(ALLOCATION_RULES)
# the same fraction from every block: on LiteMedSAM, whose stages differ fourfold in width, taking the
# same count from each (count) stripped the narrow early stages and cost 0.055 Dice after the refit at 50%
DEFAULT_ALLOCATION = "even"
REFITS = ("paired", "dense", "none")
TEACHERS = ("stage", "dense")


@dataclass(frozen=True)
class PruneConfig:
    """Everything a pruning run is asked to do (``medcore-tp prune`` builds one from its flags).

    ``importance``: a name of :mod:`medcore_tp.importance_registry`. ``ratios``: what to remove.
    ``data``: calibration dataset folders (empty: the built-in synthetic set), ``data_weights`` one
    per folder (normalised). ``alpha``: MedCore's alpha, ``"auto"`` or a number in [0, 1].
    ``calib_size``: calibration images per dataset; ``batch_size``: calibration batch size.
    ``recover_steps``: recovery steps after each cascade stage (0: none), ``recover_batch_size`` per
    process, at learning rate ``recover_lr``. ``seed``: recovery sampling and synthetic calibration.
    ``progress``: progress bars.
    ``mask_threshold``: how calibration masks are binarised (``--mask-threshold``; None: > 127).
    ``refit``: after each stage's removal, refit the layers that read the removed groups by least
    squares on the calibration images (:mod:`medcore_tp.reconstruction`): ``dense`` from the dense
    model's statistics, ``paired`` then once more on the pruned model's own inputs against the dense
    outputs (one forward of each per image and stage), ``none``. ``allocation``: how the
    removals are shared among blocks: ``even`` (the same fraction of every unprotected block),
    ``count`` (the same number from each, which strips narrow blocks first) or ``sensitivity``
    (MedCore's 1 / s_b, Fisher importances only). ``distill_steps``: after the last
    stage, that many steps of distillation towards the dense model's cached outputs on the mirrored
    views of the calibration images (:mod:`medcore_tp.distill`; 0: none), at ``distill_lr`` with
    ``distill_batch_size`` samples a step. ``prune_steps``: 1, the cascade (heads, then MLP
    channels, each stage refitted and recovered); K >= 2, progressive: K stages each removing about
    1/K of every block's heads and channels together, each refitted and recovered
    (:func:`medcore_tp.prune.prune_by_budget`). ``recover_teacher``: what recovery trains towards,
    ``stage`` (the model as the stage starts, before its removal) or ``dense`` (the dense model).
    ``recover_views``: the views of each training calibration image recovery draws from
    (:data:`medcore_tp.distill.VIEWS`: ``identity``, ``hflip``, ``vflip``; boxes and masks mirrored
    with the image, the teacher's outputs computed on the mirrored image); the held-back images are
    measured as they are. ``recover_schedule``: ``constant`` (``recover_lr`` at every step) or
    ``cosine`` (annealed from ``recover_lr`` to 0 within each stage, :func:`medcore_tp.recovery.learning_rates`).
    """

    importance: str = "refit"
    ratios: RatioRequest = field(default_factory=lambda: RatioRequest(ratio=0.6))
    data: tuple[str, ...] = ()
    data_weights: tuple[float, ...] | None = None
    alpha: str | float = "auto"
    calib_size: int = 128
    batch_size: int = 8
    recover_steps: int = 200
    recover_batch_size: int = 1
    recover_lr: float = 1e-5
    seed: int = 0
    progress: bool = False
    round_to: int = 1  # pruned MLP widths kept at multiples of this (Torch-Pruning's round_to)
    mask_threshold: float | None = None
    refit: str = "dense"
    allocation: str = DEFAULT_ALLOCATION
    distill_steps: int = 0
    distill_lr: float = 1e-4
    distill_batch_size: int = 2
    prune_steps: int = 1
    recover_teacher: str = "stage"
    recover_views: tuple[str, ...] = ("identity",)
    recover_schedule: str = "constant"

    def check(self, arch: nn.Module) -> Ratios:
        """Validate everything that can be checked on the bare architecture, before any work."""
        importance_entry(self.importance)
        if self.data_weights is not None and len(self.data_weights) != max(len(self.data), 1):
            raise MedcoreError(f"data_weights {','.join(map(str, self.data_weights))}: {len(self.data_weights)} "
                               f"weights for {len(self.data)} data folders", "data_weights")
        for name, value, ok, rule in (("recover_lr", self.recover_lr, self.recover_lr > 0, "> 0"),
                                      ("distill_steps", self.distill_steps, self.distill_steps >= 0, ">= 0"),
                                      ("distill_lr", self.distill_lr, self.distill_lr > 0, "> 0"),
                                      ("distill_batch_size", self.distill_batch_size, self.distill_batch_size >= 1, ">= 1"),
                                      ("prune_steps", self.prune_steps, self.prune_steps >= 1, ">= 1")):
            if not ok:
                raise MedcoreError(f"{name} {value}: must be {rule}", name)
        if self.refit not in REFITS:
            raise MedcoreError(f"refit {self.refit}: must be one of {', '.join(REFITS)}", "refit")
        if self.recover_schedule not in SCHEDULES:
            raise MedcoreError(f"recover_schedule {self.recover_schedule}: must be one of {', '.join(SCHEDULES)}",
                               "recover_schedule")
        if self.recover_teacher not in TEACHERS:
            raise MedcoreError(f"recover_teacher {self.recover_teacher}: must be one of {', '.join(TEACHERS)}",
                               "recover_teacher")
        bad = [v for v in self.recover_views if v not in VIEWS]
        if bad or not self.recover_views or len(set(self.recover_views)) != len(self.recover_views):
            raise MedcoreError(f"recover_views {','.join(self.recover_views)}: give distinct views from "
                               f"{', '.join(VIEWS)}", "recover_views")
        if self.allocation not in ALLOCATIONS:
            raise MedcoreError(f"allocation {self.allocation}: must be one of {', '.join(ALLOCATIONS)}", "allocation")
        if self.allocation == "sensitivity" and importance_entry(self.importance).needs != "fisher":
            raise MedcoreError(f"allocation sensitivity: needs a Fisher importance ({', '.join(FISHER_IMPORTANCES)}), "
                               f"not {self.importance}", "allocation")
        if not (self.alpha == "auto" or (isinstance(self.alpha, (int, float)) and 0.0 <= float(self.alpha) <= 1.0)):
            raise MedcoreError(f"alpha {self.alpha}: must be 'auto' or a number in [0, 1]", "alpha")
        return settle_ratios(arch, self.ratios)


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
    refits: list[dict] = field(default_factory=list)
    distillation: dict | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase


def calibration_batches(
    model: nn.Module, config: PruneConfig, log: Callable[[str], None]
) -> tuple[dict[str, list[CalibrationBatch]], dict | None]:
    """Calibration batches per dataset (first training images of each folder) or the synthetic set."""
    spec, n = input_spec(model), config.calib_size
    if not config.data:
        log(f"calibration: {n} built-in SYNTHETIC images (not medical data); use --data for real ones")
        return {"synthetic": [synthetic_batch(n, spec, seed=config.seed)]}, None
    sets = calibration_sets(list(config.data), n, spec, batch_size=config.batch_size,
                            mask_threshold=config.mask_threshold)
    for name, used in sets.used.items():
        if used < n:
            log(f"note: --calib-size {n}: {name} has {used} training images, using all of them")
    return sets.batches, sets.splits


@dataclass
class Scoring:
    """An importance and its calibration, computed once on the dense model and reusable for any ratio.

    :meth:`importance_for` builds the Torch-Pruning importance for that dense model or a fresh copy of
    it (MedCore's importance is bound to the encoder it scores; Taylor needs the dense gradients put
    back on the copy's parameters).
    """

    name: str
    pool: list[CalibrationBatch]
    splits: dict | None = None
    calibration: dict | None = None
    extra: dict = field(default_factory=dict)
    budget_weights: list[float] | None = None
    stats: list | None = None
    data_weights: list[float] | None = None
    alpha: str | float = "auto"
    grads: dict[str, torch.Tensor] | None = None
    reconstruction: ReconstructionStatistics | None = None
    ranks: tuple | None = None
    seconds: float = 0.0

    def importance_for(self, model: nn.Module):
        """The importance scoring ``model`` (the dense model or a fresh copy of it)."""
        entry = importance_entry(self.name)
        if entry.needs == "fisher":
            return make_medcore_importance(model, self.stats, entry.name, self.data_weights, self.alpha)
        if entry.needs == "refit":
            return RefitImportance(model, ranks=self.ranks)
        if entry.needs == "gradients":
            for n, p in image_encoder(model).named_parameters():
                p.grad = self.grads[n].clone() if n in self.grads else None
        return entry.build()


def score_importance(
    model: nn.Module,
    config: PruneConfig,
    source: nn.Module | None = None,
    log: Callable[[str], None] = print,
    reconstruction: ReconstructionStatistics | None = None,
) -> Scoring:
    """Calibration statistics of ``config.importance`` on the dense ``model`` (Fisher, Taylor gradients)
    and the calibration pool recovery draws from; ``model``'s weights are left as they are.

    ``reconstruction``: refit statistics computed earlier on the same dense model and calibration
    images (another importance's :class:`Scoring`), reused instead of collected again."""
    start = time.perf_counter()
    entry = importance_entry(config.importance)
    batches, splits, pool = None, None, []
    refits = config.refit != "none"
    if entry.needs_calibration or config.recover_steps > 0 or config.distill_steps > 0 or refits:
        batches, splits = calibration_batches(model, config, log)
        pool = [b for bs in batches.values() for b in bs]
    weights = list(config.data_weights) if config.data_weights is not None else None
    scoring = Scoring(entry.name, pool, splits, alpha=config.alpha, data_weights=weights)
    if entry.needs == "gradients":
        seen = accumulate_gradients(model, pool, batch_size=1)
        scoring.calibration = {"datasets": list(batches), "samples": seen}
        scoring.grads = {n: p.grad.detach().clone() for n, p in image_encoder(model).named_parameters()
                         if p.grad is not None}
        model.zero_grad(set_to_none=True)
    elif entry.needs == "fisher":
        cal = calibrate(model, batches, source=source, weights=weights, progress=config.progress)
        scoring.stats = statistics(model, cal)
        imp = scoring.importance_for(model)
        scoring.calibration = {"datasets": list(batches), "samples": cal.samples}
        scoring.extra = {
            "source_model_used": source is not None,
            "alpha_per_block": [s.alpha for s in imp.scores],
            "sensitivity_per_block": [s.sensitivity for s in imp.scores],
        }
        if source is None and entry.name == "medcore":
            log("no --source-checkpoint: only Dzero is available, alpha = 1 in every block")
        scoring.budget_weights = sensitivity_weights(imp)
    if refits or entry.needs == "refit":
        scoring.reconstruction = reconstruction or collect_statistics(model, pool, progress=config.progress)
        scoring.calibration = scoring.calibration or {"datasets": list(batches), "samples": scoring.reconstruction.images}
    if entry.needs == "refit":
        scoring.ranks = refit_ranks(model, scoring.reconstruction)
    scoring.seconds = time.perf_counter() - start
    return scoring


def prune_scored(
    model: nn.Module,
    config: PruneConfig,
    scoring: Scoring,
    log: Callable[[str], None] = print,
) -> PruneRun:
    """Prune ``model`` (the dense model ``scoring`` was computed on, or a fresh copy of it) in place as
    ``config`` asks: heads, recovery, MLP channels, recovery (or ``config.prune_steps`` progressive
    stages, each refitted and recovered). ``config.importance`` must be
    ``scoring``'s; its calibration settings are not used again."""
    if config.importance != scoring.name:
        raise MedcoreError(f"importance {config.importance}: the scoring was computed for {scoring.name}",
                           "importance")
    if config.refit != "none" and scoring.reconstruction is None:
        raise MedcoreError(f"refit {config.refit}: the scoring holds no refit statistics (score with a refit other than none)", "refit")
    # Where per-block group sizes differ (TinyViT stages), the sensitivity-weighted allocation changes
    # how many parameters a ratio removes, so the ratios are settled with those weights.
    weights = {"sensitivity": scoring.budget_weights, "even": EVEN, "count": None}[config.allocation]
    ratios = settle_ratios(model, config.ratios, weights)
    imp = scoring.importance_for(model)
    adapter, encoder = adapter_for(model), image_encoder(model)
    budget = ratio_budget(adapter.heads_per_block(encoder), adapter.mlp_per_block(encoder),
                          ratios.heads_ratio, ratios.mlp_ratio, ratios.protect, weights=weights)
    if config.round_to > 1:
        asked = budget.total_mlp
        budget = round_mlp_budget(budget, adapter.mlp_per_block(encoder), config.round_to)
        log(f"--round-to {config.round_to}: MLP widths kept at multiples of {config.round_to}, removing "
            f"{budget.total_mlp} MLP channels instead of {asked}")
    recovery: list[dict] = []
    steps, rbatch, pool = config.recover_steps, config.recover_batch_size, scoring.pool

    refits: list[dict] = []
    needs_dense = (config.refit == "paired" or config.distill_steps > 0
                   or (config.recover_teacher == "dense" and steps > 0))
    dense = copy.deepcopy(model).eval() if needs_dense else None

    def report(stage: str, how: str, reports: list) -> None:
        refits.extend({"stage": stage, "refit": how, **vars(r)} for r in reports)
        before = sum(r.before for r in reports) / max(len(reports), 1)
        after = sum(r.after for r in reports) / max(len(reports), 1)
        log(f"refit ({how}) after removing {stage}: {len(reports)} layers, unexplained output variance "
            f"{before:.4f} -> {after:.4f} (mean over layers, calibration images)")

    def run_stage(stage: str, remove: Callable[[], None], part: Plan) -> None:
        if steps <= 0:
            teacher = None
        elif config.recover_teacher == "dense":
            teacher = dense
        else:
            teacher = copy.deepcopy(model)
        remove()
        kinds = [k for k in ("heads", "mlp") if any(getattr(bp, k) for bp in part.values())]
        if config.refit != "none":
            report(stage, "dense", [r for k in kinds for r in refit(model, scoring.reconstruction, part, k)])
        if config.refit == "paired":
            report(stage, "paired", [r for k in kinds for r in refit_paired(
                model, dense, pool, [b for b, bp in sorted(part.items()) if getattr(bp, k)], k, progress=config.progress)])
        if teacher is not None:
            began = time.perf_counter()
            # A fixed held-back set measures whether recovery converges: the per-step loss follows
            # whichever image was drawn.
            train, held = hold_back(pool, HELD_BACK)
            images = sum(len(b.images) for b in train)
            if config.recover_views != ("identity",):
                train = [augmented_views(train, config.recover_views)]
            stem = list(adapter_for(model).STEM_PREFIXES)
            if not recovery:
                log(f"recovery trains the encoder after its stem ({', '.join(p.rstrip('.') for p in stem)}: never "
                    "pruned, left as it is, its output computed once per image)")
                if config.recover_views != ("identity",):
                    log(f"recovery draws from {images * len(config.recover_views)} samples: "
                        f"{images} calibration images x {len(config.recover_views)} views "
                        f"({', '.join(config.recover_views)})")
            best = BestState()
            curve = recover(model, teacher, train, steps=steps, lr=config.recover_lr, seed=config.seed + len(recovery),
                            progress=config.progress, description=f"recovery after {stage}", batch_size=rbatch,
                            monitor=held, best=best, checks=checks_for(steps), schedule=config.recover_schedule)
            # the checks measured the loss too: the first one before any step, the kept one on the
            # weights the encoder ends with
            held_before = best.checks[0]["loss"] if held else None
            held_after = next(c["loss"] for c in best.checks if c["step"] == best.kept_step) if held else None
            recovery.append({"stage": stage, "steps": steps, "batch_size": rbatch, "lr": config.recover_lr,
                             "schedule": config.recover_schedule, "loss": curve,
                             "held_back_images": len(held), "held_back_before": held_before,
                             "held_back_after": held_after, "checks": best.checks, "kept_step": best.kept_step,
                             "stem_not_trained": stem, "views": list(config.recover_views),
                             "samples": sum(len(b.images) for b in train), "seconds": time.perf_counter() - began})
            if held:
                log(f"recovery after removing {stage}: loss on {len(held)} held-back calibration images "
                    f"{held_before:.4f} -> {held_after:.4f} ({steps} steps); {_kept(best.checks, best.kept_step)}")
            else:
                log(f"recovery after removing {stage}: too few calibration images to hold any back; "
                    f"loss {curve[0]:.4f} (first step) -> {curve[-1]:.4f} (last step, another image)")

    # Random importance draws from torch's generator: seed it here so that a run's plan depends on the
    # seed alone, whatever happened in the process before (a sweep prunes many copies in one process).
    torch.manual_seed(config.seed)
    began = time.perf_counter()
    plan = prune_by_budget(model, imp, budget, run_stage=run_stage, steps=config.prune_steps)
    trained = sum(r["seconds"] for r in recovery)
    seconds = {"pruning_and_refit": time.perf_counter() - began - trained, "recovery": trained}
    distillation = _distill(model, dense, pool, config, log) if config.distill_steps > 0 and plan else None
    if distillation is not None:
        seconds["distillation"] = distillation["seconds"]
    rows = scores_table(imp, plan) if importance_entry(scoring.name).needs == "fisher" else None
    return PruneRun(plan=plan, budget=budget, ratios=ratios, calibration=scoring.calibration, splits=scoring.splits,
                    scores_rows=rows, extra=dict(scoring.extra), recovery=recovery, refits=refits,
                    distillation=distillation, seconds=seconds)


def _distill(model: nn.Module, dense: nn.Module, pool: list[CalibrationBatch], config: PruneConfig,
             log: Callable[[str], None]) -> dict:
    """Distillation of the pruned ``model`` towards ``dense`` on the calibration pool (held-back
    images measure it); the record of :func:`medcore_tp.distill.distill` with its timings."""
    began = time.perf_counter()
    train, held = hold_back(pool, HELD_BACK)
    targets = cache_teacher(dense, augmented_views(train), progress=config.progress)
    held_targets = cache_teacher(dense, augmented_views(held, ("identity",))) if held else None
    cached = time.perf_counter() - began
    record = distill(model, targets, config.distill_steps, lr=config.distill_lr, batch_size=config.distill_batch_size,
                     seed=config.seed, held_back=held_targets, progress=config.progress, monitor=held or None)
    record.update(teacher_seconds=cached, seconds=time.perf_counter() - began)
    measured = (f", loss on {len(held)} held-back calibration images {record['held_back_before']:.4f} -> "
                f"{record['held_back_after']:.4f}" if held else " (too few calibration images to hold any back)")
    log(f"distillation: {config.distill_steps} steps on {len(targets)} views of {len(targets) // len(VIEWS)} images"
        f"{measured}")
    if held:
        log(f"distillation: {_kept(record['checks'], record['kept_step'])}")
    return record


def _kept(checks: list[dict], kept_step: int) -> str:
    """What the held-back checks of a training run showed and which weights it kept, in words."""
    first, last = checks[0], checks[-1]
    kept = next(c for c in checks if c["step"] == kept_step)
    return (f"held-back Dice / Boundary F1 (logit side) {first['dice']:.3f} / {first['boundary_f1']:.3f} before, "
            f"{last['dice']:.3f} / {last['boundary_f1']:.3f} after the last step; kept the weights of step {kept_step} "
            f"({kept['dice']:.3f} / {kept['boundary_f1']:.3f})"
            + (": training did not help these images, so the weights are those before it" if kept_step == 0 else ""))


def run_prune(
    model: nn.Module,
    config: PruneConfig,
    source: nn.Module | None = None,
    log: Callable[[str], None] = print,
) -> PruneRun:
    """Prune dense ``model`` in place as ``config`` asks; see the module docstring.

    ``source``: the model the target was adapted from (SAM for MedSAM), used by ``medcore`` for Dreset
    and alpha. The ratios are settled once, on the dense model, after calibration when the importance
    gives budget weights. The same as :func:`score_importance` then :func:`prune_scored`.
    """
    config.check(model)  # bad values fail before any work
    scoring = score_importance(model, config, source, log)
    run = prune_scored(model, config, scoring, log)
    run.seconds = {"calibration": scoring.seconds, **run.seconds}
    return run
