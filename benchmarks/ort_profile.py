"""Where the pruned encoder's time goes in ONNX Runtime: per part of the encoder (patch embedding, each
stage, the neck), FLOPs and ONNX Runtime kernel time of the dense and the pruned model, side by side,
at each thread count; the parts that pruning does not touch (convolutions, their activations) show why
the whole encoder's speedup falls short of its FLOP ratio.

Both encoders are exported with ``medcore-tp export --format onnx`` and run with ONNX Runtime's
profiler (kernel times of ``--runs`` runs after one warm-up, averaged); the last row is the wall clock
of ``session.run`` without the profiler (median of ``--runs``, dense and pruned alternating), which
adds what the kernels do not account for (thread-pool hand-offs, allocation). A kernel is charged to the
module in its node name; nodes that ONNX Runtime made by fusing (``Gelu_token_N`` and the like) lose
that name and are charged to the module of the node that feeds them. FLOPs per part come from
``torch.utils.flop_counter`` on the PyTorch encoder.

The pruned checkpoint is ``benchmarks/bench_deploy.py``'s (magnitude importance, packaged weights,
``--ratio 0.5``; latency does not depend on which groups went).

Usage: ``python benchmarks/ort_profile.py [--threads 1,2] [--runs 5] [--scratch DIR] [--tag-suffix X]
[--round-to N]``; writes ``benchmarks/results/ort_profile_lite_<machine><X>[_roundN].{csv,json}``. A fresh
``--scratch`` prunes with today's defaults.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(__file__))
from _machine import machine_info, machine_tag  # noqa: E402
from bench_deploy import RESULTS, SCRATCH, cli, pruned_checkpoint, round_tag  # noqa: E402

from medcore_tp.checkpoint import load_model  # noqa: E402
from medcore_tp.runtime import ort_session  # noqa: E402


def part_of(name: str) -> str | None:
    """The encoder part a scoped ONNX node or module name belongs to (``layers.N``, ``patch_embed``,
    ``neck``), or None for a name without scope."""
    for piece in name.replace("/", ".").split("."):
        if piece in ("patch_embed", "neck"):
            return piece
    bits = name.replace("/", ".").split(".")
    for i, piece in enumerate(bits[:-1]):
        if piece == "layers" and bits[i + 1].isdigit():
            return f"layers.{bits[i + 1]}"
    return None


def flops_per_part(model: torch.nn.Module) -> dict[str, float]:
    """FLOPs of one 256 x 256 encoder forward, by part."""
    encoder = model.image_encoder
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        encoder(torch.zeros(1, 3, encoder.img_size, encoder.img_size))
    out: dict[str, float] = collections.defaultdict(float)
    for name, ops in counter.get_flop_counts().items():
        scoped = name.split(".", 1)[1] if "." in name else ""  # the counter prefixes the root class name
        # it lists every module level: count each part at its own level only
        if scoped and part_of(scoped) == scoped:
            out[scoped] += sum(ops.values())
    return dict(out)


def ort_time_per_part(onnx_file: str, threads: int, runs: int, prefix: str) -> dict[str, float]:
    """Mean ONNX Runtime kernel milliseconds per run, by part (fused nodes charged to their producer)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    options.optimized_model_filepath = prefix + "_optimized.onnx"
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_file, sess_options=options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)}
    session.run(None, feed)  # warm-up: its kernels are dropped below
    for _ in range(runs):
        session.run(None, feed)
    events = json.load(open(session.end_profiling()))
    owner = _node_parts(prefix + "_optimized.onnx")
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(kernels) // (runs + 1)
    out: dict[str, float] = collections.defaultdict(float)
    for e in kernels[per_run:]:
        node = e["name"].removesuffix("_kernel_time")
        out[owner.get(node) or part_of(node) or "other"] += e["dur"] / 1e3 / runs
    return dict(out)


def wall_ms(onnx_files: dict[str, str], threads: int, runs: int) -> dict[str, float]:
    """Median wall milliseconds of ``session.run`` per model, without the profiler, the models alternating
    run after run (after one warm-up each)."""
    sessions = {w: ort_session(f, threads=threads) for w, f in onnx_files.items()}
    feed = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    times: dict[str, list[float]] = {w: [] for w in sessions}
    for rnd in range(runs + 1):
        for w, session in sessions.items():
            began = time.perf_counter()
            session.run(None, {session.get_inputs()[0].name: feed})
            if rnd:
                times[w].append((time.perf_counter() - began) * 1e3)
    return {w: statistics.median(v) for w, v in times.items()}


