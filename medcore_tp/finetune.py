"""Fine-tuning a dense or pruned model after pruning, resumable.

Encoder and mask decoder train; the prompt encoder is frozen, and so is the decoder's IoU head, which
the loss does not reach. AdamW (lr 1e-4, weight decay 0.01), cosine schedule per step down to
0.01 x lr, gradient clipping at 1.0, AMP on CUDA, loss = BCE + soft Dice (squared denominator) on the
low-res logits, averaged over the batch. Training boxes are widened by a random 0-5 px per side, drawn
anew every epoch from (seed, epoch, file name); validation boxes by a fixed 0-5 px per file. After
every epoch the validation loss decides: the best weights are kept (``best.pth``), and training stops
after ``patience`` epochs without improvement.

Distributed: under torchrun the model trains through DistributedDataParallel. ``batch_size`` is per
process; every rank draws the same epoch order, takes its share of each global batch of
``batch_size x processes`` images, and the loss is scaled so that the synchronised gradient is that of
the global batch mean: N processes end with the same weights as one process with N x the batch size
(up to float summation order). Validation images are sharded and the loss sums all-reduced; rank 0
alone writes.

Resumable: after every epoch the whole training state (weights, optimizer, scheduler, AMP scaler,
random generators, epoch, best loss, curves) is written atomically to ``state.pth``; ``resume=True``
continues from it and ends with the same weights as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medcore_tp.atomic import save_text, save_torch
from medcore_tp.calibration import train_with_frozen_norms
from medcore_tp.checkpoint import save_pruned
from medcore_tp.datasets import SegmentationDataset, collate
from medcore_tp.distributed import all_reduce_sum, barrier, data_parallel, is_main, my_share, rank, world_size
from medcore_tp.errors import MedcoreError
from medcore_tp.inference import forward_logits
from medcore_tp.losses import segmentation_losses
from medcore_tp.models.spec import input_spec

STATE_FILE = "state.pth"
BEST_FILE = "best.pth"
CURVES_FILE = "curves.csv"


@dataclass
class FinetuneConfig:
    """Hyper-parameters (docs/method.md defaults)."""

    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.01
    min_lr_ratio: float = 0.01
    clip: float = 1.0
    patience: int = 5
    box_jitter: int = 5
    seed: int = 0


FROZEN = ("prompt_encoder.", "mask_decoder.iou_prediction_head.")


def _trainable(model: nn.Module) -> list[torch.nn.Parameter]:
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith(FROZEN))
    return [p for p in model.parameters() if p.requires_grad]


class _Logits(torch.nn.Module):
    """Box-prompted logits as one ``forward``, so that DistributedDataParallel sees the whole step."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return forward_logits(self.sam, images, boxes)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def validation_loader(dataset: SegmentationDataset, batch_size: int) -> torch.utils.data.DataLoader:
    """This rank's validation images (every N-th under torchrun). Images are read again each time it is
    iterated: holding a large validation set at 1024 x 1024 in memory would cost more than the reads."""
    mine = list(range(rank(), len(dataset), world_size()))
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size,
                                       collate_fn=collate)


