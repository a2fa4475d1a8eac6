"""Boundary leverage (METHOD.md "Boundary leverage"): how far a pruning step moves the predicted boundary.

A boundary moves by about (change of the logit there) / (spatial gradient of the logit there). For a
pruning step from model A to model B (one grid step: more heads removed at a fixed MLP ratio, or more
MLP channels at a fixed head ratio; no recovery), on each image and each pixel within ``tau`` px of
the ground-truth boundary::

    lambda = |z_B - z_A| / max(|grad z_A|, P5(|grad z_A|)) / (reduction_B - reduction_A)

z are the decoder's low-res logits, |grad z| the Sobel gradient magnitude (scipy.ndimage.sobel along
each axis, divided by 8 so that it is a per-pixel slope; reflected borders), P5 its 5th percentile over
the same image's near-boundary pixels (a floor against flat logits), and the reduction the step's change
in removed encoder parameters, in percent. The GT boundary is the mask's inner surface (mask and not
its 3x3 erosion), "within tau px" its Euclidean distance. A step's leverage is the 95th percentile of
lambda over the near-boundary pixels of all images; BLR95 = median over head steps / median over MLP
steps, with a bootstrap interval over images (images resampled with replacement, every step's 95th
percentile recomputed on the same resample).
"""

from __future__ import annotations

import copy
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, stats
from segment_anything.modeling import Sam
from tqdm.auto import tqdm

from medcore_tp.arch import adapter_for
from medcore_tp.atomic import atomic_write, save_json, save_text
from medcore_tp.budget import ratio_budget
from medcore_tp.data import SegmentationDataset, load_datasets, make_splits, select_split
from medcore_tp.errors import MedcoreError
from medcore_tp.inference import input_size, predict_logits, upsample_logits
from medcore_tp.metrics import boundary_f1, hd95
from medcore_tp.models.spec import input_spec
from medcore_tp.pipeline import DEFAULT_ALLOCATION, PruneConfig, RatioRequest, prune_scored, score_importance
from medcore_tp.profile import count_params

GRADIENT_FLOOR_PERCENTILE = 5
STEP_PERCENTILE = 95
PAPER_BLR95 = 2.887


def near_boundary(mask: np.ndarray, tau: float) -> np.ndarray:
    """Pixels within ``tau`` px (Euclidean) of the inner surface of ``mask`` (empty mask: none)."""
    mask = np.asarray(mask, dtype=bool)
    surface = mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)
    if not surface.any():
        return np.zeros_like(mask)
    return ndimage.distance_transform_edt(~surface) <= tau


def sobel_magnitude(z: np.ndarray) -> np.ndarray:
    """|grad z| by Sobel filters (each divided by 8: a per-pixel slope), reflected borders."""
    z = np.asarray(z, dtype=np.float64)
    return np.hypot(ndimage.sobel(z, axis=0, mode="reflect"), ndimage.sobel(z, axis=1, mode="reflect")) / 8.0


def pixel_leverage(z_before: np.ndarray, z_after: np.ndarray, gt: np.ndarray, tau: float,
                   delta_reduction_pct: float) -> np.ndarray:
    """lambda at every pixel within ``tau`` px of the GT boundary (1-D, row-major order); see module."""
    if delta_reduction_pct <= 0:
        raise MedcoreError(f"a leverage step must remove parameters (change {delta_reduction_pct:.4g}%)")
    band = near_boundary(gt, tau)
    if not band.any():
        return np.zeros(0)
    grad = sobel_magnitude(z_before)[band]
    floor = max(float(np.percentile(grad, GRADIENT_FLOOR_PERCENTILE)), 1e-12)
    change = np.abs(np.asarray(z_after, np.float64) - np.asarray(z_before, np.float64))[band]
    return change / np.maximum(grad, floor) / delta_reduction_pct


@dataclass
class GridPoint:
    """One pruned model of the grid: its ratios, removed fraction, logits and per-image metrics."""

    heads_ratio: float
    mlp_ratio: float
    removed_fraction: float
    logits: list[np.ndarray]
    bf1: np.ndarray
    hd95: np.ndarray


@dataclass
class LeverageConfig:
    """What ``medcore-tp leverage`` computes."""

    model: str
    data: list[str]
    head_ratios: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7, 0.9])
    mlp_ratios: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7, 0.9, 0.95])
    taus: list[float] = field(default_factory=lambda: [3.0, 5.0])
    checkpoint: str | None = None
    split: str = "test"
    images: int | None = None
    importance: str = "magnitude"
    calib_size: int = 16
    protect: list[int] = field(default_factory=list)
    allocation: str = DEFAULT_ALLOCATION  # how each grid point's removals are shared among blocks
    box_jitter: int = 5
    resamples: int = 1000
    seed: int = 0


