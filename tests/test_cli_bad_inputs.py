"""The CLI's bad inputs, as a table: each one ends with one line naming the problem, the right exit
code, and nothing new in --out. Plus the surprise cases: what the tool decides is said and recorded,
another run's files are never mixed in, Ctrl-C exits 130 saying what was kept, files follow the umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from medcore_tp import save_pruned
from medcore_tp.cli import main
from medcore_tp.models import build_model
from medcore_tp.outdir import MANIFEST


def _dataset(root: Path, n: int = 6, size=(24, 32), mask=None, stems=None) -> Path:
    """``n`` gradient images with rectangle masks (``mask(i)`` gives another uint8 mask)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    h, w = size
    for i in range(n):
        stem = stems[i] if stems else f"im{i}"
        image = (np.arange(h * w).reshape(h, w) * (i + 1) % 251).astype(np.uint8)
        Image.fromarray(np.dstack([image] * 3)).save(root / "images" / f"{stem}.png")
        m = np.zeros((h, w), np.uint8)
        m[3 + i % 4 : 15, 4:22] = 255
        Image.fromarray(m if mask is None else mask(i)).save(root / "masks" / f"{stem}.png")
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace with good and bad data, checkpoints and output folders (built once)."""
    w = tmp_path_factory.mktemp("ws")
    _dataset(w / "ds")
    _dataset(w / "ds2")
    _dataset(w / "two", n=2)
    _dataset(w / "one", n=1)
    _dataset(w / "empty", mask=lambda i: np.zeros((24, 32), np.uint8))
    _dataset(w / "faint", mask=lambda i: np.full((24, 32), 100, np.uint8))  # nothing above 127
    _dataset(w / "nomatch")
    for p in (w / "nomatch" / "masks").iterdir():
        p.rename(p.with_name("other_" + p.name))
    (w / "noimages" / "masks").mkdir(parents=True)
    (w / "other" / "ds").mkdir(parents=True)  # a second folder named "ds"
    _dataset(w / "other" / "ds2")
    (w / "file.txt").write_text("not a folder\n")
    (w / "text.pth").write_text("hello\n")
    (w / "empty.pth").write_bytes(b"")
    torch.save({"image_encoder.foo": torch.zeros(3)}, w / "wrong.pth")
    torch.manual_seed(0)
    save_pruned(build_model("tiny"), w / "tiny.pth", base="tiny")
    full = w / "full.pth"
    full.write_bytes((w / "tiny.pth").read_bytes())
    (w / "trunc.pth").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (w / "bad_splits.json").write_text("{not json")
    (w / "stranger_splits.json").write_text(json.dumps(
        {"datasets": {"ds": {"train": ["nope"], "val": [], "test": []}}}))
    # a folder holding a previous prune run (with its manifest) and one from before manifests existed
    prev = w / "prev"
    prev.mkdir()
    for name in ("pruned.pth", "summary.json", "scores.csv", "splits.json"):
        (prev / name).write_text("old\n")
    (prev / MANIFEST).write_text(json.dumps({"command": "prune", "status": "complete",
                                             "files": ["pruned.pth", "summary.json", "scores.csv", "splits.json"]}))
    legacy = w / "legacy"
    legacy.mkdir()
    (legacy / "per_image.csv").write_text("old\n")
    (legacy / "summary.json").write_text("{}\n")
    (legacy / "notes.txt").write_text("the user's own file\n")
    return w


TINY = ["--model", "tiny", "--random-init"]
PRUNE = ["prune", *TINY, "--importance", "magnitude", "--heads-ratio", "0.25", "--mlp-ratio", "0.25"]
EVAL = ["evaluate", *TINY, "--data", "{ws}/ds", "--no-progress"]
FT = ["finetune", "--model", "tiny", "--checkpoint", "{ws}/tiny.pth", "--data", "{ws}/ds", "--epochs", "1",
      "--no-progress"]
CUDA = torch.cuda.is_available()

# (id, command, exit code, fragment of the one-line message, --out folder: None = a fresh one)
CASES = [
    # info
    ("info-missing-ckpt", ["info", "--model", "tiny", "--checkpoint", "{ws}/missing.pth"], 2, "file not found", None),
    ("info-text-ckpt", ["info", "--model", "tiny", "--checkpoint", "{ws}/text.pth"], 2, "not a torch checkpoint", None),
    ("info-empty-ckpt", ["info", "--model", "tiny", "--checkpoint", "{ws}/empty.pth"], 2, "the file is empty", None),
    ("info-truncated-ckpt", ["info", "--model", "tiny", "--checkpoint", "{ws}/trunc.pth"], 2, "trunc.pth", None),
    ("info-wrong-arch", ["info", "--model", "tiny", "--checkpoint", "{ws}/wrong.pth"], 2, "does not match tiny", None),
    ("info-unknown-model", ["info", "--model", "vit-z"], 2, "Invalid value for '--model'", None),
    # prune: options
    ("prune-ratio-and-heads", ["prune", *TINY, "--ratio", "0.3", "--heads-ratio", "0.1", "--mlp-ratio", "0.1"], 2,
     "--ratio and --heads-ratio/--mlp-ratio exclude each other", None),
    ("prune-ratio-and-mlp", ["prune", *TINY, "--ratio", "0.3", "--mlp-ratio", "0.1"], 2, "exclude each other", None),
    ("prune-heads-alone", ["prune", *TINY, "--heads-ratio", "0.1"], 2, "--heads-ratio and --mlp-ratio go together", None),
    ("prune-no-ratio", ["prune", *TINY], 2, "give --ratio R", None),
    ("prune-ratio-too-big", ["prune", *TINY, "--ratio", "0.95"], 2, "--ratio 0.95: must be in (0, 0.6585]", None),
    ("prune-ratio-zero", ["prune", *TINY, "--ratio", "0"], 2, "--ratio 0.0: must be in (0,", None),
    ("prune-ratio-negative", ["prune", *TINY, "--ratio", "-0.2"], 2, "--ratio -0.2: must be in (0,", None),
    ("prune-ratio-protected", ["prune", *TINY, "--ratio", "0.5", "--protect-blocks", "2,3"], 2,
     "with blocks 2,3 protected", None),
    ("prune-heads-ratio-1", ["prune", *TINY, "--heads-ratio", "1.2", "--mlp-ratio", "0.1"], 2,
     "--heads-ratio 1.2: must be in [0, 1)", None),
    ("prune-heads-ratio-max", ["prune", *TINY, "--heads-ratio", "0.9", "--mlp-ratio", "0.1", "--protect-blocks", "0"],
     2, "largest ratio 0.5625", None),
    ("prune-protect-range", [*PRUNE, "--protect-blocks", "9"], 2, "--protect-blocks 9: the encoder has blocks 0-3", None),
    ("prune-protect-text", [*PRUNE, "--protect-blocks", "x"], 2, "'x' is not a comma-separated list", None),
    ("prune-alpha", [*PRUNE, "--alpha", "2"], 2, "--alpha 2: must be 'auto' or a number in [0, 1]", None),
    ("prune-calib-size", [*PRUNE, "--calib-size", "0"], 2, "Invalid value for '--calib-size'", None),
    ("prune-no-weights", ["prune", "--model", "tiny", "--ratio", "0.3"], 2,
     "--model tiny has no packaged weights: give --checkpoint PATH or --random-init", None),
    ("prune-device", [*PRUNE, "--device", "gpu0"], 2, "--device gpu0: not a torch device", None),
    # prune: data weights, all before any work
    ("weights-negative", [*PRUNE, "--data", "{ws}/ds,{ws}/ds2", "--data-weights", "-1,2"], 2,
     "--data-weights -1,2: weights must be finite and >= 0", None),
    ("weights-zero", [*PRUNE, "--data", "{ws}/ds,{ws}/ds2", "--data-weights", "0,0"], 2,
     "--data-weights 0,0: at least one weight must be > 0", None),
    ("weights-count", [*PRUNE, "--data", "{ws}/ds", "--data-weights", "1,2"], 2, "2 weights for 1 data folders", None),
    ("weights-text", [*PRUNE, "--data", "{ws}/ds", "--data-weights", "a"], 2, "not a comma-separated list of numbers", None),
    ("weights-nan", [*PRUNE, "--data", "{ws}/ds", "--data-weights", "nan"], 2, "finite and >= 0", None),
    ("weights-no-data", [*PRUNE, "--data-weights", "1"], 2, "--data-weights 1: needs --data", None),
    # prune: data folders and masks
    ("prune-data-missing", [*PRUNE, "--data", "{ws}/nothing"], 2, "nothing does not exist", None),
    ("prune-data-file", [*PRUNE, "--data", "{ws}/file.txt"], 2, "file.txt is a file, not a folder", None),
    ("prune-data-no-images", [*PRUNE, "--data", "{ws}/noimages"], 2, "has no 'images/' folder", None),
    ("prune-data-stems", [*PRUNE, "--data", "{ws}/nomatch"], 2, "no file stem in common", None),
    ("prune-data-same-name", [*PRUNE, "--data", "{ws}/ds2,{ws}/other/ds2"], 2, "two data folders are named 'ds2'", None),
    ("prune-masks-empty", [*PRUNE, "--data", "{ws}/empty"], 2, "all 6 masks are empty at threshold 127", None),
    ("prune-masks-faint", [*PRUNE, "--data", "{ws}/faint"], 2, "have values but none above it", None),
    ("prune-masks-threshold-named", [*PRUNE, "--data", "{ws}/faint", "--mask-threshold", "120"], 2,
     "set --mask-threshold", None),
    # prune: checkpoints
    ("prune-ckpt-missing", ["prune", "--model", "tiny", "--checkpoint", "{ws}/missing.pth", "--ratio", "0.2"], 2,
     "file not found", None),
    ("prune-ckpt-text", ["prune", "--model", "tiny", "--checkpoint", "{ws}/text.pth", "--ratio", "0.2"], 2,
     "not a torch checkpoint", None),
    ("prune-ckpt-wrong", ["prune", "--model", "tiny", "--checkpoint", "{ws}/wrong.pth", "--ratio", "0.2"], 2,
     "does not match tiny", None),
    ("prune-source-missing", [*PRUNE[:-6], "--importance", "medcore", "--ratio", "0.2", "--recover-steps", "0",
                              "--source-checkpoint", "{ws}/missing.pth"], 2, "--source-checkpoint: checkpoint", None),
    ("prune-allocation-taylor", [*PRUNE[:-6], "--importance", "taylor", "--ratio", "0.2", "--allocation", "sensitivity"],
     2, "--allocation sensitivity: needs a Fisher importance (medcore, medcore-grad, boundary-fisher), not taylor", None),
    ("prune-refit-unknown", [*PRUNE, "--refit", "sometimes"], 2, "Invalid value for '--refit'", None),
    ("prune-distill-lr", [*PRUNE, "--distill-lr", "0"], 2, "Invalid value for '--distill-lr'", None),
    # prune: --out
    ("prune-out-file", [*PRUNE, "--out", "{ws}/file.txt"], 2, "file.txt' is a file", "file"),
    ("prune-out-under-file", [*PRUNE, "--out", "{ws}/file.txt/sub"], 2, "cannot write there", "file"),
    ("prune-out-previous", [*PRUNE, "--out", "{ws}/prev"], 2,
     "already holds the outputs of a prune run (pruned.pth, summary.json, scores.csv, splits.json)", "prev"),
    ("prune-out-legacy", [*PRUNE, "--out", "{ws}/legacy"], 2, "(summary.json, per_image.csv); choose a new folder or add "
     "--overwrite", "legacy"),
    ("prune-overwrite-input", ["prune", "--model", "tiny", "--checkpoint", "{ws}/prev/pruned.pth", "--ratio", "0.2",
                               "--out", "{ws}/prev", "--overwrite"], 2, "an input of this run", "prev"),
    # evaluate
    ("eval-no-weights", ["evaluate", "--model", "tiny", "--data", "{ws}/ds"], 2, "--model tiny has no packaged weights",
     None),
    ("eval-both-weights", [*EVAL, "--checkpoint", "{ws}/tiny.pth"], 2,
     "give either --checkpoint PATH or --random-init, not both", None),
    ("eval-no-data", ["evaluate", *TINY, "--data", ","], 2, "--data: no folder given", None),
    ("eval-data-file", ["evaluate", *TINY, "--data", "{ws}/file.txt"], 2, "is a file, not a folder", None),
    ("eval-data-missing", ["evaluate", *TINY, "--data", "{ws}/nothing"], 2, "does not exist", None),
    ("eval-masks-empty", ["evaluate", *TINY, "--data", "{ws}/empty"], 2, "--data empty: all 6 masks are empty", None),
    ("eval-ckpt-text", ["evaluate", "--model", "tiny", "--checkpoint", "{ws}/text.pth", "--data", "{ws}/ds"], 2,
     "not a torch checkpoint", None),
    ("eval-splits-bad", [*EVAL, "--splits", "{ws}/bad_splits.json"], 2, "cannot read splits file", None),
    ("eval-splits-stranger", [*EVAL, "--splits", "{ws}/stranger_splits.json"], 2,
     "lists 'nope' for dataset 'ds'", None),
    ("eval-split-empty", ["evaluate", *TINY, "--data", "{ws}/two", "--no-progress"], 2,
     "dataset 'two' has no image in the test split", None),
    ("eval-resolution", [*EVAL, "--resolution", "full"], 2, "Invalid value for '--resolution'", None),
    ("eval-out-previous", [*EVAL, "--out", "{ws}/prev"], 2, "already holds the outputs of a prune run", "prev"),
    ("eval-out-under-file", [*EVAL, "--out", "{ws}/file.txt/x"], 2, "cannot write there", "file"),
    ("eval-overwrite-input", [*EVAL, "--splits", "{ws}/prev/splits.json", "--out", "{ws}/prev", "--overwrite"], 2,
     "--overwrite would remove {ws}/prev/splits.json, an input of this run", "prev"),
    # finetune
    ("ft-ckpt-missing", ["finetune", "--model", "tiny", "--checkpoint", "{ws}/missing.pth", "--data", "{ws}/ds"], 2,
     "file not found", None),
    ("ft-ckpt-text", ["finetune", "--model", "tiny", "--checkpoint", "{ws}/text.pth", "--data", "{ws}/ds"], 2,
     "not a torch checkpoint", None),
    ("ft-ckpt-wrong-model", ["finetune", "--model", "lite-tiny", "--checkpoint", "{ws}/tiny.pth", "--data", "{ws}/ds"],
     2, "tiny.pth", None),
    ("ft-data-file", [*FT[:5], "--data", "{ws}/file.txt"], 2, "is a file, not a folder", None),
    ("ft-masks-faint", [*FT[:5], "--data", "{ws}/faint"], 2, "masks are empty at threshold 127", None),
    ("ft-val-empty", [*FT[:5], "--data", "{ws}/two"], 2, "split is empty", None),
    ("ft-out-previous", [*FT, "--out", "{ws}/prev"], 2, "already holds the outputs of a prune run", "prev"),
    ("ft-out-under-file", [*FT, "--out", "{ws}/file.txt/x"], 2, "cannot write there", "file"),
    ("ft-resume-other-run", [*FT, "--out", "{ws}/prev", "--resume"], 2, "already holds the outputs of a prune run", "prev"),
]
if not CUDA:
    CASES.append(("prune-device-cuda", [*PRUNE, "--device", "cuda"], 2, "--device cuda: CUDA is not available", None))


def _listing(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_leaves_out_untouched(ws, tmp_path, case):
    _, command, code, fragment, out_kind = case
    args = [a.replace("{ws}", str(ws)) for a in command]
    if "--out" in args:
        out = Path(args[args.index("--out") + 1])
        watch = {"file": ws / "file.txt", "prev": ws / "prev", "legacy": ws / "legacy"}[out_kind]
    else:
        out = watch = tmp_path / "out"
        args += ["--out", str(out)] if args[0] != "info" else []
    before = _listing(watch)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    assert fragment.replace("{ws}", str(ws)) in errors[0], errors[0]
    assert _listing(watch) == before
    if out_kind is None:
        assert not out.exists()


def test_the_table_has_at_least_40_cases():
    assert len(CASES) >= 40


# ------------------------------------------------------------------------------------------
# What the tool decides is said on screen and in summary.json


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_protection_lifted_and_recovery_skipped_are_said(tmp_path):
    out = tmp_path / "out"
    res = _run("prune", *TINY, "--importance", "magnitude", "--ratio", "0.5", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "note: --ratio 0.5 cannot be reached with blocks 2,3 protected (at most 0.3293): protection lifted" in res.output
    assert "note: --random-init: recovery skipped" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protection_lifted"] is True and summary["protect_blocks"] == []
    assert summary["recover_steps"] == 0 and summary["recovery"] == []
    assert any("lifted" in d for d in summary["decisions"]) and any("recovery skipped" in d for d in summary["decisions"])
    res = _run("prune", *TINY, "--importance", "magnitude", "--ratio", "0.2", "--out", tmp_path / "kept",
               "--no-progress")
    assert "protection lifted" not in res.output
    assert "allocation: even (the default): the same fraction of heads and of MLP channels from every pruned " \
           "block, blocks 2,3 untouched" in res.output
    assert json.loads((tmp_path / "kept" / "summary.json").read_text())["protection_lifted"] is False


def test_a_rerun_never_mixes_two_runs_files(ws, tmp_path):
    out = tmp_path / "out"
    first = _run("prune", *TINY, "--importance", "boundary-fisher", "--heads-ratio", 0.25, "--mlp-ratio", 0.25,
                 "--data", ws / "ds", "--calib-size", 2, "--recover-steps", 0, "--out", out, "--no-progress")
    assert first.exit_code == 0, first.output
    assert {"scores.csv", "splits.json", "pruned.pth", "summary.json", MANIFEST} <= set(os.listdir(out))
    (out / "mine.txt").write_text("keep me\n")
    again = CliRunner().invoke(main, ["prune", *TINY, "--importance", "magnitude", "--heads-ratio", "0.25",
                                      "--mlp-ratio", "0.25", "--out", str(out)])
    assert again.exit_code == 2 and "already holds the outputs of a prune run" in again.output
    res = _run("prune", *TINY, "--importance", "magnitude", "--heads-ratio", 0.25, "--mlp-ratio", 0.25, "--out", out,
               "--overwrite")
    assert res.exit_code == 0, res.output
    assert "removed the earlier run's pruned.pth, summary.json, splits.json, scores.csv" in res.output
    assert sorted(os.listdir(out)) == sorted(["pruned.pth", "summary.json", MANIFEST, "mine.txt"])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["command"] == "prune" and manifest["status"] == "complete"
    assert manifest["files"] == ["pruned.pth", "summary.json"]
    # the record says how the process's allocator ran (here: conftest's recorder stands in for mallopt)
    assert manifest["keep_freed_memory"] is True
    assert json.loads((out / "summary.json").read_text())["importance"] == "magnitude"


def test_evaluate_never_rewrites_the_users_splits_file(ws, tmp_path):
    first = _run("evaluate", *TINY, "--data", ws / "ds", "--out", tmp_path / "a", "--no-progress")
    assert first.exit_code == 0, first.output
    assert f"note: splits: new (seed 42), written to {tmp_path / 'a' / 'splits.json'}" in first.output
    user = tmp_path / "a" / "splits.json"
    original = user.read_bytes()
    res = _run("evaluate", *TINY, "--data", f"{ws / 'ds'},{ws / 'ds2'}", "--splits", user, "--out", tmp_path / "b",
               "--no-progress")
    assert res.exit_code == 0, res.output
    assert user.read_bytes() == original
    assert (f"note: splits: {user} extended with new splits of ds2 (seed 42), written to "
            f"{tmp_path / 'b' / 'splits.json'}; {user} is unchanged") in res.output
    doc = json.loads((tmp_path / "b" / "splits.json").read_text())
    assert doc["datasets"]["ds"] == json.loads(original)["datasets"]["ds"] and "ds2" in doc["datasets"]
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["splits"]["action"] == "extended" and summary["splits"]["added"] == ["ds2"]
    reuse = _run("evaluate", *TINY, "--data", ws / "ds", "--splits", user, "--out", tmp_path / "c", "--no-progress")
    assert f"note: splits: reused {user}" in reuse.output and not (tmp_path / "c" / "splits.json").exists()


def test_some_empty_masks_are_counted_and_said(tmp_path):
    root = _dataset(tmp_path / "partly", mask=lambda i: np.zeros((24, 32), np.uint8) if i < 2 else
                    np.where(np.arange(24 * 32).reshape(24, 32) % 7 == 0, 255 if i > 2 else 90, 0).astype(np.uint8))
    res = _run("evaluate", *TINY, "--data", root, "--split", "all", "--out", tmp_path / "o", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "note: partly: 2 of 6 masks are empty and 1 have no pixel above threshold 127" in res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["masks"]["partly"] == {"masks": 6, "empty": 2, "below_threshold": 1}
    res = _run("evaluate", *TINY, "--data", root, "--split", "all", "--out", tmp_path / "p", "--no-progress",
               "--mask-threshold", "50")
    assert "2 of 6 masks are empty and 0 have no pixel above threshold 50" in res.output


# ------------------------------------------------------------------------------------------
# Ctrl-C, file modes


def test_ctrl_c_exits_130_and_says_what_was_kept(ws, tmp_path, monkeypatch):
    import medcore_tp.cli.finetune as ft_cli
    import medcore_tp.cli.prune as prune_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_cli, "run_prune", interrupted)
    res = CliRunner().invoke(main, [*PRUNE, "--out", str(tmp_path / "p")])
    assert res.exit_code == 130
    assert res.output.strip().splitlines()[-1] == f"Interrupted: nothing was written to {tmp_path / 'p'}"
    assert not (tmp_path / "p").exists()

    real = ft_cli.finetune

    def one_epoch_then_ctrl_c(*args, **kwargs):
        real(*args, **{**kwargs, "stop_after_epoch": 1})
        raise KeyboardInterrupt

    monkeypatch.setattr(ft_cli, "finetune", one_epoch_then_ctrl_c)
    out = tmp_path / "f"
    res = CliRunner().invoke(main, [a.replace("{ws}", str(ws)) for a in FT] + ["--epochs", "2", "--out", str(out)])
    assert res.exit_code == 130, res.output
    assert res.output.strip().splitlines()[-1] == (
        f"Interrupted: kept splits.json, best.pth, state.pth, curves.csv in {out}; rerun with --resume to continue")
    assert json.loads((out / MANIFEST).read_text())["status"] == "interrupted"
    monkeypatch.setattr(ft_cli, "finetune", real)
    res = CliRunner().invoke(main, [a.replace("{ws}", str(ws)) for a in FT] + ["--epochs", "2", "--out", str(out),
                                                                               "--resume"])
    assert res.exit_code == 0, res.output
    assert f"note: splits: reused {out / 'splits.json'}" in res.output
    assert json.loads((out / MANIFEST).read_text())["status"] == "complete"


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        res = _run("evaluate", *TINY, "--data", _dataset(tmp_path / "d"), "--out", tmp_path / "o", "--no-progress")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for name in ("per_image.csv", "summary.json", "splits.json", MANIFEST):
        assert stat.S_IMODE((tmp_path / "o" / name).stat().st_mode) == 0o644, name


# ------------------------------------------------------------------------------------------
# info


def test_info_per_block_layout_input_size_and_reach():
    res = _run("info", "--model", "tiny")
    assert res.exit_code == 0
    assert "input 128x128" in res.output
    assert "largest --ratio, blocks 2,3 protected (default)   0.3293" in res.output
    assert "largest --ratio, no block protected               0.6585" in res.output
    assert " 0.0 " not in res.output and "0.03385" in res.output  # FLOPs of a tiny model keep their digits
    data = json.loads(_run("info", "--model", "tiny", "--json").output)
    assert [b["attention"] for b in data["blocks"]] == ["window 3x3", "global", "window 3x3", "global"]
    assert [b["head_dim"] for b in data["blocks"]] == [16] * 4 and [b["mlp"] for b in data["blocks"]] == [256] * 4
    assert data["input_size"] == 128
    sam = json.loads(_run("info", "--model", "sam-vit-b", "--json").output)
    assert [b["block"] for b in sam["blocks"] if b["attention"] == "global"] == [2, 5, 8, 11]
    assert {b["head_dim"] for b in sam["blocks"]} == {64}
    assert sam["max_ratio"]["protected_blocks"] == [10, 11]
    assert sam["max_ratio"]["with_protection"] > 0.6 > 0


@pytest.fixture
def locked_folder(tmp_path):
    """A folder nobody can write into: read-only for a normal user, immutable (chattr +i) for root."""
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine\n")
    if os.geteuid() == 0:
        import shutil
        import subprocess

        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                            capture_output=True).returncode != 0:
            pytest.skip("root without chattr +i: no folder is unwritable")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.mark.parametrize("command", [PRUNE, EVAL, FT], ids=["prune", "evaluate", "finetune"])
@pytest.mark.parametrize("under", [False, True], ids=["folder", "path-under-it"])
def test_unwritable_out_is_refused_before_any_work(ws, locked_folder, command, under):
    out = locked_folder / "run" if under else locked_folder
    res = CliRunner().invoke(main, [a.replace("{ws}", str(ws)) for a in command] + ["--out", str(out)])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1].startswith(f"Error: --out {out}: cannot write there")
    assert sorted(os.listdir(locked_folder)) == ["keep.txt"]


def test_protect_blocks_none_protects_no_block(tmp_path):
    res = _run("prune", *TINY, "--importance", "magnitude", "--ratio", "0.2", "--protect-blocks", "none",
               "--allocation", "even", "--out", tmp_path / "none", "--no-progress")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "none" / "summary.json").read_text())
    assert summary["protect_blocks"] == [] and summary["protection_lifted"] is False
    assert "allocation:" not in res.output  # asked for, so not announced
    # the rule alone protects blocks 2 and 3 at this ratio; with none, every block gives up MLP channels
    dense = json.loads(_run("info", "--model", "tiny", "--json").output)["mlp_per_block"]
    assert all(kept < width for kept, width in zip(summary["mlp_per_block"], dense, strict=True))