@torch.no_grad()
def validation_loss(model: nn.Module, batches: Iterable[dict]) -> float:
    """Mean per-sample loss over every rank's :func:`validation_loader`."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(2, dtype=torch.float64)
    for batch in batches:
        logits = forward_logits(model, batch["image"], batch["box"])
        sums += torch.tensor([float(segmentation_losses(logits, batch["mask_low"].to(device)).sum()), len(batch["index"])],
                             dtype=torch.float64)
    all_reduce_sum([sums])
    return float(sums[0] / sums[1].clamp(min=1))


def finetune(
    model: nn.Module,
    train: Sequence,
    val: Sequence,
    out_dir: str,
    base: str,
    config: FinetuneConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> dict:
    """Fine-tune ``model`` in place on ``train`` samples, early-stopping on ``val``; returns the record.

    ``stop_after_epoch`` ends the run after that epoch as an interruption would (for tests and for
    splitting long runs); a later call with ``resume=True`` continues.
    """
    cfg = config or FinetuneConfig()
    if not train:
        raise MedcoreError("finetune: the training split is empty")
    if not val:
        raise MedcoreError("finetune: the validation split is empty (need at least one validation image)")
    spec = input_spec(model)
    device = next(model.parameters()).device
    params = _trainable(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    world = world_size()
    global_batch = cfg.batch_size * world
    steps_per_epoch = math.ceil(len(train) / global_batch)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)),
    )
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    val_batches = validation_loader(
        SegmentationDataset(val, spec, box_mode="deterministic", box_jitter=cfg.box_jitter, seed=cfg.seed),
        cfg.batch_size,
    )
    train_set = SegmentationDataset(train, spec, box_mode="deterministic", box_jitter=cfg.box_jitter)
    trained = data_parallel(_Logits(model))

    os.makedirs(out_dir, exist_ok=True)
    state_path = os.path.join(out_dir, STATE_FILE)
    start_epoch, best, stale, curves = 0, math.inf, 0, []
    if resume and os.path.exists(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state.get("base") != base or state.get("config") != vars(cfg):
            raise MedcoreError(f"resume: {state_path} was written by a run with other settings; use a new out_dir",
                               "resume")
        if state.get("processes", 1) != world:
            raise MedcoreError(f"resume: {state_path} was written by {state.get('processes', 1)} process(es), "
                               f"this run has {world}; the global batch would change", "resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, best, stale, curves = state["epoch"], state["best"], state["stale"], state["curves"]
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)

    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        train_with_frozen_norms(model)  # small batches: keep batch-norm statistics as trained
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        shares = [my_share(order[i : i + global_batch]) for i in range(0, len(order), global_batch)]
        train_set.seed = cfg.seed * 1000 + epoch  # box widening drawn anew each epoch, the same on every rank
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=[mine for mine, _ in shares], collate_fn=collate)
        running = torch.zeros(2, dtype=torch.float64)  # loss sum, samples
        bar = tqdm(zip(loader, shares, strict=True), total=len(shares), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (progress and is_main()), leave=False)
        for batch, (_, scale) in bar:
            with torch.autocast(device.type, enabled=use_amp):
                logits = trained(batch["image"], batch["box"])
                per_sample = segmentation_losses(logits.float(), batch["mask_low"].to(device))
                loss = per_sample.sum() * scale
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if scale > 0:
                running += torch.tensor([float(per_sample.detach().sum()), len(per_sample)], dtype=torch.float64)
            bar.set_postfix(loss=f"{float(running[0] / running[1].clamp(min=1)):.4f}")
        all_reduce_sum([running])
        val = validation_loss(model, val_batches)
        improved = val < best
        best, stale = (val, 0) if improved else (best, stale + 1)
        curves.append({"epoch": epoch + 1, "train_loss": float(running[0] / running[1].clamp(min=1)), "val_loss": val,
                       "lr": scheduler.get_last_lr()[0], "best": improved})
        if is_main():
            if improved:
                save_pruned(model, os.path.join(out_dir, BEST_FILE), base=base)
            save_torch({"base": base, "config": vars(cfg), "processes": world, "epoch": epoch + 1, "best": best,
                        "stale": stale, "curves": curves, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "rng": _rng_state()}, state_path)
            save_text(_curves_csv(curves), os.path.join(out_dir, CURVES_FILE))
        barrier()  # the state on disk is complete before any rank moves on (or resumes from it)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return {"epochs_run": len(curves), "best_val_loss": best, "curves": curves,
            "stopped_early": stale >= cfg.patience}


def _curves_csv(curves: list[dict]) -> str:
    head = "epoch,train_loss,val_loss,lr,best\n"
    return head + "".join(f"{c['epoch']},{c['train_loss']},{c['val_loss']},{c['lr']},{c['best']}\n" for c in curves)
