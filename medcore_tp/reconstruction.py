"""Least-squares refit: after groups are removed, the layer that reads them is refitted so that the
block computes what the dense block computed, in closed form from calibration statistics.

Removing heads deletes input columns of the attention's output projection; removing MLP channels
deletes input columns of the MLP's second layer. The other inputs of that layer are unchanged (heads
and hidden channels are computed independently), so the best the remaining columns can do, on the
calibration tokens, is a linear least-squares problem. With x the layer's dense input augmented by a
constant 1 (the bias), W the dense weight with its bias as last column, K the kept inputs and
C = sum_t x_t x_t^T over calibration tokens:

    W_K' = argmin_V  sum_t |V x_{t,K} - W x_t|^2 + lam |V - W_K|^2
         = (W C[:, K] + lam W_K) (C[K, K] + lam I)^-1

``lam`` is ``ridge`` times the mean of diag C[K, K] (a scale-free amount that keeps badly conditioned
problems near the dense weights). The statistics C and W are taken once on the dense model (one
forward pass per calibration image, no gradients) and serve every plan, ratio and importance: a sweep
refits each point for free.

What it does not see: drift in a block's input caused by removals in earlier blocks (the inputs are
the dense model's). :func:`refit_paired` corrects for it: it runs the pruned and the dense model side
by side on the calibration images and solves the same problem with the pruned model's own inputs x'
and the dense layer's outputs as targets, V = argmin sum_t |V x'_t - W x_t|^2 + lam |V - V_0|^2.
The fraction of the layer's output variance (energy about its mean) the removal leaves unexplained,
before and after the refit, is reported per layer (:class:`RefitReport`), on the statistics the
refit used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from medcore_tp.arch import adapter_for, image_encoder
from medcore_tp.calibration import CalibrationBatch, single_samples
from medcore_tp.graph import Plan

DEFAULT_RIDGE = 1e-3
KINDS = ("heads", "mlp")

__all__ = ["DEFAULT_RIDGE", "LayerStatistics", "RefitReport", "collect_statistics", "refit", "refit_paired",
           "refit_weight"]


@dataclass
class LayerStatistics:
    """Input second moments of one layer on the calibration tokens and its dense weights.

    ``moment``: (d + 1, d + 1) float64, sum of x_t x_t^T with x_t augmented by a trailing 1;
    ``weight``: (out, d + 1) float64, the dense weight with the bias as last column; ``tokens``: how
    many tokens were summed.
    """

    moment: torch.Tensor
    weight: torch.Tensor
    tokens: float = 0.0


@dataclass
class ReconstructionStatistics:
    """:class:`LayerStatistics` per (block, ``"heads"`` | ``"mlp"``), with the images they came from."""

    layers: dict[tuple[int, str], LayerStatistics] = field(default_factory=dict)
    images: int = 0


@dataclass(frozen=True)
class RefitReport:
    """One refitted layer: removed inputs and the unexplained fraction of its output variance on the
    calibration tokens with the removed inputs simply dropped (``before``) and after the refit."""

    block: int
    kind: str
    removed: int
    before: float
    after: float


def _augmented(x: torch.Tensor) -> torch.Tensor:
    """Tokens (..., d) of a layer input as float64 rows (N, d + 1) with a trailing 1 (float64: the
    sums run over tens of thousands of tokens per image and the solve needs their small eigenvalues)."""
    x = x.reshape(-1, x.shape[-1]).double()
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def _target_layer(encoder: nn.Module, block: int, kind: str) -> nn.Linear:
    adapter = adapter_for(encoder)
    blk = adapter.blocks(encoder)[block]
    return adapter.attention_linears(blk)[1] if kind == "heads" else adapter.mlp_linears(blk)[1]


def _augmented_weight(layer: nn.Linear) -> torch.Tensor:
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return torch.cat([w.cpu(), b.cpu()[:, None]], dim=1)


@torch.no_grad()
def collect_statistics(
    model: nn.Module,
    batches: Sequence[CalibrationBatch],
    progress: bool = False,
) -> ReconstructionStatistics:
    """Second moments of every block's attention-projection and MLP-output inputs over ``batches``,
    on the dense ``model`` (unchanged; only its encoder runs)."""
    encoder = image_encoder(model)
    adapter = adapter_for(encoder)
    stats = ReconstructionStatistics()
    layers = {(b, k): _target_layer(encoder, b, k) for b in range(len(adapter.blocks(encoder))) for k in KINDS}
    for key, layer in layers.items():
        d = layer.in_features
        stats.layers[key] = LayerStatistics(torch.zeros(d + 1, d + 1, dtype=torch.float64), _augmented_weight(layer))
    def hook(key: tuple[int, str]):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = _augmented(inputs[0].detach())
            s = stats.layers[key]
            s.moment += (x.T @ x).cpu()
            s.tokens += x.shape[0]
        return record

    handles = [layer.register_forward_pre_hook(hook(key)) for key, layer in layers.items()]
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    try:
        for batch in tqdm(single_samples(batches), desc="refit statistics", disable=not progress, leave=False):
            encoder(batch.images.to(device))
            stats.images += len(batch.images)
    finally:
        for h in handles:
            h.remove()
        encoder.train(was_training)
    return stats


def _solve(c_kk: torch.Tensor, rhs: torch.Tensor, v0: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_V tr(V c_kk V^T) - 2 tr(V rhs) + lam |V - v0|^2, bias column last and not pulled towards
    its dense value; lam = ``ridge`` x mean diag of the non-bias part."""
    lam = ridge * float(c_kk.diagonal()[:-1].mean()) if c_kk.shape[0] > 1 else 0.0
    reg = torch.eye(c_kk.shape[0], dtype=torch.float64) * lam
    reg[-1, -1] = 0.0
    return torch.linalg.solve(c_kk + reg, rhs + reg @ v0.T).T


