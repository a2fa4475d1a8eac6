"""``medcore-tp finetune``: fine-tune a dense or pruned model, resumable."""

from __future__ import annotations

import os

import click
import torch

from medcore_tp.atomic import save_json
from medcore_tp.checkpoint import load_model
from medcore_tp.cli import main
from medcore_tp.cli._common import choose_weights, model_option, parse_device
from medcore_tp.data import load_datasets, resolve_splits, select_split
from medcore_tp.distributed import barrier, init_from_env, is_main, world_size
from medcore_tp.finetune import BEST_FILE, CURVES_FILE, FinetuneConfig, finetune


@main.command("finetune")
@model_option
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Dense or pruned checkpoint [default: the model's packaged weights (lite-medsam)].")
@click.option("--random-init", is_flag=True, help="Fine-tune from random weights (must be asked for).")
@click.option("--data", required=True, help="Dataset folder(s), comma-separated (train and val splits are used).")
@click.option("--splits", type=click.Path(dir_okay=False), default=None,
              help="splits.json to reuse (default: OUT/splits.json, created if missing).")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True, help="Early-stop patience (epochs).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT/state.pth.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out/finetune", show_default=True)
def finetune_cmd(model_name, checkpoint, random_init, data, splits, epochs, batch_size, lr, patience, device, seed, resume,
                 no_progress, out_dir) -> None:
    """Train encoder and mask decoder (prompt encoder frozen); keeps the best validation checkpoint.

    Runs under ``torchrun --nproc_per_node N`` as well: --batch-size is per process.
    """
    checkpoint = choose_weights(model_name, checkpoint, random_init)
    dev = init_from_env(parse_device(device))
    datasets = load_datasets([r for r in data.split(",") if r])
    splits_path = splits or os.path.join(out_dir, "splits.json")
    if is_main():  # rank 0 creates the splits file if missing; the others then read it
        doc = resolve_splits(datasets, splits_path)
    barrier()
    if not is_main():
        doc = resolve_splits(datasets, splits_path)
    train = [s for v in select_split(datasets, doc, "train").values() for s in v]
    val = [s for v in select_split(datasets, doc, "val").values() for s in v]
    torch.manual_seed(seed)  # random weights (--random-init) are the same on every rank
    model, record = load_model(model_name, checkpoint)
    model = model.to(dev)
    config = FinetuneConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed)
    result = finetune(model, train, val, out_dir, base=model_name, config=config, resume=resume,
                      progress=not no_progress)
    if not is_main():
        return
    save_json({"model": model_name, "checkpoint": checkpoint, "pruned": record is not None, "data": data,
               "train_images": len(train), "val_images": len(val), "config": vars(config),
               "processes": world_size(), **result},
              os.path.join(out_dir, "finetune.json"))
    for c in result["curves"]:
        click.echo(f"epoch {c['epoch']:3d}  train {c['train_loss']:.4f}  val {c['val_loss']:.4f}" + ("  *" if c["best"] else ""))
    stop = " (early stop)" if result["stopped_early"] else ""
    click.echo(f"best validation loss {result['best_val_loss']:.4f}{stop}; wrote {BEST_FILE}, {CURVES_FILE}, "
               f"finetune.json to {out_dir}")
