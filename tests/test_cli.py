"""The ``medcore-tp`` commands end to end on the tiny model, and their one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from medcore_tp import load_pruned, save_pruned
from medcore_tp.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_info_json_dense():
    res = run("info", "--model", "sam-vit-b", "--json")
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["encoder_params"] == 89_670_912
    assert data["heads_per_block"] == [12] * 12 and data["mlp_per_block"] == [3072] * 12
    assert data["flops_paper_g"] == pytest.approx(926.5, rel=0.005)
    assert data["flops_torch_g"] == pytest.approx(972.0, rel=0.005)


def test_prune_then_info_and_reload(tmp_path):
    out = tmp_path / "out"
    res = run("prune", "--recover-steps", 0, "--model", "tiny", "--random-init", "--importance", "magnitude",
              "--heads-ratio", 0.25, "--mlp-ratio", 0.5, "--protect-blocks", "3", "--out", out)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heads_per_block"] == [2, 3, 3, 4]  # 4 of 16 heads from blocks 0-2, remainder to block 0
    assert summary["mlp_per_block"][3] == 256 and sum(256 - m for m in summary["mlp_per_block"]) == 512
    for key in ("encoder_params_before", "encoder_params_after", "params_before", "params_after",
                "flops_torch_g_before", "flops_torch_g_after", "flops_paper_g_before", "flops_paper_g_after",
                "importance"):
        assert key in summary
    model = load_pruned(out / "pruned.pth")
    assert sum(p.numel() for p in model.image_encoder.parameters()) == summary["encoder_params_after"]
    info = json.loads(run("info", "--model", "tiny", "--checkpoint", out / "pruned.pth", "--json").output)
    assert info["pruned"] and info["encoder_params"] == summary["encoder_params_after"]
    assert info["flops_paper_g"] == pytest.approx(summary["flops_paper_g_after"])


@pytest.mark.parametrize("importance", ["random", "magnitude"])
def test_prune_importances_run(tmp_path, importance):
    res = run("prune", "--recover-steps", 0, "--model", "tiny", "--random-init", "--importance", importance,
              "--heads-ratio", 0.5, "--mlp-ratio", 0.5, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "summary.json").read_text())["importance"] == importance


def _error(res):
    assert res.exit_code == 2
    lines = [line for line in res.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in res.output
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--heads-ratio", 1.2, "--mlp-ratio", 0.1], "--heads-ratio 1.2: must be in [0, 1)"),
        (["--heads-ratio", 0.1, "--mlp-ratio", -0.5], "--mlp-ratio -0.5: must be in [0, 1)"),
        (["--heads-ratio", 0.9, "--mlp-ratio", 0.1, "--protect-blocks", "0"], "largest ratio 0.5625"),
        (["--heads-ratio", 0.1, "--mlp-ratio", 0.1, "--protect-blocks", "x"], "'x' is not a comma-separated list"),
    ],
)
def test_bad_ratios_fail_before_any_work(tmp_path, args, message):
    out = tmp_path / "out"
    res = run("prune", "--recover-steps", 0, "--model", "tiny", "--random-init", "--out", out, *args)
    assert message in _error(res)
    assert not out.exists()


def test_random_weights_must_be_asked_for(tmp_path):
    res = run("prune", "--recover-steps", 0, "--model", "tiny", "--heads-ratio", 0.1, "--mlp-ratio", 0.1, "--out", tmp_path / "o")
    assert "--random-init" in _error(res)


def test_bad_checkpoints_give_one_line(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    res = run("info", "--model", "tiny", "--checkpoint", bad)
    assert "bad.pth: not a torch checkpoint (it starts with b'\\x00gar'" in _error(res)
    bad.write_bytes(b"PK\x03\x04truncated zip")
    res = run("info", "--model", "tiny", "--checkpoint", bad)
    assert "bad.pth: not a readable torch checkpoint, damaged or truncated?" in _error(res)
    bad.write_bytes(b"")
    assert "bad.pth: the file is empty" in _error(run("info", "--model", "tiny", "--checkpoint", bad))
    res = run("info", "--model", "tiny", "--checkpoint", tmp_path / "missing.pth")
    assert "missing.pth: file not found" in _error(res)
    wrong = tmp_path / "wrong.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1)}, wrong)
    res = run("prune", "--recover-steps", 0, "--model", "tiny", "--checkpoint", wrong, "--heads-ratio", 0.1, "--mlp-ratio", 0.1,
              "--out", tmp_path / "o")
    assert "does not match tiny: missing keys" in _error(res)


def test_pruned_checkpoint_refused_by_prune(tmp_path, tiny_model):
    path = tmp_path / "pruned.pth"
    save_pruned(tiny_model, path, base="tiny")
    res = run("prune", "--recover-steps", 0, "--model", "tiny", "--checkpoint", path, "--heads-ratio", 0.1, "--mlp-ratio", 0.1,
              "--out", tmp_path / "o")
    assert "is a pruned medcore-tp checkpoint (base tiny), a dense one is expected" in _error(res)


def test_taylor_uses_calibration_gradients(tmp_path):
    res = run("prune", "--recover-steps", 0, "--model", "tiny", "--random-init", "--importance", "taylor", "--calib-size", 2,
              "--heads-ratio", 0.25, "--mlp-ratio", 0.25, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "SYNTHETIC" in res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["calibration"] == {"datasets": ["synthetic"], "samples": 2}


def test_every_command_treats_a_model_name_the_same_way(tmp_path):
    from medcore_tp.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "d", n=2, size=64)
    for command in (["evaluate", "--data", data, "--split", "all"], ["prune", "--ratio", 0.1]):
        res = run(*command, "--model", "tiny", "--out", tmp_path / "o")
        assert "--model tiny has no packaged weights: give --checkpoint PATH or --random-init" in _error(res)
        res = run(*command, "--model", "tiny", "--random-init", "--checkpoint", tmp_path / "x.pth", "--out", tmp_path / "o")
        assert "not both" in _error(res)
    assert not (tmp_path / "o").exists()


def test_prune_with_distillation_says_which_weights_it_kept(tmp_path):
    from medcore_tp.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "d", n=20, size=64, seed=2)
    res = run("prune", "--model", "tiny", "--random-init", "--data", data, "--calib-size", 10, "--ratio", 0.3,
              "--importance", "random", "--distill-steps", 4, "--no-progress", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    record = summary["distillation"]
    assert [c["step"] for c in record["checks"]][0] == 0 and record["checks"][-1]["step"] == 4
    assert f"kept the weights of step {record['kept_step']}" in res.output
    assert {r["stage"] for r in summary["refits"]} == {"heads", "mlp"}  # the refit is recorded with the run
