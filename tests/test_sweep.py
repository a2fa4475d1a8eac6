"""``medcore-tp sweep`` on ``tiny``: end to end, resuming after an interruption, equality with a separate
``prune`` + ``evaluate``, an already-pruned checkpoint, and bad inputs (one line each)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from medcore_tp import build_model
from medcore_tp.cli import main
from medcore_tp.errors import MedcoreError
from medcore_tp.metrics import METRIC_NAMES
from medcore_tp.sweep import SweepConfig, _prune_config, check_settings, pareto_front, run_sweep, validate
from medcore_tp.synthetic import write_synthetic_dataset

SETTINGS = ["--ratios", "0.3,0.5", "--importances", "medcore,random", "--calib-size", "2", "--batch-size", "2",
            "--recover-steps", "1", "--repeats", "1", "--seed", "3"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _error(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    a = write_synthetic_dataset(root / "set-a", n=8, size=128, seed=1)
    b = write_synthetic_dataset(root / "set-b", n=6, size=128, seed=2)
    torch.manual_seed(0)
    torch.save(build_model("tiny").state_dict(), root / "tiny.pth")
    return root, f"{a},{b}", root / "tiny.pth"


def _config(data: str, ckpt: Path) -> SweepConfig:
    return SweepConfig(model="tiny", checkpoint=str(ckpt), data=data.split(","), ratios=[0.3, 0.5],
                       importances=["medcore", "random"], calib_size=2, batch_size=2, recover_steps=1, repeats=1,
                       seed=3)


@pytest.fixture(scope="module")
def finished(setup):
    """A 2 x 2 sweep interrupted during its second point, then finished by the CLI."""
    root, data, ckpt = setup
    out = root / "out"
    seen: list[tuple[str, str]] = []

    def interrupt(point: str, stage: str) -> None:
        seen.append((point, stage))
        if point == "random-0.3" and stage == "evaluate":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(_config(data, ckpt), out, progress=False, log=lambda _m: None, stage_hook=interrupt)
    first = out / "medcore-0.3" / "point.json"
    state = {"first_mtime": first.stat().st_mtime_ns, "second_done_before": (out / "random-0.3" / "point.json").exists(),
             "second_pruned_before": (out / "random-0.3" / "pruned.pth").exists(), "seen": list(seen)}
    rerun: list[tuple[str, str]] = []
    result = run_sweep(_config(data, ckpt), out, progress=False, log=lambda _m: None,
                       stage_hook=lambda p, s: rerun.append((p, s)))
    state["rerun"] = rerun
    state["result"] = result
    res = run("sweep", "--model", "tiny", "--checkpoint", ckpt, "--data", data, *SETTINGS, "--no-progress",
              "--out", out)
    state["cli"] = res
    return out, state


def test_sweep_end_to_end_and_resume(finished):
    out, state = finished
    # the interrupted run had finished dense and the first point, not the second
    assert ("medcore-0.3", "latency") in state["seen"] and state["second_pruned_before"]
    assert not state["second_done_before"]
    # the rerun redid the second point from scratch and never touched the first
    assert not any(p in ("dense", "medcore-0.3") for p, _ in state["rerun"])
    assert ("random-0.3", "prune") in state["rerun"] and ("random-0.5", "latency") in state["rerun"]
    assert (out / "medcore-0.3" / "point.json").stat().st_mtime_ns == state["first_mtime"]
    assert state["result"].reused == ["dense", "medcore-0.3"]
    # a third run (the CLI) finds everything done
    res = state["cli"]
    assert res.exit_code == 0, res.output
    assert "kept 5 finished point(s)" in res.output

    rows = _rows(out / "sweep.csv")
    assert [r["point"] for r in rows] == ["dense", "medcore-0.3", "random-0.3", "medcore-0.5", "random-0.5"]
    dense = rows[0]
    for r in rows[1:]:
        assert int(r["encoder_params"]) < int(dense["encoder_params"])
        assert float(r["flops_torch_g"]) < float(dense["flops_torch_g"])
        assert float(r["flops_paper_g"]) < float(dense["flops_paper_g"])
        assert abs(float(r["removed_fraction"]) - float(r["ratio"])) < 0.02
        assert float(r["latency_min_s"]) <= float(r["latency_s"]) <= float(r["latency_max_s"])
        assert float(r["seconds_evaluate"]) > 0 and float(r["seconds_recovery"]) > 0
        assert int(r["n_images"]) == int(dense["n_images"]) == 3  # 2 + 1 test images, the same as dense
    for name in ("medcore-0.3", "random-0.5"):
        assert {(x["dataset"], x["name"], x["box_x0"]) for x in _rows(out / name / "per_image.csv")} == \
            {(x["dataset"], x["name"], x["box_x0"]) for x in _rows(out / "dense" / "per_image.csv")}
    comp = _rows(out / "comparisons.csv")
    assert len(comp) == 2 * len(METRIC_NAMES)
    c = next(x for x in comp if x["ratio"] == "0.5" and x["metric"] == "dice")
    a = {(x["dataset"], x["name"]): float(x["dice"]) for x in _rows(out / "medcore-0.5" / "per_image.csv")}
    b = {(x["dataset"], x["name"]): float(x["dice"]) for x in _rows(out / "random-0.5" / "per_image.csv")}
    assert float(c["mean_diff"]) == pytest.approx(sum(a[k] - b[k] for k in a) / len(a), abs=1e-5)
    assert float(c["ci_low"]) <= float(c["mean_diff"]) + 1e-9 <= float(c["ci_high"]) + 2e-9
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "sweep.json").read_text())
    assert len(summary["points"]) == 5 and summary["settings"]["ratios"] == [0.3, 0.5]


def test_point_equals_separate_prune_and_evaluate(finished, setup, tmp_path):
    out, _ = finished
    _, data, ckpt = setup
    p, e = tmp_path / "p", tmp_path / "e"
    res = run("prune", "--model", "tiny", "--checkpoint", ckpt, "--data", data, "--ratio", 0.5, "--importance",
              "medcore", "--calib-size", 2, "--batch-size", 2, "--recover-steps", 1, "--seed", 3, "--no-report",
              "--no-progress", "--out", p)
    assert res.exit_code == 0, res.output
    res = run("evaluate", "--model", "tiny", "--checkpoint", p / "pruned.pth", "--data", data, "--splits",
              out / "splits.json", "--no-progress", "--out", e)
    assert res.exit_code == 0, res.output
    point = json.loads((out / "medcore-0.5" / "point.json").read_text())
    summary = json.loads((p / "summary.json").read_text())
    assert point["profile"]["encoder_params"] == summary["encoder_params_after"]
    assert point["profile"]["flops_torch_g"] == pytest.approx(summary["flops_torch_g_after"])
    assert point["removed_heads_per_block"] == summary["removed_heads_per_block"]
    assert point["removed_mlp_per_block"] == summary["removed_mlp_per_block"]
    mine = {(r["dataset"], r["name"]): r for r in _rows(out / "medcore-0.5" / "per_image.csv")}
    theirs = {(r["dataset"], r["name"]): r for r in _rows(e / "per_image.csv")}
    assert mine.keys() == theirs.keys()
    for k in mine:
        for m in METRIC_NAMES:
            assert float(mine[k][m]) == pytest.approx(float(theirs[k][m]), abs=1e-6), (k, m)
    a = torch.load(out / "medcore-0.5" / "pruned.pth", weights_only=True)["state_dict"]
    b = torch.load(p / "pruned.pth", weights_only=True)["state_dict"]
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-6


def test_sweep_of_an_already_pruned_checkpoint(finished, setup, tmp_path):
    out, _ = finished
    _, data, _ = setup
    pruned = out / "random-0.3" / "pruned.pth"
    res = run("sweep", "--model", "tiny", "--checkpoint", pruned, "--data", data, "--ratios", "0.2",
              "--importances", "magnitude", "--recover-steps", 0, "--repeats", 1, "--no-progress", "--out",
              tmp_path / "again")
    assert res.exit_code == 0, res.output
    rows = _rows(tmp_path / "again" / "sweep.csv")
    before = json.loads((out / "random-0.3" / "point.json").read_text())["profile"]["encoder_params"]
    assert int(rows[0]["encoder_params"]) == before
    assert abs(float(rows[1]["removed_fraction"]) - 0.2) < 0.02


def test_sensitivity_allocation_falls_back_to_even_and_says_so(setup, tmp_path):
    root, data, ckpt = setup
    config = _config(data, ckpt)
    config.allocation, config.ratios, config.importances = "sensitivity", [0.3], ["random"]
    assert _prune_config(config, "random", 0.3).allocation == "even"
    assert _prune_config(config, "medcore", 0.3).allocation == "sensitivity"
    said: list[str] = []
    run_sweep(config, tmp_path / "s", progress=False, log=said.append)
    assert any("random use even" in line for line in said), said
    # without a progress bar every stage of every point is said, so a long sweep never looks stalled
    for stage in ("[dense] evaluate", "[random-0.3] prune", "[random-0.3] evaluating", "[random-0.3] latency"):
        assert any(line.startswith(stage) for line in said), (stage, said)


def test_pareto_front():
    # cost, quality (higher better): (1, .5) and (2, .8) are on the front, (3, .7) and (2, .6) are not
    assert pareto_front([1, 2, 3, 2], [0.5, 0.8, 0.7, 0.6]) == [True, True, False, False]
    assert pareto_front([1, 2, 3], [9.0, 5.0, 6.0], higher_is_better=False) == [True, True, False]


def test_bad_inputs_one_line_each(setup, finished, tmp_path):
    root, data, ckpt = setup
    base = ["sweep", "--model", "tiny", "--checkpoint", ckpt, "--data", data, "--no-progress"]
    e = _error(run(*base, "--ratios", "0.3,0.5,0.3", "--out", tmp_path / "a"))
    assert "--ratios" in e and "0.3 given more than once" in e
    e = _error(run(*base, "--ratios", "0.3,0.97", "--out", tmp_path / "b"))
    assert "--ratios: 0.97 is unreachable" in e and "must be in (0, 0." in e
    e = _error(run(*base, "--importances", "medcore,fisher", "--out", tmp_path / "c"))
    assert "unknown importance 'fisher'" in e and "magnitude" in e
    bad = tmp_path / "nostem"
    (bad / "images").mkdir(parents=True)
    (bad / "masks").mkdir()
    write_synthetic_dataset(tmp_path / "tmpset", n=1, size=64)
    (tmp_path / "tmpset" / "images" / "synth_000.png").rename(bad / "images" / "a.png")
    (tmp_path / "tmpset" / "masks" / "synth_000.png").rename(bad / "masks" / "b.png")
    e = _error(run(*base, "--eval-data", bad, "--out", tmp_path / "d"))
    assert "--eval-data" in e and "no file stem in common" in e
    for d in ("a", "b", "c", "d"):
        assert not (tmp_path / d).exists()  # refused before anything was written
    out, _ = finished
    before = sorted(p.name for p in out.iterdir())
    e = _error(run(*base, *SETTINGS, "--ratios", "0.3,0.6", "--out", out))  # the last --ratios counts
    assert f"--out {out} holds a sweep with other settings (ratios differ)" in e
    assert "--out must be a new folder or the settings must match" in e
    assert sorted(p.name for p in out.iterdir()) == before


def test_kept_point_records_let_a_new_folder_resume_without_the_checkpoints(finished, setup, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from lite_medsam_sweep import keep_points, restore_points

    out, _ = finished
    root, data, ckpt = setup
    store = tmp_path / "kept"
    assert keep_points(str(out), str(store)) == ["dense", "medcore-0.3", "medcore-0.5", "random-0.3", "random-0.5"]
    assert not list(store.rglob("*.pth"))
    fresh = tmp_path / "fresh"
    assert restore_points(str(store), str(fresh)) == ["dense", "medcore-0.3", "medcore-0.5", "random-0.3", "random-0.5"]
    assert restore_points(str(store), str(fresh)) == []  # nothing left to restore
    stages: list[tuple[str, str]] = []
    result = run_sweep(_config(data, ckpt), fresh, progress=False, log=lambda _m: None,
                       stage_hook=lambda p, s: stages.append((p, s)))
    assert stages == [] and result.computed == []
    assert (fresh / "sweep.csv").read_text() == (out / "sweep.csv").read_text()
    assert (fresh / "comparisons.csv").read_text() == (out / "comparisons.csv").read_text()


def test_a_setting_added_later_counts_as_its_default_in_an_older_folder(setup, tmp_path):
    root, data, ckpt = setup
    config = _config(data, ckpt)
    older = {k: v for k, v in config.settings().items() if k != "recover_lr"}  # written before --recover-lr existed
    (tmp_path / "settings.json").write_text(json.dumps(older))
    assert check_settings(tmp_path, config.settings()) is True
    config.recover_lr = 1e-4
    with pytest.raises(MedcoreError, match=r"\(recover_lr differ\); --out must be a new folder"):
        check_settings(tmp_path, config.settings())


def test_progressive_settings_reach_every_point_and_a_rerun_must_match_them(setup, tmp_path):
    root, data, ckpt = setup
    config = _config(data, ckpt)
    config.prune_steps, config.recover_teacher, config.recover_views = 3, "dense", "identity,hflip"
    point = _prune_config(config, "random", 0.3)
    assert (point.prune_steps, point.recover_teacher, point.recover_views) == (3, "dense", ("identity", "hflip"))
    (tmp_path / "settings.json").write_text(json.dumps(config.settings()))
    config.prune_steps = 1
    with pytest.raises(MedcoreError, match=r"\(prune_steps differ\); --out must be a new folder"):
        check_settings(tmp_path, config.settings())
    # a folder written before recover_views existed counts as the default view
    config.prune_steps, config.recover_views = 3, "identity"
    old = {k: v for k, v in config.settings().items() if k != "recover_views"}
    (tmp_path / "settings.json").write_text(json.dumps(old))
    assert check_settings(tmp_path, config.settings()) is True
    config.recover_views = "hflip,rotate"
    with pytest.raises(MedcoreError, match="--recover-views hflip,rotate: give distinct views"):
        validate(config)


def test_a_folder_written_under_the_earlier_defaults_is_not_resumed(setup, tmp_path):
    root, data, ckpt = setup
    config = _config(data, ckpt)
    older = {k: v for k, v in config.settings().items() if k != "defaults"}  # before the even allocation
    (tmp_path / "settings.json").write_text(json.dumps(older))
    with pytest.raises(MedcoreError, match=r"holds a sweep run under earlier defaults \(equal-count allocation"):
        check_settings(tmp_path, config.settings())
    (tmp_path / "settings.json").write_text(json.dumps(config.settings()))
    assert check_settings(tmp_path, config.settings()) is True


def test_sweep_protect_blocks_none_reaches_the_points(setup, tmp_path):
    root, data, ckpt = setup
    res = CliRunner().invoke(main, ["sweep", "--model", "tiny", "--checkpoint", str(ckpt), "--data", data,
                                    "--ratios", "0.2", "--importances", "random", "--recover-steps", "0",
                                    "--protect-blocks", "none", "--repeats", "1", "--no-progress",
                                    "--out", str(tmp_path / "s")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s" / "settings.json").read_text())["protect"] == []
    point = json.loads((tmp_path / "s" / "random-0.2" / "point.json").read_text())
    assert point["protect_blocks"] == []  # the rule alone protects blocks 2 and 3 of tiny at this ratio
