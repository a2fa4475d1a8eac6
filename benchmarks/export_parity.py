"""Does deployment change the numbers? LiteMedSAM dense and pruned, evaluated in PyTorch and through the
ONNX export in ONNX Runtime and OpenVINO on the same images with the same boxes; per-image differences.

For each model (the packaged dense weights, and ``--pruned`` checkpoints), ``medcore-tp export --format
onnx`` writes the encoder and the box decoder, then ``medcore-tp evaluate`` runs the dev test splits of
kvasir-seg-256 and cvc-clinicdb-256 with ``--backend torch`` and with each of ``--backends``
(``onnxruntime``, ``openvino``: fp32; ``openvino-bf16``: OpenVINO computing in bf16, where the CPU has
it), with one splits file. Writes ``benchmarks/results/<name>_<machine>.csv`` (``--name``, default
``export_parity``; per model,
backend and metric: both means, the largest per-image |difference| and the paired mean difference
with its 95% bootstrap interval) and ``..._machine.json``, and prints the table. The target of the
deploy issue is a difference <= 1e-3 in Dice, Boundary F1 and HD95 (for the fp32 exports; bf16 is a
choice with a measured cost).

Usage: ``python benchmarks/export_parity.py --pruned p50=out/sweep/medcore-0.5/pruned.pth
[--backends onnxruntime,openvino,openvino-bf16] [--splits out/sweep/splits.json] [--work out/export_parity]
[--name export_parity]``
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _cli import polyp_data, run_cli, write_rows  # noqa: E402
from _machine import machine_info, machine_tag  # noqa: E402

from medcore_tp.atomic import save_json  # noqa: E402
from medcore_tp.metrics import METRIC_NAMES  # noqa: E402
from medcore_tp.paired import paired_difference  # noqa: E402
from medcore_tp.paths import data_root  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
TOLERANCE = 1e-3
# --backends entries: (evaluate --backend, --dtype)
BACKENDS = {"onnxruntime": ("onnxruntime", "fp32"), "openvino": ("openvino", "fp32"), "openvino-bf16": ("openvino", "bf16")}


def per_image(folder: str) -> dict[tuple[str, str], dict[str, float]]:
    with open(os.path.join(folder, "per_image.csv"), newline="") as f:
        return {(r["dataset"], r["name"]): {m: float(r[m]) for m in METRIC_NAMES} for r in csv.DictReader(f)}


def parity_rows(label: str, backend: str, torch_dir: str, exported_dir: str) -> list[dict]:
    """One row per metric: means in PyTorch and in ``backend``, the largest per-image |difference| and
    the paired mean difference (exported - torch) with its 95% interval."""
    a, b = per_image(torch_dir), per_image(exported_dir)
    if a.keys() != b.keys():
        raise SystemExit(f"{label}: the two evaluations did not score the same images")
    rows = []
    for m in METRIC_NAMES:
        keys = sorted(a)
        diffs = [abs(a[k][m] - b[k][m]) for k in keys]
        paired = paired_difference([b[k][m] for k in keys], [a[k][m] for k in keys])
        rows.append({"model": label, "backend": backend, "metric": m, "n": len(a), "torch": paired.mean_b,
                     "exported": paired.mean_a, "max_abs_diff": max(diffs), "within_1e-3": max(diffs) <= TOLERANCE,
                     "mean_diff": paired.mean_diff, "ci_low": paired.low, "ci_high": paired.high})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pruned", action="append", default=[], help="LABEL=CHECKPOINT of a pruned LiteMedSAM")
    ap.add_argument("--backends", default="onnxruntime,openvino,openvino-bf16",
                    help=f"comma-separated, from {', '.join(BACKENDS)}")
    ap.add_argument("--splits", default=None, help="splits.json to evaluate on [new splits, seed 42]")
    ap.add_argument("--work", default="out/export_parity", help="folder for the exports and evaluations")
    ap.add_argument("--name", default="export_parity", help="result-file prefix under benchmarks/results")
    args = ap.parse_args()
    models = [("dense", None)] + [tuple(p.split("=", 1)) for p in args.pruned]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BACKENDS:
            raise SystemExit(f"--backends {b}: choose from {', '.join(BACKENDS)}")
    data = polyp_data(data_root())
    rows: list[dict] = []
    for label, ckpt in models:
        work = os.path.join(args.work, label)
        onnx = os.path.join(work, "encoder.onnx")
        weights = [] if ckpt is None else ["--checkpoint", ckpt]
        if not os.path.exists(onnx):
            os.makedirs(work, exist_ok=True)
            subprocess.run([sys.executable, "-m", "medcore_tp", "export", "--model", "lite-medsam", *weights,
                            "--format", "onnx", "--out", onnx], check=True)
        splits = ["--splits", args.splits] if args.splits else []
        dirs = {}
        for name, (backend, dtype), model_file in [("torch", ("torch", "fp32"), weights)] + [
                (b, BACKENDS[b], ["--checkpoint", onnx]) for b in backends]:
            out = os.path.join(work, f"eval-{name}")
            run_cli(os.path.join(out, "summary.json"), "evaluate", "--model", "lite-medsam", *model_file,
                    "--backend", backend, "--dtype", dtype, "--data", data, *splits, "--out", out)
            dirs[name] = out
        for b in backends:
            rows += parity_rows(label, b, dirs["torch"], dirs[b])
    tag = machine_tag("cpu")
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{args.name}_{tag}.csv")
    write_rows(path, rows)
    save_json({"machine": machine_info("cpu"), "models": dict(models), "backends": backends, "splits": args.splits},
              os.path.join(RESULTS, f"{args.name}_{tag}_machine.json"))
    with open(path, newline="") as f:
        print(parity_table(list(csv.DictReader(f))))
    print(f"wrote {path}")


def parity_table(rows: list[dict]) -> str:
    """The README table of an ``export_parity_*.csv`` (rows as read back from the file)."""
    out = ["| model | backend | metric | images | PyTorch | exported | exported - PyTorch [95% CI] "
           "| max per-image \\|difference\\| | within 1e-3 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['backend']} | {r['metric']} | {r['n']} | {float(r['torch']):.4f} "
                   f"| {float(r['exported']):.4f} | {float(r['mean_diff']):+.4f} [{float(r['ci_low']):+.4f}, "
                   f"{float(r['ci_high']):+.4f}] | {float(r['max_abs_diff']):.1e} "
                   f"| {'yes' if r['within_1e-3'] == 'True' else '**no**'} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
