"""The full cascade on a real model: packaged LiteMedSAM pruned by 50%, before recovery, after
recovery and after fine-tuning, evaluated on the test split of the polyp sets.

Steps (all through the CLI a user runs):

1. ``medcore-tp prune --model lite-medsam --data kvasir-seg-256,cvc-clinicdb-256 --ratio 0.5
   --recover-steps 0`` and ``--recover-steps 100`` (same calibration images, same seeded split);
2. ``medcore-tp finetune`` of the recovered model on the training split (validation split for early
   stopping), ``--epochs`` epochs;
3. ``medcore-tp evaluate --split test`` of the dense model and of each stage.

Prints a table, writes ``benchmarks/results/lite_medsam_cascade_<machine>.json`` and a bar chart
``.png`` beside it. Finished steps are reused when the script is run again (``--work`` keeps them).

Usage: ``python benchmarks/lite_medsam_cascade.py [--data-root ../shared/data] [--epochs 3]``
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _cli import macro, polyp_data, read_json, run_cli  # noqa: E402
from _machine import machine_info, machine_tag  # noqa: E402

from medcore_tp.atomic import save_json  # noqa: E402
from medcore_tp.paths import data_root  # noqa: E402

METRICS = ("dice", "iou", "boundary_f1", "hd95", "nsd")


def _plot(rows: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, key, label in zip(axes, ("dice", "boundary_f1", "hd95"), ("Dice", "Boundary F1", "HD95 (px, lower is better)"),
                              strict=True):
        ax.bar(range(len(names)), [rows[n][key] for n in names], color=["#777", "#c44", "#e93", "#4a4"][: len(names)])
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.suptitle("LiteMedSAM, 50% of encoder parameters removed (polyp test splits)", fontsize=10)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(data_root()))  # $MEDCORE_DATA, else ../shared/data
    parser.add_argument("--work", default="out/lite-cascade")
    parser.add_argument("--ratio", default="0.5")
    parser.add_argument("--calib-size", default="32")
    parser.add_argument("--recover-steps", default="100")
    parser.add_argument("--epochs", default="3")
    args = parser.parse_args()
    data = polyp_data(args.data_root)
    w = lambda *p: os.path.join(args.work, *p)  # noqa: E731
    seconds = {}
    seconds["evaluate dense"] = run_cli(w("dense", "summary.json"), "evaluate", "--model", "lite-medsam", "--checkpoint",
                                     "packaged", "--data", data, "--split", "test", "--out", w("dense"))
    for name, steps in (("pruned", "0"), ("recovered", args.recover_steps)):
        seconds[f"prune {name}"] = run_cli(
            w(name, "pruned.pth"), "prune", "--model", "lite-medsam", "--data", data, "--ratio", args.ratio,
            "--calib-size", args.calib_size, "--recover-steps", steps, "--no-report", "--out", w(name))
    seconds["finetune"] = run_cli(
        w("finetuned", "best.pth"), "finetune", "--model", "lite-medsam", "--checkpoint", w("recovered", "pruned.pth"),
        "--data", data, "--splits", w("recovered", "splits.json"), "--epochs", args.epochs, "--out", w("finetuned"))
    checkpoints = {"pruned": w("pruned", "pruned.pth"), "recovered": w("recovered", "pruned.pth"),
                   "finetuned": w("finetuned", "best.pth")}
    for name, ckpt in checkpoints.items():
        seconds[f"evaluate {name}"] = run_cli(
            w(f"eval_{name}", "summary.json"), "evaluate", "--model", "lite-medsam", "--checkpoint", ckpt,
            "--data", data, "--split", "test", "--splits", w("recovered", "splits.json"), "--out", w(f"eval_{name}"))
    rows = {"dense": macro(w("dense")), **{n: macro(w(f"eval_{n}")) for n in checkpoints}}
    summary = read_json(w("recovered", "summary.json"))
    tuned = read_json(w("finetuned", "finetune.json"))
    print(f"{'stage':12s} " + " ".join(f"{m:>11s}" for m in METRICS))
    for name, r in rows.items():
        print(f"{name:12s} " + " ".join(f"{r[m]:11.4f}" for m in METRICS))
    print(f"removed {summary['encoder_params_removed_fraction']:.2%} of encoder parameters "
          f"({summary['encoder_params_before']:,} -> {summary['encoder_params_after']:,})")
    out = os.path.join(os.path.dirname(__file__), "results", f"lite_medsam_cascade_{machine_tag()}")
    save_json({"machine": machine_info(), "ratio": float(args.ratio), "calib_size": int(args.calib_size),
               "recover_steps": int(args.recover_steps), "epochs": int(args.epochs), "rows": rows,
               "removed": summary["encoder_params_removed_fraction"],
               "encoder_params": [summary["encoder_params_before"], summary["encoder_params_after"]],
               "recovery_first_last": [[s["loss"][0], s["loss"][-1]] for s in summary["recovery"]],
               "finetune_curves": tuned["curves"], "seconds": seconds}, out + ".json")
    _plot(rows, out + ".png")
    print(f"wrote {out}.json and .png")


if __name__ == "__main__":
    main()
