"""Render the result tables of docs/benchmarks.md, docs/deployment.md and README.md from benchmarks/results/*.json.

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
PAGES = [ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "deployment.md", ROOT / "README.md"]
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


def _rows(name: str) -> list[dict]:
    import csv

    with open(RESULTS / name, newline="") as f:
        return list(csv.DictReader(f))


def _from_csv(module: str, renderer: str, name: str) -> Callable[[], str]:
    """A table drawn by a benchmark script's own renderer (``module.renderer``) from a results CSV."""
    def table() -> str:
        import importlib

        return getattr(importlib.import_module(module), renderer)(_rows(name))
    return table


def _recipe_tables(name: str) -> dict[str, Callable[[], str]]:
    """The two tables of one ``benchmarks/lite_medsam_recipes.py --name NAME`` run: ``NAME`` (one row
    per recipe) and ``NAME_paired`` (every recipe against the reference)."""
    return {name: _from_csv("lite_medsam_recipes", "recipes_table", f"{name}_cpu2.csv"),
            f"{name}_paired": _from_csv("lite_medsam_recipes", "paired_table", f"{name}_cpu2_paired.csv")}


# the --name of every lite_medsam_recipes.py run whose tables README shows
RECIPE_TABLES = (
    "lite_medsam_recipes", "lite_medsam_recovery", "lite_medsam_recovery_lr", "lite_medsam_progressive",
    "lite_medsam_recovery_steps", "lite_medsam_importance_refit", "lite_medsam_importance_refit100",
    "lite_medsam_importance_refit_all", "lite_medsam_importance_refit100_r30",
    "lite_medsam_importance_refit100_r60", "lite_medsam_importance_refit200", "lite_medsam_recovery_stem",
    "lite_medsam_importance_refit_all200", "lite_medsam_importance_refit_all400", "lite_medsam_recovery_lr_obs",
    "lite_medsam_importance_refit_all200_r30", "lite_medsam_xlong_lr3e-5", "lite_medsam_xlong_r30_lr3e-5",
    "lite_medsam_dense_teacher", "lite_medsam_dense_teacher_r30", "lite_medsam_dense_teacher_schedule", "lite_medsam_xlong_r60", "lite_medsam_goals",
    "lite_medsam_allocation", "lite_medsam_even_vs_count", "lite_medsam_importance_even",
    "lite_medsam_even_r60",
)


def leverage() -> str:
    import lite_medsam_sweep as sw

    return sw.leverage_table(_load("lite_medsam_leverage_cpu2.json"))


def flops() -> str:
    d = _load("prune_vit_b_cpu2.json")
    return "\n".join([
        "| | dense ViT-B (1024x1024) |", "|---|---|",
        "| `flops_torch_g`: `torch.utils.flop_counter` on a meta-device copy (counts attention matmuls, rel-pos "
        f"einsums, neck) | {d['flops_torch_g'][0]:.1f} G |",
        "| `flops_paper_g`: the paper's 2 x MACs of patch embedding, projections, attention matmuls and MLP (neck, "
        f"LayerNorm, softmax, biases ignored) | {d['flops_paper_g'][0]:.1f} G |",
    ])


def evaluate_speed() -> str:
    lines = ["| model (input) | images | forward alone | evaluate | overhead |", "|---|---|---|---|---|"]
    for r in sorted(_load("evaluate_cpu2.json"), key=lambda r: -r["input_size"]):
        per = r["forward_alone_s"] / r["images"]
        per_text = f"{per:.1f} s/image" if per >= 1 else f"{per * 1000:.1f} ms/image"
        over = f"+{r['overhead_pct']:.1f}%" if r["overhead_pct"] < 100 else f"+{r['overhead_pct']:.0f}%"
        if r["overhead_pct"] <= r["target_overhead_pct"]:
            over = f"**{over}**"
        lines.append(f"| `{r['model']}` ({r['input_size']}) | {r['images']}, batch {r['batch_size']} "
                     f"| {r['forward_alone_s']:.3g} s ({per_text}) | {r['evaluate_s']:.3g} s | {over} |")
    return "\n".join(lines)


