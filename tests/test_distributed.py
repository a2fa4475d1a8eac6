"""``torchrun --nproc_per_node 2`` (gloo, CPU) gives the same scores and architecture as one process."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys

import pytest

from medcore_tp.synthetic import write_synthetic_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scores(path):
    return list(csv.DictReader(path.open()))


def test_two_processes_match_one(tmp_path):
    data = write_synthetic_dataset(tmp_path / "synth", n=16, size=64, seed=5)
    args = ["prune", "--recover-steps", "0", "--model", "tiny", "--random-init", "--ratio", "0.5",
            "--data", str(data), "--calib-size", "7", "--no-progress"]
    subprocess.run([sys.executable, "-m", "medcore_tp", *args, "--out", str(tmp_path / "one")], check=True,
                   capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "medcore_tp", *args, "--out", str(tmp_path / "two")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = _scores(tmp_path / "one" / "scores.csv"), _scores(tmp_path / "two" / "scores.csv")
    assert len(one) == len(two) > 0
    for a, b in zip(one, two, strict=True):
        assert (a["block"], a["kind"], a["index"], a["removed"]) == (b["block"], b["kind"], b["index"], b["removed"])
        assert float(b["q"]) == pytest.approx(float(a["q"]), rel=1e-4)
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["processes"] == 2 and s1["processes"] == 1
    assert (s1["heads_per_block"], s1["mlp_per_block"]) == (s2["heads_per_block"], s2["mlp_per_block"])
    assert s2["calibration"]["samples"]["synth"] == {"used": 7, "skipped": 0}  # odd count: shards of 4 and 3
