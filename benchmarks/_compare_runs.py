"""Compare the architecture of two ``prune`` runs (one process vs torchrun); write the verdict as JSON.

Usage: ``python benchmarks/_compare_runs.py ONE/summary.json TWO/summary.json OUT.json`` (exit 1 when they differ).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _machine import machine_info  # noqa: E402

from medcore_tp.atomic import save_json  # noqa: E402


def main() -> int:
    one, two, out = sys.argv[1:4]
    a, b = (json.load(open(p)) for p in (one, two))
    keys = ("heads_per_block", "mlp_per_block", "removed_heads_per_block", "removed_mlp_per_block")
    same = {k: a.get(k) == b.get(k) for k in keys}
    verdict = {"machine": machine_info("cuda"), "one_process": one, "two_processes": two,
               "processes": [a.get("processes"), b.get("processes")], "same": same, "all_same": all(same.values())}
    save_json(verdict, out)
    print(f"torchrun (2 processes) vs 1 process: {'same architecture' if verdict['all_same'] else 'DIFFERENT'}: {same}")
    return 0 if verdict["all_same"] else 1


if __name__ == "__main__":
    sys.exit(main())
