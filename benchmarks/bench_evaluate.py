"""Evaluation throughput against the model's forward alone, on the same images.

"Forward alone" runs ``predict_logits`` (encoder + prompt encoder + decoder) on images that were
read and preprocessed beforehand; "evaluation" is the whole ``medcore_tp.evaluate.evaluate`` call
(discovery, reading, preprocessing, inference, upsampling, metrics, CSV/JSON writing). The target
of the evaluation issue: evaluation takes at most 20% longer than the forward alone.

    python benchmarks/bench_evaluate.py                      # tiny model, 48 kvasir-seg-256 images
    python benchmarks/bench_evaluate.py --model sam-vit-b --images 4 --batch-size 1

Results go to ``benchmarks/results/evaluate_<machine>.json`` (``cpu2``, ``cuda-h100``: benchmarks/_machine.py) (one entry per configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _machine import machine_tag  # noqa: E402

from medcore_tp.atomic import save_json
from medcore_tp.data import SegmentationDataset, collate, discover
from medcore_tp.evaluate import evaluate
from medcore_tp.inference import input_size, logits_to_masks, predict_logits, upsample_logits
from medcore_tp.metrics import all_metrics
from medcore_tp.models import build_model, input_spec
from medcore_tp.paths import data_root

DATA = data_root()  # $MEDCORE_DATA, else ../shared/data


def _subset(source: Path, n: int, folder: Path) -> Path:
    """A dataset folder of symlinks to the first ``n`` pairs of ``source``."""
    samples = discover(source)[:n]
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for s in samples:
        (folder / "images" / s.image_path.name).symlink_to(s.image_path)
        (folder / "masks" / s.mask_path.name).symlink_to(s.mask_path)
    return folder


def _forward_alone(model, batches) -> float:
    start = time.perf_counter()
    for images, boxes in batches:
        logits = predict_logits(model, images, boxes)
    if logits.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--data", type=Path, default=DATA / "kvasir-seg-256")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median is reported")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(args.model).to(args.device)
    size = input_size(model)
    with tempfile.TemporaryDirectory() as tmp:
        root = _subset(args.data, args.images, Path(tmp) / args.data.name)
        dataset = SegmentationDataset(discover(root), input_spec(model), box_jitter=5)
        t0 = time.perf_counter()
        items = [dataset[i] for i in range(len(dataset))]
        load_s = time.perf_counter() - t0
        batch_items = [collate(items[i : i + args.batch_size]) for i in range(0, len(items), args.batch_size)]
        batches = [(b["image"], b["box"]) for b in batch_items]
        _forward_alone(model, batches[:1])  # warm-up (allocator, kernels)
        # Metrics on the model's own predictions (a random-init model's masks are ragged, the
        # slow case for surface distances).
        preds = []
        for b in batch_items:
            logits = upsample_logits(predict_logits(model, b["image"], b["box"]), (size, size))
            preds.extend(logits_to_masks(logits).cpu().numpy())
        t0 = time.perf_counter()
        for item, pred in zip(items, preds, strict=True):
            all_metrics(pred, item["mask"].numpy(), empty_distance=size)
        metrics_s = time.perf_counter() - t0

        forward, full = [], []
        for r in range(args.repeats):
            forward.append(_forward_alone(model, batches))
            out = Path(tmp) / f"out{r}"
            t0 = time.perf_counter()
            evaluate(model, [root], split="all", out_dir=out, batch_size=args.batch_size,
                     num_workers=args.workers, progress=False)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            full.append(time.perf_counter() - t0)

    fwd, ev = statistics.median(forward), statistics.median(full)
    n = len(items)
    entry = {
        "model": args.model, "input_size": size, "device": args.device, "images": n,
        "data": args.data.name, "batch_size": args.batch_size, "workers": args.workers,
        "repeats": args.repeats,
        "forward_alone_s": fwd, "evaluate_s": ev,
        "forward_images_per_s": n / fwd, "evaluate_images_per_s": n / ev,
        "overhead_pct": 100.0 * (ev / fwd - 1.0), "target_overhead_pct": 20.0,
        "serial_read_preprocess_s": load_s, "serial_metrics_s": metrics_s,
        "forward_runs_s": forward, "evaluate_runs_s": full,
        "machine": {
            "node": platform.node(), "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = args.out / f"evaluate_{machine_tag(args.device)}.json"
    previous = json.loads(path.read_text()) if path.exists() else []
    key = (args.model, args.device, args.batch_size, args.workers, n)
    previous = [e for e in previous if (e["model"], e["device"], e["batch_size"], e["workers"], e["images"]) != key]
    save_json(previous + [entry], path)

    print(f"{args.model} (input {size}) on {args.device}, {n} images of {args.data.name}, batch {args.batch_size}, "
          f"{args.workers} workers, {torch.get_num_threads()} torch threads, median of {args.repeats}")
    print(f"{'':28}{'seconds':>10}{'images/s':>10}")
    print(f"{'forward alone':28}{fwd:10.3f}{n / fwd:10.2f}")
    print(f"{'evaluate (end to end)':28}{ev:10.3f}{n / ev:10.2f}")
    print(f"{'  serial read+preprocess':28}{load_s:10.3f}")
    print(f"{'  serial metrics':28}{metrics_s:10.3f}")
    verdict = "meets" if entry["overhead_pct"] <= 20.0 else "misses"
    print(f"overhead {entry['overhead_pct']:.1f}% ({verdict} the 20% target); written to {path}")


if __name__ == "__main__":
    main()
