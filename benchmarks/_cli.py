"""Running ``medcore-tp`` steps from a benchmark: resumable, timed, reading their summaries, writing result rows."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

POLYP_SETS = ("kvasir-seg-256", "cvc-clinicdb-256")


def polyp_data(data_root: str) -> str:
    """The ``--data`` value for the two 256 x 256 polyp sets under ``data_root``."""
    return ",".join(os.path.join(data_root, name) for name in POLYP_SETS)


def run_cli(done: str, *args: str) -> float:
    """Run ``python -m medcore_tp ARGS --no-progress`` unless ``done`` exists already (a finished step
    of an earlier run); returns its wall time in seconds (0 when reused). A step that did not finish left
    a partial output folder, which ``--overwrite`` clears (only that step's own files)."""
    if os.path.exists(done):
        return 0.0
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medcore_tp", *args, "--no-progress", "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def macro(eval_dir: str) -> dict:
    """Macro-mean metrics of an ``evaluate`` output folder."""
    return read_json(os.path.join(eval_dir, "summary.json"))["macro"]


def write_rows(path: str, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys) as a CSV file at ``path``; floats to 6 significant digits."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