def refit_weight(stats: LayerStatistics, kept: Sequence[int], ridge: float = DEFAULT_RIDGE
                 ) -> tuple[torch.Tensor, float, float]:
    """The refitted (out, len(kept) + 1) weight (bias last) for inputs ``kept`` (dense indices, in
    order), and the unexplained fractions of the output variance before and after (module docstring)."""
    c, w = stats.moment, stats.weight
    d = c.shape[0] - 1
    k = torch.tensor(list(kept) + [d], dtype=torch.long)  # the bias input is always kept
    c_kk = c[k][:, k]
    w_k = w[:, k]
    solved = _solve(c_kk, (w @ c[:, k]).T, w_k, ridge)
    total = float(torch.einsum("oi,ij,oj->", w, c, w))

    def residual(v: torch.Tensor) -> float:
        # |W x - V x_K|^2 summed over tokens, from the moments alone
        cross = float(torch.einsum("oi,ij,oj->", w, c[:, k], v))
        return total - 2 * cross + float(torch.einsum("oi,ij,oj->", v, c_kk, v))

    # relative to the output's energy about its mean (the bias alone would otherwise look like a fit)
    n = float(c[-1, -1])
    mean = w @ c[:, -1] / max(n, 1.0)
    scale = max(total - n * float(mean @ mean), 1e-300)
    return solved, max(residual(w_k), 0.0) / scale, max(residual(solved), 0.0) / scale


