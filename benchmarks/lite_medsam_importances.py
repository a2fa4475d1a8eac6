"""Packaged LiteMedSAM pruned by 30% with medcore, taylor and random importance, evaluated on real polyps.

For each importance, without recovery and with ``--recover-steps`` (default 50) per cascade stage:
``medcore-tp prune --model lite-medsam --data kvasir-seg-256,cvc-clinicdb-256 --ratio 0.3
--calib-size 16`` then ``medcore-tp evaluate`` on the test split of the same seeded split (calibration
and recovery images come from the training split); plus the dense model. Prints a table and writes
``benchmarks/results/lite_medsam_importances_<machine>.json``. Finished runs in ``--work`` are reused.

Usage: ``python benchmarks/lite_medsam_importances.py [--data-root ../shared/data] [--work out/lite-importances]``
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

IMPORTANCES = ("medcore", "taylor", "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(data_root()))  # $MEDCORE_DATA, else ../shared/data
    parser.add_argument("--work", default="out/lite-importances")
    parser.add_argument("--ratio", default="0.3")
    parser.add_argument("--recover-steps", default="50")
    args = parser.parse_args()
    data = polyp_data(args.data_root)
    rows = {}
    dense = os.path.join(args.work, "dense")
    run_cli(os.path.join(dense, "summary.json"), "evaluate", "--model", "lite-medsam", "--checkpoint", "packaged",
         "--data", data, "--split", "test", "--out", dense)
    rows["dense"] = macro(dense)
    runs = [(imp, steps) for steps in ("0", args.recover_steps) for imp in IMPORTANCES]
    for imp, steps in runs:
        name = f"{imp}" + (f"+recovery{steps}" if steps != "0" else "")
        p, e = os.path.join(args.work, f"prune_{name}"), os.path.join(args.work, f"eval_{name}")
        run_cli(os.path.join(p, "summary.json"), "prune", "--model", "lite-medsam", "--data", data, "--ratio", args.ratio,
             "--importance", imp, "--calib-size", "16", "--recover-steps", str(steps), "--no-report", "--out", p)
        run_cli(os.path.join(e, "summary.json"), "evaluate", "--model", "lite-medsam", "--checkpoint",
             os.path.join(p, "pruned.pth"), "--data", data, "--split", "test", "--splits", os.path.join(p, "splits.json"), "--out", e)
        removed = read_json(os.path.join(p, "summary.json"))["encoder_params_removed_fraction"]
        rows[name] = {**macro(e), "removed": removed}
    print(f"{'model':22s} {'removed':>8s} {'dice':>7s} {'iou':>7s} {'bf1':>7s} {'hd95':>7s} {'nsd':>7s}")
    for name, r in rows.items():
        print(f"{name:22s} {r.get('removed', 0.0):8.2%} {r['dice']:7.4f} {r['iou']:7.4f} {r['boundary_f1']:7.4f} "
              f"{r['hd95']:7.2f} {r['nsd']:7.4f}")
    out = os.path.join(os.path.dirname(__file__), "results", f"lite_medsam_importances_{machine_tag()}.json")
    save_json({"machine": machine_info(), "ratio": float(args.ratio), "calib_size": 16,
               "recover_steps": int(args.recover_steps), "rows": rows}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
