"""``medcore-tp prune --ratio`` with MedCore's importances, on real images, and its bad inputs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from medcore_tp import build_model
from medcore_tp.cli import main
from medcore_tp.paths import data_root

SHARED = data_root()  # $MEDCORE_DATA, else ../shared/data
needs_data = pytest.mark.needs_data("kvasir-seg-256", "cvc-clinicdb-256")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _error(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in res.output
    return lines[0]


MEDCORE = ("--importance", "medcore")  # the tests of MedCore's own importance name it: the default is refit


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(0)
    source = build_model("tiny")
    target = build_model("tiny")
    target.load_state_dict(source.state_dict())
    with torch.no_grad():
        for p in target.image_encoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save(source.state_dict(), tmp_path / "sam.pth")
    torch.save({"model": target.state_dict(), "epoch": 1}, tmp_path / "medsam.pth")
    return tmp_path / "medsam.pth", tmp_path / "sam.pth"


@needs_data
def test_medcore_with_source_on_two_polyp_sets(tmp_path, checkpoints):
    target, source = checkpoints
    out = tmp_path / "out"
    res = run("prune", *MEDCORE, "--recover-steps", 0, "--model", "tiny", "--checkpoint", target, "--source-checkpoint", source,
              "--data", f"{SHARED / 'kvasir-seg-256'},{SHARED / 'cvc-clinicdb-256'}", "--data-weights", "0.4,0.6",
              "--ratio", 0.5, "--calib-size", 6, "--batch-size", 4, "--no-progress", "--out", out)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["source_model_used"] is True and s["importance"] == "medcore"
    assert s["calibration"]["samples"]["kvasir-seg-256"] == {"used": 6, "skipped": 0}
    assert s["calibration"]["samples"]["source (all datasets)"] == {"used": 12, "skipped": 0}
    assert len(s["alpha_per_block"]) == 4 and all(0 <= a <= 1 for a in s["alpha_per_block"])
    assert abs(s["encoder_params_removed_fraction"] - 0.5) <= 0.01
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert list(rows[0]) == ["block", "kind", "index", "d_zero", "d_reset", "alpha", "q", "removed"]
    assert len(rows) == 4 * (4 + 256)
    for b in range(4):  # within each block the removed groups are the lowest-Q ones
        for kind in ("head", "mlp"):
            grp = [r for r in rows if int(r["block"]) == b and r["kind"] == kind]
            gone = [float(r["q"]) for r in grp if r["removed"] == "True"]
            kept = [float(r["q"]) for r in grp if r["removed"] == "False"]
            if gone:
                assert max(gone) <= min(kept)
    removed_heads = sum(r["removed"] == "True" for r in rows if r["kind"] == "head")
    assert removed_heads == 16 - sum(s["heads_per_block"])
    assert json.loads((out / "splits.json").read_text())["seed"] == 42


def test_without_source_says_only_dzero(tmp_path, checkpoints):
    target, _ = checkpoints
    res = run("prune", *MEDCORE, "--recover-steps", 0, "--model", "tiny", "--checkpoint", target, "--ratio", 0.3, "--calib-size", 2,
              "--no-progress", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert "only Dzero is available, alpha = 1" in res.output and "SYNTHETIC" in res.output
    # an importance the user chose is not announced as a default
    assert not any(line.startswith("importance:") for line in res.output.splitlines())
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["source_model_used"] is False and s["alpha_per_block"] == [1.0] * 4


def test_boundary_fisher_importance(tmp_path, checkpoints):
    target, source = checkpoints
    res = run("prune", "--recover-steps", 0, "--model", "tiny", "--checkpoint", target, "--importance", "boundary-fisher",
              "--ratio", 0.3, "--calib-size", 2, "--no-progress", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["importance"] == "boundary-fisher"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ratio", 0.0], "--ratio 0.0: must be in (0, "),
        (["--ratio", 0.7], "--ratio 0.7: must be in (0, 0.6585] with no block protected"),
        (["--ratio", 0.5, "--protect-blocks", "2,3"], "with blocks 2,3 protected"),
        (["--ratio", 0.3, "--alpha", "2"], "--alpha 2: must be 'auto' or a number in [0, 1]"),
        (["--ratio", 0.3, "--data-weights", "0.5,a"], "--data-weights 0.5,a: not a comma-separated list"),
    ],
)
def test_bad_options(tmp_path, checkpoints, args, message):
    target, _ = checkpoints
    res = run("prune", *MEDCORE, "--recover-steps", 0, "--model", "tiny", "--checkpoint", target, "--out", tmp_path / "o", *args)
    assert message in _error(res)
    assert not (tmp_path / "o").exists()


def test_data_folder_that_does_not_qualify(tmp_path, checkpoints):
    target, _ = checkpoints
    (tmp_path / "bad" / "images").mkdir(parents=True)
    res = run("prune", *MEDCORE, "--recover-steps", 0, "--model", "tiny", "--checkpoint", target, "--ratio", 0.3, "--data", tmp_path / "bad",
              "--out", tmp_path / "o")
    assert "has no 'masks/' folder" in _error(res)
    assert not (tmp_path / "o").exists()


def test_source_of_another_architecture(tmp_path, checkpoints):
    target, _ = checkpoints
    other = tmp_path / "other.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}, other)
    res = run("prune", *MEDCORE, "--recover-steps", 0, "--model", "tiny", "--checkpoint", target, "--source-checkpoint", other, "--ratio", 0.3,
              "--out", tmp_path / "o")
    assert "--source-checkpoint: checkpoint" in _error(res) and "does not match tiny" in res.output


@needs_data
def test_calib_size_above_what_exists_uses_all(tmp_path, checkpoints):
    target, _ = checkpoints
    res = run("prune", *MEDCORE, "--recover-steps", 0, "--model", "tiny", "--checkpoint", target, "--ratio", 0.3, "--data", SHARED / "kvasir-seg",
              "--calib-size", 50, "--no-progress", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert "--calib-size 50: kvasir-seg has 3 training images, using all of them" in res.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["calibration"]["samples"]["kvasir-seg"]["used"] == 3


def test_every_gradient_non_finite_writes_nothing(tmp_path):
    broken = build_model("tiny").state_dict()
    broken["image_encoder.blocks.0.mlp.lin1.weight"][0, 0] = float("nan")
    torch.save(broken, tmp_path / "nan.pth")
    res = run("prune", *MEDCORE, "--recover-steps", 0, "--model", "tiny", "--checkpoint", tmp_path / "nan.pth", "--ratio", 0.3, "--calib-size", 2,
              "--no-progress", "--out", tmp_path / "o")
    assert "all 2 samples gave non-finite gradients" in _error(res)
    assert not (tmp_path / "o").exists()


@needs_data
def test_cascade_with_recovery_records_loss_curves(tmp_path, checkpoints):
    target, _ = checkpoints
    res = run("prune", *MEDCORE, "--model", "tiny", "--checkpoint", target, "--ratio", 0.4, "--data", SHARED / "kvasir-seg-256",
              "--calib-size", 4, "--recover-steps", 3, "--recover-lr", 3e-4, "--no-progress", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "o" / "summary.json").read_text())["recovery"]
    assert [r["stage"] for r in rec] == ["heads", "mlp"] and all(len(r["loss"]) == 3 for r in rec)
    assert all(r["lr"] == 3e-4 for r in rec)
    assert "recovery after removing heads" in res.output


def test_default_run_reports_speed_and_quality_on_the_synthetic_set(tmp_path):
    res = run("prune", "--model", "lite-tiny", "--random-init", "--ratio", 0.05, "--calib-size", 2,
              "--recover-steps", 2, "--no-progress", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert "measured on built-in SYNTHETIC set (8 images" in res.output
    assert "importance: refit (the default): what removing a group costs after the least-squares refit" in res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    # TinyViT's stages have groups of different sizes: the sensitivity-weighted allocation still lands on R
    assert abs(summary["encoder_params_removed_fraction"] - 0.05) <= 0.005
    assert [len(r["loss"]) for r in summary["recovery"]] == [2, 2]
    assert "recovery trains the encoder after its stem (patch_embed, layers.0: never pruned" in res.output
    assert all(r["stem_not_trained"] == ["patch_embed.", "layers.0."] for r in summary["recovery"])
    rep = summary["report"]
    for when in ("before", "after"):
        assert rep[when]["images"] == 8 and rep[when]["latency_s"] > 0
        assert 0 <= rep[when]["dice"] <= 1 and 0 <= rep[when]["boundary_f1"] <= 1 and rep[when]["hd95"] >= 0


def test_without_data_the_default_recovers_40_steps_per_stage(tmp_path):
    torch.manual_seed(0)
    torch.save(build_model("tiny").state_dict(), tmp_path / "dense.pth")  # trained weights stand-in: not --random-init
    res = run("prune", "--model", "tiny", "--checkpoint", tmp_path / "dense.pth", "--ratio", 0.3, "--calib-size", 2,
              "--no-report", "--no-progress", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [(r["stage"], len(r["loss"])) for r in summary["recovery"]] == [("heads", 40), ("mlp", 40)]
