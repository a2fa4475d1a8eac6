"""MedCore's scores as Torch-Pruning importances.

For a group g (a head: its Q, K, V rows of ``qkv`` with biases and its ``proj`` columns; an MLP
channel: its ``lin1`` row with bias and its ``lin2`` column), per calibration dataset r:

    Dzero_g  = 1/2 sum_{i in g} F^M_i (theta^M_i)^2                        cost of zeroing g
    Dreset_g = 1/2 sum_{i in g} sqrt(F^M_i F^S_i) (theta^M_i - theta^S_i)^2   cost of resetting g to SAM
    rho_b    = Pearson(Dzero, Dreset) over the heads of block b (1 if either std <= 1e-12)
    alpha_b  = (1 + rho_b) / 2;  Q_g = alpha_b Dzero_g + (1 - alpha_b) Dreset_g   (MLP reuses alpha_b)

The paper drops the first-order term of the loss change; ``medcore-grad`` keeps it, with g the mean
calibration gradient (beyond the paper; on ``tiny`` it lifts the rank correlation with the real loss
change of zeroing or resetting a group from about 0 to 0.9, ``benchmarks/bench_interventions.py``):

    Gzero_g  = sum_{i in g} g^M_i (0 - theta^M_i)       Greset_g = sum_{i in g} g^M_i (theta^S_i - theta^M_i)
    Q'_g     = alpha_b (Gzero_g + Dzero_g) + (1 - alpha_b) (Greset_g + Dreset_g)   (signed: a group whose
               removal lowers the calibration loss is removed first)

and over datasets with weights pi (normalised): Q_g = sum_r pi_r Q_g^(r) + beta Var_r(Q_g^(r))
(population variance, beta = 0.3). Without a source model only Dzero exists (alpha = 1).
Block sensitivity s_b = sum_r pi_r sum_{i in block b} F^M_{r,i}. Low Q is pruned first.

:class:`MedCoreImportance` and :class:`BoundaryFisherImportance` hold these per-group statistics,
computed once on the dense encoder, and answer Torch-Pruning's call contract: one score per channel
of the group's root, constant within a head, so that ``MetaPruner`` ranks whole heads by Q.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from medcore_tp.arch import adapter_for, image_encoder

ALPHA_STD_EPS = 1e-12
DEFAULT_BETA = 0.3


@dataclass
class BlockStats:
    """Per-dataset statistics of one block: rows are datasets, columns heads / MLP channels."""

    head_zero: torch.Tensor  # (R, heads)
    head_reset: torch.Tensor | None  # (R, heads) or None without a source model
    mlp_zero: torch.Tensor  # (R, channels)
    mlp_reset: torch.Tensor | None
    sensitivity: torch.Tensor  # (R,)
    # first-order terms (R, heads) / (R, channels): None when no gradient was given
    head_grad_zero: torch.Tensor | None = None
    head_grad_reset: torch.Tensor | None = None
    mlp_grad_zero: torch.Tensor | None = None
    mlp_grad_reset: torch.Tensor | None = None


def block_statistics(
    model: nn.Module,
    target_fishers: Sequence[Mapping[str, torch.Tensor]],
    source_fisher: Mapping[str, torch.Tensor] | None = None,
    source_state: Mapping[str, torch.Tensor] | None = None,
    target_gradients: Sequence[Mapping[str, torch.Tensor]] | None = None,
) -> list[BlockStats]:
    """Dzero / Dreset per head and MLP channel, and block sensitivities, for each target Fisher.

    ``target_fishers``: one encoder Fisher per dataset (keys as ``encoder.named_parameters()``);
    ``source_fisher`` / ``source_state``: the source (SAM) encoder's Fisher and parameters, both or
    neither; ``target_gradients``: the mean calibration gradient per dataset, for the first-order terms
    Gzero / Greset (left ``None`` without it). All must have the dense shapes of ``model``'s encoder.
    """
    if (source_fisher is None) != (source_state is None):
        raise ValueError("give both the source Fisher and the source parameters, or neither")
    if target_gradients is not None and len(target_gradients) != len(target_fishers):
        raise ValueError(f"target_gradients: {len(target_gradients)} given for {len(target_fishers)} target Fishers")
    encoder = image_encoder(model)
    adapter = adapter_for(encoder)
    theta = {n: p.detach().double() for n, p in encoder.named_parameters()}
    out = []
    for b in range(len(adapter.blocks(encoder))):
        prefix = adapter.block_prefix(encoder, b)
        hz, hr, mz, mr, sens = [], [], [], [], []
        ghz, ghr, gmz, gmr = [], [], [], []
        for r, fm in enumerate(target_fishers):
            zero = {n: 0.5 * fm[n].double() * theta[n].pow(2) for n in theta if n.startswith(prefix)}
            h, m = adapter.group_sums(encoder, b, zero)
            hz.append(h)
            mz.append(m)
            sens.append(sum(fm[n].double().sum() for n in theta if n.startswith(prefix)))
            if source_fisher is not None:
                reset = {
                    n: 0.5 * (fm[n].double() * source_fisher[n].double()).sqrt()
                    * (theta[n] - source_state[n].detach().double()).pow(2)
                    for n in theta
                    if n.startswith(prefix)
                }
                h, m = adapter.group_sums(encoder, b, reset)
                hr.append(h)
                mr.append(m)
            if target_gradients is not None:
                g = {n: target_gradients[r][n].double() for n in theta if n.startswith(prefix)}
                h, m = adapter.group_sums(encoder, b, {n: -g[n] * theta[n] for n in g})
                ghz.append(h)
                gmz.append(m)
                if source_state is not None:
                    h, m = adapter.group_sums(encoder, b, {n: g[n] * (source_state[n].detach().double() - theta[n])
                                                           for n in g})
                    ghr.append(h)
                    gmr.append(m)
        out.append(
            BlockStats(
                head_zero=torch.stack(hz),
                head_reset=torch.stack(hr) if hr else None,
                mlp_zero=torch.stack(mz),
                mlp_reset=torch.stack(mr) if mr else None,
                sensitivity=torch.stack(sens),
                head_grad_zero=torch.stack(ghz) if ghz else None,
                head_grad_reset=torch.stack(ghr) if ghr else None,
                mlp_grad_zero=torch.stack(gmz) if gmz else None,
                mlp_grad_reset=torch.stack(gmr) if gmr else None,
            )
        )
    return out


def pearson_alpha(d_zero: torch.Tensor, d_reset: torch.Tensor) -> torch.Tensor:
    """alpha = (1 + rho) / 2 per row, rho the Pearson correlation of the two rows (1 for a flat row)."""
    z = d_zero - d_zero.mean(-1, keepdim=True)
    r = d_reset - d_reset.mean(-1, keepdim=True)
    sz = z.pow(2).mean(-1).sqrt()
    sr = r.pow(2).mean(-1).sqrt()
    flat = (sz <= ALPHA_STD_EPS) | (sr <= ALPHA_STD_EPS)
    rho = torch.where(flat, torch.ones_like(sz), (z * r).mean(-1) / (sz * sr).clamp_min(1e-300))
    return (1 + rho.clamp(-1, 1)) / 2


def normalised_weights(weights: Sequence[float] | None, n: int) -> torch.Tensor:
    """Dataset weights pi, normalised to sum 1 (uniform when None)."""
    w = torch.ones(n, dtype=torch.float64) if weights is None else torch.tensor(list(weights), dtype=torch.float64)
    if w.numel() != n or (w < 0).any() or not math.isfinite(float(w.sum())) or float(w.sum()) <= 0:
        raise ValueError(f"need {n} non-negative dataset weights with a positive sum, got {list(w.tolist())}")
    return w / w.sum()


@dataclass
class MedCoreScores:
    """MedCore's aggregated scores of one block (what ``scores.csv`` holds)."""

    head_zero: torch.Tensor
    head_reset: torch.Tensor | None
    mlp_zero: torch.Tensor
    mlp_reset: torch.Tensor | None
    alpha: float
    head_q: torch.Tensor
    mlp_q: torch.Tensor
    sensitivity: float


