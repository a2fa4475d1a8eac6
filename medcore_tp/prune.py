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
    if k <= 0:
        return ()
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return tuple(sorted(order[:k]))


def plan_from_scores(scores: list[BlockScores], budget: Budget) -> dict[int, BlockPlan]:
    """Within each block, the lowest-scoring heads and channels, as many as the budget allows."""
    plan = {}
    for b, s in enumerate(scores):
        bp = BlockPlan(heads=lowest(s.heads, budget.heads[b]), mlp=lowest(s.mlp, budget.mlp[b]))
        if bp.heads or bp.mlp:
            plan[b] = bp
    return plan


def prune_by_budget(
    model: nn.Module,
    importance: Callable[[tp.dependency.Group], torch.Tensor | None],
    budget: Budget,
    run_stage: Callable[[str, Callable[[], None], Plan], None] | None = None,
) -> Plan:
    """Prepare ``model``'s encoder, score all groups once, remove heads, then MLP channels.

    Heads and channels are ranked on the dense model (one scoring pass). Gradient-based importances
    need ``.grad`` filled before the call. Each stage's removal is handed to
    ``run_stage(name, remove, part)`` (``name`` is ``"heads"`` or ``"mlp"``, ``part`` the stage's share
    of the plan), which must call ``remove()``; the refit and recovery wrap it there (teacher taken
    before, refit and training after). Returns the plan that was applied.
    """
    if budget.total_heads == 0 and budget.total_mlp == 0:
        return {}  # nothing to remove: leave the model exactly as it is
    spec = prepare_pruning(model)
    graph = build_graph(spec)
    scores = score_blocks(spec.encoder, graph, importance)
    plan = plan_from_scores(scores, budget)
    run_stage = run_stage or (lambda _stage, remove, _part: remove())
    heads = {b: BlockPlan(heads=p.heads) for b, p in plan.items() if p.heads}
    mlp = {b: BlockPlan(mlp=p.mlp) for b, p in plan.items() if p.mlp}
    for stage, part in (("heads", heads), ("mlp", mlp)):
        if part:
            run_stage(stage, functools.partial(apply_plan, spec.encoder, part, graph), part)
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
