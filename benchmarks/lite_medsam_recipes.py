"""Recipes against each other on LiteMedSAM: points of several ``medcore-tp sweep`` folders (or
``evaluate`` folders) evaluated on the same images with the same boxes, paired per image.

Each ``--point LABEL=FOLDER`` names a folder holding ``per_image.csv`` (a sweep point, the dense
point, or an ``evaluate`` output) and, for sweep points, ``point.json`` (parameters, FLOPs, seconds).
The first point is the reference of the paired differences unless ``--reference`` names another.
Writes ``benchmarks/results/<name>_<machine>.csv`` (``--name``, default ``lite_medsam_recipes``; one
row per point: metrics and their change against the dense model), ``..._paired.csv`` (every point
against the reference: mean difference and bootstrap 95% interval per metric) and a PNG of Boundary
F1 and HD95 against GFLOPs, and prints both tables.

Usage: ``python benchmarks/lite_medsam_recipes.py --point dense=out/new/dense --point
old=out/old/medcore-0.5 --point new=out/new/refit-0.5 --reference old``

The committed figures (``lite_medsam_recipes_cpu2.*`` against the paper's cascade,
``lite_medsam_recovery_cpu2.*`` against the refit alone) came from sweeps with the same data, splits,
box jitter and calibration images (``D=kvasir-seg-256,cvc-clinicdb-256`` under the data folder; every
sweep ``--model lite-medsam --data $D --calib-size 16 --repeats 1 --ratios 0.5``, MedCore unless said):

- the paper's cascade: ``--recover-steps 100`` run with the code before the refit (1/s_b allocation,
  no refit; today ``--allocation sensitivity --refit none``);
- no recovery: ``--importances random --recover-steps 0 --refit none --allocation count``;
- the refit alone: ``--importances random,taylor,medcore --recover-steps 0 --refit dense --allocation
  count`` (the 50% points of ``lite_medsam_sweep_cpu2.csv``);
- the refit on the pruned model's own inputs: ``--recover-steps 0 --refit paired``;
- the default with ``--data``: ``--recover-steps 100 --refit dense --allocation count``;
- distillation: ``--recover-steps 0 --distill-steps 60 --distill-lr 1e-4 --refit dense``, with the
  held-back checks keeping the best weights.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _cli import write_rows  # noqa: E402
from _machine import machine_info, machine_tag  # noqa: E402

from medcore_tp.atomic import save_json  # noqa: E402
from medcore_tp.metrics import METRIC_NAMES  # noqa: E402
from medcore_tp.paired import paired_difference  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
SHOWN = ("dice", "boundary_f1", "hd95", "nsd")


def per_image(folder: str) -> dict[tuple[str, str], dict[str, float]]:
    with open(os.path.join(folder, "per_image.csv"), newline="") as f:
        return {(r["dataset"], r["name"]): {m: float(r[m]) for m in METRIC_NAMES} for r in csv.DictReader(f)}


def point_record(folder: str) -> dict:
    path = os.path.join(folder, "point.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--point", action="append", required=True, help="LABEL=FOLDER, in table order")
    ap.add_argument("--reference", default=None, help="LABEL the paired differences are taken against")
    ap.add_argument("--dense", default="dense", help="LABEL of the dense model")
    ap.add_argument("--name", default="lite_medsam_recipes", help="base name of the result files")
    args = ap.parse_args()
    points = dict(p.split("=", 1) for p in args.point)
    reference = args.reference or next(iter(points))
    data = {label: per_image(folder) for label, folder in points.items()}
    keys = sorted(set.intersection(*(set(d) for d in data.values())))
    if not keys:
        raise SystemExit("the folders share no image: they were not evaluated on the same split")
    rows, paired = [], []
    for label, folder in points.items():
        rec = point_record(folder)
        profile = rec.get("profile", {})
        row = {"point": label, "folder": folder, "n": len(keys),
               "removed_fraction": rec.get("removed_fraction", 0.0 if label == args.dense else None),
               "flops_torch_g": profile.get("flops_torch_g"), "encoder_params": profile.get("encoder_params"),
               "seconds": sum(rec.get("seconds", {}).get(k, 0.0) for k in ("calibration", "prune", "recovery",
                                                                          "distillation", "finetune"))}
        for m in METRIC_NAMES:
            row[m] = sum(data[label][k][m] for k in keys) / len(keys)
        rows.append(row)
        if label != reference:
            for m in METRIC_NAMES:
                d = paired_difference([data[label][k][m] for k in keys], [data[reference][k][m] for k in keys])
                paired.append({"a": label, "b": reference, "metric": m, "n": d.n, "mean_a": d.mean_a,
                               "mean_b": d.mean_b, "mean_diff": d.mean_diff, "ci_low": d.low, "ci_high": d.high})
    tag = machine_tag()
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, f"{args.name}_{tag}")
    for path, table in ((f"{base}.csv", rows), (f"{base}_paired.csv", paired)):
        write_rows(path, table)
    settings = {}
    for label, folder in points.items():  # the sweep each point came from, as it was asked
        path = os.path.join(os.path.dirname(os.path.abspath(folder)), "settings.json")
        if os.path.exists(path):
            with open(path) as f:
                settings[label] = json.load(f)
    save_json({"machine": machine_info(), "points": points, "reference": reference, "images": len(keys),
               "sweep_settings": settings}, f"{base}_machine.json")
    _plot(rows, f"{base}.png")
    print(recipes_table(rows))
    print()
    print(paired_table(paired))
    print(f"\nwrote {base}.csv, {base}_paired.csv, {base}.png")


def recipes_table(rows: list[dict]) -> str:
    """The README table of a recipes CSV (values as read back from the file or as computed)."""
    out = ["| recipe | removed | GFLOPs | Dice | BF1 | HD95 px | NSD | seconds (calibration to last step) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        removed = "-" if r["removed_fraction"] in (None, "") else f"{float(r['removed_fraction']):.2%}"
        flops = "-" if r["flops_torch_g"] in (None, "") else f"{float(r['flops_torch_g']):.2f}"
        out.append(f"| {r['point']} | {removed} | {flops} | {float(r['dice']):.4f} | {float(r['boundary_f1']):.4f} "
                   f"| {float(r['hd95']):.2f} | {float(r['nsd']):.4f} | {float(r['seconds']):.0f} |")
    return "\n".join(out)


def paired_table(rows: list[dict]) -> str:
    """The README table of a paired-differences CSV: a - b per metric with its 95% interval."""
    out = ["| a - b | n | " + " | ".join(SHOWN) + " |", "|---|---|" + "---|" * len(SHOWN)]
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in rows))
    for a, b in pairs:
        cells = []
        for m in SHOWN:
            r = next(x for x in rows if (x["a"], x["b"], x["metric"]) == (a, b, m))
            cells.append(f"{float(r['mean_diff']):+.4f} [{float(r['ci_low']):+.4f}, {float(r['ci_high']):+.4f}]")
            n = r["n"]
        out.append(f"| {a} - {b} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["flops_torch_g"] is not None]
    # numbered markers and a legend below: long recipe names no longer overlap each other
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2 + 0.22 * len(shown)))
    for ax, metric, label in ((axes[0], "boundary_f1", "Boundary F1"), (axes[1], "hd95", "HD95 (px)")):
        for i, r in enumerate(shown, 1):
            ax.scatter(r["flops_torch_g"], r[metric], s=40, color=f"C{(i - 1) % 10}", label=f"{i}: {r['point']}")
            ax.annotate(str(i), (r["flops_torch_g"], r[metric]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("encoder GFLOPs (torch)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"LiteMedSAM recipes, {rows[0]['n']} test images (kvasir-seg-256 + cvc-clinicdb-256)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=8, ncol=1, frameon=False)
    fig.tight_layout(rect=(0, 0.055 * len(shown) * 4.2 / (4.2 + 0.22 * len(shown)), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
