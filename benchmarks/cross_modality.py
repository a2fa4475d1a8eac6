"""Do boundaries generalise? The Dice / Boundary F1 a pruned LiteMedSAM loses on CT organs, against what
it loses on the polyps it was calibrated on.

CT: every structure of ``ct-organs-samed2d/masks_all`` (30 structures of 4 slices: liver, aorta,
lung lobes, ribs, ...) becomes one image/mask pair of a scratch folder, so each structure gets its own
box. The dense and each pruned model are evaluated there (``medcore-tp evaluate --split all``). The
polyp figures are the per-image results of the same models in a ``medcore-tp sweep`` folder (its dense
point and its pruned points, on the kvasir-seg-256 + cvc-clinicdb-256 test splits).

Per modality and metric: the dense and the pruned mean, the relative change pruned / dense - 1 (images
resampled in pairs), and the difference of the relative changes CT - polyps with a bootstrap 95%
interval (the two sets resampled independently); a negative difference means CT loses more. Writes
``benchmarks/results/<name>_<machine>.csv`` (``--name``, default ``cross_modality``), ``..._paired.csv``
(the points against each other on CT) and ``..._machine.json`` and prints the table.

Usage: ``python benchmarks/cross_modality.py --sweep out/sweep --point medcore-0.5 [--point ...]
[--work out/cross_modality] [--name cross_modality]``
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _cli import run_cli, write_rows  # noqa: E402
from _machine import machine_info, machine_tag  # noqa: E402

from medcore_tp.atomic import save_json  # noqa: E402
from medcore_tp.paired import paired_difference  # noqa: E402
from medcore_tp.paths import data_dir  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
METRICS = ("dice", "boundary_f1")
RESAMPLES = 2000


def structure_folder(source: str, dest: str) -> int:
    """One image/mask pair per structure of ``source/masks_all`` under ``dest``; returns the count."""
    n = 0
    for stem in sorted(os.listdir(os.path.join(source, "masks_all"))):
        for mask in sorted(os.listdir(os.path.join(source, "masks_all", stem))):
            name = f"{stem}__{os.path.splitext(mask)[0]}.png"
            for sub, src in (("images", os.path.join(source, "images", f"{stem}.png")),
                             ("masks", os.path.join(source, "masks_all", stem, mask))):
                os.makedirs(os.path.join(dest, sub), exist_ok=True)
                shutil.copyfile(src, os.path.join(dest, sub, name))
            n += 1
    return n


def per_image(folder: str, metric: str) -> dict[tuple[str, str], float]:
    with open(os.path.join(folder, "per_image.csv"), newline="") as f:
        return {(r["dataset"], r["name"]): float(r[metric]) for r in csv.DictReader(f)}


def relative_change(dense: np.ndarray, pruned: np.ndarray, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """pruned mean / dense mean - 1, and its bootstrap replicates (images resampled in pairs)."""
    idx = rng.integers(0, len(dense), size=(RESAMPLES, len(dense)))
    return float(pruned.mean() / dense.mean() - 1), pruned[idx].mean(1) / dense[idx].mean(1) - 1


def paired_arrays(dense_dir: str, pruned_dir: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    d, p = per_image(dense_dir, metric), per_image(pruned_dir, metric)
    keys = sorted(set(d) & set(p))
    if not keys:
        raise SystemExit(f"{dense_dir} and {pruned_dir} share no image")
    return np.array([d[k] for k in keys]), np.array([p[k] for k in keys])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", required=True, help="a medcore-tp sweep folder on the polyp test splits")
    ap.add_argument("--point", action="append", required=True, help="a pruned point of --sweep, e.g. medcore-0.5")
    ap.add_argument("--work", default="out/cross_modality", help="scratch folder (CT pairs and evaluations)")
    ap.add_argument("--name", default="cross_modality", help="result file prefix under benchmarks/results")
    args = ap.parse_args()
    ct = os.path.join(args.work, "ct-structures")
    if not os.path.isdir(ct):
        print(f"{structure_folder(str(data_dir('ct-organs-samed2d')), ct)} CT structures -> {ct}")
    evals = {}
    for label, ckpt in [("dense", None)] + [(p, os.path.join(args.sweep, p, "pruned.pth")) for p in args.point]:
        out = os.path.join(args.work, f"eval-{label}")
        weights = [] if ckpt is None else ["--checkpoint", ckpt]
        run_cli(os.path.join(out, "summary.json"), "evaluate", "--model", "lite-medsam", *weights, "--data", ct,
                "--split", "all", "--out", out)
        evals[label] = out
    rng = np.random.default_rng(0)
    rows = []
    for point in args.point:
        for metric in METRICS:
            sets = {"ct": paired_arrays(evals["dense"], evals[point], metric),
                    "polyp": paired_arrays(os.path.join(args.sweep, "dense"), os.path.join(args.sweep, point), metric)}
            change = {k: relative_change(d, p, rng) for k, (d, p) in sets.items()}
            diff = change["ct"][1] - change["polyp"][1]
            lo, hi = np.percentile(diff, [2.5, 97.5])
            row = {"point": point, "metric": metric}
            for k, (d, p) in sets.items():
                row.update({f"{k}_n": len(d), f"{k}_dense": d.mean(), f"{k}_pruned": p.mean(),
                            f"{k}_relative_change": change[k][0]})
            row.update({"ct_minus_polyp": change["ct"][0] - change["polyp"][0], "ci_low": lo, "ci_high": hi})
            rows.append(row)
    pairs = []
    for i, a in enumerate(args.point):
        for b in args.point[i + 1:]:
            for metric in METRICS:
                _, pa = paired_arrays(evals["dense"], evals[a], metric)
                _, pb = paired_arrays(evals["dense"], evals[b], metric)
                diff = paired_difference(pa, pb, resamples=RESAMPLES)
                pairs.append({"modality": "ct", "a": a, "b": b, "metric": metric, "n": diff.n, "mean": diff.mean_diff,
                              "ci_low": diff.low, "ci_high": diff.high})
    tag = machine_tag("cpu")
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{args.name}_{tag}.csv")
    for file, table in ((path, rows), (os.path.join(RESULTS, f"{args.name}_{tag}_paired.csv"), pairs)):
        if table:
            write_rows(file, table)
    save_json({"machine": machine_info("cpu"), "sweep": os.path.abspath(args.sweep), "points": args.point,
               "resamples": RESAMPLES}, os.path.join(RESULTS, f"{args.name}_{tag}_machine.json"))
    with open(path, newline="") as f:
        print(cross_table(list(csv.DictReader(f))))
    for r in pairs:
        print(f"CT {r['a']} - {r['b']} {r['metric']}: {r['mean']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
              f"({r['n']} structures)")
    print(f"wrote {path}")


def cross_table(rows: list[dict]) -> str:
    """The README table of a ``cross_modality_*.csv`` (rows as read back from the file)."""
    out = ["| point | metric | CT dense -> pruned (n) | CT change | polyp dense -> pruned (n) | polyp change "
           "| CT - polyp [95% CI] |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        r = {k: (v if k in ("point", "metric") else float(v)) for k, v in row.items()}
        out.append(f"| {r['point']} | {r['metric']} | {r['ct_dense']:.4f} -> {r['ct_pruned']:.4f} ({r['ct_n']:.0f}) "
                   f"| {r['ct_relative_change']:+.1%} | {r['polyp_dense']:.4f} -> {r['polyp_pruned']:.4f} "
                   f"({r['polyp_n']:.0f}) | {r['polyp_relative_change']:+.1%} | {r['ct_minus_polyp']:+.1%} "
                   f"[{r['ci_low']:+.1%}, {r['ci_high']:+.1%}] |")
    return "\n".join(out)



def cross_paired_table(rows: list[dict]) -> str:
    """The README table of a ``cross_modality_*_paired.csv``: the points against each other on CT."""
    out = ["| on CT structures: a - b | metric | n | mean [95% CI] |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['a']} - {r['b']} | {r['metric']} | {r['n']} | {float(r['mean']):+.4f} "
                   f"[{float(r['ci_low']):+.4f}, {float(r['ci_high']):+.4f}] |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
