"""Render the result tables of docs/benchmarks.md and README.md from benchmarks/results/*.json.

Every table between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` is rewritten from its results
file, so the numbers on the page are the numbers in the file. Run after a benchmark:

    python benchmarks/render_tables.py            # rewrite the tables in place
    python benchmarks/render_tables.py --check    # exit 1 if a page differs from its results
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "docs" / "benchmarks.md", ROOT / "README.md"]
METRICS = ("dice", "iou", "boundary_f1", "hd95", "nsd")
METRIC_HEAD = "| Dice | IoU | Boundary F1 | HD95 px | NSD |"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _metrics(row: dict) -> str:
    return " | ".join(f"{row[m]:.2f}" if m == "hd95" else f"{row[m]:.4f}" for m in METRICS)


def lite_importances() -> str:
    d = _load("lite_medsam_importances_cpu2.json")
    lines = ["| model | removed " + METRIC_HEAD, "|---|---|---|---|---|---|---|"]
    for name, row in d["rows"].items():
        label = name.replace(f"+recovery{d['recover_steps']}", f" + {d['recover_steps']} recovery steps per stage")
        removed = f"{row['removed']:.2%}" if "removed" in row else "0%"
        lines.append(f"| {label} | {removed} | {_metrics(row)} |")
    return "\n".join(lines)


def lite_cascade() -> str:
    d = _load("lite_medsam_cascade_cpu2.json")
    labels = {"dense": "dense", "pruned": "pruned, no recovery",
              "recovered": f"+ recovery, {d['recover_steps']} steps per stage",
              "finetuned": f"+ fine-tuning, {d['epochs']} epochs"}
    lines = ["| stage " + METRIC_HEAD, "|---|---|---|---|---|---|"]
    lines += [f"| {labels.get(name, name)} | {_metrics(row)} |" for name, row in d["rows"].items()]
    return "\n".join(lines)


def vit_b() -> str:
    d = _load("prune_vit_b_cpu2.json")
    c = d["config"]
    dense, pruned = statistics.median(d["latency_dense_s"]), statistics.median(d["latency_pruned_s"])
    ft, fp = d["flops_torch_g"], d["flops_paper_g"]
    removed = 1 - d["encoder_params_pruned"] / d["encoder_params_dense"]
    protect = "-".join(str(b) for b in (c["protect_blocks"][0], c["protect_blocks"][-1]))
    rows = [
        ("prepare + dependency graph + score and remove",
         f"{d['seconds_prepare']:.3f} s + {d['seconds_graph']:.2f} s + {d['seconds_score_and_remove']:.2f} s"),
        ("encoder parameters", f"{d['encoder_params_dense']:,} -> {d['encoder_params_pruned']:,} ({removed:.2%} removed)"),
        ("max \\|pruned - dense with the same groups zeroed\\|",
         f"{d['equivalence_max_abs_diff']:.1e} (output scale {d['equivalence_output_scale']:.1f})"),
        ("GFLOPs torch / paper", f"{ft[0]:.1f} -> {ft[1]:.1f} ({ft[0] / ft[1]:.2f}x) / "
                                 f"{fp[0]:.1f} -> {fp[1]:.1f} ({fp[0] / fp[1]:.2f}x)"),
        ("encoder latency, 1024x1024, batch 1", f"{dense:.2f} s -> {pruned:.2f} s: **{d['speedup']:.2f}x**"),
    ]
    head = f"| ViT-B, heads {c['heads_ratio']} / MLP {c['mlp_ratio']} / blocks {protect} kept | |"
    return "\n".join([head, "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def _sweep(kind: str) -> Callable[[], str]:
    """Tables of ``benchmarks/lite_medsam_sweep.py``'s results (its own renderers, from the CSV / JSON)."""
    def table() -> str:
        import csv

        import lite_medsam_sweep as sw

        if kind == "leverage":
            return sw.leverage_table(_load("lite_medsam_leverage_cpu2.json"))
        name = "lite_medsam_sweep_cpu2.csv" if kind == "sweep" else "lite_medsam_comparisons_cpu2.csv"
        with open(RESULTS / name, newline="") as f:
            rows = list(csv.DictReader(f))
        return sw.sweep_table(rows) if kind == "sweep" else sw.comparison_table(rows)
    return table


def deploy() -> str:
    """``benchmarks/bench_deploy.py``'s latency tables, one per model (``deploy_table.py``)."""
    import deploy_table

    return deploy_table.render("cpu2").rstrip("\n")


TABLES: dict[str, Callable[[], str]] = {
    "deploy": deploy,
    "lite_medsam_sweep": _sweep("sweep"),
    "lite_medsam_comparisons": _sweep("comparisons"),
    "lite_medsam_leverage": _sweep("leverage"),
    "lite_medsam_importances": lite_importances,
    "lite_medsam_cascade": lite_cascade,
    "prune_vit_b": vit_b,
}


def render(text: str) -> str:
    """``text`` with every marked table rewritten from its results file."""
    def one(match: re.Match) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise SystemExit(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        return f"<!-- table:{name} -->\n{TABLES[name]()}\n<!-- /table:{name} -->"

    return re.sub(r"<!-- table:(\S+) -->\n.*?\n<!-- /table:\1 -->", one, text, flags=re.S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the pages match the results")
    args = parser.parse_args()
    stale = []
    for page in PAGES:
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page)
            if not args.check:
                page.write_text(new)
    verb = "differ from their results" if args.check else "rewritten"
    print(f"{len(stale)} page(s) {verb}: {', '.join(str(p.relative_to(ROOT)) for p in stale) or '-'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
