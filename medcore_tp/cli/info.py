"""``medcore-tp info``: widths, parameters and FLOPs of a dense or pruned model."""

from __future__ import annotations

import json

import click

from medcore_tp.checkpoint import load_model
from medcore_tp.cli import main
from medcore_tp.cli._common import gflops, model_option, table
from medcore_tp.describe import block_layout
from medcore_tp.inference import input_size
from medcore_tp.models import build_model
from medcore_tp.pipeline import default_protection, max_ratio
from medcore_tp.profile import profile_model


@main.command("info")
@model_option
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Dense or medcore-tp pruned checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def info(model_name: str, checkpoint: str | None, as_json: bool) -> None:
    """Per block: heads, head width, window or global attention, MLP width, parameters, both FLOP counts;
    the input size and the largest --ratio with and without the default protection."""
    if checkpoint is None:
        model, record = build_model(model_name, device="meta"), None  # architecture only, nothing to load
    else:
        model, record = load_model(model_name, checkpoint)
    prof = profile_model(model)
    layout = block_layout(model)
    protect = default_protection(model)
    reach = {"protected_blocks": protect, "with_protection": max_ratio(model, protect),
             "without_protection": max_ratio(model, [])}
    data = {"model": model_name, "checkpoint": checkpoint, "pruned": record is not None, "input_size": input_size(model),
            "blocks": layout, "max_ratio": reach, **prof.to_dict()}
    if as_json:
        click.echo(json.dumps(data))
        return
    kind = "pruned" if record else "dense"
    click.echo(f"{model_name} ({kind}{', ' + checkpoint if checkpoint else ', random init'}), "
               f"input {data['input_size']}x{data['input_size']}")
    shown = f"blocks {','.join(map(str, protect))} protected" if protect else "no block protected"
    click.echo(
        table(
            [
                ("encoder parameters", f"{prof.encoder_params:,}"),
                ("model parameters", f"{prof.params:,}"),
                ("encoder GFLOPs (torch.utils.flop_counter)", gflops(prof.flops_torch_g)),
                ("encoder GFLOPs (paper convention)", gflops(prof.flops_paper_g)),
                (f"largest --ratio, {shown} (default)", f"{reach['with_protection']:.4f}"),
                *([("largest --ratio, no block protected", f"{reach['without_protection']:.4f}")] if protect else []),
            ],
            ("", "value"),
        )
    )
    click.echo()
    rows = [
        (b, lay["heads"], lay["head_dim"], lay["attention"], m, f"{p:,}", gflops(ft), gflops(fp))
        for b, (lay, m, p, ft, fp) in enumerate(
            zip(
                layout,
                prof.mlp_per_block,
                prof.params_per_block,
                prof.flops_torch_g_per_block,
                prof.flops_paper_g_per_block,
                strict=True,
            )
        )
    ]
    click.echo(table(rows, ("block", "heads", "head dim", "attention", "mlp", "params", "GFLOPs torch", "GFLOPs paper")))

