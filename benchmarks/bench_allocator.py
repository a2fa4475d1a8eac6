"""What glibc's handling of freed memory costs eager CPU inference: each encoder's time and minor page
faults per forward with glibc's defaults and after :func:`medcore_tp.allocator.keep_freed_memory`.

Models: LiteMedSAM (packaged, batch norms folded, as ``bench``'s ``fold`` backend) dense vs 50%, and
SAM ViT-B (fused attention and contiguous tokens, as ``bench``'s ``sdpa`` backend) dense vs 60.03%,
the checkpoints of ``bench_deploy.py``. Each mode runs in its own process (the setting is
process-wide); within a process dense and pruned alternate after a warm-up.

Usage: ``python benchmarks/bench_allocator.py [--threads 2] [--repeats 5] [--scratch DIR] [--which lite,vit-b]``;
writes ``benchmarks/results/allocator_<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from bench_deploy import SCRATCH  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("default", "keep")

CHILD = r"""
import json, resource, statistics, sys, time
import torch
from medcore_tp.allocator import keep_freed_memory
from medcore_tp.arch import image_encoder
from medcore_tp.checkpoint import load_pruned
from medcore_tp.bench import backend_model
from medcore_tp.models import build_model

mode, name, path, threads, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if mode == "keep":
    assert keep_freed_memory()
torch.set_num_threads(threads)
torch.manual_seed(0)
models = {"dense": build_model(name), "pruned": load_pruned(path)}
backend = "fold" if name == "lite-medsam" else "sdpa"  # bench's fastest eager backend for each family
encoders = {k: image_encoder(backend_model(m, backend)) for k, m in models.items()}
del models  # the copies are what runs
size = encoders["dense"].img_size
x = torch.rand(1, 3, size, size)
out = {k: {"s": [], "faults": []} for k in encoders}
with torch.inference_mode():
    for enc in encoders.values():
        enc(x)
    for _ in range(repeats):
        for k, enc in encoders.items():
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            enc(x)
            out[k]["s"].append(time.perf_counter() - start)
            out[k]["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
print(json.dumps({k: {"median_s": statistics.median(v["s"]), "min_s": min(v["s"]), "max_s": max(v["s"]),
                      "median_faults": statistics.median(v["faults"])} for k, v in out.items()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--which", default="lite,vit-b")
    parser.add_argument("--scratch", default=SCRATCH)
    args = parser.parse_args()

    from _machine import machine_tag
    from bench_deploy import PRUNE, pruned_checkpoint

    from medcore_tp.checkpoint import load_pruned
    from medcore_tp.machine import machine_info
    from medcore_tp.models import build_model
    from medcore_tp.profile import flops_torch

    rows = []
    for which in args.which.split(","):
        path = pruned_checkpoint(which, args.scratch, "cpu")
        name = PRUNE[which][0]
        flop_ratio = flops_torch(build_model(name, device="meta"))["total"] / flops_torch(load_pruned(path))["total"]
        for mode in MODES:
            res = subprocess.run([sys.executable, "-c", CHILD, mode, name, path, str(args.threads), str(args.repeats)],
                                 check=True, capture_output=True, text=True)
            got = json.loads(res.stdout.strip().splitlines()[-1])
            speedup = got["dense"]["median_s"] / got["pruned"]["median_s"]
            rows.append({"model": name, "mode": mode, "threads": args.threads, "flop_ratio": flop_ratio,
                         "speedup": speedup, "speedup_over_flop_ratio": speedup / flop_ratio,
                         **{f"{k}_{f}": v for k, d in got.items() for f, v in d.items()}})
            r = rows[-1]
            print(f"{name:12s} {mode:8s} dense {r['dense_median_s']:.3f} s ({r['dense_median_faults']:>9,.0f} faults)  "
                  f"pruned {r['pruned_median_s']:.3f} s ({r['pruned_median_faults']:>9,.0f} faults)  "
                  f"speedup {speedup:.2f}x = {speedup / flop_ratio:.2f} of the {flop_ratio:.2f}x FLOP ratio", flush=True)
    out = os.path.join(HERE, "results", f"allocator_{machine_tag('cpu')}.json")
    with open(out, "w") as f:
        json.dump({"threads": args.threads, "repeats": args.repeats, "machine": machine_info("cpu"), "rows": rows}, f,
                  indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
