"""Fine-tuning a dense or pruned model after pruning, resumable.

Encoder and mask decoder train, the prompt encoder is frozen. AdamW (lr 1e-4, weight decay 0.01),
cosine schedule per step down to 0.01 x lr, gradient clipping at 1.0, AMP on CUDA, loss = BCE + soft
Dice (squared denominator) on the low-res logits. Training boxes are widened by a random 0-5 px per
side each time; validation boxes by a fixed 0-5 px per file. After every epoch the validation loss
decides: the best weights are kept (``best.pth``), and training stops after ``patience`` epochs
without improvement.

Resumable: after every epoch the whole training state (weights, optimizer, scheduler, AMP scaler,
random generators, epoch, best loss, curves) is written atomically to ``state.pth``; ``resume=True``
continues from it and ends with the same weights as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from tqdm.auto import tqdm

from medcore_tp.atomic import save_text, save_torch
from medcore_tp.calibration import segmentation_loss, train_with_frozen_norms
from medcore_tp.checkpoint import save_pruned
from medcore_tp.data import SegmentationDataset, collate
from medcore_tp.errors import MedcoreError
from medcore_tp.inference import forward_logits, logit_size

STATE_FILE = "state.pth"
BEST_FILE = "best.pth"
CURVES_FILE = "curves.csv"


@dataclass
class FinetuneConfig:
    """Hyper-parameters (METHOD.md defaults)."""

    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.01
    min_lr_ratio: float = 0.01
    clip: float = 1.0
    patience: int = 5
    box_jitter: int = 5
    seed: int = 0


def _trainable(model: Sam) -> list[torch.nn.Parameter]:
    for p in model.prompt_encoder.parameters():
        p.requires_grad_(False)
    return [p for n, p in model.named_parameters() if not n.startswith("prompt_encoder.")]


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def validation_loss(model: Sam, loader) -> float:
    """Mean per-sample loss over a loader of :class:`SegmentationDataset` batches."""
    model.eval()
    total, n = 0.0, 0
    device = next(model.parameters()).device
    for batch in loader:
        if not batch["index"]:
            continue
        logits = forward_logits(model, batch["image"], batch["box"])
        total += float(segmentation_loss(logits, batch["mask_low"].to(device))) * len(batch["index"])
        n += len(batch["index"])
    return total / max(n, 1)


def finetune(
    model: Sam,
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
    size = model.image_encoder.img_size
    device = next(model.parameters()).device
    params = _trainable(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)),
    )
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    low = logit_size(model)
    train_set = SegmentationDataset(train, size, box_mode="random", box_jitter=cfg.box_jitter, seed=cfg.seed,
                                    low_size=low)
    val_set = SegmentationDataset(val, size, box_mode="deterministic", box_jitter=cfg.box_jitter, seed=cfg.seed,
                                  low_size=low)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.batch_size, collate_fn=collate)

    os.makedirs(out_dir, exist_ok=True)
    state_path = os.path.join(out_dir, STATE_FILE)
    start_epoch, best, stale, curves = 0, math.inf, 0, []
    if resume and os.path.exists(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state.get("base") != base or state.get("config") != vars(cfg):
            raise MedcoreError(f"--resume: {state_path} was written by a run with other settings; use a new --out")
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
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(train_set, order.tolist()), batch_size=cfg.batch_size, collate_fn=collate
        )
        running, seen = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for batch in bar:
            if not batch["index"]:
                continue
            with torch.autocast(device.type, enabled=use_amp):
                logits = forward_logits(model, batch["image"], batch["box"])
                loss = segmentation_loss(logits.float(), batch["mask_low"].to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running += float(loss.detach()) * len(batch["index"])
            seen += len(batch["index"])
            bar.set_postfix(loss=f"{running / seen:.4f}")
        val = validation_loss(model, val_loader)
        improved = val < best
        best, stale = (val, 0) if improved else (best, stale + 1)
        curves.append({"epoch": epoch + 1, "train_loss": running / max(seen, 1), "val_loss": val,
                       "lr": scheduler.get_last_lr()[0], "best": improved})
        if improved:
            save_pruned(model, os.path.join(out_dir, BEST_FILE), base=base)
        save_torch({"base": base, "config": vars(cfg), "epoch": epoch + 1, "best": best, "stale": stale,
                    "curves": curves, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state()},
                   state_path)
        save_text(_curves_csv(curves), os.path.join(out_dir, CURVES_FILE))
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return {"epochs_run": len(curves), "best_val_loss": best, "curves": curves,
            "stopped_early": stale >= cfg.patience}


def _curves_csv(curves: list[dict]) -> str:
    head = "epoch,train_loss,val_loss,lr,best\n"
    return head + "".join(f"{c['epoch']},{c['train_loss']},{c['val_loss']},{c['lr']},{c['best']}\n" for c in curves)