def validate(config: LeverageConfig, model: Sam) -> None:
    """Every grid point must be reachable; lists strictly increasing (steps go one way); one line each."""
    for option, values in (("--head-ratios", config.head_ratios), ("--mlp-ratios", config.mlp_ratios)):
        if len(values) < 2:
            raise MedcoreError(f"{option}: give at least two ratios (a step goes from one to the next)")
        if any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise MedcoreError(f"{option} {','.join(f'{v:g}' for v in values)}: must be strictly increasing")
    if not config.taus or any(t <= 0 for t in config.taus):
        raise MedcoreError("--tau: give positive distances in px, e.g. 3,5")
    adapter, enc = adapter_for(model), model.image_encoder
    heads, mlp = adapter.heads_per_block(enc), adapter.mlp_per_block(enc)
    for h in config.head_ratios:
        try:
            ratio_budget(heads, mlp, h, 0.0, config.protect)
        except MedcoreError as exc:
            raise MedcoreError(str(exc).replace("heads_ratio", "--head-ratios", 1)) from None
    for m in config.mlp_ratios:
        try:
            ratio_budget(heads, mlp, 0.0, m, config.protect)
        except MedcoreError as exc:
            raise MedcoreError(str(exc).replace("mlp_ratio", "--mlp-ratios", 1)) from None


def _samples(config: LeverageConfig) -> list:
    try:
        datasets = load_datasets(config.data)
    except MedcoreError as exc:
        raise MedcoreError(f"--data: {exc}") from None
    chosen = select_split(datasets, None if config.split == "all" else make_splits(datasets), config.split)
    out = []
    for name, samples in chosen.items():
        if not samples:
            raise MedcoreError(f"--data {name}: no image in the {config.split} split")
        out.extend(samples[: config.images] if config.images else samples)
    return out


def _predict(model: Sam, items: list[dict]) -> list[np.ndarray]:
    return [predict_logits(model, it["image"][None], it["box"][None].float())[0, 0].cpu().numpy() for it in items]


