"""Fine-tuning: resume after an interruption ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from medcore_tp import build_model, load_pruned
from medcore_tp.cli import main
from medcore_tp.data import discover
from medcore_tp.errors import MedcoreError
from medcore_tp.finetune import FinetuneConfig, finetune
from medcore_tp.synthetic import write_synthetic_dataset


def _samples(tmp_path):
    root = write_synthetic_dataset(tmp_path / "synth", n=6, size=64, seed=1)
    samples = discover(root)
    return samples[:4], samples[4:]


def test_resume_matches_an_uninterrupted_run(tmp_path):
    train, val = _samples(tmp_path)
    cfg = FinetuneConfig(epochs=3, batch_size=2, lr=1e-3, seed=7)

    torch.manual_seed(0)
    straight = build_model("tiny")
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    finetune(straight, train, val, str(tmp_path / "a"), "tiny", cfg, progress=False)

    first = build_model("tiny")
    first.load_state_dict(init)
    finetune(first, train, val, str(tmp_path / "b"), "tiny", cfg, progress=False, stop_after_epoch=1)
    resumed = build_model("tiny")  # a new process would start from fresh weights
    resumed.load_state_dict(init)
    record = finetune(resumed, train, val, str(tmp_path / "b"), "tiny", cfg, resume=True, progress=False)
    assert [c["epoch"] for c in record["curves"]] == [1, 2, 3]
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert not torch.equal(init["image_encoder.blocks.0.attn.qkv.weight"],
                           straight.state_dict()["image_encoder.blocks.0.attn.qkv.weight"])
    # the prompt encoder stayed frozen
    for k, v in init.items():
        if k.startswith("prompt_encoder."):
            assert torch.equal(v, straight.state_dict()[k]), k


def test_cli_finetune_on_a_pruned_checkpoint(tmp_path):
    root = write_synthetic_dataset(tmp_path / "synth", n=10, size=64, seed=2)
    runner = CliRunner()
    res = runner.invoke(main, ["prune", "--recover-steps", "0", "--model", "tiny", "--random-init", "--importance",
                               "magnitude", "--ratio", "0.3", "--out", str(tmp_path / "p")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["finetune", "--model", "tiny", "--checkpoint", str(tmp_path / "p" / "pruned.pth"),
                               "--data", str(root), "--epochs", "2", "--no-progress", "--out", str(tmp_path / "f")],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "f" / "finetune.json").read_text())
    assert rec["pruned"] and rec["epochs_run"] == 2 and (tmp_path / "f" / "curves.csv").exists()
    best = load_pruned(tmp_path / "f" / "best.pth")
    pruned = load_pruned(tmp_path / "p" / "pruned.pth")
    assert [b.attn.num_heads for b in best.image_encoder.blocks] == [b.attn.num_heads for b in pruned.image_encoder.blocks]


def test_resume_refuses_another_number_of_processes(tmp_path):
    train, val = _samples(tmp_path)
    cfg = FinetuneConfig(epochs=2, batch_size=2, seed=1)
    model = build_model("tiny")
    finetune(model, train, val, str(tmp_path / "r"), "tiny", cfg, progress=False, stop_after_epoch=1)
    state_path = tmp_path / "r" / "state.pth"
    state = torch.load(state_path, weights_only=False)
    state["processes"] = 2  # as if written under torchrun --nproc_per_node 2
    torch.save(state, state_path)
    with pytest.raises(MedcoreError, match=r"state\.pth was written by 2 process\(es\), this run has 1"):
        finetune(build_model("tiny"), train, val, str(tmp_path / "r"), "tiny", cfg, resume=True, progress=False)
