"""What each of the sdpa backend's two changes buys on SAM ViT-B: the fused attention alone, plus the
contiguous token layout (:mod:`medcore_tp.token_layout`), plus head-by-head masks at inference
(:data:`medcore_tp.fast_attention.HEADWISE_MASK_ELEMENTS`); dense vs the 60.03% model of
``bench_deploy.py``, all six encoders alternating in one process, median and min-max of the repeats.
Then the peak memory one dense forward adds (``VmHWM``, a fresh child process per mask mode; Linux).

Usage: ``python benchmarks/bench_vit_fast_paths.py [--threads 2] [--repeats 5] [--scratch DIR]``;
writes ``benchmarks/results/vit_fast_paths_<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_deploy import SCRATCH  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WHOLE = 1 << 62  # a mask-size threshold no block reaches: every block builds its whole mask
VARIANTS = {  # name: (contiguous tokens, headwise threshold)
    "sdpa": (False, WHOLE),
    "sdpa+tokens": (True, WHOLE),
    "sdpa+tokens+headwise": (True, None),  # None: the library's default threshold
}


def _encoders(pruned_path: str) -> dict:
    import copy

    from medcore_tp.arch import image_encoder
    from medcore_tp.checkpoint import load_pruned
    from medcore_tp.fast_attention import use_sdpa
    from medcore_tp.models import build_model
    from medcore_tp.token_layout import use_contiguous_tokens

    models = {"dense": use_sdpa(build_model("sam-vit-b").eval()), "pruned": use_sdpa(load_pruned(pruned_path).eval())}
    out = {}
    for variant, (tokens, _) in VARIANTS.items():
        for which, model in models.items():
            model = copy.deepcopy(model)
            out[(variant, which)] = image_encoder(use_contiguous_tokens(model) if tokens else model)
    return out


def peak_mib(threshold: int | None) -> float:
    """Peak resident memory one dense sdpa+tokens forward adds, in MiB, measured in a child process (Linux)."""
    # VmHWM (the child's own high-water mark): ru_maxrss would carry the parent's over exec on Linux
    code = (
        "import torch\n"
        "import medcore_tp.fast_attention as fa\n"
        "from medcore_tp.models import build_model\n"
        "from medcore_tp.token_layout import use_contiguous_tokens\n"
        "def hwm():\n"
        "    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
        + (f"fa.HEADWISE_MASK_ELEMENTS = {threshold}\n" if threshold is not None else "")
        + "e = use_contiguous_tokens(fa.use_sdpa(build_model('sam-vit-b').eval())).image_encoder\n"
        "x = torch.rand(1, 3, 1024, 1024)\n"
        "before = hwm()\n"
        "with torch.inference_mode():\n    e(x)\n"
        "print((hwm() - before) / 1024)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scratch", default=SCRATCH)
    args = parser.parse_args()

    import torch
    from _machine import machine_tag
    from bench_deploy import pruned_checkpoint

    import medcore_tp.fast_attention as fa
    from medcore_tp.machine import machine_info
    from medcore_tp.profile import flops_torch

    torch.set_num_threads(args.threads)
    default_threshold = fa.HEADWISE_MASK_ELEMENTS
    encoders = _encoders(pruned_checkpoint("vit-b", args.scratch, "cpu"))
    x = torch.rand(1, 3, 1024, 1024)
    flops = {w: flops_torch(encoders[("sdpa", w)])["total"] for w in ("dense", "pruned")}
    times: dict[str, list[float]] = {f"{v}/{w}": [] for v, w in encoders}
    with torch.inference_mode():
        for rep in range(args.repeats + 1):  # the first round warms up and is not kept
            for (variant, which), encoder in encoders.items():
                threshold = VARIANTS[variant][1]
                fa.HEADWISE_MASK_ELEMENTS = default_threshold if threshold is None else threshold
                start = time.perf_counter()
                encoder(x)
                if rep:
                    times[f"{variant}/{which}"].append(time.perf_counter() - start)
            print(f"round {rep}/{args.repeats} done", flush=True)
    fa.HEADWISE_MASK_ELEMENTS = default_threshold
    flop_ratio = flops["dense"] / flops["pruned"]
    rows = []
    for variant in VARIANTS:
        d, p = (statistics.median(times[f"{variant}/{w}"]) for w in ("dense", "pruned"))
        rows.append({"variant": variant, "dense_median_s": d, "pruned_median_s": p,
                     "dense_min_max_s": [min(times[f"{variant}/dense"]), max(times[f"{variant}/dense"])],
                     "pruned_min_max_s": [min(times[f"{variant}/pruned"]), max(times[f"{variant}/pruned"])],
                     "speedup": d / p, "speedup_over_flop_ratio": d / p / flop_ratio})
    peaks = {"whole": peak_mib(WHOLE), "headwise": peak_mib(None)}
    print(f"\nViT-B dense vs 60.03%, {args.threads} threads, FLOP ratio {flop_ratio:.2f}x, median of {args.repeats}")
    print(f"{'variant':22s} {'dense s':>8s} {'pruned s':>9s} {'speedup':>8s} {'/FLOPs':>7s}")
    for r in rows:
        print(f"{r['variant']:22s} {r['dense_median_s']:8.2f} {r['pruned_median_s']:9.2f} {r['speedup']:7.2f}x "
              f"{r['speedup_over_flop_ratio']:7.2f}")
    print(f"peak memory one dense forward adds: whole masks {peaks['whole']:.0f} MiB, head by head {peaks['headwise']:.0f} MiB")
    path = os.path.join(HERE, "results", f"vit_fast_paths_{machine_tag('cpu')}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine_info("cpu"), "threads": args.threads, "repeats": args.repeats,
                   "flop_ratio": flop_ratio, "headwise_mask_elements": default_threshold, "rows": rows,
                   "times_s": times, "peak_forward_mib": peaks}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
