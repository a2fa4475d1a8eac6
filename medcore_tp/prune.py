"""Pruning by budget: score every head and MLP group with an importance, remove the lowest per block.

Any Torch-Pruning ``Importance`` works: it is called on the same groups ``MetaPruner`` builds
(attention groups rooted at ``proj``'s input channels, averaged per head; MLP groups rooted at the
first MLP layer), and within each block the lowest-scoring groups go, as many as the budget says.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from medcore_tp.arch import adapter_for
from medcore_tp.budget import Budget
from medcore_tp.errors import MedcoreError
from medcore_tp.graph import BlockPlan, Plan, apply_plan, build_graph, head_group, mlp_group, prepare_pruning
from medcore_tp.importance_registry import importance_entry


def make_importance(name: str) -> tp.importance.Importance:
    """A data-free or gradient Torch-Pruning importance by registry name (``magnitude``, ``taylor``,
    ``random``; see :mod:`medcore_tp.importance_registry`). ``taylor`` needs ``.grad`` filled."""
    entry = importance_entry(name)
    if entry.build is None:
        raise MedcoreError(f"importance {name}: is built from calibration statistics "
                           "(medcore_tp.recipe.make_medcore_importance), not by make_importance", "importance")
    return entry.build()


@dataclass
class BlockScores:
    """One score per head and per MLP channel of a block (lower = pruned first)."""

    heads: torch.Tensor
    mlp: torch.Tensor


@torch.no_grad()
def score_blocks(
    encoder: nn.Module, graph: tp.DependencyGraph, importance: Callable[[tp.dependency.Group], torch.Tensor | None]
) -> list[BlockScores]:
    """Call ``importance`` on every block's full head group and full MLP group."""
    adapter = adapter_for(encoder)
    out = []
    for b, (nh, width) in enumerate(
        zip(adapter.heads_per_block(encoder), adapter.mlp_per_block(encoder), strict=True)
    ):
        h_imp = importance(head_group(graph, encoder, b, list(range(nh))))
        m_imp = importance(mlp_group(graph, encoder, b, list(range(width))))
        if h_imp is None or m_imp is None:
            raise MedcoreError(f"the importance returned no score for block {b} (does it need gradients?)")
        out.append(BlockScores(heads=h_imp.detach().float().cpu().view(nh, -1).mean(1), mlp=m_imp.detach().float().cpu()))
    return out


def lowest(scores: torch.Tensor, k: int) -> tuple[int, ...]:
    """Indices of the ``k`` lowest scores, ascending by index (ties broken by lower index)."""
    return tuple(sorted(_removal_order(scores, k)))


def _removal_order(scores: torch.Tensor, k: int) -> list[int]:
    """The ``k`` lowest-scoring indices, lowest first (ties broken by lower index)."""
    return sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))[: max(k, 0)]


def plan_from_scores(scores: list[BlockScores], budget: Budget) -> dict[int, BlockPlan]:
    """Within each block, the lowest-scoring heads and channels, as many as the budget allows."""
    plan = {}
    for b, s in enumerate(scores):
        bp = BlockPlan(heads=lowest(s.heads, budget.heads[b]), mlp=lowest(s.mlp, budget.mlp[b]))
        if bp.heads or bp.mlp:
            plan[b] = bp
    return plan


def _share(order: list[int], step: int, steps: int) -> tuple[int, ...]:
    """The part of ``order`` step ``step`` of ``steps`` removes: up to round(step / steps x its length)."""
    lo, hi = (round(len(order) * j / steps) for j in (step - 1, step))
    return tuple(sorted(order[lo:hi]))


def progressive_schedule(scores: list[BlockScores], budget: Budget, steps: int) -> list[dict[int, BlockPlan]]:
    """The budget's removals split into ``steps`` parts, lowest scores first (dense indices).

    After step s every block has given up ``round(s / steps x`` its budget``)`` heads and channels, so
    each step removes about a ``1 / steps`` share of every block's budget and the last one lands exactly
    on the budget; the union of the parts is :func:`plan_from_scores`'s plan. Steps that would remove
    nothing are left out.
    """
    if steps < 1:
        raise MedcoreError(f"steps {steps}: must be >= 1", "steps")
    orders = [(_removal_order(s.heads, budget.heads[b]), _removal_order(s.mlp, budget.mlp[b]))
              for b, s in enumerate(scores)]
    parts = []
    for step in range(1, steps + 1):
        part = {}
        for b, (heads, mlp) in enumerate(orders):
            bp = BlockPlan(heads=_share(heads, step, steps), mlp=_share(mlp, step, steps))
            if bp.heads or bp.mlp:
                part[b] = bp
        if part:
            parts.append(part)
    return parts


def _current_indices(part: Plan, alive: dict[int, tuple[list[int], list[int]]]) -> dict[int, BlockPlan]:
    """``part`` (dense indices) in the indices the encoder has now (``alive``: per block, the dense
    indices of the heads and channels still there, in order)."""
    return {b: BlockPlan(heads=tuple(alive[b][0].index(h) for h in bp.heads),
                         mlp=tuple(alive[b][1].index(c) for c in bp.mlp)) for b, bp in part.items()}