@torch.no_grad()
def refit(
    model: nn.Module, stats: ReconstructionStatistics, plan: Plan, kind: str, ridge: float = DEFAULT_RIDGE,
    dense_widths: Sequence[int] | None = None,
) -> list[RefitReport]:
    """Refit, in place, the layer of each planned block that read the removed ``kind`` groups
    (``"heads"``: the attention projection; ``"mlp"``: the MLP's second layer) of ``model``, whose
    groups in ``plan`` (dense indices) have just been removed. Returns one report per layer.

    ``dense_widths``: value channels per head of each block (``adapter.head_dims`` of the dense
    encoder); read from ``model`` when None (head widths never change with pruning).
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind}: must be one of {', '.join(KINDS)}")
    encoder = image_encoder(model)
    adapter = adapter_for(encoder)
    widths = list(dense_widths) if dense_widths is not None else adapter.head_dims(encoder)
    reports = []
    for b, bp in sorted(plan.items()):
        removed = bp.heads if kind == "heads" else bp.mlp
        if not removed:
            continue
        s = stats.layers[(b, kind)]
        d = s.moment.shape[0] - 1
        if kind == "heads":
            gone = {c for h in removed for c in range(h * widths[b], (h + 1) * widths[b])}
        else:
            gone = set(removed)
        kept = [i for i in range(d) if i not in gone]
        layer = _target_layer(encoder, b, kind)
        if layer.bias is None:
            raise ValueError(f"block {b} {kind}: the layer has no bias, which the refit needs")
        if layer.in_features != len(kept):
            raise ValueError(f"block {b} {kind}: the layer has {layer.in_features} inputs, the plan leaves {len(kept)}")
        solved, before, after = refit_weight(s, kept, ridge)
        layer.weight.copy_(solved[:, :-1].to(layer.weight))
        layer.bias.copy_(solved[:, -1].to(layer.bias))
        reports.append(RefitReport(b, kind, len(gone), before, after))
    return reports




@torch.no_grad()
def refit_paired(
    model: nn.Module, dense: nn.Module, batches: Sequence[CalibrationBatch], blocks: Sequence[int], kind: str,
    ridge: float = DEFAULT_RIDGE, progress: bool = False,
) -> list[RefitReport]:
    """Refit, in place, ``kind``'s layer of each of ``blocks`` of the pruned ``model`` on its own inputs
    against the outputs of the same layer of ``dense`` (module docstring). One forward of each model
    per calibration image; every listed block is refitted from the same pass."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind}: must be one of {', '.join(KINDS)}")
    enc, ref = image_encoder(model), image_encoder(dense)
    mine = {b: _target_layer(enc, b, kind) for b in blocks}
    theirs = {b: _target_layer(ref, b, kind) for b in blocks}
    moments = {b: torch.zeros(m.in_features + 1, m.in_features + 1, dtype=torch.float64) for b, m in mine.items()}
    cross = {b: torch.zeros(m.in_features + 1, m.out_features, dtype=torch.float64) for b, m in mine.items()}
    target_energy = dict.fromkeys(blocks, 0.0)
    target_sum = {b: torch.zeros(m.out_features, dtype=torch.float64) for b, m in mine.items()}
    held: dict[int, torch.Tensor] = {}

    def take_input(b: int):
        def hook(_m, inputs):
            held[b] = _augmented(inputs[0].detach())
        return hook

    def take_target(b: int):
        def hook(_m, _inputs, output):
            y = output.detach().reshape(-1, output.shape[-1]).double()
            x = held.pop(b)
            moments[b] += (x.T @ x).cpu()
            cross[b] += (x.T @ y).cpu()
            target_energy[b] += float(y.double().pow(2).sum())
            target_sum[b] += y.double().sum(0).cpu()
        return hook

    device = next(enc.parameters()).device
    was = enc.training, ref.training
    enc.eval()
    ref.eval()
    handles = [mine[b].register_forward_pre_hook(take_input(b)) for b in blocks]
    handles += [theirs[b].register_forward_hook(take_target(b)) for b in blocks]
    try:
        for batch in tqdm(single_samples(batches), desc=f"paired refit ({kind})", disable=not progress, leave=False):
            x = batch.images.to(device)
            enc(x)  # holds the pruned inputs; the dense pass then pairs them with its outputs
            ref(x)
    finally:
        for h in handles:
            h.remove()
        enc.train(was[0])
        ref.train(was[1])
    reports = []
    for b in blocks:
        layer = mine[b]
        v0 = torch.cat([layer.weight.detach().double().cpu(), layer.bias.detach().double().cpu()[:, None]], 1)
        c, xy, total = moments[b], cross[b], target_energy[b]
        centred = max(total - float(target_sum[b] @ target_sum[b]) / max(float(c[-1, -1]), 1.0), 1e-300)

        def residual(v: torch.Tensor, c=c, xy=xy, total=total, centred=centred) -> float:
            return max(total - 2 * float(torch.einsum("io,oi->", xy, v)) + float(torch.einsum("oi,ij,oj->", v, c, v)),
                       0.0) / centred

        solved = _solve(c, xy, v0, ridge)
        layer.weight.copy_(solved[:, :-1].to(layer.weight))
        layer.bias.copy_(solved[:, -1].to(layer.bias))
        removed = theirs[b].in_features - layer.in_features
        reports.append(RefitReport(b, kind, removed, residual(v0), residual(solved)))
    return reports
