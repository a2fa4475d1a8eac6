"""The README's deployment tables, generated from ``benchmarks/results/bench_deploy_*.json``.

Usage: ``python benchmarks/deploy_table.py [--machine cpu2]`` prints the markdown;
``python benchmarks/render_tables.py`` puts it into README.md (``<!-- table:deploy -->``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os

from medcore_tp.bench import format_rel_diff

HERE = os.path.dirname(os.path.abspath(__file__))


def _table(path: str) -> str:
    data = json.load(open(path))
    m = data["machine"]
    cpu = m.get("cpu_model") or m["processor"]  # older records lack the model name
    gpu = f"{m['gpu']}, {m['device']}, " if "gpu" in m else ""
    head = (f"**{data['model']}** dense vs pruned (`{os.path.basename(path)}`; {gpu}{cpu}, "
            f"{m['cpu_count']} cores, {m['torch_threads']} torch threads, torch {m['torch']}"
            + (f", onnxruntime {m['onnxruntime']}" if "onnxruntime" in m else "")
            + (f", openvino {m['openvino'].split('-')[0]}" if "openvino" in m else "")
            + "".join(f"; {k}={v}" for k, v in m.get("environment", {}).items())
            + ("; glibc keeping freed memory (medcore_tp.allocator, the CLI default)" if m.get("keep_freed_memory") else "")
            + (f"; load average {m['load_average_1_5_15'][0]:.1f} at the end" if "load_average_1_5_15" in m else "")
            + f"; median of {data['repeats']} alternating repeats, min-max in brackets)\n\n")
    rows = data["rows"]
    # GPU latencies are milliseconds: seconds with two decimals would print 0.01 for all of them
    unit, scale = ("ms", 1e3) if max(r["dense_median_s"] for r in rows) < 0.5 else ("s", 1.0)
    diffs = "dense_max_rel_diff" in rows[0]  # records before the output check lack it
    lines = [f"| backend | dtype | batch | part | threads | dense {unit} | pruned {unit} | speedup | FLOP ratio "
             "| speedup / FLOP ratio | dense torch fp32 / pruned |" + (" output vs eager fp32, dense / pruned |" if diffs else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if diffs else "")]
    for r in rows:
        vs = "-" if r["pruned_vs_dense_torch_fp32"] is None else f"{r['pruned_vs_dense_torch_fp32']:.2f}x"
        t = {k: r[k] * scale for k in r if k.endswith("_s") and k.startswith(("dense", "pruned"))}
        lines.append(
            f"| {r['backend']} | {r['dtype']} | {r['batch']} | {r['part']} | {r.get('threads', m['torch_threads'])} "
            f"| {t['dense_median_s']:.2f} [{t['dense_min_s']:.2f}-{t['dense_max_s']:.2f}] "
            f"| {t['pruned_median_s']:.2f} [{t['pruned_min_s']:.2f}-{t['pruned_max_s']:.2f}] "
            f"| {r['speedup']:.2f}x | {r['flop_ratio']:.2f}x | {r['speedup_over_flop_ratio']:.2f} | {vs} |"
            + (f" {format_rel_diff(r['dense_max_rel_diff'])} / {format_rel_diff(r['pruned_max_rel_diff'])} |"
               if diffs else ""))
    return head + "\n".join(lines) + "\n"


def render(machine: str) -> str:
    files = sorted(glob.glob(os.path.join(HERE, "results", f"bench_deploy_*_{machine}*.json")))
    if not files:
        raise SystemExit(f"no benchmarks/results/bench_deploy_*_{machine}*.json yet")
    return "\n".join(_table(f) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine", default="cpu2")
    print(render(parser.parse_args().machine))


if __name__ == "__main__":
    main()