def medcore_scores(
    stats: Sequence[BlockStats],
    weights: Sequence[float] | None = None,
    alpha: str | float = "auto",
    beta: float = DEFAULT_BETA,
    first_order: bool = False,
) -> list[MedCoreScores]:
    """Q for every head and MLP channel, per block, aggregated over datasets.

    ``alpha="auto"``: per block and dataset from the Pearson correlation (the paper); a number fixes
    it for every block (ablations; 1.0 = Dzero only). Without reset statistics alpha is 1.
    ``first_order``: add Gzero / Greset to Dzero / Dreset first (``medcore-grad``); the statistics must
    hold them (:func:`block_statistics` with ``target_gradients``), else ``ValueError``.
    """
    if not stats:
        return []
    if first_order:
        if any(s.head_grad_zero is None or (s.head_reset is not None and s.head_grad_reset is None) for s in stats):
            raise ValueError("first_order: the statistics hold no first-order terms (give block_statistics "
                             "target_gradients)")
        stats = [_with_first_order(s) for s in stats]
    n_sets = stats[0].head_zero.shape[0]
    pi = normalised_weights(weights, n_sets)
    out = []
    for s in stats:
        if s.head_reset is None:
            a = torch.ones(n_sets, dtype=torch.float64)
        elif alpha == "auto":
            a = pearson_alpha(s.head_zero, s.head_reset)
        else:
            a = torch.full((n_sets,), float(alpha), dtype=torch.float64)
        hq = _mix(a, s.head_zero, s.head_reset)
        mq = _mix(a, s.mlp_zero, s.mlp_reset)
        out.append(
            MedCoreScores(
                head_zero=pi @ s.head_zero,
                head_reset=None if s.head_reset is None else pi @ s.head_reset,
                mlp_zero=pi @ s.mlp_zero,
                mlp_reset=None if s.mlp_reset is None else pi @ s.mlp_reset,
                alpha=float(pi @ a),
                head_q=_aggregate(hq, pi, beta),
                mlp_q=_aggregate(mq, pi, beta),
                sensitivity=float(pi @ s.sensitivity),
            )
        )
    return out


