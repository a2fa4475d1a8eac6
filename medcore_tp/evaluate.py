"""Evaluation: datasets -> box-prompted inference -> metrics per image -> per-dataset and macro means.

Defaults follow docs/method.md: test split (seeded 60/20/20 per dataset), test boxes widened by 0-5 px
deterministically per file, metrics at the model's input resolution with the ground truth resized
nearest-neighbour (``resolution="original"`` compares at each image's own size instead).
"""

from __future__ import annotations

import csv
import io
import os
import platform
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from medcore_tp.atomic import save_json, save_text
from medcore_tp.datasets import Sample, SegmentationDataset, collate, load_datasets
from medcore_tp.errors import MedcoreError
from medcore_tp.inference import logits_to_masks, logits_to_original, predict_logits, upsample_logits
from medcore_tp.metrics import METRIC_NAMES, all_metrics
from medcore_tp.models.spec import input_spec
from medcore_tp.preprocessing import RESIZE_MODES
from medcore_tp.splits import SplitsChoice, select_split, settle_splits

__all__ = ["CSV_COLUMNS", "EvalConfig", "EvalResult", "evaluate", "summarise"]

RESOLUTIONS = ("input", "original")
CSV_COLUMNS = (
    "dataset", "name", "image", "mask", "height", "width", "eval_height", "eval_width",
    "box_x0", "box_y0", "box_x1", "box_y1", "gt_pixels", "pred_pixels", *METRIC_NAMES,
)


@dataclass
class EvalResult:
    """Per-image rows (dicts keyed by :data:`CSV_COLUMNS`) and the summary written to summary.json."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)
    splits: SplitsChoice | None = None


def _score(pred: np.ndarray, gt: np.ndarray, tolerance: int) -> dict[str, Any]:
    scores = all_metrics(pred, gt, tolerance=tolerance, empty_distance=max(gt.shape))
    scores["gt_pixels"] = int(gt.sum())
    scores["pred_pixels"] = int(pred.sum())
    return scores


def _mean(values: Sequence[float]) -> float | None:
    # None rather than NaN: a dataset whose every file was skipped has no mean, and JSON has no NaN.
    return float(np.mean(values)) if len(values) else None


def summarise(rows: Sequence[dict[str, Any]], datasets: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-dataset means of every metric (with image counts) and their macro average.

    The macro average weighs each dataset with at least one image equally, whatever its size; a
    dataset without images has ``None`` means.
    """
    per_dataset: dict[str, Any] = {}
    for name in datasets:
        mine = [r for r in rows if r["dataset"] == name]
        per_dataset[name] = {"n": len(mine), **{m: _mean([r[m] for r in mine]) for m in METRIC_NAMES}}
    scored = [d for d in per_dataset.values() if d["n"]]
    macro = {"n_datasets": len(scored), **{m: _mean([d[m] for d in scored]) for m in METRIC_NAMES}}
    return per_dataset, macro


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _choose_samples(
    data_dirs: Sequence[str | os.PathLike], split: str, splits_path: Path | None, seed: int,
    out: Path | None, mask_threshold: float | None,
) -> tuple[dict[str, list[Sample]], SplitsChoice | None]:
    datasets = load_datasets(data_dirs, mask_threshold)
    if split == "all":
        return select_split(datasets, None, "all"), None  # no split, so no splits file is read or written
    own = out / "splits.json" if out is not None else None
    if splits_path is not None and not splits_path.exists():
        target = splits_path  # "created if missing"
    else:
        # The user's file is never rewritten: what it lacked goes, with what it had, to OUT/splits.json.
        target = own
    choice = settle_splits(datasets, splits_path, seed)  # written below, once the split is known to be usable
    chosen = select_split(datasets, choice.doc, split)
    for name, samples in chosen.items():
        if not samples:
            raise MedcoreError(
                f"dataset '{name}' has no image in the {split} split ({len(datasets[name])} images in all); "
                f"use --split all or a larger dataset"
            )
    if choice.action != "reused" and target is not None:
        save_json(choice.doc, target)
        choice.written = target
    return chosen, choice