def training_step_cost() -> str:
    """``benchmarks/bench_distill.py``: seconds per training step against a plain forward + backward."""
    d = _load("distill_cost_cpu2.json")
    med, plain = d["median_s"], d["median_s"]["plain_forward_backward"]
    lines = [f"| step (LiteMedSAM {d['removed_ratio']:.0%} removed, batch {d['batch']}, median of {d['rounds']}) "
             "| seconds | / plain forward + backward |", "|---|---|---|"]
    for key, label in (("plain_forward_backward", "plain forward + backward"), ("distill_step", "distillation step"),
                       ("recovery_step_cached", "recovery step, teacher outputs cached"),
                       ("recovery_step_first_draw", "recovery step, teacher run in the step (first draw)"),
                       ("plain_trunk_forward_backward", "plain forward + backward from the cached stem output")):
        if key in med:
            lines.append(f"| {label} | {med[key]:.2f} | {med[key] / plain:.2f}x |")
    for a in d.get("amortised", []):
        lines.append(f"| recovery stage of {a['run']}: {a['steps']} draws from {a['pool']} images, "
                     f"{a['first_draw_share']:.0%} first draws (mean) | | {a['ratio_stage_over_plain']:.2f}x |")
    return "\n".join(lines)


def ort_profile(name: str = "ort_profile_lite_cpu2.json") -> str:
    """``benchmarks/ort_profile.py``: FLOPs and ONNX Runtime kernel time per encoder part, dense vs pruned."""
    d = _load(name)
    threads = d["threads"]
    lines = ["| part | GFLOPs dense / pruned | FLOP ratio | " + " | ".join(
        f"ms dense / pruned, {t} thread{'s' if t > 1 else ''} | speedup" for t in threads) + " |",
        "|" + "---|" * (3 + 2 * len(threads))]
    for r in d["rows"]:
        cells = [f"`{r['part']}`" if r["part"].startswith("layers.") or r["part"] in ("patch_embed", "neck") else f"**{r['part']}**",
                 f"{r['gflops_dense']:.2f} / {r['gflops_pruned']:.2f}", f"{r['flop_ratio']:.2f}x"]
        for t in threads:
            cells += [f"{r[f'ms_dense_t{t}']:.0f} / {r[f'ms_pruned_t{t}']:.0f}", f"{r[f'speedup_t{t}']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def fisher_cost() -> str:
    from medcore_tp.models.registry import MODELS

    lines = ["| model (input) | images x rounds | Fisher per image | plain fwd+bwd per image | ratio "
             "| peak memory Fisher / plain |", "|---|---|---|---|---|---|"]
    for r in _load("fisher_cost_cpu2.json")["results"]:
        mib = [r["memory"][k]["peak_increase_bytes"] / 2**20 for k in ("fisher", "plain")]
        lines.append(f"| `{r['model']}` ({MODELS[r['model']].input.input_size}) | {r['images']} x {r['rounds']} "
                     f"| {_duration(r['fisher_median_s_per_image'])} | {_duration(r['plain_median_s_per_image'])} "
                     f"| **{r['ratio_of_medians']:.2f}x** | {mib[0]:,.0f} / {mib[1]:,.0f} MiB "
                     f"({r['peak_memory_ratio']:.2f}x) |")
    return "\n".join(lines)


def allocator() -> str:
    """``benchmarks/bench_allocator.py``: time and page faults per forward, glibc's defaults vs kept freed memory."""
    d = _load("allocator_cpu2.json")
    lines = [f"| encoder ({d['threads']} threads) | malloc | dense s | dense page faults | pruned s | pruned page faults "
             "| speedup | / FLOP ratio |", "|---|---|---|---|---|---|---|---|"]
    modes = {"default": "glibc's defaults", "keep": "`keep_freed_memory()`"}
    for r in d["rows"]:
        lines.append(f"| {r['model']} | {modes[r['mode']]} | {r['dense_median_s']:.3f} | {r['dense_median_faults']:,.0f} "
                     f"| {r['pruned_median_s']:.3f} | {r['pruned_median_faults']:,.0f} | {r['speedup']:.2f}x "
                     f"| {r['speedup_over_flop_ratio']:.2f} of {r['flop_ratio']:.2f}x |")
    return "\n".join(lines)


def op_profile(name: str) -> str:
    """``benchmarks/op_profile.py``: encoder time and FLOPs per kind of op, dense vs pruned, and the bound
    on the speedup if every kind with FLOPs shrank by its own FLOP ratio and the rest as measured."""
    import op_profile as op_profile_script

    data = _load(name)

    def num(v, spec):
        return "-" if v is None else format(v, spec)

    lines = ["| kind of op | dense ms | pruned ms | time ratio | FLOP ratio | GFLOP/s dense | GFLOP/s pruned |",
             "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['kind']} | {r['dense_ms']:.0f} | {r['pruned_ms']:.0f} | {num(r['time_ratio'], '.2f')} "
                     f"| {num(r['flop_ratio'], '.2f')} | {num(r['dense_gflop_per_s'], '.0f')} "
                     f"| {num(r['pruned_gflop_per_s'], '.0f')} |")
    t = data["total_ms"]
    lines.append(f"| **all** | {t['dense']:.0f} | {t['pruned']:.0f} | {data['time_ratio']:.2f} "
                 f"({data['time_ratio'] / data['flop_ratio']:.2f} of the FLOP ratio) | {data['flop_ratio']:.2f} | | |")
    bound = op_profile_script.bound_ms(data["rows"])
    ratio = t["dense"] / bound
    lines.append(f"| bound: FLOP kinds at their FLOP ratio, the rest as measured | {t['dense']:.0f} | {bound:.0f} "
                 f"| {ratio:.2f} ({ratio / data['flop_ratio']:.2f} of the FLOP ratio) | | | |")
    return "\n".join(lines)


def deploy() -> str:
    """``benchmarks/bench_deploy.py``'s latency tables, one per model (``deploy_table.py``)."""
    import deploy_table

    return deploy_table.render("cpu2").rstrip("\n")


def attention_floor() -> str:
    """``benchmarks/attention_floor.py``: one global ViT-B head four ways, and the encoders with each faster way."""
    d = _load("attention_floor_cpu2.json")
    ph, g = d["per_head_s"], d["gflop_per_head"]
    labels = {"sdpa": "sdpa, as the encoders run it (mask built, then SDPA)", "no bias": "SDPA with no bias",
              "matmuls": "QK^T and AV as plain matrix products (no softmax)",
              "flex": f"flex_attention, bias as score_mod (max \\|diff\\| to sdpa {ph['flex_max_abs_diff']:.0e})"}
    lines = [f"| one global head, {d['threads']} threads, median of {d['repeats']} | ms | GFLOP/s of QK^T + AV |",
             "|---|---|---|"]
    lines += [f"| {labels[k]} | {ph[k] * 1e3:.1f} | {g / ph[k]:.0f} |" for k in labels]
    heads = d["global_heads"]
    lines += ["", f"| encoder, global heads dense {heads['dense']} / pruned {heads['pruned']} | dense s | pruned s "
              "| speedup | / FLOP ratio |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['dense_s']:.2f} | {r['pruned_s']:.2f} | {r['speedup']:.2f}x "
              f"| {r['speedup_over_flop_ratio']:.2f} of {d['flop_ratio']:.2f}x |" for r in d["rows"]]
    return "\n".join(lines)


def deploy_targets() -> str:
    """Issue 14's latency targets against every committed ``bench_deploy`` run (``deploy_table.py``)."""
    import deploy_table

    return deploy_table.targets("cpu2").rstrip("\n")


TABLES: dict[str, Callable[[], str]] = {
    "deploy": deploy,
    "deploy_targets": deploy_targets,
    "attention_floor": attention_floor,
    "op_profile_vit-b": lambda: op_profile("op_profile_vit-b_cpu2.json"),
    "op_profile_lite": lambda: op_profile("op_profile_lite_cpu2.json"),
    "op_profile_lite_pruned_first": lambda: op_profile("op_profile_lite_cpu2_pruned-first.json"),
    "allocator": allocator,
    "flops": flops,
    "fisher_cost": fisher_cost,
    "evaluate_speed": evaluate_speed,
    "training_step_cost": training_step_cost,
    "lite_medsam_default_sweep": _from_csv("lite_medsam_sweep", "sweep_table", "lite_medsam_default_sweep_cpu2.csv"),
    "lite_medsam_default_comparisons": _from_csv("lite_medsam_sweep", "comparison_table",
                                                 "lite_medsam_default_comparisons_cpu2.csv"),
    "lite_medsam_default200_sweep": _from_csv("lite_medsam_sweep", "sweep_table", "lite_medsam_default200_sweep_cpu2.csv"),
    "lite_medsam_default200_comparisons": _from_csv("lite_medsam_sweep", "comparison_table",
                                                    "lite_medsam_default200_comparisons_cpu2.csv"),
    "lite_medsam_refit_grad_sweep": _from_csv("lite_medsam_sweep", "sweep_table", "lite_medsam_refit_grad_sweep_cpu2.csv"),
    "lite_medsam_refit_grad_comparisons": _from_csv("lite_medsam_sweep", "comparison_table",
                                                    "lite_medsam_refit_grad_comparisons_cpu2.csv"),
    "lite_medsam_sweep": _from_csv("lite_medsam_sweep", "sweep_table", "lite_medsam_sweep_cpu2.csv"),
    "lite_medsam_comparisons": _from_csv("lite_medsam_sweep", "comparison_table", "lite_medsam_comparisons_cpu2.csv"),
    "lite_medsam_leverage": leverage,
    **{key: table for name in RECIPE_TABLES for key, table in _recipe_tables(name).items()},
    "export_parity": _from_csv("export_parity", "parity_table", "export_parity_cpu2.csv"),
    "export_parity_even": _from_csv("export_parity", "parity_table", "export_parity_even_cpu2.csv"),
    "cross_modality": _from_csv("cross_modality", "cross_table", "cross_modality_cpu2.csv"),
    "cross_modality_paired": _from_csv("cross_modality", "cross_paired_table", "cross_modality_cpu2_paired.csv"),
    "cross_modality_recovered": _from_csv("cross_modality", "cross_table", "cross_modality_recovered_cpu2.csv"),
    "cross_modality_recovered_ratios": _from_csv("cross_modality", "cross_table",
                                                 "cross_modality_recovered_ratios_cpu2.csv"),
    "cross_modality_even": _from_csv("cross_modality", "cross_table", "cross_modality_even_cpu2.csv"),
    "cross_modality_refit_all200": _from_csv("cross_modality", "cross_table", "cross_modality_refit_all200_cpu2.csv"),
    "cross_modality_xlong": _from_csv("cross_modality", "cross_table", "cross_modality_xlong_cpu2.csv"),
    "cross_modality_xlong_paired": _from_csv("cross_modality", "cross_paired_table", "cross_modality_xlong_cpu2_paired.csv"),
    "cross_modality_xlong_dense_r60": _from_csv("cross_modality", "cross_table", "cross_modality_xlong_dense_r60_cpu2.csv"),
    "cross_modality_refit": _from_csv("cross_modality", "cross_table", "cross_modality_refit_cpu2.csv"),
    "cross_modality_refit_paired": _from_csv("cross_modality", "cross_paired_table",
                                             "cross_modality_refit_cpu2_paired.csv"),
    "ort_profile": ort_profile,
    "ort_profile_even": lambda: ort_profile("ort_profile_lite_cpu2_even.json"),
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

    # an empty pair of markers (a table just added to a page) is filled too
    return re.sub(r"<!-- table:(\S+) -->\n(?:.*?\n)?<!-- /table:\1 -->", one, text, flags=re.S)


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
