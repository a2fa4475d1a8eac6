"""``medcore-tp info``: widths, parameters and FLOPs of a dense or pruned model."""

from __future__ import annotations

import json

import click

from medcore_tp.checkpoint import load_model
from medcore_tp.cli import main
from medcore_tp.cli._common import model_option, table
from medcore_tp.models import build_model
from medcore_tp.profile import profile_model


@main.command("info")
@model_option
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Dense or medcore-tp pruned checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def info(model_name: str, checkpoint: str | None, as_json: bool) -> None:
    """Heads and MLP width per block, parameters and both FLOP counts."""
    if checkpoint is None:
        model, record = build_model(model_name, device="meta"), None  # architecture only, nothing to load
    else:
        model, record = load_model(model_name, checkpoint)
    prof = profile_model(model)
    data = {"model": model_name, "checkpoint": checkpoint, "pruned": record is not None, **prof.to_dict()}
    if as_json:
        click.echo(json.dumps(data))
        return
    kind = "pruned" if record else "dense"
    click.echo(f"{model_name} ({kind}{', ' + checkpoint if checkpoint else ', random init'})")
    click.echo(
        table(
            [
                ("encoder parameters", f"{prof.encoder_params:,}"),
                ("model parameters", f"{prof.params:,}"),
                ("encoder GFLOPs (torch.utils.flop_counter)", f"{prof.flops_torch_g:.1f}"),
                ("encoder GFLOPs (paper convention)", f"{prof.flops_paper_g:.1f}"),
            ],
            ("", "value"),
        )
    )
    click.echo()
    rows = [
        (b, h, m, f"{p:,}", f"{ft:.2f}", f"{fp:.2f}")
        for b, (h, m, p, ft, fp) in enumerate(
            zip(
                prof.heads_per_block,
                prof.mlp_per_block,
                prof.params_per_block,
                prof.flops_torch_g_per_block,
                prof.flops_paper_g_per_block,
                strict=True,
            )
        )
    ]
    click.echo(table(rows, ("block", "heads", "mlp", "params", "GFLOPs torch", "GFLOPs paper")))
