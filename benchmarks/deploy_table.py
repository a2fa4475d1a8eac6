"""The deployment latency tables, generated from ``benchmarks/results/bench_deploy_*.json``.

Usage: ``python benchmarks/deploy_table.py [--machine cpu2] [--targets]`` prints the markdown;
``python benchmarks/render_tables.py`` puts every run's table into docs/deployment.md
(``<!-- table:deploy -->``) and the summary of every committed run against issue 14's targets into
README.md (``<!-- table:deploy_targets -->``).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os

from medcore_tp.bench import format_rel_diff

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


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
            + f"; median of {data['repeats']} alternating repeats"
            + (f", {data['pause_s']:g} s untimed pause before each" if data.get("pause_s") else "")
            + ", min-max in brackets)\n\n")
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


def _files(machine: str, results: str = RESULTS) -> list[str]:
    files = sorted(glob.glob(os.path.join(results, f"bench_deploy_*_{machine}*.json")))
    if not files:
        raise SystemExit(f"no {results}/bench_deploy_*_{machine}*.json yet")
    return files


def render(machine: str) -> str:
    return "\n".join(_table(f) for f in _files(machine))


# issue 14's targets: pruned vs dense inside a backend at this fraction of the encoder's FLOP ratio
TARGET_OF_FLOP_RATIO = {"sam-vit-b": 0.95, "lite-medsam": 0.9}
# ... and LiteMedSAM's fastest pruned encoder this many times faster than the dense one in eager fp32
TARGET_VS_EAGER = {"lite-medsam": 4.0}


def _span(values: list[float], spec: str = ".2f") -> str:
    """``a`` or ``a-b``: the smallest and largest of sorted ``values``."""
    return format(values[0], spec) if len(values) == 1 else f"{values[0]:{spec}}-{values[-1]:{spec}}"


def targets(machine: str, results: str = RESULTS) -> str:
    """Every committed encoder row of ``machine``, grouped by pruned model (its architecture record:
    two checkpoints with the same kept heads and widths are one model), backend, dtype, batch and
    threads: the range of speedup / FLOP ratio over the runs, how many runs reach the target, and the
    range of the pruned encoder's speedup over the dense one in eager fp32 where the run measured it
    (bold where every run of the group did and reached LiteMedSAM's 4x). A summary, not a selection:
    every run counts, the ones made before a change (glibc's defaults, older pruned models) included."""
    groups: dict[tuple, list[dict]] = collections.defaultdict(list)
    names: dict[str, str] = {}
    for path in _files(machine, results):
        data = json.load(open(path))
        arch = json.dumps(data["arch"], sort_keys=True)
        names.setdefault(arch, os.path.basename(os.path.dirname(data["checkpoint"])))
        for r in data["rows"]:
            if r["part"] != "encoder":
                continue
            key = (data["model"], arch, r["backend"], r["dtype"], r["batch"],
                   r.get("threads", data["machine"]["torch_threads"]))
            groups[key].append(r)

    def order(item):
        (model, arch, *rest), rows = item
        return model, -rows[0]["flop_ratio"], names[arch], *rest

    lines = ["| model | pruned model | FLOP ratio | backend | dtype | batch | threads | runs | speedup / FLOP ratio "
             "| target | runs at target | dense eager fp32 / pruned |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, arch, backend, dtype, batch, threads), rows in sorted(groups.items(), key=order):
        ratios = sorted(r["speedup_over_flop_ratio"] for r in rows)
        target = TARGET_OF_FLOP_RATIO.get(model)
        hits = sum(v >= target for v in ratios) if target else 0
        at = f"**{hits} of {len(ratios)}**" if hits else f"0 of {len(ratios)}"
        vs = sorted(r["pruned_vs_dense_torch_fp32"] for r in rows if r["pruned_vs_dense_torch_fp32"] is not None)
        eager = "-" if not vs else f"{_span(vs)}x" + (f" ({len(vs)} of {len(rows)} runs)" if len(vs) < len(rows) else "")
        if len(vs) == len(rows) and model in TARGET_VS_EAGER and vs[0] >= TARGET_VS_EAGER[model]:
            eager = f"**{eager}**"
        lines.append(f"| {model} | {names[arch]} | {rows[0]['flop_ratio']:.2f}x | {backend} | {dtype} | {batch} | {threads} "
                     f"| {len(ratios)} | {_span(ratios)} | {target if target else '-'} | {at} | {eager} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine", default="cpu2")
    parser.add_argument("--targets", action="store_true", help="Print the summary against issue 14's targets.")
    args = parser.parse_args()
    print(targets(args.machine) if args.targets else render(args.machine))


if __name__ == "__main__":
    main()
