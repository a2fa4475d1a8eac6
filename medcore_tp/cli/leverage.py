"""``medcore-tp leverage``: boundary leverage of head vs MLP pruning steps (BLR95) on a ratio grid."""

from __future__ import annotations

import click

from medcore_tp.checkpoint import load_model
from medcore_tp.cli import main
from medcore_tp.cli._common import parse_device, parse_protect, table
from medcore_tp.errors import MedcoreError
from medcore_tp.leverage import PAPER_BLR95, LeverageConfig, run_leverage
from medcore_tp.models import MODEL_NAMES, default_weights
from medcore_tp.pipeline import ALLOCATIONS, DEFAULT_ALLOCATION
from medcore_tp.sweep import IMPORTANCES


def _floats(option: str, text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MedcoreError(f"{option} {text}: not a comma-separated list of numbers") from None


@main.command("leverage")
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), required=True, help="Model architecture.")
@click.option("--checkpoint", help="Dense or medcore-tp pruned checkpoint [lite-medsam: the packaged weights].")
@click.option("--data", required=True, help="Dataset folder(s), comma-separated.")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True)
@click.option("--images", type=click.IntRange(min=1), default=None, help="At most N images per dataset [all].")
@click.option("--head-ratios", default="0.3,0.5,0.7,0.9", show_default=True, help="Fractions of all heads.")
@click.option("--mlp-ratios", default="0.3,0.5,0.7,0.9,0.95", show_default=True, help="Fractions of all MLP channels.")
@click.option("--tau", "taus", default="3,5", show_default=True, help="Distances to the GT boundary, px (logit frame).")
@click.option("--importance", type=click.Choice(IMPORTANCES), default="magnitude", show_default=True,
              help="Which groups each grid point removes.")
@click.option("--calib-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Calibration images per dataset (calibrated importances only).")
@click.option("--protect-blocks", default=None, help="Blocks left untouched, e.g. 8,9 [none].")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default=DEFAULT_ALLOCATION, show_default=True,
              help="How each grid point's removals are shared among blocks (as prune --allocation).")
@click.option("--resamples", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Bootstrap resamples of the images for BLR95's interval.")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-progress", is_flag=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
def leverage(model_name, checkpoint, data, split, images, head_ratios, mlp_ratios, taus, importance, calib_size,
             protect_blocks, allocation, resamples, device, seed, no_progress, out_dir) -> None:
    """Per grid step (no recovery) the near-boundary logit change per unit slope and % parameters; BLR95."""
    if checkpoint is None:
        checkpoint = default_weights(model_name)
        if checkpoint is None:
            raise MedcoreError(f"--checkpoint: required for --model {model_name} (no packaged weights)")
    config = LeverageConfig(
        model=model_name, data=[p.strip() for p in data.split(",") if p.strip()],
        head_ratios=_floats("--head-ratios", head_ratios), mlp_ratios=_floats("--mlp-ratios", mlp_ratios),
        taus=_floats("--tau", taus), checkpoint=checkpoint, split=split, images=images, importance=importance,
        calib_size=calib_size, protect=parse_protect(protect_blocks) or [], resamples=resamples,
        seed=seed, allocation=allocation,
    )
    try:
        model, _ = load_model(model_name, checkpoint)
    except MedcoreError as exc:
        raise MedcoreError(f"--checkpoint: {exc}") from None
    model = model.to(parse_device(device))
    result = run_leverage(config, model, out_dir, progress=not no_progress, log=click.echo)
    rows = []
    for tau, s in result.summary["per_tau"].items():
        rows.append((tau, s["head_steps"], s["mlp_steps"], f"{s['median_head_p95']:.4g}", f"{s['median_mlp_p95']:.4g}",
                     f"{s['blr95']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]",
                     "-" if s["spearman_leverage_vs_delta_bf1"] is None else f"{s['spearman_leverage_vs_delta_bf1']:.3f}",
                     "-" if s["spearman_leverage_vs_delta_hd95"] is None else f"{s['spearman_leverage_vs_delta_hd95']:.3f}"))
    click.echo(f"{result.summary['images']} images; paper (MedSAM ViT-B): BLR95 {PAPER_BLR95}")
    click.echo(table(rows, ("tau px", "head steps", "MLP steps", "median head P95", "median MLP P95",
                            "BLR95 [95% CI]", "rho(lev, dBF1)", "rho(lev, dHD95)")))
    click.echo(f"wrote leverage.csv, leverage.json, leverage.png to {out_dir}")