def _with_first_order(s: BlockStats) -> BlockStats:
    """The statistics with G + D in place of D (the predicted loss change to second order)."""
    def add(d: torch.Tensor | None, g: torch.Tensor | None) -> torch.Tensor | None:
        return None if d is None else d + g

    return BlockStats(add(s.head_zero, s.head_grad_zero), add(s.head_reset, s.head_grad_reset),
                      add(s.mlp_zero, s.mlp_grad_zero), add(s.mlp_reset, s.mlp_grad_reset), s.sensitivity)


def _mix(alpha: torch.Tensor, zero: torch.Tensor, reset: torch.Tensor | None) -> torch.Tensor:
    if reset is None:
        return zero
    a = alpha[:, None]
    return a * zero + (1 - a) * reset


def _aggregate(q: torch.Tensor, pi: torch.Tensor, beta: float) -> torch.Tensor:
    """sum_r pi_r q_r + beta * population variance over r (unweighted, as the paper)."""
    return pi @ q + beta * q.var(0, unbiased=False)


class PerGroupImportance(tp.importance.Importance):
    """A Torch-Pruning importance answering from fixed per-block scores: one per head and one per MLP
    channel of each block of the dense encoder (low = pruned first).

    Answers Torch-Pruning's call contract: one score per channel of the group's root, constant within
    a head, so that ``MetaPruner`` ranks whole heads. Groups rooted anywhere else than a block's
    attention or MLP layers get ``None`` (skipped). Subclasses compute the scores.
    """

    def __init__(self, model: nn.Module, head_scores: Sequence[torch.Tensor], mlp_scores: Sequence[torch.Tensor]) -> None:
        self.encoder = image_encoder(model)
        adapter = adapter_for(self.encoder)
        self._adapter = adapter
        self._hd = adapter.head_dim(self.encoder)
        self.head_scores, self.mlp_scores = list(head_scores), list(mlp_scores)
        self._roles: dict[nn.Module, tuple[int, str]] = {}
        for b, blk in enumerate(adapter.blocks(self.encoder)):
            qkv, proj = adapter.attention_linears(blk)
            lin1, lin2 = adapter.mlp_linears(blk)
            self._roles.update({qkv: (b, "qkv"), proj: (b, "proj"), lin1: (b, "lin1"), lin2: (b, "lin2")})

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor | None:
        dep, _ = group[0]
        role = self._roles.get(dep.target.module)
        if role is None:
            return None
        block, layer = role
        root = torch.as_tensor(group[0].root_idxs, dtype=torch.long)
        head_q, mlp_q = self.head_scores[block], self.mlp_scores[block]
        if layer in ("lin1", "lin2"):
            self._check(block, "MLP channels", len(mlp_q), dep.target.module.out_features if layer == "lin1"
                        else dep.target.module.in_features)
            return mlp_q[root].float()
        nh = len(head_q)
        hd = self._hd
        width = dep.target.module.in_features if layer == "proj" else dep.target.module.out_features // 3
        self._check(block, "heads", nh, width // hd)
        heads = (root // hd) if layer == "proj" else self._adapter.qkv_row_heads(self.encoder, block, root)
        return head_q[heads].float()

    def _check(self, block: int, what: str, expected: int, now: int) -> None:
        if expected != now:
            raise RuntimeError(
                f"the statistics were computed for {expected} {what} in block {block}, the model now has {now}; "
                "recompute them on the current model"
            )


class MedCoreImportance(PerGroupImportance):
    """MedCore's Q as a Torch-Pruning importance (low = pruned first).

    Built from precomputed statistics of the dense encoder (:func:`block_statistics`); usable with
    ``tp.pruner.MetaPruner`` (local or global ranking) after :func:`medcore_tp.prepare_pruning`.
    Groups rooted anywhere else than a block's attention or MLP layers get ``None`` (skipped).
    """

    first_order = False  # add the first-order terms Gzero / Greset (FirstOrderMedCoreImportance)

    def __init__(
        self,
        model: nn.Module,
        stats: Sequence[BlockStats],
        weights: Sequence[float] | None = None,
        alpha: str | float = "auto",
        beta: float = DEFAULT_BETA,
    ) -> None:
        if not (alpha == "auto" or (isinstance(alpha, (int, float)) and 0.0 <= float(alpha) <= 1.0)):
            raise ValueError(f"alpha must be 'auto' or a number in [0, 1], got {alpha!r}")
        self.scores = medcore_scores(stats, weights=weights, alpha=alpha, beta=beta, first_order=self.first_order)
        super().__init__(model, [s.head_q for s in self.scores], [s.mlp_q for s in self.scores])


class BoundaryFisherImportance(MedCoreImportance):
    """The boundary-aware Fisher alone: Q = Dzero (alpha fixed at 1), aggregated over datasets."""

    def __init__(
        self,
        model: nn.Module,
        stats: Sequence[BlockStats],
        weights: Sequence[float] | None = None,
        beta: float = DEFAULT_BETA,
    ) -> None:
        super().__init__(model, stats, weights=weights, alpha=1.0, beta=beta)


class FirstOrderMedCoreImportance(MedCoreImportance):
    """MedCore's Q with the first-order term the paper drops (``medcore-grad``): alpha (Gzero + Dzero)
    + (1 - alpha) (Greset + Dreset), signed, aggregated over datasets; needs statistics with gradients."""

    first_order = True