def prune_by_budget(
    model: nn.Module,
    importance: Callable[[tp.dependency.Group], torch.Tensor | None],
    budget: Budget,
    run_stage: Callable[[str, Callable[[], None], Plan], None] | None = None,
    steps: int = 1,
) -> Plan:
    """Prepare ``model``'s encoder, score all groups once, and remove them in stages.

    ``steps`` 1: the cascade, heads then MLP channels (stages ``"heads"`` and ``"mlp"``). ``steps``
    K >= 2: progressive, K stages ``"step k/K"`` each removing heads and channels together, about a
    1/K share of every block's budget, lowest scores first (:func:`progressive_schedule`).
    Heads and channels are ranked on the dense model (one scoring pass). Gradient-based importances
    need ``.grad`` filled before the call. Each stage's removal is handed to
    ``run_stage(name, remove, part)``, which must call ``remove()``; ``part`` holds, for each block the
    stage touches and each kind (heads, MLP channels) it removes there, everything removed of that
    kind so far (this stage and earlier ones, dense indices), which is what a refit from the dense
    statistics needs. Steps that would remove nothing are skipped, so a K larger than twice the
    largest per-block budget gives fewer than K stages (named ``step k/K'`` for the K' that remain). The refit and recovery wrap it there
    (teacher taken before, refit and training after). Returns the plan that was applied (dense indices).
    """
    if steps < 1:
        raise MedcoreError(f"steps {steps}: must be >= 1", "steps")
    if budget.total_heads == 0 and budget.total_mlp == 0:
        return {}  # nothing to remove: leave the model exactly as it is
    spec = prepare_pruning(model)
    graph = build_graph(spec)
    scores = score_blocks(spec.encoder, graph, importance)
    plan = plan_from_scores(scores, budget)
    run_stage = run_stage or (lambda _stage, remove, _part: remove())
    if steps == 1:
        heads = {b: BlockPlan(heads=p.heads) for b, p in plan.items() if p.heads}
        mlp = {b: BlockPlan(mlp=p.mlp) for b, p in plan.items() if p.mlp}
        stages = [("heads", heads, heads), ("mlp", mlp, mlp)]
    else:
        parts = progressive_schedule(scores, budget, steps)
        stages, done = [], {}
        for k, part in enumerate(parts, 1):
            for b, bp in part.items():
                old = done.get(b, BlockPlan())
                done[b] = BlockPlan(heads=tuple(sorted(old.heads + bp.heads)), mlp=tuple(sorted(old.mlp + bp.mlp)))
            # the kinds this stage removes, with everything removed of them so far: a layer the stage
            # does not change is not refitted again (that would undo its earlier recovery)
            stages.append((f"step {k}/{len(parts)}", part, {b: BlockPlan(heads=done[b].heads if bp.heads else (),
                                                                         mlp=done[b].mlp if bp.mlp else ())
                                                            for b, bp in part.items()}))
    alive = {b: (list(range(len(s.heads))), list(range(len(s.mlp)))) for b, s in enumerate(scores)}

    def remove(part: Plan, fresh_graph: bool) -> None:
        # Torch-Pruning's index mapping through TinyViT's per-head qkv reshape goes stale once a block
        # has lost heads, so every progressive stage after the first traces the encoder anew.
        apply_plan(spec.encoder, _current_indices(part, alive), None if fresh_graph else graph)
        for b, bp in part.items():
            alive[b] = ([h for h in alive[b][0] if h not in bp.heads], [c for c in alive[b][1] if c not in bp.mlp])

    for k, (stage, part, so_far) in enumerate(stages):
        if part:
            run_stage(stage, functools.partial(remove, part, steps > 1 and k > 0), so_far)
    return plan


def summary(before, after, budget: Budget, plan: Plan, **extra) -> dict:
    """The ``summary.json`` record of a pruning run (``before``/``after``: :class:`EncoderProfile`)."""
    removed = 1.0 - after.encoder_params / before.encoder_params
    return {
        **extra,
        "encoder_params_before": before.encoder_params,
        "encoder_params_after": after.encoder_params,
        "encoder_params_removed_fraction": removed,
        "params_before": before.params,
        "params_after": after.params,
        "flops_torch_g_before": before.flops_torch_g,
        "flops_torch_g_after": after.flops_torch_g,
        "flops_paper_g_before": before.flops_paper_g,
        "flops_paper_g_after": after.flops_paper_g,
        "heads_removed": budget.total_heads,
        "mlp_removed": budget.total_mlp,
        "heads_per_block": after.heads_per_block,
        "mlp_per_block": after.mlp_per_block,
        "removed_heads_per_block": {str(b): list(bp.heads) for b, bp in plan.items() if bp.heads},
        "removed_mlp_per_block": {str(b): list(bp.mlp) for b, bp in plan.items() if bp.mlp},
    }
