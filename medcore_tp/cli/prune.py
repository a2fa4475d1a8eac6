"""``medcore-tp prune``: remove heads and MLP channels by budget and write a pruned checkpoint."""

from __future__ import annotations

import os
import time

import click
import torch

from medcore_tp.arch import adapter_for
from medcore_tp.atomic import save_json
from medcore_tp.budget import ratio_budget
from medcore_tp.calibration import accumulate_gradients, synthetic_batch
from medcore_tp.checkpoint import save_pruned
from medcore_tp.cli import main
from medcore_tp.cli._common import model_option, parse_int_list, table
from medcore_tp.models import build_model
from medcore_tp.profile import profile_model
from medcore_tp.prune import IMPORTANCE_NAMES, make_importance, prune_by_budget, summary


@main.command("prune")
@model_option
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Dense checkpoint to prune.")
@click.option("--random-init", is_flag=True, help="Prune a randomly initialised model (must be asked for).")
@click.option("--importance", type=click.Choice(IMPORTANCE_NAMES), default="magnitude", show_default=True)
@click.option("--heads-ratio", type=float, required=True, help="Fraction of ALL heads to remove, in [0, 1).")
@click.option("--mlp-ratio", type=float, required=True, help="Fraction of ALL MLP channels to remove, in [0, 1).")
@click.option("--protect-blocks", default="", help="Comma-separated blocks left untouched, e.g. 10,11.")
@click.option("--calib-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Built-in synthetic images whose loss gradients feed the taylor importance.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (random importance, init).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder.")
def prune(
    model_name: str,
    checkpoint: str | None,
    random_init: bool,
    importance: str,
    heads_ratio: float,
    mlp_ratio: float,
    protect_blocks: str,
    calib_size: int,
    seed: int,
    out_dir: str,
) -> None:
    """Prune whole heads and MLP channels of the image encoder; writes pruned.pth and summary.json."""
    if (checkpoint is None) == (not random_init):
        raise click.UsageError("give either --checkpoint PATH or --random-init (pruning random weights must be asked for)")
    protect = parse_int_list("--protect-blocks", protect_blocks)
    # Budget first, on the bare architecture: bad ratios fail before anything is loaded or written.
    arch = build_model(model_name, device="meta")
    adapter = adapter_for(arch)
    budget = ratio_budget(
        adapter.heads_per_block(arch.image_encoder), adapter.mlp_per_block(arch.image_encoder),
        heads_ratio, mlp_ratio, protect,
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    model = build_model(model_name, checkpoint)
    before = profile_model(model)
    calibration = None
    if importance == "taylor":
        click.echo(f"taylor: gradients of the segmentation loss on {calib_size} built-in SYNTHETIC images "
                   "(not medical data)")
        batch = synthetic_batch(calib_size, model.image_encoder.img_size, seed=seed)
        calibration = {"source": "synthetic", "samples": accumulate_gradients(model, [batch])}
    plan = prune_by_budget(model, make_importance(importance), budget)
    after = profile_model(model)
    os.makedirs(out_dir, exist_ok=True)
    save_pruned(model, os.path.join(out_dir, "pruned.pth"), base=model_name)
    record = summary(
        before, after, budget, plan,
        model=model_name, checkpoint=checkpoint, random_init=random_init, importance=importance,
        heads_ratio=heads_ratio, mlp_ratio=mlp_ratio, protect_blocks=protect, seed=seed, calibration=calibration,
        seconds=time.perf_counter() - start,
    )
    save_json(record, os.path.join(out_dir, "summary.json"))
    click.echo(
        table(
            [
                ("encoder parameters", f"{before.encoder_params:,}", f"{after.encoder_params:,}"),
                ("model parameters", f"{before.params:,}", f"{after.params:,}"),
                ("GFLOPs (torch)", f"{before.flops_torch_g:.1f}", f"{after.flops_torch_g:.1f}"),
                ("GFLOPs (paper)", f"{before.flops_paper_g:.1f}", f"{after.flops_paper_g:.1f}"),
            ],
            ("", "before", "after"),
        )
    )
    click.echo(
        f"removed {budget.total_heads} heads and {budget.total_mlp} MLP channels "
        f"({record['encoder_params_removed_fraction']:.2%} of encoder parameters) with {importance} importance"
    )
    click.echo(f"heads per block: {after.heads_per_block}")
    click.echo(f"MLP per block:   {after.mlp_per_block}")
    click.echo(f"wrote {os.path.join(out_dir, 'pruned.pth')} and summary.json")