@dataclass(frozen=True)
class EvalConfig:
    """How an evaluation runs (docs/method.md defaults); ``medcore-tp evaluate`` builds one from its flags.

    ``split``: ``test``, ``val``, ``train`` or ``all``. ``splits_path``: a splits file to reuse (written
    when missing). ``box_jitter``: each box side widened by a fixed 0..N px per file (0: tight).
    ``resolution``: ``input`` (masks compared in the model's input frame, only the part the image
    fills) or ``original`` (at each image's own size). ``tolerance``: px for Boundary F1 and NSD.
    ``resize``: ``torch`` or ``skimage`` image resampling. ``resize_mode``: None for the model's own
    (its :class:`InputSpec`), or ``square`` / ``longest-side``. ``skip_bad``: go on past unreadable
    or inconsistent pairs and list them. ``metric_threads``: threads computing metrics (default half
    the CPU cores, at most 8). ``mask_threshold``: how masks are binarised (None: > 127). A
    ``splits_path`` that lacks some datasets is never rewritten: the extended splits go to
    ``out_dir/splits.json`` (``summary["splits"]`` says which happened).
    """

    split: str = "test"
    splits_path: str | os.PathLike | None = None
    box_jitter: int = 5
    seed: int = 42
    batch_size: int = 4
    num_workers: int = 0
    skip_bad: bool = False
    resolution: str = "input"
    tolerance: int = 2
    resize: str = "torch"
    resize_mode: str | None = None
    metric_threads: int | None = None
    mask_threshold: float | None = None

    def check(self) -> None:
        """Raise :class:`MedcoreError` naming the parameter for a bad value (before any work)."""
        if self.resolution not in RESOLUTIONS:
            raise MedcoreError(f"resolution {self.resolution}: must be one of {', '.join(RESOLUTIONS)}", "resolution")
        if self.batch_size < 1:
            raise MedcoreError(f"batch_size {self.batch_size}: must be >= 1", "batch_size")
        if self.box_jitter < 0:
            raise MedcoreError(f"box_jitter {self.box_jitter}: must be >= 0", "box_jitter")
        if self.resize_mode is not None and self.resize_mode not in RESIZE_MODES:
            raise MedcoreError(f"resize_mode {self.resize_mode}: must be one of {', '.join(RESIZE_MODES)}",
                               "resize_mode")


def evaluate(
    model: nn.Module,
    data_dirs: Sequence[str | os.PathLike],
    config: EvalConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model_info: dict[str, Any] | None = None,
    notes: dict[str, Any] | None = None,
    **settings: Any,
) -> EvalResult:
    """Evaluate ``model`` (on its current device) on ``config.split`` of every folder in ``data_dirs``.

    ``config`` (:class:`EvalConfig`, defaults when None) may be adjusted by keyword ``settings`` of
    the same names (``evaluate(model, dirs, split="all", box_jitter=0)``). Splits come from
    ``config.splits_path`` when that file exists and are written there otherwise; with no
    ``splits_path`` they go to ``out_dir/splits.json`` (or are only computed, without ``out_dir``).
    With ``out_dir``, ``per_image.csv`` and ``summary.json`` are written there, atomically. Metrics are
    computed in threads (SciPy and NumPy release the GIL) while the next batch runs through the model.
    ``notes`` are added to the summary as they are.
    """
    cfg = replace(config or EvalConfig(), **settings)
    cfg.check()
    return _run(model, data_dirs, cfg, Path(out_dir) if out_dir is not None else None, progress, model_info,
                notes)


