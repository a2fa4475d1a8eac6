"""The main job as README's first command runs it: ``medcore-tp prune --ratio 0.6`` on its built-in
defaults, timed from the interpreter's start to its end, with its peak memory (resident set of the
process) and its ``summary.json``; run it on an otherwise idle machine (its figure is the 5-minute
budget of issue 13).

Usage: ``python benchmarks/main_job.py [--out out/main_job] [--device auto|cpu|cuda]``; writes
``benchmarks/results/main_job_<machine>.json`` and prints what ``prune`` printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _machine import machine_info, machine_tag  # noqa: E402

from medcore_tp.cli._common import parse_device  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "out", "main_job"))
    ap.add_argument("--device", default="auto", help="prune's --device; README's command leaves it at auto.")
    args = ap.parse_args()
    device_args = [] if args.device == "auto" else ["--device", args.device]
    device = str(parse_device(args.device))  # what prune's --device resolves it to
    if os.path.exists(args.out):
        shutil.rmtree(args.out)  # the job refuses to write into a finished run's folder
    load = os.getloadavg()
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medcore_tp", "prune", "--ratio", "0.6", *device_args, "--out", args.out],
                   check=True)
    wall = time.perf_counter() - began
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kilobytes
    with open(os.path.join(args.out, "summary.json")) as f:
        summary = json.load(f)
    record = {"command": " ".join(["medcore-tp prune --ratio 0.6", *device_args, "--out OUT"]),
              "wall_clock_s_including_interpreter_start": wall, "peak_rss_kb": peak_kb, "machine": machine_info(device), "load_average_at_start": load,
              "summary": summary}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"main_job_{machine_tag(device)}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"main job: {wall:.0f} s wall clock, peak memory {peak_kb / 2**20:.2f} GiB; wrote {path}")


if __name__ == "__main__":
    main()
