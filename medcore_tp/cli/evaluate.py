"""``medcore-tp evaluate``: Dice, IoU, Boundary F1, HD95 and NSD of a dense or pruned model."""

from __future__ import annotations

import click
import torch

from medcore_tp.checkpoint import load_model
from medcore_tp.cli import main
from medcore_tp.cli._common import (
    choose_weights,
    guarded,
    mask_threshold_option,
    model_option,
    overwrite_option,
    parse_device,
    table,
)
from medcore_tp.data import load_datasets
from medcore_tp.errors import MedcoreError
from medcore_tp.evaluate import EvalConfig
from medcore_tp.evaluate import evaluate as run_evaluation
from medcore_tp.maskcheck import check_masks
from medcore_tp.metrics import METRIC_NAMES
from medcore_tp.models import PACKAGED
from medcore_tp.outdir import RunFolder
from medcore_tp.runtime import PRECISIONS, RUNTIMES


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@main.command("evaluate")
@model_option
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Dense or medcore-tp pruned checkpoint [default: the model's packaged weights (lite-medsam)].")
@click.option("--random-init", is_flag=True, help="Evaluate random weights (smoke tests, timing).")
@click.option("--data", "data", required=True, help="Dataset folder(s) with images/ and masks/, comma-separated.")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True)
@click.option("--splits", "splits_file", type=click.Path(dir_okay=False),
              help="splits.json to reuse (created if missing; never rewritten: datasets it lacks get new splits, "
                   "written with its own to OUT/splits.json) [default: new splits, written to OUT/splits.json].")
@mask_threshold_option
@click.option("--box-jitter", type=click.IntRange(min=0), default=5, show_default=True,
              help="Widen each box side by 0..N px (input frame), fixed per file.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out/evaluate", show_default=True,
              help="Folder for per_image.csv, summary.json (and splits.json).")
@overwrite_option
@click.option("--resolution", type=click.Choice(["input", "original"]), default="input", show_default=True,
              help="Compare masks at the model's input size (docs/method.md) or at each image's own size.")
@click.option("--resize-mode", type=click.Choice(["auto", "square", "longest-side"]), default="auto", show_default=True,
              help="Fit images into the input: the model's own (auto: square for SAM/MedSAM, longest-side "
                   "padded for LiteMedSAM), square (stretched) or longest-side (aspect kept, zero-padded).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the splits and the box widening.")
@click.option("--skip-bad", is_flag=True, help="Go on past unreadable or mismatched files; count them in the summary.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--backend", type=click.Choice(["torch", *RUNTIMES]), default="torch", show_default=True,
              help="torch: the checkpoint in PyTorch; onnxruntime / openvino: --checkpoint is an encoder .onnx "
                   "written by medcore-tp export (its decoder beside it), run in that runtime.")
@click.option("--dtype", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="Arithmetic of the run: bf16 with --backend openvino on a CPU with bf16 (AMX, AVX512-BF16).")
def evaluate(model_name: str, checkpoint: str | None, random_init: bool, data: str, split: str,
             splits_file: str | None, mask_threshold: float | None, box_jitter: int, out_dir: str, overwrite: bool,
             resolution: str, resize_mode: str, batch_size: int, workers: int, device: str, seed: int,
             skip_bad: bool, no_progress: bool, backend: str, dtype: str) -> None:
    """Per-dataset and macro means of Dice, IoU, Boundary F1, HD95 (px) and NSD on box prompts."""
    checkpoint = choose_weights(model_name, checkpoint, random_init)
    config = EvalConfig(split=split, splits_path=splits_file, box_jitter=box_jitter, seed=seed, batch_size=batch_size,
                        num_workers=workers, skip_bad=skip_bad, resolution=resolution,
                        resize_mode=None if resize_mode == "auto" else resize_mode, mask_threshold=mask_threshold)
    config.check()
    data_dirs = [part.strip() for part in data.split(",") if part.strip()]
    if not data_dirs:
        raise MedcoreError("--data: no folder given")
    if backend != "torch":
        from medcore_tp.runtime import check_runtime

        check_runtime(backend, dtype, "cpu" if device == "auto" else device)
    elif dtype != "fp32":
        raise MedcoreError(f"--dtype {dtype}: --backend torch evaluates in fp32 (--backend openvino runs bf16)")
    dev = parse_device(device)
    # Everything that can fail is checked before the model runs: data folders, masks, checkpoint, --out.
    mask_counts = check_masks(load_datasets(data_dirs, mask_threshold), mask_threshold)
    folder = RunFolder(out_dir, "evaluate", overwrite=overwrite, inputs=[checkpoint, splits_file])
    folder.check()
    if checkpoint is None:
        torch.manual_seed(seed)  # the same random weights, and so the same numbers, on every run
    if backend != "torch":
        from medcore_tp.runtime import load_onnx_model

        model, record = load_onnx_model(model_name, checkpoint, random_init, device, runtime=backend, precision=dtype)
    else:
        model, record = load_model(model_name, checkpoint)
        model.to(dev)
    info = {"name": model_name, "checkpoint": checkpoint, "pruned": record is not None, "backend": backend,
            "dtype": dtype}
    with guarded(folder):
        folder.start()
        decisions = [f"--overwrite removed the earlier run's {', '.join(folder.removed)}"] if folder.removed else []
        for line in decisions:
            click.echo(f"note: {line}")
        result = run_evaluation(model, data_dirs, config, out_dir=out_dir, progress=not no_progress, model_info=info,
                                notes={"masks": mask_counts, "decisions": decisions})
    summary = result.summary
    if result.splits is not None:
        click.echo(f"note: {result.splits.describe()}")
    rows = [(name, d["n"], d["skipped"], *(_fmt(d[m]) for m in METRIC_NAMES)) for name, d in summary["datasets"].items()]
    macro = summary["macro"]
    rows.append(("macro", summary["n_images"], summary["n_skipped"], *(_fmt(macro[m]) for m in METRIC_NAMES)))
    kind = "pruned" if record else ("random init" if checkpoint is None else
                                    "packaged weights" if checkpoint == PACKAGED else "dense")
    scope = "all images" if split == "all" else f"{split} split"
    click.echo(f"{model_name} ({kind}{'' if backend == 'torch' else ', ' + backend}{'' if dtype == 'fp32' else ' ' + dtype}), {scope}, box jitter {box_jitter} px, {summary['settings']['resize_mode']} "
               f"resize, metrics at {resolution} resolution")
    click.echo(table(rows, ("dataset", "images", "skipped", "dice", "iou", "bf1", "hd95 px", "nsd")))
    for bad in summary["skipped"]:
        click.echo(f"skipped {bad['dataset']}/{bad['name']}: {bad['error']}", err=True)
    click.echo(f"wrote {out_dir}/per_image.csv and {out_dir}/summary.json")
