"""The refit-aware importance: groups ranked by what their removal costs once the least-squares refit
of :mod:`medcore_tp.reconstruction` has compensated for them (optimal brain surgeon, structured).

For one layer with input moments C (augmented, ridge added as in the refit) and P = C^-1, removing a
set S of inputs from the current weight V and re-solving the others optimally raises the summed
squared output error by

    dE(S) = tr(V_S (P_SS)^-1 V_S^T)

and changes the weight to V - V_S (P_SS)^-1 P_S,: , while P becomes P - P_:,S (P_SS)^-1 P_S,: . Removing
the cheapest group, updating V and P, and repeating gives a nested order: the first k groups of the
order are the greedy choice for every k at once, so the rank in that order is a Torch-Pruning score
(low = pruned first). A group is a head (its value channels of the attention projection) or one MLP
hidden channel; the bias input is never removed. Ranking is within a block, which is how the budget
uses scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medcore_tp.arch import adapter_for, image_encoder
from medcore_tp.importance import PerGroupImportance
from medcore_tp.reconstruction import DEFAULT_RIDGE, LayerStatistics, ReconstructionStatistics

__all__ = ["RefitImportance", "greedy_order", "refit_ranks"]


def _inverse_moment(stats: LayerStatistics, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, V): the inverse of the ridged input moments (as the refit regularises them) and a copy of
    the dense weight, the starting point of the greedy removal."""
    c = stats.moment.clone()
    d = c.shape[0] - 1
    c[range(d), range(d)] += ridge * float(c.diagonal()[:-1].mean())
    return torch.linalg.inv(c), stats.weight.clone()


def greedy_order(stats: LayerStatistics, groups: Sequence[Sequence[int]], ridge: float = DEFAULT_RIDGE,
                 keep: int = 1) -> list[int]:
    """Indices of ``groups`` (lists of input channels) in the order the greedy refit-aware removal
    takes them, stopping when ``keep`` groups are left (those come last, in index order)."""
    p, v = _inverse_moment(stats, ridge)
    left = list(range(len(groups)))
    order: list[int] = []
    idx = [torch.tensor(list(g), dtype=torch.long) for g in groups]
    while len(left) > keep:
        best, best_cost = None, None
        for g in left:
            s = idx[g]
            v_s = v[:, s]
            cost = float(torch.einsum("oi,ij,oj->", v_s, torch.linalg.inv(p[s][:, s]), v_s))
            if best_cost is None or cost < best_cost:
                best, best_cost = g, cost
        s = idx[best]
        inv = torch.linalg.inv(p[s][:, s])
        v = v - v[:, s] @ inv @ p[s, :]
        p = p - p[:, s] @ inv @ p[s, :]
        v[:, s] = 0.0
        p[s, :] = 0.0
        p[:, s] = 0.0
        left.remove(best)
        order.append(best)
    return order + sorted(left)


def _mlp_order(stats: LayerStatistics, ridge: float) -> list[int]:
    """The greedy order over single MLP channels, vectorised (a group is one input)."""
    p, v = _inverse_moment(stats, ridge)
    d = p.shape[0] - 1
    alive = torch.ones(d, dtype=torch.bool)
    order = []
    for _ in range(d - 1):
        diag = p.diagonal()[:d].clamp_min(1e-300)
        cost = v[:, :d].pow(2).sum(0) / diag
        cost[~alive] = float("inf")
        j = int(torch.argmin(cost))
        pj = p[j].clone()
        scale = -1.0 / float(pj[j])
        v.addr_(v[:, j].clone(), pj, alpha=scale)  # in-place rank-1 updates: no (d x d) temporaries
        p.addr_(pj, pj, alpha=scale)
        v[:, j] = 0.0
        p[j, :] = 0.0
        p[:, j] = 0.0
        alive[j] = False
        order.append(j)
    order += [int(i) for i in torch.nonzero(alive).flatten()]
    return order


def _ranks(order: Sequence[int]) -> torch.Tensor:
    r = torch.empty(len(order), dtype=torch.float64)
    r[torch.tensor(list(order), dtype=torch.long)] = torch.arange(len(order), dtype=torch.float64)
    return r


def refit_ranks(model: nn.Module, stats: ReconstructionStatistics, ridge: float = DEFAULT_RIDGE
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per block, the greedy rank of every head and of every MLP channel of the dense ``model``."""
    encoder = image_encoder(model)
    adapter = adapter_for(encoder)
    widths = adapter.head_dims(encoder)
    heads, mlp = [], []
    for b, nh in enumerate(adapter.heads_per_block(encoder)):
        groups = [range(h * widths[b], (h + 1) * widths[b]) for h in range(nh)]
        heads.append(_ranks(greedy_order(stats.layers[(b, "heads")], groups, ridge)))
        mlp.append(_ranks(_mlp_order(stats.layers[(b, "mlp")], ridge)))
    return heads, mlp


class RefitImportance(PerGroupImportance):
    """Refit-aware greedy ranks (module docstring) as a Torch-Pruning importance, from statistics of
    the dense encoder (:func:`medcore_tp.reconstruction.collect_statistics`), or from ranks
    :func:`refit_ranks` computed earlier for the same dense weights."""

    def __init__(self, model: nn.Module, stats: ReconstructionStatistics | None = None, ridge: float = DEFAULT_RIDGE,
                 ranks: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> None:
        if (stats is None) == (ranks is None):
            raise ValueError("give stats or ranks")
        heads, mlp = ranks if ranks is not None else refit_ranks(model, stats, ridge)
        super().__init__(model, heads, mlp)
