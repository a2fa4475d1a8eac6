"""Option parsing and printing shared by the commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
import torch

from medcore_tp.errors import MedcoreError
from medcore_tp.models import MODEL_NAMES, default_weights
from medcore_tp.outdir import RunFolder

model_option = click.option(
    "--model", "model_name", type=click.Choice(MODEL_NAMES), required=True, help="Model architecture."
)

# Library parameter names (MedcoreError.param) -> the flags that set them; the CLI's error lines name flags.
PARAM_FLAGS = {
    "model": "--model", "ratio": "--ratio", "heads_ratio": "--heads-ratio", "mlp_ratio": "--mlp-ratio",
    "protect": "--protect-blocks", "importance": "--importance", "alpha": "--alpha", "data": "--data",
    "data_weights": "--data-weights", "resize_mode": "--resize-mode", "split": "--split",
    "resolution": "--resolution", "batch_size": "--batch-size", "box_jitter": "--box-jitter",
    "calib_size": "--calib-size", "device": "--device", "resume": "--resume", "mask_threshold": "--mask-threshold",
    "allocation": "--allocation", "refit": "--refit", "distill_steps": "--distill-steps", "distill_lr": "--distill-lr",
    "recover_views": "--recover-views", "checkpoint": "--checkpoint", "runtime": "--backend", "precision": "--dtype",
}
# Where a command names a parameter's flag differently (bench takes lists: --backends).
COMMAND_PARAM_FLAGS = {"bench": {"runtime": "--backends"}}


def param_flags(command: str | None) -> dict[str, str]:
    """:data:`PARAM_FLAGS` with ``command``'s own spellings."""
    return {**PARAM_FLAGS, **COMMAND_PARAM_FLAGS.get(command or "", {})}


def choose_weights(model_name: str, checkpoint: str | None, random_init: bool) -> str | None:
    """The weights a command loads, the same way in every command: ``--checkpoint`` when given, else
    the model's packaged weights (``lite-medsam``), else ``--random-init`` must have been asked for.
    Returns a path, ``"packaged"``, or None for random weights."""
    if checkpoint is not None and random_init:
        raise click.UsageError("give either --checkpoint PATH or --random-init, not both")
    if checkpoint is not None:
        return checkpoint
    if random_init:
        return None
    packaged = default_weights(model_name)
    if packaged is None:
        raise click.UsageError(f"--model {model_name} has no packaged weights: give --checkpoint PATH or "
                               "--random-init (random weights must be asked for)")
    return packaged


def parse_int_list(option: str, text: str | None) -> list[int]:
    """``"10,11"`` -> ``[10, 11]``; a clear error names ``option`` otherwise."""
    if not text:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=option) from None


def parse_protect(text: str | None) -> list[int] | None:
    """``--protect-blocks``: None (not given) leaves the choice to the ``--ratio`` rule; ``none`` or an
    empty value protects no block; ``"8,9"`` protects those."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    return parse_int_list("--protect-blocks", text)


def parse_views(text: str) -> tuple[str, ...]:
    """``"identity,hflip"`` -> ``("identity", "hflip")`` (checked by ``PruneConfig.check``)."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def table(rows: list[tuple], header: tuple) -> str:
    """A plain fixed-width text table."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_device(name: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MedcoreError(f"--device {name}: not a torch device (auto, cpu, cuda, cuda:1...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedcoreError(f"--device {name}: CUDA is not available on this machine")
    return device


overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="--out already holds another run's outputs: remove those files (only those) and write this run's.",
)
mask_threshold_option = click.option(
    "--mask-threshold", type=click.FloatRange(min=0), default=None,
    help="Mask pixels above this value (0-255 scale; /255 for masks stored in [0, 1]) are foreground "
         "[default: 127].",
)


class Interrupted(Exception):
    """Ctrl-C during a run; the message says what was kept."""


@contextlib.contextmanager
def guarded(folder: RunFolder | None, resume_hint: str = "") -> Iterator[RunFolder | None]:
    """Run the body of a command that writes into ``folder``; record how it ended in the manifest.

    Ctrl-C becomes :class:`Interrupted` with one line saying what was kept (the group prints it and
    exits 130); a run that fails before writing anything leaves nothing behind.
    """
    try:
        yield folder
    except KeyboardInterrupt:
        if folder is None:
            raise Interrupted("nothing was written") from None
        folder.finish("interrupted")
        hint = f"; {resume_hint}" if resume_hint and folder.files else ""
        raise Interrupted(folder.kept() + hint) from None
    except BaseException:
        if folder is not None:
            folder.finish("failed")
        raise
    else:
        if folder is not None:
            folder.finish("complete")


def say(decisions: list[str], line: str) -> None:
    """Print a decision the tool made for the user and keep it for summary.json."""
    click.echo(f"note: {line}")
    decisions.append(line)


def gflops(value: float) -> str:
    """GFLOPs with four significant digits (0.03385 for tiny models, 926.5 for ViT-B)."""
    return f"{value:.4g}" if value < 1000 else f"{value:.1f}"