def _metrics(model: Sam, logits: list[np.ndarray], items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    size = input_size(model)
    bf, hd = [], []
    for z, it in zip(logits, items, strict=True):
        up = upsample_logits(torch.from_numpy(z)[None, None], (size, size))[0, 0].numpy()
        h, w = it["fitted_size"]
        pred, gt = up[:h, :w] > 0, it["mask"].numpy()[:h, :w]
        bf.append(boundary_f1(pred, gt))
        hd.append(hd95(pred, gt, empty_distance=max(gt.shape)))
    return np.asarray(bf), np.asarray(hd)


@dataclass
class LeverageResult:
    """Steps (one row per step and tau), the summary (BLR95 per tau and correlations), the grid."""

    steps: list[dict[str, Any]]
    summary: dict[str, Any]
    grid: list[GridPoint]
    pixels: dict[tuple[int, float], list[np.ndarray]]


def run_leverage(
    config: LeverageConfig,
    model: Sam,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> LeverageResult:
    """Prune ``model`` (dense, not modified) at every grid point without recovery, and measure each step's
    boundary leverage; writes ``leverage.csv``, ``leverage.json`` and ``leverage.png`` to ``out_dir``."""
    validate(config, model)
    samples = _samples(config)
    started = time.perf_counter()
    dataset = SegmentationDataset(samples, input_spec(model), box_mode="deterministic", box_jitter=config.box_jitter,
                                  seed=42)
    items = [dataset[i] for i in range(len(dataset))]
    gts = [it["mask_low"].numpy() for it in items]
    model = model.eval()
    log(f"leverage: {len(items)} images ({config.split} split), a {len(config.head_ratios)} x {len(config.mlp_ratios)} "
        f"grid pruned by {config.importance} importance, no recovery, tau {', '.join(f'{t:g}' for t in config.taus)} px")
    base = PruneConfig(importance=config.importance, ratios=RatioRequest(heads_ratio=0.0, mlp_ratio=0.0),
                       data=tuple(config.data), calib_size=config.calib_size, recover_steps=0, seed=config.seed,
                       allocation=config.allocation)
    scoring = score_importance(model, base, log=log)
    dense_params = count_params(model.image_encoder)
    grid: dict[tuple[int, int], GridPoint] = {}
    cells = [(i, j) for i in range(len(config.head_ratios)) for j in range(len(config.mlp_ratios))]
    bar = tqdm(cells, desc="leverage grid", disable=not progress, dynamic_ncols=True)
    for i, j in bar:
        h, m = config.head_ratios[i], config.mlp_ratios[j]
        bar.set_postfix_str(f"heads {h:g}, MLP {m:g}")
        pruned = copy.deepcopy(model)
        ratios = RatioRequest(heads_ratio=h, mlp_ratio=m, protect=tuple(config.protect))
        prune_scored(pruned, replace(base, ratios=ratios), scoring, log=lambda _m: None)
        pruned.eval()
        logits = _predict(pruned, items)
        bf, hd = _metrics(pruned, logits, items)
        grid[(i, j)] = GridPoint(h, m, 1.0 - count_params(pruned.image_encoder) / dense_params, logits, bf, hd)
        del pruned
    bar.close()

    steps = _steps(config, grid)
    pixels: dict[tuple[int, float], list[np.ndarray]] = {}
    rows = []
    for s, step in enumerate(steps):
        a, b = grid[step["from"]], grid[step["to"]]
        delta = 100.0 * (b.removed_fraction - a.removed_fraction)
        for tau in config.taus:
            per_image = [pixel_leverage(za, zb, gt, tau, delta) for za, zb, gt in zip(a.logits, b.logits, gts,
                                                                                       strict=True)]
            pixels[(s, tau)] = per_image
            pooled = np.concatenate(per_image)
            rows.append({
                "step": s, "kind": step["kind"], "tau": tau,
                "heads_ratio_from": a.heads_ratio, "heads_ratio_to": b.heads_ratio,
                "mlp_ratio_from": a.mlp_ratio, "mlp_ratio_to": b.mlp_ratio,
                "removed_from": a.removed_fraction, "removed_to": b.removed_fraction, "delta_reduction_pct": delta,
                "pixels": len(pooled), "leverage_p95": float(np.percentile(pooled, STEP_PERCENTILE)),
                "leverage_median": float(np.median(pooled)),
                "bf1_from": float(a.bf1.mean()), "bf1_to": float(b.bf1.mean()),
                "delta_bf1": float(b.bf1.mean() - a.bf1.mean()),
                "hd95_from": float(a.hd95.mean()), "hd95_to": float(b.hd95.mean()),
                "delta_hd95": float(b.hd95.mean() - a.hd95.mean()),
            })
    summary = {"settings": {k: v for k, v in vars(config).items()}, "images": len(items),
               "paper_blr95_medsam": PAPER_BLR95, "per_tau": {}}
    for tau in config.taus:
        summary["per_tau"][f"{tau:g}"] = _summarise(config, steps, rows, pixels, tau, len(items))
    summary["grid"] = [{"heads_ratio": g.heads_ratio, "mlp_ratio": g.mlp_ratio, "removed_fraction": g.removed_fraction,
                        "boundary_f1": float(g.bf1.mean()), "hd95": float(g.hd95.mean())} for g in grid.values()]
    summary["seconds"] = time.perf_counter() - started
    result = LeverageResult(rows, summary, list(grid.values()), pixels)
    if out_dir is not None:
        write_outputs(result, config, Path(out_dir))
    return result


def _steps(config: LeverageConfig, grid: dict) -> list[dict[str, Any]]:
    """Head steps (h_i -> h_i+1 at each MLP ratio), then MLP steps (m_j -> m_j+1 at each head ratio)."""
    nh, nm = len(config.head_ratios), len(config.mlp_ratios)
    steps = [{"kind": "head", "from": (i, j), "to": (i + 1, j)} for j in range(nm) for i in range(nh - 1)]
    steps += [{"kind": "mlp", "from": (i, j), "to": (i, j + 1)} for i in range(nh) for j in range(nm - 1)]
    return [s for s in steps if grid[s["to"]].removed_fraction > grid[s["from"]].removed_fraction]


def blr95(p95: Sequence[float], kinds: Sequence[str]) -> float:
    """median of head steps' 95th percentiles / median of MLP steps' (NaN when either kind is missing)."""
    head = [v for v, k in zip(p95, kinds, strict=True) if k == "head"]
    mlp = [v for v, k in zip(p95, kinds, strict=True) if k == "mlp"]
    if not head or not mlp or np.median(mlp) == 0:
        return float("nan")
    return float(np.median(head) / np.median(mlp))


def _summarise(config: LeverageConfig, steps: list[dict], rows: list[dict], pixels: dict, tau: float,
               n_images: int) -> dict[str, Any]:
    mine = [r for r in rows if r["tau"] == tau]
    kinds = [r["kind"] for r in mine]
    value = blr95([r["leverage_p95"] for r in mine], kinds)
    rng = np.random.default_rng(config.seed)
    boot = []
    for _ in range(config.resamples):
        idx = rng.integers(0, n_images, size=n_images)
        p95 = []
        for r in mine:
            pooled = np.concatenate([pixels[(r["step"], tau)][k] for k in idx])
            p95.append(float(np.percentile(pooled, STEP_PERCENTILE)) if len(pooled) else float("nan"))
        boot.append(blr95(p95, kinds))
    boot = np.asarray(boot)
    boot = boot[np.isfinite(boot)]
    low, high = (np.percentile(boot, [2.5, 97.5]) if len(boot) else (float("nan"), float("nan")))
    lev = [r["leverage_p95"] for r in mine]

    def rank(x: list[float], y: list[float]) -> float | None:
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return None
        return float(stats.spearmanr(x, y).statistic)

    per_pp = [r["delta_reduction_pct"] for r in mine]
    return {
        "blr95": value, "ci_low": float(low), "ci_high": float(high), "resamples": config.resamples,
        "head_steps": kinds.count("head"), "mlp_steps": kinds.count("mlp"),
        "median_head_p95": float(np.median([v for v, k in zip(lev, kinds, strict=True) if k == "head"] or [np.nan])),
        "median_mlp_p95": float(np.median([v for v, k in zip(lev, kinds, strict=True) if k == "mlp"] or [np.nan])),
        "spearman_leverage_vs_delta_bf1": rank(lev, [r["delta_bf1"] for r in mine]),
        "spearman_leverage_vs_delta_hd95": rank(lev, [r["delta_hd95"] for r in mine]),
        "spearman_leverage_vs_delta_bf1_per_pct": rank(lev, [r["delta_bf1"] / d for r, d in zip(mine, per_pp,
                                                                                                  strict=True)]),
        "spearman_leverage_vs_delta_hd95_per_pct": rank(lev, [r["delta_hd95"] / d for r, d in zip(mine, per_pp,
                                                                                                    strict=True)]),
    }


CSV_COLUMNS = ("step", "kind", "tau", "heads_ratio_from", "heads_ratio_to", "mlp_ratio_from", "mlp_ratio_to",
               "removed_from", "removed_to", "delta_reduction_pct", "pixels", "leverage_p95", "leverage_median",
               "bf1_from", "bf1_to", "delta_bf1", "hd95_from", "hd95_to", "delta_hd95")


def write_outputs(result: LeverageResult, config: LeverageConfig, out: Path) -> None:
    """``leverage.csv`` (a row per step and tau), ``leverage.json`` (summary) and ``leverage.png``."""
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in result.steps:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    save_text(buf.getvalue(), out / "leverage.csv")
    save_json({**result.summary, "steps": result.steps}, out / "leverage.json")
    plot_leverage(result, config, out / "leverage.png")


def plot_leverage(result: LeverageResult, config: LeverageConfig, path: str | os.PathLike) -> None:
    """Per tau: the distribution of near-boundary leverage of head and MLP steps (pixels pooled), and each
    step's 95th percentile against its Boundary F1 change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = config.taus
    fig, axes = plt.subplots(len(taus), 2, figsize=(11, 4 * len(taus)), squeeze=False)
    for t, tau in enumerate(taus):
        ax = axes[t][0]
        mine = [r for r in result.steps if r["tau"] == tau]
        for kind, colour in (("head", "tab:red"), ("mlp", "tab:blue")):
            vals = [np.concatenate(result.pixels[(r["step"], tau)]) for r in mine if r["kind"] == kind]
            if not vals:
                continue
            v = np.concatenate(vals)
            v = v[v > 0]
            if len(v):
                bins = np.logspace(np.log10(max(v.min(), 1e-8)), np.log10(v.max()), 60)
                ax.hist(v, bins=bins, density=True, histtype="step", color=colour, lw=1.5,
                        label=f"{kind} steps ({len(vals)})")
            for r in mine:
                if r["kind"] == kind:
                    ax.axvline(r["leverage_p95"], color=colour, alpha=0.25, lw=0.8)
        ax.set_xscale("log")
        s = result.summary["per_tau"][f"{tau:g}"]
        ax.set_title(f"tau = {tau:g} px: BLR95 {s['blr95']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
                     f"(paper, MedSAM: {PAPER_BLR95})", fontsize=9)
        ax.set_xlabel("boundary leverage per pixel (logit change / |grad| / % parameters); lines: step P95")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        ax = axes[t][1]
        for kind, colour in (("head", "tab:red"), ("mlp", "tab:blue")):
            pts = [(r["leverage_p95"], r["delta_bf1"]) for r in mine if r["kind"] == kind]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colour, label=f"{kind} steps")
        ax.set_xscale("log")
        ax.set_xlabel("step leverage (P95)")
        ax.set_ylabel("Boundary F1 change over the step")
        rho = s["spearman_leverage_vs_delta_bf1"]
        ax.set_title(f"Spearman rho = {rho:.3f}" if rho is not None else "Spearman rho: n/a", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


__all__ = ["LeverageConfig", "LeverageResult", "PAPER_BLR95", "blr95", "near_boundary", "pixel_leverage",
           "run_leverage", "sobel_magnitude", "validate"]