def _node_parts(optimized_file: str) -> dict[str, str]:
    """Part of each node of an optimised ONNX graph; an unscoped node takes its first input's producer's."""
    import onnx

    graph = onnx.load(optimized_file).graph
    producer = {out: node for node in graph.node for out in node.output}
    parts: dict[str, str] = {}

    def resolve(node, depth: int = 0) -> str | None:
        if node.name in parts:
            return parts[node.name]
        part = part_of(node.name)
        if part is None and depth < 20:
            for name in node.input:
                if name in producer:
                    part = resolve(producer[name], depth + 1)
                    if part is not None:
                        break
        if part is not None:
            parts[node.name] = part
        return part

    for node in graph.node:
        resolve(node)
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scratch", default=SCRATCH)
    ap.add_argument("--tag-suffix", default="", help="Appended to the result files' names.")
    ap.add_argument("--round-to", type=int, default=1, help="Prune with --round-to N (as bench_deploy.py).")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    ckpt = pruned_checkpoint("lite", args.scratch, "cpu", args.round_to)
    suffix = args.tag_suffix + round_tag(args.round_to)
    files, flops = {}, {}
    for which, checkpoint in (("dense", "packaged"), ("pruned", ckpt)):
        files[which] = os.path.join(args.scratch, "ort_profile" + suffix, f"{which}.onnx")
        if not os.path.exists(files[which]):
            cli("export", "--model", "lite-medsam", "--checkpoint", checkpoint, "--format", "onnx", "--out", files[which])
        flops[which] = flops_per_part(load_model("lite-medsam", checkpoint)[0])
    times = {(w, t): ort_time_per_part(files[w], t, args.runs,
                                       os.path.join(args.scratch, "ort_profile" + suffix, f"{w}_t{t}"))
             for t in threads for w in ("dense", "pruned")}
    walls = {t: wall_ms(files, t, args.runs) for t in threads}
    parts = sorted(set(flops["dense"]) | {p for v in times.values() for p in v},
                   key=lambda p: ({"patch_embed": 0, "neck": 2}.get(p.split(".")[0], 1), p))
    rows = []
    def total(d: dict[str, float], part: str) -> float:
        return sum(d.values()) if part == "total" else d.get(part, 0.0)

    for part in [*parts, "total"]:
        row = {"part": part, "gflops_dense": total(flops["dense"], part) / 1e9, "gflops_pruned": total(flops["pruned"], part) / 1e9}
        row["flop_ratio"] = row["gflops_dense"] / row["gflops_pruned"] if row["gflops_pruned"] else float("nan")
        for t in threads:
            d, p = total(times[("dense", t)], part), total(times[("pruned", t)], part)
            row.update({f"ms_dense_t{t}": d, f"ms_pruned_t{t}": p, f"speedup_t{t}": d / p if p else float("nan")})
        rows.append(row)
    wall = {"part": "wall clock of session.run (median)", "gflops_dense": rows[-1]["gflops_dense"],
            "gflops_pruned": rows[-1]["gflops_pruned"], "flop_ratio": rows[-1]["flop_ratio"]}
    for t in threads:
        d, p = walls[t]["dense"], walls[t]["pruned"]
        wall.update({f"ms_dense_t{t}": d, f"ms_pruned_t{t}": p, f"speedup_t{t}": d / p})
    rows.append(wall)
    tag = machine_tag()
    base = os.path.join(RESULTS, f"ort_profile_lite_{tag}{suffix}")
    with open(base + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(base + ".json", "w") as f:
        json.dump({"machine": machine_info(), "pruned_checkpoint": "bench_deploy.py lite (magnitude, --ratio 0.5"
                   + (f", --round-to {args.round_to}" if args.round_to > 1 else "") + f"): {ckpt}",
                   "runs": args.runs, "threads": threads, "rows": rows}, f, indent=1)
    head = "| part | GFLOPs dense | GFLOPs pruned | FLOP ratio | " + " | ".join(
        f"ms dense / pruned, {t} thread{'s' if t > 1 else ''} | speedup" for t in threads) + " |"
    print(head)
    print("|" + "---|" * (4 + 2 * len(threads)))
    for r in rows:
        cells = [r["part"], f"{r['gflops_dense']:.2f}", f"{r['gflops_pruned']:.2f}", f"{r['flop_ratio']:.2f}"]
        for t in threads:
            cells += [f"{r[f'ms_dense_t{t}']:.0f} / {r[f'ms_pruned_t{t}']:.0f}", f"{r[f'speedup_t{t}']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print(f"wrote {base}.csv, {base}.json")


if __name__ == "__main__":
    main()