def _run(model: nn.Module, data_dirs: Sequence[str | os.PathLike], cfg: EvalConfig, out: Path | None,
         progress: bool, model_info: dict[str, Any] | None, notes: dict[str, Any] | None = None) -> EvalResult:
    started = time.perf_counter()
    split, splits_path, box_jitter, seed = cfg.split, cfg.splits_path, cfg.box_jitter, cfg.seed
    resolution, tolerance = cfg.resolution, cfg.tolerance
    chosen, choice = _choose_samples(data_dirs, split, Path(splits_path) if splits_path else None, seed, out,
                                     cfg.mask_threshold)
    used_splits = None if choice is None else (choice.written or choice.source)
    samples = [s for group in chosen.values() for s in group]

    spec = input_spec(model)
    if cfg.resize_mode is not None:
        spec = replace(spec, resize_mode=cfg.resize_mode)
    size, mode = spec.input_size, spec.resize_mode
    dataset = SegmentationDataset(samples, spec, box_mode="deterministic", box_jitter=box_jitter,
                                  seed=seed, skip_bad=cfg.skip_bad, resize=cfg.resize)
    device = model.device if not isinstance(model, torch.nn.Module) else next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                                         collate_fn=collate, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    pending: list[tuple[list[int], np.ndarray, list[tuple[int, int]], list[tuple[int, int]], Future]] = []
    skipped: list[dict[str, str]] = []
    bar = tqdm(total=len(samples), unit="img", desc="evaluate", disable=not progress, dynamic_ncols=True)
    try:
        threads = cfg.metric_threads or max(1, min(8, (os.cpu_count() or 2) // 2))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for batch in loader:
                for index, message in batch["errors"]:
                    s = samples[index]
                    skipped.append({"dataset": s.dataset, "name": s.name, "error": message})
                if batch["index"]:
                    logits = upsample_logits(predict_logits(model, batch["image"], batch["box"]), (size, size))
                    if resolution == "input":
                        fits = batch["fitted_size"]
                        preds = [m[:h, :w] for m, (h, w) in zip(logits_to_masks(logits).cpu().numpy(), fits, strict=True)]
                        gts = [m[:h, :w] for m, (h, w) in zip(batch["mask"].numpy(), fits, strict=True)]
                    else:
                        preds = [logits_to_masks(logits_to_original(logits[i : i + 1], fit, shape))[0].cpu().numpy()
                                 for i, (fit, shape) in enumerate(zip(batch["fitted_size"], batch["original_size"],
                                                                      strict=True))]
                        gts = batch["mask_original"]
                    job = pool.submit(lambda p, g: [_score(a, b, tolerance) for a, b in zip(p, g, strict=True)], preds, gts)
                    pending.append((batch["index"], batch["box"].numpy(), batch["original_size"], batch["fitted_size"],
                                    job))
                bar.update(len(batch["index"]) + len(batch["errors"]))
            rows = []
            for indices, boxes, shapes, fits, job in pending:
                for index, box, shape, fit, scores in zip(indices, boxes, shapes, fits, job.result(), strict=True):
                    eval_shape = fit if resolution == "input" else shape
                    rows.append(_row(samples[index], box, shape, eval_shape, scores))
    finally:
        bar.close()
        model.train(was_training)

    if not rows:
        raise MedcoreError(f"no image could be evaluated ({len(skipped)} skipped; first: {skipped[0]['error']})"
                           if skipped else "no image to evaluate")
    per_dataset, macro = summarise(rows, list(chosen))
    for name in per_dataset:
        per_dataset[name]["skipped"] = sum(1 for s in skipped if s["dataset"] == name)
    seconds = time.perf_counter() - started
    summary = {
        "model": dict(model_info or {}, input_size=size),
        "settings": {
            "data": [str(d) for d in data_dirs], "split": split,
            "splits_file": str(used_splits) if used_splits else None,
            "box_mode": "deterministic" if box_jitter else "tight", "box_jitter": box_jitter, "seed": seed,
            "resolution": resolution, "tolerance_px": tolerance, "resize": cfg.resize, "resize_mode": mode,
            "batch_size": cfg.batch_size, "device": str(device), "mask_threshold": cfg.mask_threshold,
        },
        "splits": None if choice is None else choice.to_dict(),
        **(notes or {}),
        "datasets": per_dataset,
        "macro": macro,
        "n_images": len(rows),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "seconds": seconds,
        "images_per_second": len(rows) / seconds,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
    }
    if out is not None:
        save_text(_csv_text(rows), out / "per_image.csv")
        save_json(summary, out / "summary.json")
    return EvalResult(rows=rows, summary=summary, skipped=skipped, splits=choice)


def _row(sample: Sample, box: np.ndarray, shape: tuple[int, int], eval_shape: tuple[int, int],
         scores: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": sample.dataset,
        "name": sample.name,
        "image": str(sample.image_path),
        "mask": str(sample.mask_path),
        "height": shape[0],
        "width": shape[1],
        "eval_height": eval_shape[0],
        "eval_width": eval_shape[1],
        "box_x0": float(box[0]), "box_y0": float(box[1]), "box_x1": float(box[2]), "box_y1": float(box[3]),
        **scores,
    }
