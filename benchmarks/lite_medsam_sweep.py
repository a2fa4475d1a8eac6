"""Packaged LiteMedSAM: ``medcore-tp sweep`` (ratios 0.3, 0.5, 0.6 x medcore, taylor, random) and
``medcore-tp leverage`` on kvasir-seg-256 + cvc-clinicdb-256; results into ``benchmarks/results/``.

``--recipe`` picks the sweep's settings (``RECIPES``): ``default``, the recovery ``prune --data`` uses
(least-squares refit, equal-count allocation, 100 recovery steps per stage), ``refit``, the refit
alone, or ``progressive`` / ``progressive-dense`` (MedCore at 50% only: 4 progressive stages of 50
recovery steps, towards the model as each stage starts / the dense model) or ``long`` (MedCore at 50%,
the default with 200 recovery steps per stage; ``long-dense``: the same towards the dense model; ``long-grad``: the same with ``medcore-grad``; ``refit-grad``: MedCore, ``medcore-grad`` and Taylor at 50%, refit alone; ``distill300``: the refit, then 300 distillation steps towards the dense model instead of recovery; ``refit-obs`` / ``default-obs`` / ``long-obs``: the ``refit`` importance, refit alone at 0.5, 0.3, 0.6 / with 2 x 100 / 2 x 200 recovery steps at 0.5 (``default-obs-lr3e-5``: 2 x 100 at lr 3e-5; ``default-obs-dense``: towards the dense model; ``default-obs-flips``: drawing from each image and its two mirrors; ``default-obs-frozen-stem``: ``default-obs`` rerun after recovery stopped training the stem); ``default-obs-ratios``: 2 x 100 at 0.3 and 0.6; ``default-obs-all``: 2 x 100 at 0.5 calibrated and recovered on all 120 training images instead of 32 (``long-obs-all``: 2 x 200, ``long-obs-all-r30`` the same at 0.3; ``xlong-obs-all``: 2 x 400, after recovery stopped training the stem; ``xlong-obs-all-lr3e-5`` the same at lr 3e-5, ``xlong-obs-all-r30-lr3e-5`` that at 0.3; ``xlong-obs-all-r60``: ``xlong-obs-all`` at 0.6; ``...-lr3e-5-dense``: the lr 3e-5 ones towards the dense model, ``xlong-obs-all-dense`` the lr 1e-5 one, ``xxlong-obs-all-dense`` that with 2 x 600 steps; ``xlong-obs-all-lr3e-5-dense-cosine``: the lr 3e-5 one annealed to 0 within each stage, ``xxlong-obs-all-lr3e-5-dense-cosine`` that with 2 x 600 steps, ``xlong-obs-all-lr5e-5-dense-cosine`` annealed from lr 5e-5, ``...-cosine-flips`` drawing each image also mirrored; ``xlong-obs-all-r30-lr3e-5-cosine``: the stage-teacher lr 3e-5 one at 30%, annealed); ``refit-obs-even``: the refit alone at 0.5 and 0.3 taking the same fraction of every block, none protected (``refit-obs-even-all`` on all 120 training images at 0.5, 0.3, 0.6; ``long-obs-even-all`` that at 0.5 with 2 x 200 recovery steps, ``long-obs-even-all-r60`` at 0.6, ``long-obs-even-all-r60-dense-cosine`` that towards the dense model annealed from lr 3e-5; ``refit-even-importances``: random, Taylor and MedCore that way at 0.5, refit alone); ``refit-ct``: the refit alone at 0.5 for ``refit``, MedCore, Taylor and random in one sweep, whose models ``cross_modality.py`` evaluates on CT) or ``default200`` (what ``prune --data`` does now,
200 recovery steps per stage, MedCore and Taylor at 0.5, 0.3, 0.6; its MedCore 50% point is ``long``'s). ``--run`` runs (or resumes) the sweep and the leverage analysis; without it the finished
folders in ``--sweep`` / ``--leverage`` are collected as they are (finished sweep points only).
Collecting copies ``sweep.csv``, ``comparisons.csv``, ``pareto.png`` to
``benchmarks/results/<prefix>_{sweep,comparisons,pareto}_<machine>.*`` (prefix ``lite_medsam`` for
``refit``, ``lite_medsam_default`` for ``default``), ``leverage.csv/json/png`` to
``lite_medsam_leverage_<machine>.*``, writes the machine record beside them and prints the tables
(Markdown) that ``benchmarks/render_tables.py`` puts into README.md.

A default-recovery point takes about a quarter of an hour on 2 CPU cores, so a sweep may span
sessions: collecting also keeps each finished point's records (``point.json``, ``per_image.csv``,
``summary.json``; not the checkpoint) with the sweep's ``settings.json`` and ``splits.json`` under
``benchmarks/results/<prefix>_points_<machine>/``, and ``--run`` first copies the kept points into a
``--sweep`` folder that lacks them, so that the sweep resumes after them.

Usage: ``python benchmarks/lite_medsam_sweep.py [--recipe default|default200|refit|progressive|progressive-dense|long|long-dense|long-grad|refit-grad|distill300|refit-obs|default-obs|default-obs-ratios|default-obs-all|default-obs-lr3e-5|default-obs-dense|default-obs-flips|default-obs-frozen-stem|long-obs-all-r30|xlong-obs-all|xlong-obs-all-lr3e-5|xlong-obs-all-r30-lr3e-5|xlong-obs-all-r60|xlong-obs-all-dense|xxlong-obs-all-dense|xlong-obs-all-lr3e-5-dense|xlong-obs-all-lr3e-5-dense-cosine|xxlong-obs-all-lr3e-5-dense-cosine|xlong-obs-all-lr5e-5-dense-cosine|xlong-obs-all-lr3e-5-dense-cosine-flips|xlong-obs-all-r30-lr3e-5-cosine|xlong-obs-all-r30-lr3e-5-dense|refit-obs-even|refit-obs-even-all|long-obs-even-all|long-obs-even-all-r60|long-obs-even-all-r60-dense-cosine|refit-even-importances|refit-ct|long-obs|long-obs-all] [--run] [--sweep out/sweep-lite]
[--leverage out/leverage-lite] [--no-leverage]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _cli import polyp_data  # noqa: E402
from _machine import machine_info, machine_tag  # noqa: E402

from medcore_tp.atomic import save_json  # noqa: E402
from medcore_tp.paths import data_root  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _recipe(prefix: str, ratios: str, importances: str, steps: int, *extra: str, calib: int = 16,
            allocation: str = "count") -> tuple[str, list[str]]:
    """(result-file prefix, sweep arguments): the least-squares refit from the dense statistics,
    ``allocation`` (equal-count by default), ``calib`` calibration images per dataset, ``steps`` recovery
    steps per stage."""
    return prefix, ["--ratios", ratios, "--importances", importances, "--recover-steps", str(steps), *extra,
                    "--refit", "dense", "--allocation", allocation, "--calib-size", str(calib), "--repeats", "1"]


# All on the full test splits (20 images per dataset), 16 calibration images per dataset unless said
# (prune's default with --data is 128), 1 latency repeat. The recipes that do not name their allocation
# ran with equal counts and with the then-default protection of the last two blocks where the ratio
# allowed it (only their 30% points: rerun those with "--protect-blocks", "8,9" to reproduce them;
# TinyViT now protects no block by default).
RECIPES = {
    # what prune --data did after each cascade stage: refit, then 100 recovery steps
    "default": _recipe("lite_medsam_default", "0.5,0.3,0.6", "medcore,taylor,random", 100),
    # progressive: 4 stages of about a quarter of every block's removals, 50 steps after each (the
    # default's 200 steps in all), recovering towards the model as each stage starts ...
    "progressive": _recipe("lite_medsam_progressive", "0.5", "medcore", 50, "--prune-steps", "4"),
    # ... or towards the dense model
    "progressive-dense": _recipe("lite_medsam_progressive_dense", "0.5", "medcore", 50, "--prune-steps", "4",
                                 "--recover-teacher", "dense"),
    # the default with twice the recovery steps (2 x 200), MedCore at 50% only
    "long": _recipe("lite_medsam_long", "0.5", "medcore", 200),
    # "long" recovering towards the dense model in both stages (the MLP stage's teacher is then the
    # dense model, not the head-pruned and recovered one)
    "long-dense": _recipe("lite_medsam_long_dense", "0.5", "medcore", 200, "--recover-teacher", "dense"),
    # "long" with MedCore's score plus the first-order term the paper drops
    "long-grad": _recipe("lite_medsam_long_grad", "0.5", "medcore-grad", 200),
    # the refit, then 300 distillation steps (batch 2, cosine from lr 1e-4) of the 50% model towards the
    # dense one on the mirrored calibration images, no recovery between the stages
    "distill300": _recipe("lite_medsam_distill300", "0.5", "medcore", 0, "--distill-steps", "300",
                          "--distill-lr", "1e-4"),
    # the refit-aware (structured OBS) importance: the refit alone at the default's ratios ...
    "refit-obs": _recipe("lite_medsam_refit_obs", "0.5,0.3,0.6", "refit", 0),
    # ... with the earlier default's 2 x 100 recovery steps at 50% (against the "default" recipe's points) ...
    "default-obs": _recipe("lite_medsam_default_obs", "0.5", "refit", 100),
    # ... with every training image of the two datasets (60 each) as calibration and recovery pool ...
    "default-obs-all": _recipe("lite_medsam_default_obs_all", "0.5", "refit", 100, calib=60),
    # ... the same at 30% and 60% ...
    "default-obs-ratios": _recipe("lite_medsam_default_obs_ratios", "0.3,0.6", "refit", 100),
    # ... and with 2 x 200 recovery steps at 50%
    "long-obs": _recipe("lite_medsam_long_obs", "0.5", "refit", 200),
    # ... and 2 x 200 steps on all 120 training images
    "long-obs-all": _recipe("lite_medsam_long_obs_all", "0.5", "refit", 200, calib=60),
    # "default-obs" once recovery stopped training the encoder's stem (LiteMedSAM's patch embedding and
    # MBConv stage) and ran it once per image (same settings; "default-obs" ran before that change)
    "default-obs-frozen-stem": _recipe("lite_medsam_default_obs_frozen_stem", "0.5", "refit", 100),
    # 2 x 400 steps on all 120 training images, with the stem run once per image
    "xlong-obs-all": _recipe("lite_medsam_xlong_obs_all", "0.5", "refit", 400, calib=60),
    # "xlong-obs-all" at lr 3e-5 (which beat 1e-5 at 2 x 100 steps on BF1)
    "xlong-obs-all-lr3e-5": _recipe("lite_medsam_xlong_obs_all_lr3e-5", "0.5", "refit", 400, "--recover-lr", "3e-5",
                                    calib=60),
    # "xlong-obs-all-lr3e-5" at 30%
    "xlong-obs-all-r30-lr3e-5": _recipe("lite_medsam_xlong_obs_all_r30_lr3e-5", "0.3", "refit", 400, "--recover-lr",
                                        "3e-5", calib=60),
    # the two lr 3e-5 recipes above recovering towards the dense model in both stages
    "xlong-obs-all-lr3e-5-dense": _recipe("lite_medsam_xlong_obs_all_lr3e-5_dense", "0.5", "refit", 400, "--recover-lr",
                                          "3e-5", "--recover-teacher", "dense", calib=60),
    # "xlong-obs-all-lr3e-5-dense" with the learning rate annealed from 3e-5 to 0 within each stage
    "xlong-obs-all-lr3e-5-dense-cosine": _recipe("lite_medsam_xlong_obs_all_lr3e-5_dense_cosine", "0.5", "refit", 400,
                                                 "--recover-lr", "3e-5", "--recover-teacher", "dense",
                                                 "--recover-schedule", "cosine", calib=60),
    # ... with 2 x 600 steps, and with 2 x 400 steps annealed from lr 5e-5
    "xxlong-obs-all-lr3e-5-dense-cosine": _recipe("lite_medsam_xxlong_obs_all_lr3e-5_dense_cosine", "0.5", "refit", 600,
                                                  "--recover-lr", "3e-5", "--recover-teacher", "dense",
                                                  "--recover-schedule", "cosine", calib=60),
    "xlong-obs-all-lr5e-5-dense-cosine": _recipe("lite_medsam_xlong_obs_all_lr5e-5_dense_cosine", "0.5", "refit", 400,
                                                 "--recover-lr", "5e-5", "--recover-teacher", "dense",
                                                 "--recover-schedule", "cosine", calib=60),
    # the annealed lr 3e-5 recipe at 30% with the stage teacher (the best 30% model's, held at 3e-5) ...
    "xlong-obs-all-r30-lr3e-5-cosine": _recipe("lite_medsam_xlong_obs_all_r30_lr3e-5_cosine", "0.3", "refit", 400,
                                               "--recover-lr", "3e-5", "--recover-schedule", "cosine", calib=60),
    # ... and the best 50% recipe drawing each training image also mirrored (three views per image)
    "xlong-obs-all-lr3e-5-dense-cosine-flips": _recipe("lite_medsam_xlong_obs_all_lr3e-5_dense_cosine_flips", "0.5",
                                                       "refit", 400, "--recover-lr", "3e-5", "--recover-teacher",
                                                       "dense", "--recover-schedule", "cosine", "--recover-views",
                                                       "identity,hflip,vflip", calib=60),
    "xlong-obs-all-r30-lr3e-5-dense": _recipe("lite_medsam_xlong_obs_all_r30_lr3e-5_dense", "0.3", "refit", 400,
                                              "--recover-lr", "3e-5", "--recover-teacher", "dense", calib=60),
    # "xlong-obs-all" (lr 1e-5) towards the dense model in both stages
    "xlong-obs-all-dense": _recipe("lite_medsam_xlong_obs_all_dense", "0.5", "refit", 400, "--recover-teacher", "dense",
                                   calib=60),
    # "xlong-obs-all-dense" with 2 x 600 steps
    "xxlong-obs-all-dense": _recipe("lite_medsam_xxlong_obs_all_dense", "0.5", "refit", 600, "--recover-teacher", "dense",
                                    calib=60),
    # "xlong-obs-all" (lr 1e-5) at 60%, the README's default ratio
    "xlong-obs-all-r60": _recipe("lite_medsam_xlong_obs_all_r60", "0.6", "refit", 400, calib=60),
    # "long-obs-all" at 30%
    "long-obs-all-r30": _recipe("lite_medsam_long_obs_all_r30", "0.3", "refit", 200, calib=60),
    # "default-obs" at 3 x its learning rate (3e-5; 1e-5 was tuned for ViT-B, 1e-4 lost to it)
    "default-obs-lr3e-5": _recipe("lite_medsam_default_obs_lr3e-5", "0.5", "refit", 100, "--recover-lr", "3e-5"),
    # "default-obs" recovering towards the dense model in both stages ...
    "default-obs-dense": _recipe("lite_medsam_default_obs_dense", "0.5", "refit", 100, "--recover-teacher", "dense"),
    # ... and drawing from each calibration image and its two mirrors (three times the samples)
    "default-obs-flips": _recipe("lite_medsam_default_obs_flips", "0.5", "refit", 100,
                                 "--recover-views", "identity,hflip,vflip"),
    # the refit alone at the goals' ratios with the same fraction taken from every block, none protected
    # (the default protects LiteMedSAM's last two blocks, 62% of its encoder, where the ratio allows)
    "refit-obs-even": _recipe("lite_medsam_refit_obs_even", "0.5,0.3", "refit", 0, "--protect-blocks", "none",
                              allocation="even"),
    # ... the same on all 120 training images at the goals' ratios and the README's default ratio ...
    "refit-obs-even-all": _recipe("lite_medsam_refit_obs_even_all", "0.5,0.3,0.6", "refit", 0, "--protect-blocks",
                                  "none", calib=60, allocation="even"),
    # ... followed by prune --data's recovery (2 x 200 steps at lr 1e-5 towards the model as each stage starts)
    "long-obs-even-all": _recipe("lite_medsam_long_obs_even_all", "0.5", "refit", 200, "--protect-blocks", "none",
                                 calib=60, allocation="even"),
    # ... and the same at 60%, the README's default ratio
    "long-obs-even-all-r60": _recipe("lite_medsam_long_obs_even_all_r60", "0.6", "refit", 200, "--protect-blocks",
                                     "none", calib=60, allocation="even"),
    # ... and at 60% recovering towards the dense model, annealed from lr 3e-5 (the best equal-count recipe's)
    "long-obs-even-all-r60-dense-cosine": _recipe("lite_medsam_long_obs_even_all_r60_dense_cosine", "0.6", "refit", 200,
                                                  "--protect-blocks", "none", "--recover-lr", "3e-5",
                                                  "--recover-teacher", "dense", "--recover-schedule", "cosine",
                                                  calib=60, allocation="even"),
    # the refit alone with even allocation for the other importances (random, Taylor, MedCore) at 50%
    "refit-even-importances": _recipe("lite_medsam_refit_even_importances", "0.5", "random,taylor,medcore", 0,
                                      "--protect-blocks", "none", calib=60, allocation="even"),
    # the refit alone at 50%, every importance in one sweep (its pruned models go to cross_modality.py)
    "refit-ct": _recipe("lite_medsam_refit_ct", "0.5", "refit,medcore,taylor,random", 0),
    # the default with --data today (2 x 200 recovery steps), MedCore and Taylor at the default's ratios;
    # its MedCore 50% point is the "long" recipe's (same settings), restored from that record
    "default200": _recipe("lite_medsam_default200", "0.5,0.3,0.6", "medcore,taylor", 200),
    # the refit alone at 50%: MedCore against MedCore with the first-order term, and Taylor
    "refit-grad": _recipe("lite_medsam_refit_grad", "0.5", "medcore,medcore-grad,taylor", 0),
    # the least-squares refit alone, no gradient steps
    "refit": _recipe("lite_medsam", "0.5,0.3,0.6", "random,taylor,medcore", 0),
}
KEPT = ("point.json", "per_image.csv", "summary.json")
LEVERAGE_ARGS = ["--images", "4", "--head-ratios", "0.3,0.6", "--mlp-ratios", "0.3,0.6,0.9", "--resamples", "1000"]


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "medcore_tp", *args, "--no-progress"], check=True)


def _rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sweep_table(rows: list[dict]) -> str:
    """The README table of a ``sweep.csv``."""
    out = ["| point | removed | GFLOPs torch / paper | latency s (min-max) | speedup | Dice | IoU | BF1 | HD95 px | NSD |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = {k: float(v) for k, v in r.items() if k not in ("point", "importance") and v not in ("True", "False")}
        out.append(f"| {r['point']} | {f['removed_fraction']:.2%} | {f['flops_torch_g']:.2f} / {f['flops_paper_g']:.2f} "
                   f"| {f['latency_s']:.3f} ({f['latency_min_s']:.3f}-{f['latency_max_s']:.3f}) | {f['speedup']:.2f}x "
                   f"| {f['dice']:.4f} | {f['iou']:.4f} | {f['boundary_f1']:.4f} | {f['hd95']:.2f} | {f['nsd']:.4f} |")
    return "\n".join(out)


def comparison_table(rows: list[dict], metrics: tuple[str, ...] = ("dice", "boundary_f1", "hd95")) -> str:
    """The README table of a ``comparisons.csv``: mean difference a - b and its 95% interval."""
    out = ["| ratio | a - b | n | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
    keys = list(dict.fromkeys((r["ratio"], r["importance_a"], r["importance_b"]) for r in rows))
    for ratio, a, b in keys:
        cells = []
        for m in metrics:
            r = next(x for x in rows if (x["ratio"], x["importance_a"], x["importance_b"], x["metric"]) == (ratio, a, b, m))
            cells.append(f"{float(r['mean_diff']):+.4f} [{float(r['ci_low']):+.4f}, {float(r['ci_high']):+.4f}]")
            n = r["n"]
        out.append(f"| {ratio} | {a} - {b} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def leverage_table(summary: dict) -> str:
    """The README table of a ``leverage.json``."""
    out = ["| tau px | head / MLP steps | median P95 head | median P95 MLP | BLR95 [95% CI] | paper (MedSAM) "
           "| Spearman(leverage, dBF1) | Spearman(leverage, dHD95) |", "|---|---|---|---|---|---|---|---|"]

    def fmt(x):
        return "-" if x is None else f"{x:.3f}"

    for tau, s in summary["per_tau"].items():
        out.append(f"| {tau} | {s['head_steps']} / {s['mlp_steps']} | {s['median_head_p95']:.4g} | "
                   f"{s['median_mlp_p95']:.4g} | {s['blr95']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] | "
                   f"{summary['paper_blr95_medsam']} | {fmt(s['spearman_leverage_vs_delta_bf1'])} | "
                   f"{fmt(s['spearman_leverage_vs_delta_hd95'])} |")
    return "\n".join(out)


def keep_points(sweep: str, store: str) -> list[str]:
    """Copy the records of every finished point of ``sweep`` (and its settings and splits) to ``store``."""
    kept = []
    for name in sorted(os.listdir(sweep)):
        if os.path.exists(os.path.join(sweep, name, "point.json")):
            os.makedirs(os.path.join(store, name), exist_ok=True)
            for f in KEPT:
                if os.path.exists(os.path.join(sweep, name, f)):
                    shutil.copyfile(os.path.join(sweep, name, f), os.path.join(store, name, f))
            kept.append(name)
    for f in ("settings.json", "splits.json"):
        shutil.copyfile(os.path.join(sweep, f), os.path.join(store, f))
    return kept


def restore_points(store: str, sweep: str) -> list[str]:
    """Copy the kept points of ``store`` that ``sweep`` lacks into it (a new ``sweep`` gets the kept
    settings and splits too, so that the sweep resumes; one with other settings is refused by it)."""
    if not os.path.isdir(store):
        return []
    os.makedirs(sweep, exist_ok=True)
    for f in ("settings.json", "splits.json"):
        if not os.path.exists(os.path.join(sweep, f)):
            shutil.copyfile(os.path.join(store, f), os.path.join(sweep, f))
    restored = []
    for name in sorted(os.listdir(store)):
        if os.path.isdir(os.path.join(store, name)) and not os.path.exists(os.path.join(sweep, name, "point.json")):
            shutil.copytree(os.path.join(store, name), os.path.join(sweep, name), dirs_exist_ok=True)
            restored.append(name)
    return restored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(data_root()), help="Data folder ($MEDCORE_DATA).")
    parser.add_argument("--sweep", default="out/sweep-lite")
    parser.add_argument("--leverage", default="out/leverage-lite")
    parser.add_argument("--run", action="store_true", help="Run or resume the two commands first.")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default", help="The sweep's settings.")
    parser.add_argument("--no-leverage", action="store_true", help="Neither run nor collect the leverage analysis.")
    args = parser.parse_args()
    data = polyp_data(args.data_root)
    tag = machine_tag()
    prefix, sweep_args = RECIPES[args.recipe]
    store = os.path.join(RESULTS, f"{prefix}_points_{tag}")
    if args.run:
        restored = restore_points(store, args.sweep)
        if restored:
            print(f"{args.sweep}: resuming after the kept points {', '.join(restored)} ({store})")
        _cli("sweep", "--model", "lite-medsam", "--data", data, *sweep_args, "--out", args.sweep)
        if not args.no_leverage:
            _cli("leverage", "--model", "lite-medsam", "--data", data, *LEVERAGE_ARGS, "--out", args.leverage)
    os.makedirs(RESULTS, exist_ok=True)
    machine_file = os.path.join(RESULTS, f"lite_medsam_sweep_machine_{tag}.json")
    record = {}
    if os.path.exists(machine_file):  # a part collected earlier keeps its record when only the other is collected now
        with open(machine_file) as f:
            record = json.load(f)
    record["machine"] = machine_info()
    printed = []
    if os.path.exists(os.path.join(args.sweep, "sweep.csv")):
        for name, ext in (("sweep", "csv"), ("comparisons", "csv"), ("pareto", "png")):
            shutil.copyfile(os.path.join(args.sweep, f"{name}.{ext}"), os.path.join(RESULTS, f"{prefix}_{name}_{tag}.{ext}"))
        print(f"kept the records of {', '.join(keep_points(args.sweep, store))} in {store}")
        with open(os.path.join(args.sweep, "sweep.json")) as f:
            sweep = json.load(f)
        key = "sweep" if args.recipe == "refit" else f"sweep_{args.recipe}"  # "sweep": the record's older name
        record[key] = {"settings": sweep["settings"], "points_finished": [p["point"] for p in sweep["points"]],
                       "environment_of_the_run": sweep["points"][0]["environment"] if sweep["points"] else None}
        printed += [sweep_table(_rows(os.path.join(args.sweep, "sweep.csv"))),
                    comparison_table(_rows(os.path.join(args.sweep, "comparisons.csv")))]
    if not args.no_leverage and os.path.exists(os.path.join(args.leverage, "leverage.json")):
        for ext in ("csv", "json", "png"):
            shutil.copyfile(os.path.join(args.leverage, f"leverage.{ext}"), os.path.join(RESULTS, f"lite_medsam_leverage_{tag}.{ext}"))
        with open(os.path.join(args.leverage, "leverage.json")) as f:
            lev = json.load(f)
        record["leverage"] = {"settings": lev["settings"], "images": lev["images"], "seconds": lev["seconds"]}
        printed.append(leverage_table(lev))
    save_json(record, machine_file)
    print("\n\n".join(printed))
    print("README tables: python benchmarks/render_tables.py")


if __name__ == "__main__":
    main()
