"""``medcore-tp finetune``: fine-tune a dense or pruned model, resumable."""

from __future__ import annotations

import os
from pathlib import Path

import click
import torch

from medcore_tp.atomic import save_json
from medcore_tp.checkpoint import load_model
from medcore_tp.cli import main
from medcore_tp.cli._common import (
    choose_weights,
    guarded,
    mask_threshold_option,
    model_option,
    overwrite_option,
    parse_device,
)
from medcore_tp.data import load_datasets, select_split, settle_splits
from medcore_tp.distributed import init_from_env, is_main, world_size
from medcore_tp.errors import MedcoreError
from medcore_tp.finetune import BEST_FILE, CURVES_FILE, FinetuneConfig, finetune
from medcore_tp.maskcheck import check_masks
from medcore_tp.outdir import RunFolder


@main.command("finetune")
@model_option
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Dense or pruned checkpoint [default: the model's packaged weights (lite-medsam)].")
@click.option("--random-init", is_flag=True, help="Fine-tune from random weights (must be asked for).")
@click.option("--data", required=True, help="Dataset folder(s), comma-separated (train and val splits are used).")
@click.option("--splits", type=click.Path(dir_okay=False), default=None,
              help="splits.json to reuse (created if missing; never rewritten: datasets it lacks get new splits, "
                   "written with its own to OUT/splits.json) [default: OUT/splits.json, created if missing].")
@mask_threshold_option
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True, help="Early-stop patience (epochs).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT/state.pth.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out/finetune", show_default=True)
@overwrite_option
def finetune_cmd(model_name, checkpoint, random_init, data, splits, mask_threshold, epochs, batch_size, lr, patience, device,
                 seed, resume, no_progress, out_dir, overwrite) -> None:
    """Train encoder and mask decoder (prompt encoder frozen); keeps the best validation checkpoint.

    Runs under ``torchrun --nproc_per_node N`` as well: --batch-size is per process.
    """
    checkpoint = choose_weights(model_name, checkpoint, random_init)
    dev = init_from_env(parse_device(device))
    # Checked before anything is written: data folders and masks, the checkpoint, --out.
    datasets = load_datasets([r for r in data.split(",") if r.strip()], mask_threshold)
    mask_counts = check_masks(datasets, mask_threshold, log=click.echo if is_main() else _quiet)
    torch.manual_seed(seed)  # random weights (--random-init) are the same on every rank
    model, record = load_model(model_name, checkpoint)
    folder = RunFolder(out_dir, "finetune", overwrite=overwrite, resume=resume, inputs=[checkpoint, splits])
    if is_main():
        folder.check()
    own_splits = os.path.join(out_dir, "splits.json")
    source = splits if splits is not None else (own_splits if resume else None)
    # Where new or extended splits go: a missing --splits file is created; an existing one is never rewritten.
    target = splits if splits is not None and not os.path.exists(splits) else own_splits
    choice = settle_splits(datasets, source)  # nothing written yet
    train = [s for v in select_split(datasets, choice.doc, "train").values() for s in v]
    val = [s for v in select_split(datasets, choice.doc, "val").values() for s in v]
    if not train or not val:
        empty = "training" if not train else "validation"
        raise MedcoreError(f"--data {data}: the {empty} split is empty ({sum(map(len, datasets.values()))} images); "
                           f"finetune needs at least one training and one validation image")
    with guarded(folder if is_main() else None, resume_hint="rerun with --resume to continue"):
        if is_main():
            folder.start()
            if folder.removed:
                click.echo(f"note: --overwrite: removed the earlier run's {', '.join(folder.removed)} from {out_dir}")
            if choice.action != "reused":
                save_json(choice.doc, target)
                choice.written = Path(target)
            click.echo(f"note: {choice.describe()}")
        model = model.to(dev)
        config = FinetuneConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed)
        result = finetune(model, train, val, out_dir, base=model_name, config=config, resume=resume,
                          progress=not no_progress)
        if not is_main():
            return
        save_json({"model": model_name, "checkpoint": checkpoint, "pruned": record is not None, "data": data,
                   "train_images": len(train), "val_images": len(val), "config": vars(config),
                   "processes": world_size(), "splits": choice.to_dict(), "masks": mask_counts,
                   "mask_threshold": mask_threshold, **result},
                  os.path.join(out_dir, "finetune.json"))
    for c in result["curves"]:
        click.echo(f"epoch {c['epoch']:3d}  train {c['train_loss']:.4f}  val {c['val_loss']:.4f}" + ("  *" if c["best"] else ""))
    stop = " (early stop)" if result["stopped_early"] else ""
    click.echo(f"best validation loss {result['best_val_loss']:.4f}{stop}; wrote {BEST_FILE}, {CURVES_FILE}, "
               f"finetune.json to {out_dir}")


def _quiet(_: str) -> None:
    """Log for ranks other than 0 under torchrun."""
