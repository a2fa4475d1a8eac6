"""Budgets: how many heads and MLP channels each block gives up.

Conventions (the paper's): a heads ratio is a fraction of ALL heads of the encoder and an MLP ratio a
fraction of ALL MLP channels, protected blocks included in the denominators; the removals are taken
from unprotected blocks only; each block keeps at least one head and ``round(0.05 * width)`` channels.
The total is shared in proportion to per-block weights (:data:`EVEN`: each block's own width, so every
block gives up the same fraction; None: equal counts per block; or ``1 / s_b`` for MedCore),
capped by what each block can give, and the rounding remainder is placed greedily.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from medcore_tp.errors import MedcoreError

MIN_HEADS = 1
MIN_MLP_FRACTION = 0.05
EVEN = "even"  # as ``weights``: in proportion to each block's width, the same fraction of every block


@dataclass(frozen=True)
class Budget:
    """Groups to remove per block."""

    heads: list[int]
    mlp: list[int]

    @property
    def total_heads(self) -> int:
        return sum(self.heads)

    @property
    def total_mlp(self) -> int:
        return sum(self.mlp)


def min_mlp_width(width: int) -> int:
    """Channels a block with ``width`` MLP channels must keep."""
    return max(1, round(MIN_MLP_FRACTION * width))


def removable(heads: Sequence[int], mlp: Sequence[int], protect: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """Per block, the most heads and MLP channels that may go (0 in protected blocks)."""
    prot = set(protect)
    cap_h = [0 if b in prot else max(0, n - MIN_HEADS) for b, n in enumerate(heads)]
    cap_m = [0 if b in prot else max(0, w - min_mlp_width(w)) for b, w in enumerate(mlp)]
    return cap_h, cap_m


def allocate(total: int, capacity: Sequence[int], weights: Sequence[float] | None = None) -> list[int]:
    """Share ``total`` among blocks in proportion to ``weights``, never above ``capacity``.

    Real-valued water-filling first (blocks that hit their cap hand the rest to the others), then the
    floors, then the remainder one unit at a time to the largest fractional parts (ties: larger
    weight, then lower index). Raises ``ValueError`` when ``total`` exceeds the summed capacity.
    """
    n = len(capacity)
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"{n} capacities but {len(w)} weights")
    if total < 0 or total > sum(capacity):
        raise ValueError(f"cannot place {total} in capacities summing to {sum(capacity)}")
    if any(x < 0 or not math.isfinite(x) for x in w):
        raise ValueError("weights must be finite and non-negative")
    share = [0.0] * n
    open_ = [i for i in range(n) if capacity[i] > 0 and w[i] > 0]
    left = float(total)
    while open_ and left > 1e-9:
        wsum = sum(w[i] for i in open_)
        level = left / wsum
        capped = [i for i in open_ if level * w[i] >= capacity[i] - share[i]]
        if not capped:
            for i in open_:
                share[i] += level * w[i]
            break
        for i in capped:
            left -= capacity[i] - share[i]
            share[i] = float(capacity[i])
        open_ = [i for i in open_ if i not in capped]
    alloc = [min(capacity[i], math.floor(share[i] + 1e-9)) for i in range(n)]
    rest = total - sum(alloc)
    order = sorted(range(n), key=lambda i: (-(share[i] - alloc[i]), -w[i], i))
    while rest > 0:
        # Zero-weight blocks take units only once the weighted ones are full.
        room = [i for i in order if alloc[i] < capacity[i] and w[i] > 0] or [
            i for i in order if alloc[i] < capacity[i]
        ]
        for i in room[:rest]:
            alloc[i] += 1
        rest -= min(rest, len(room))
    return alloc


def block_weights(weights: Sequence[float] | str | None, widths: Sequence[int]) -> Sequence[float] | None:
    """The per-block allocation weights for groups of ``widths``: :data:`EVEN` becomes the widths."""
    return [float(w) for w in widths] if isinstance(weights, str) and weights == EVEN else weights


def check_protect(protect: Sequence[int], n_blocks: int) -> list[int]:
    """Validate protected block indices (the ``protect`` parameter)."""
    bad = [b for b in protect if not 0 <= b < n_blocks]
    if bad:
        raise MedcoreError(f"protect {bad[0]}: the encoder has blocks 0-{n_blocks - 1}", "protect")
    return sorted(set(protect))


def ratio_budget(
    heads: Sequence[int],
    mlp: Sequence[int],
    heads_ratio: float,
    mlp_ratio: float,
    protect: Sequence[int] = (),
    weights: Sequence[float] | str | None = None,
) -> Budget:
    """Per-block removals for head and MLP ratios (fractions of all heads / all MLP channels).

    Raises :class:`MedcoreError` (naming ``heads_ratio`` / ``mlp_ratio``) for a ratio outside
    [0, 1) or one that the minimum widths cannot honour; the message gives the largest allowed ratio.
    """
    protect = check_protect(protect, len(heads))
    cap_h, cap_m = removable(heads, mlp, protect)
    out = []
    for option, ratio, widths, cap, unit in (
        ("heads_ratio", heads_ratio, heads, cap_h, "heads"),
        ("mlp_ratio", mlp_ratio, mlp, cap_m, "MLP channels"),
    ):
        if not (0.0 <= ratio < 1.0) or not math.isfinite(ratio):
            raise MedcoreError(f"{option} {ratio}: must be in [0, 1)", option)
        want = round(ratio * sum(widths))
        if want > sum(cap):
            where = f" with blocks {','.join(map(str, protect))} protected" if protect else ""
            raise MedcoreError(
                f"{option} {ratio}: asks for {want} {unit} but at most {sum(cap)} can go{where} "
                f"(largest ratio {sum(cap) / sum(widths):.4f})", option
            )
        out.append(allocate(want, cap, block_weights(weights, widths)))
    return Budget(heads=out[0], mlp=out[1])


# The paper's configuration, the anchor of the --ratio rule.
PAPER_RATIO = 0.6
PAPER_HEADS_RATIO = 0.5
PAPER_MLP_RATIO = 0.7
RATIO_TOLERANCE = 0.005  # --ratio lands within half a point of R


@dataclass(frozen=True)
class RatioRule:
    """What a ``ratio`` R (``--ratio R``) turned into."""

    heads_ratio: float
    mlp_ratio: float
    protect: list[int]
    removed_fraction: float


def removed_params(heads: Sequence[int], mlp: Sequence[int], heads_ratio: float, mlp_ratio: float,
                   head_params: int | Sequence[int], channel_params: int | Sequence[int],
                   protect: Sequence[int] = (), weights: Sequence[float] | str | None = None) -> int:
    """Encoder parameters removed by these ratios (paper denominators, rounding as in the budget).

    ``head_params`` / ``channel_params``: parameters of one head / one MLP channel, either one number
    for every block (SAM's ViT) or one per block (TinyViT, whose stages differ). Per-block costs are
    summed over the allocation :func:`ratio_budget` makes with the same per-block ``weights``
    (uniform when None).
    """
    n_heads, n_mlp = round(heads_ratio * sum(heads)), round(mlp_ratio * sum(mlp))
    if isinstance(head_params, int) and isinstance(channel_params, int):
        return n_heads * head_params + n_mlp * channel_params
    per_head = [head_params] * len(heads) if isinstance(head_params, int) else list(head_params)
    per_channel = [channel_params] * len(mlp) if isinstance(channel_params, int) else list(channel_params)
    if len(per_head) != len(heads) or len(per_channel) != len(mlp):
        raise ValueError(f"{len(heads)} blocks but {len(per_head)} head and {len(per_channel)} channel costs")
    cap_h, cap_m = removable(heads, mlp, protect)
    return sum(n * p for n, p in zip(allocate(n_heads, cap_h, block_weights(weights, heads)), per_head,
                                     strict=True)) + sum(
        n * p for n, p in zip(allocate(n_mlp, cap_m, block_weights(weights, mlp)), per_channel, strict=True)
    )


def ratio_ceiling(
    heads: Sequence[int],
    mlp: Sequence[int],
    head_params: int | Sequence[int],
    channel_params: int | Sequence[int],
    encoder_params: int,
    protect: Sequence[int],
    weights: Sequence[float] | str | None = None,
) -> float:
    """The largest ``--ratio`` the rule of :func:`ratio_rule` can reach with ``protect`` (every block
    keeping one head and 5% of its MLP channels)."""
    return ratio_rule(None, heads, mlp, head_params, channel_params, encoder_params, list(protect), weights)


def ratio_rule(
    ratio: float | None,
    heads: Sequence[int],
    mlp: Sequence[int],
    head_params: int | Sequence[int],
    channel_params: int | Sequence[int],
    encoder_params: int,
    protect: Sequence[int] | None = None,
    weights: Sequence[float] | str | None = None,
    default: Sequence[int] | None = None,
) -> RatioRule:
    """Turn a target fraction of encoder parameters into head / MLP ratios and protected blocks.

    The rule keeps the paper's proportions: heads ratio = 0.5 s and MLP ratio = 0.7 s with
    s = R / 0.6, so R = 0.6 is exactly the paper's configuration (60.03% on ViT-B) and other R land
    within a rounding error of R on ViT-B (about R * 1.0005). Each ratio is capped at what the minimum
    widths allow; once a cap binds, or where the straight line misses R by more than a quarter point
    (encoders with another share of unprunable parameters), s is searched so that the removed fraction
    is as close to R as possible.
    ``protect=None`` protects ``default`` (None: the last two blocks, the paper's 10 and 11 on ViT-B)
    and lifts that protection only when R cannot be reached with it; an explicit ``protect`` is kept
    as given.
    ``head_params`` / ``channel_params`` may be per-block lists (see :func:`removed_params`); then the
    per-block budget ``weights`` (e.g. MedCore's 1 / s_b) decide where the removals fall and so how
    many parameters go, and the search accounts for them.
    Raises :class:`MedcoreError` for R outside (0, max], giving the maximum.
    """
    n = len(heads)
    if default is None:
        default = [n - 2, n - 1] if n > 2 else []
    candidates = [list(protect)] if protect is not None else ([list(default), []] if default else [[]])
    if ratio is not None and ratio <= 0:
        candidates = candidates[:1]  # nothing to search: report the bound for the first protection
    for attempt, option in enumerate(candidates):
        option = check_protect(option, n)
        cap_h, cap_m = removable(heads, mlp, option)
        max_h, max_m = sum(cap_h) / sum(heads), sum(cap_m) / sum(mlp)
        # the largest ratios that still round to an allowed count
        max_h = math.floor(max_h * sum(heads) + 1e-9) / sum(heads)
        max_m = math.floor(max_m * sum(mlp) + 1e-9) / sum(mlp)

        def frac(
            s: float, max_h: float = max_h, max_m: float = max_m, option: list[int] = option
        ) -> tuple[float, float, float]:
            rh = min(PAPER_HEADS_RATIO * s, max_h)
            rm = min(PAPER_MLP_RATIO * s, max_m)
            removed = removed_params(heads, mlp, rh, rm, head_params, channel_params, option, weights)
            return rh, rm, removed / encoder_params

        ceiling = frac(max(max_h / PAPER_HEADS_RATIO, max_m / PAPER_MLP_RATIO))[2]
        if ratio is None:
            return ceiling  # ratio_ceiling asked for the bound only
        if not (0.0 < ratio <= ceiling + 1e-12) or not math.isfinite(ratio):
            if attempt == len(candidates) - 1:
                where = f"with blocks {','.join(map(str, option))} protected" if option else "with no block protected"
                raise MedcoreError(
                    f"ratio {ratio}: must be in (0, {math.floor(ceiling * 1e4) / 1e4:.4f}] {where} "
                    "(every block keeps 1 head and 5% of its MLP channels)", "ratio"
                )
            continue
        s = ratio / PAPER_RATIO
        rh, rm, f = frac(s)
        capped = PAPER_HEADS_RATIO * s > max_h or PAPER_MLP_RATIO * s > max_m
        # Encoders whose unprunable share differs from ViT-B's (tiny, ViT-L/H) miss R on the straight
        # line; search there too.
        if capped or abs(f - ratio) > RATIO_TOLERANCE / 2:
            lo, hi = 0.0, max(max_h / PAPER_HEADS_RATIO, max_m / PAPER_MLP_RATIO)
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if frac(mid)[2] < ratio else (lo, mid)
            rh, rm, f = min((frac(lo), frac(hi)), key=lambda t: abs(t[2] - ratio))
        return RatioRule(heads_ratio=rh, mlp_ratio=rm, protect=option, removed_fraction=f)
    raise AssertionError("unreachable")


def round_mlp_budget(budget: Budget, mlp: Sequence[int], round_to: int) -> Budget:
    """The budget with each pruned block's kept MLP width moved to the nearest multiple of ``round_to``
    (at least ``round_to``, never above the block's width), as Torch-Pruning's ``round_to`` does, so
    pruned GEMMs keep hardware-friendly sizes. Blocks the budget leaves alone stay as they are.
    """
    if round_to < 1:
        raise MedcoreError(f"round_to {round_to}: must be >= 1", "round_to")
    if round_to == 1:
        return budget
    removed = []
    for width, gone in zip(mlp, budget.mlp, strict=True):
        if gone == 0:
            removed.append(0)
            continue
        kept = max(round_to, round((width - gone) / round_to) * round_to)
        if kept > width:
            kept = max(round_to, width // round_to * round_to) if width >= round_to else width
        removed.append(width - kept)
    return Budget(heads=list(budget.heads), mlp=removed)
