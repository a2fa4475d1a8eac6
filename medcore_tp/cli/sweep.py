"""``medcore-tp sweep``: ratios x importances, FLOPs and measured latency against boundary quality."""

from __future__ import annotations

import click

from medcore_tp.cli import main
from medcore_tp.cli._common import parse_device, parse_protect, parse_views, table
from medcore_tp.errors import MedcoreError
from medcore_tp.models import MODEL_NAMES, default_weights
from medcore_tp.pipeline import ALLOCATIONS, DEFAULT_ALLOCATION
from medcore_tp.recovery import SCHEDULES
from medcore_tp.sweep import SweepConfig, run_sweep


def _floats(option: str, text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MedcoreError(f"{option} {text}: not a comma-separated list of numbers") from None


def _folders(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


@main.command("sweep")
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), required=True, help="Model architecture.")
@click.option("--checkpoint", help="Dense or medcore-tp pruned checkpoint [lite-medsam: the packaged weights].")
@click.option("--source-checkpoint", type=click.Path(dir_okay=False), help="Source model (SAM) for medcore's Dreset.")
@click.option("--data", required=True, help="Calibration dataset folder(s), comma-separated (also evaluated, "
                                            "unless --eval-data).")
@click.option("--eval-data", default=None, help="Evaluation folder(s), comma-separated [default: --data].")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
              help="Split of the evaluation folders that is evaluated.")
@click.option("--eval-images", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N images of the split of each folder [all].")
@click.option("--ratios", default="0.1,0.3,0.5,0.6", show_default=True, help="Fractions of encoder parameters.")
@click.option("--importances", default="refit,medcore,taylor,magnitude,random", show_default=True)
@click.option("--recover-steps", type=click.IntRange(min=0), default=200, show_default=True,
              help="Recovery steps after each pruning stage (0: none).")
@click.option("--recover-lr", type=click.FloatRange(min=0, min_open=True), default=1e-5, show_default=True,
              help="Recovery learning rate (AdamW).")
@click.option("--recover-schedule", type=click.Choice(SCHEDULES), default="constant", show_default=True,
              help="Recovery learning rate within each stage: --recover-lr throughout, or annealed from it to 0 (cosine).")
@click.option("--prune-steps", type=click.IntRange(min=1), default=1, show_default=True,
              help="1: the cascade (heads, then MLP channels); K >= 2: progressive, K stages each removing about "
                   "1/K of every block's heads and channels, each refitted and recovered.")
@click.option("--recover-teacher", type=click.Choice(["stage", "dense"]), default="stage", show_default=True,
              help="What recovery trains towards: the model as each stage starts (stage) or the dense model.")
@click.option("--recover-views", default="identity", show_default=True,
              help="Views of each calibration image recovery draws from: identity, hflip, vflip, comma-separated.")
@click.option("--refit", type=click.Choice(["dense", "paired", "none"]), default="dense", show_default=True,
              help="Least-squares refit of the layers reading removed groups after each stage: from dense "
                   "statistics, then (paired) on the pruned model's own inputs.")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default=DEFAULT_ALLOCATION, show_default=True,
              help="How removals are shared among blocks: the same fraction of each (even), the same number "
                   "from each (count) or MedCore's 1/s_b (sensitivity, Fisher importances only; the others get even).")
@click.option("--distill-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Distillation steps towards the dense model's cached outputs after pruning (0: none).")
@click.option("--distill-lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Distillation learning rate.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fine-tune each point this many epochs on the train split of --data (0: none).")
@click.option("--calib-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Calibration images per dataset (first of the training split).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Calibration batch size.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Latency: encoder forwards per model, interleaved with the dense model.")
@click.option("--box-jitter", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--protect-blocks", default=None, help="Blocks left untouched, e.g. 8,9, or none [default: the --ratio rule's].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder (resumable).")
def sweep(model_name, checkpoint, source_checkpoint, data, eval_data, split, eval_images, ratios, importances, recover_steps,
          recover_lr, recover_schedule, prune_steps, recover_teacher, recover_views, refit, allocation, distill_steps, distill_lr, finetune_epochs, calib_size, batch_size, repeats, box_jitter, protect_blocks, device, seed, no_progress,
          out_dir) -> None:
    """Prune at every ratio with every importance from the same dense model; write sweep.csv, sweep.json,
    comparisons.csv and pareto.png. A rerun with the same --out finishes an interrupted sweep."""
    if checkpoint is None:
        checkpoint = default_weights(model_name)
        if checkpoint is None:
            raise MedcoreError(f"--checkpoint: required for --model {model_name} (no packaged weights)")
    config = SweepConfig(
        model=model_name, checkpoint=checkpoint, source_checkpoint=source_checkpoint, data=_folders(data) or [],
        eval_data=_folders(eval_data), split=split, eval_images=eval_images, ratios=_floats("--ratios", ratios),
        importances=[i.strip() for i in importances.split(",") if i.strip()], recover_steps=recover_steps,
        recover_lr=recover_lr, recover_schedule=recover_schedule, prune_steps=prune_steps, recover_teacher=recover_teacher,
        recover_views=",".join(parse_views(recover_views)), finetune_epochs=finetune_epochs, calib_size=calib_size, batch_size=batch_size, repeats=repeats,
        box_jitter=box_jitter, protect=parse_protect(protect_blocks),
        seed=seed, refit=refit, allocation=allocation, distill_steps=distill_steps, distill_lr=distill_lr,
    )
    result = run_sweep(config, out_dir, device=parse_device(device), progress=not no_progress,
                       log=None if not no_progress else click.echo)
    rows = [(r["point"], f"{r['removed_fraction']:.2%}", f"{r['flops_torch_g']:.2f}", f"{r['flops_paper_g']:.2f}",
             f"{r['latency_s']:.3f}", f"{r['speedup']:.2f}x", f"{r['dice']:.4f}", f"{r['boundary_f1']:.4f}",
             f"{r['hd95']:.2f}", f"{r['nsd']:.4f}") for r in result.rows]
    click.echo(table(rows, ("point", "removed", "GFLOPs torch", "GFLOPs paper", "latency s", "speedup", "dice",
                            "bf1", "hd95 px", "nsd")))
    if result.reused:
        click.echo(f"kept {len(result.reused)} finished point(s) from an earlier run: {', '.join(result.reused)}")
    click.echo(f"wrote sweep.csv, sweep.json, comparisons.csv, pareto.png to {out_dir}")
