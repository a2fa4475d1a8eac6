"""``medcore-tp export``: a dense or pruned model as ONNX, torch.export (.pt2) or safetensors, checked."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from medcore_tp.checkpoint import load_model, load_pruned
from medcore_tp.cli import main
from medcore_tp.cli._common import choose_weights, model_option
from medcore_tp.data import fitted_size, preprocess_image, read_image
from medcore_tp.errors import MedcoreError
from medcore_tp.export import FORMATS, BoxDecoder, check_onnx, export, exportable
from medcore_tp.inference import input_size, resize_mode
from medcore_tp.synthetic import synthetic_pairs


def _check_input(model, image_path: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(image (3, S, S), box (4,) in the input frame, what it is) for the after-export check."""
    size, mode = input_size(model), resize_mode(model)
    if image_path is None:
        raw, what = synthetic_pairs(1, 256, seed=0)[0][0], "the built-in synthetic image (--check-image for a real one)"
    else:
        raw, what = read_image(image_path), image_path
    h, w = fitted_size(raw.shape[0], raw.shape[1], size, mode)
    box = np.array([0.2 * w, 0.2 * h, 0.8 * w, 0.8 * h], dtype=np.float32)  # the middle of the image part
    return preprocess_image(raw.astype(np.float32), size, mode=mode), box, what


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return float((a - b).abs().max()), float(b.abs().max())


@main.command("export")
@model_option
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Dense or medcore-tp pruned checkpoint (lite-medsam: the packaged weights by default).")
@click.option("--random-init", is_flag=True, help="Export random weights (must be asked for).")
@click.option("--format", "fmt", required=True, help=f"One of {', '.join(FORMATS)}.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Output file (.onnx / .pt2: the encoder; the box decoder goes beside it as NAME.decoder.EXT).")
@click.option("--check-image", type=click.Path(exists=True, dir_okay=False),
              help="Image for the check against PyTorch [default: a built-in synthetic image].")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest allowed max |difference|, as a fraction of the output's max |value|.")
def export_command(model_name: str, checkpoint: str | None, random_init: bool, fmt: str, out: str,
                   check_image: str | None, tolerance: float) -> None:
    """Export the image encoder and the box decoder (prompt encoder + mask decoder), then check them."""
    if fmt not in FORMATS:
        raise MedcoreError(f"--format {fmt}: unknown format, choose one of {', '.join(FORMATS)}")
    suffix = "." + fmt
    if Path(out).suffix != suffix:
        raise MedcoreError(f"--out {out}: a {fmt} export needs a file name ending in {suffix}")
    checkpoint = choose_weights(model_name, checkpoint, random_init)
    if random_init:
        torch.manual_seed(0)
    model, record = load_model(model_name, checkpoint)
    kind = "pruned" if record else ("random init" if random_init else "dense")
    image, box, what = _check_input(model, check_image)
    click.echo(f"exporting {model_name} ({kind}) as {fmt}")
    files = export(model, fmt, out, model_name, pruned=record is not None)
    click.echo("wrote " + ", ".join(str(f) for f in files))
    images, boxes = torch.from_numpy(image)[None], torch.from_numpy(box)[None]
    if fmt == "onnx":
        check = check_onnx(model, files[0], image, box, tolerance=tolerance)
        click.echo(f"ONNX Runtime vs PyTorch on {what}: {check.describe()}")
        passed = check.passed
    elif fmt == "pt2":
        ref = exportable(model)
        enc, dec = (torch.export.load(str(f)).module() for f in files)
        with torch.no_grad():
            emb = ref.image_encoder(images)
            e_diff, e_scale = _max_diff(enc(images), emb)
            l_diff, l_scale = _max_diff(dec(emb, boxes), BoxDecoder(ref)(emb, boxes))
        passed = e_diff <= tolerance * e_scale and l_diff <= tolerance * l_scale
        click.echo(f"torch.export program vs PyTorch on {what}: embeddings max |diff| {e_diff:.3g} (scale "
                   f"{e_scale:.3g}), logits max |diff| {l_diff:.3g} (scale {l_scale:.3g}): "
                   f"{'passed' if passed else 'FAILED'}")
    else:
        reloaded = load_pruned(files[0])
        original = model.state_dict()
        same = all(torch.equal(v, original[k]) for k, v in reloaded.state_dict().items())
        passed = same and set(reloaded.state_dict()) == set(original)
        click.echo(f"load_pruned({files[0]}): {'the same weights and architecture' if passed else 'DIFFERS'}")
    if not passed:
        raise MedcoreError(f"--out {out}: the export was written but does not match the PyTorch model "
                           f"within --tolerance {tolerance:g}")
