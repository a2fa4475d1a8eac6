"""``torchrun --nproc_per_node 2`` (gloo, CPU) gives the same results as one process.

Fisher: the same scores and architecture. Recovery and fine-tuning (DistributedDataParallel): two
processes with batch b end with the same weights as one process with batch 2b.
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys

import pytest
import torch

from medcore_tp import load_pruned
from medcore_tp.synthetic import write_synthetic_dataset

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scores(path):
    return list(csv.DictReader(path.open()))


def _torchrun(*args: str) -> None:
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "medcore_tp", *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def _one(*args: str) -> None:
    run = subprocess.run([sys.executable, "-m", "medcore_tp", *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def _without_key_biases(name: str, value: torch.Tensor) -> torch.Tensor:
    # Softmax over keys is invariant to a bias shared by every key, so these biases get a gradient that is
    # zero in exact arithmetic: rounding noise, which Adam normalises into lr-sized steps in either run.
    if name.endswith("k_proj.bias"):
        return value[:0]
    if name.endswith("qkv.bias"):
        q, _, v = value.chunk(3)
        return torch.cat([q, v])
    return value


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(_without_key_biases(k, b[k]), _without_key_biases(k, a[k]),
                                   rtol=1e-4, atol=2e-6, msg=k)


def test_two_processes_match_one(tmp_path):
    data = write_synthetic_dataset(tmp_path / "synth", n=16, size=64, seed=5)
    args = ["prune", "--importance", "medcore", "--recover-steps", "0", "--model", "tiny", "--random-init", "--ratio", "0.5",
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


def test_recovery_two_processes_match_one_with_twice_the_batch(tmp_path):
    data = write_synthetic_dataset(tmp_path / "synth", n=10, size=64, seed=3)
    args = ["prune", "--model", "tiny", "--random-init", "--importance", "magnitude", "--ratio", "0.4",
            "--data", str(data), "--calib-size", "5", "--recover-steps", "3", "--no-report", "--no-progress"]
    _one(*args, "--recover-batch-size", "2", "--out", str(tmp_path / "one"))
    _torchrun(*args, "--recover-batch-size", "1", "--out", str(tmp_path / "two"))
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert [r["stage"] for r in s2["recovery"]] == ["heads", "mlp"] and s2["processes"] == 2
    for r1, r2 in zip(s1["recovery"], s2["recovery"], strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-4)
    assert s1["recovery"][0]["loss"][0] != s1["recovery"][0]["loss"][-1]  # recovery did train
    one, two = load_pruned(str(tmp_path / "one" / "pruned.pth")), load_pruned(str(tmp_path / "two" / "pruned.pth"))
    _assert_same_weights(one.state_dict(), two.state_dict())


def test_finetune_two_processes_match_one_with_twice_the_batch(tmp_path):
    # 15 images: 9 train, so global batches of 4, 4, 1 (one rank's share of the last one is empty)
    data = write_synthetic_dataset(tmp_path / "synth", n=15, size=64, seed=4)
    _one("prune", "--model", "tiny", "--random-init", "--importance", "magnitude", "--ratio", "0.3",
         "--recover-steps", "0", "--no-report", "--no-progress", "--out", str(tmp_path / "p"))
    args = ["finetune", "--model", "tiny", "--checkpoint", str(tmp_path / "p" / "pruned.pth"), "--data", str(data),
            "--epochs", "2", "--lr", "1e-3", "--no-progress"]
    _one(*args, "--batch-size", "4", "--out", str(tmp_path / "one"))
    _torchrun(*args, "--batch-size", "2", "--splits", str(tmp_path / "one" / "splits.json"),
              "--out", str(tmp_path / "two"))
    splits = json.loads((tmp_path / "one" / "splits.json").read_text())
    assert len(splits["datasets"]["synth"]["train"]) == 9
    f1 = json.loads((tmp_path / "one" / "finetune.json").read_text())
    f2 = json.loads((tmp_path / "two" / "finetune.json").read_text())
    assert f2["processes"] == 2 and f1["processes"] == 1
    for c1, c2 in zip(f1["curves"], f2["curves"], strict=True):
        assert c2["train_loss"] == pytest.approx(c1["train_loss"], rel=1e-4)
        assert c2["val_loss"] == pytest.approx(c1["val_loss"], rel=1e-4)
    w1 = torch.load(tmp_path / "one" / "state.pth", weights_only=False)["model"]
    w2 = torch.load(tmp_path / "two" / "state.pth", weights_only=False)["model"]
    start = load_pruned(str(tmp_path / "p" / "pruned.pth"))
    key = "image_encoder.blocks.0.attn.qkv.weight"
    assert not torch.allclose(start.state_dict()[key], w1[key])  # training moved the weights
    _assert_same_weights(w1, w2)
