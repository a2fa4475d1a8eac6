"""Inference and evaluation end to end: a tiny SAM on a few real and synthetic images, bad inputs, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import medcore_tp.cli.evaluate  # noqa: F401  (registers the command on the group)
from medcore_tp import BlockPlan, apply_plan, build_model, prepare_pruning, save_pruned
from medcore_tp.cli import main
from medcore_tp.data import SegmentationDataset, discover
from medcore_tp.errors import MedcoreError
from medcore_tp.evaluate import CSV_COLUMNS, evaluate
from medcore_tp.inference import (
    forward_logits,
    input_size,
    logits_to_masks,
    predict_logits,
    segment,
    upsample_logits,
)
from medcore_tp.metrics import METRIC_NAMES, all_metrics
from medcore_tp.models import input_spec
from medcore_tp.paths import data_root
from medcore_tp.synthetic import write_synthetic_dataset

SHARED_DATA = data_root()  # $MEDCORE_DATA, else ../shared/data
needs_shared = pytest.mark.needs_data


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("tiny")


def subset(source: Path, n: int, dest: Path) -> Path:
    """A dataset folder with symlinks to the first ``n`` pairs of ``source`` (nothing copied)."""
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True)
    for s in discover(source)[:n]:
        (dest / "images" / s.image_path.name).symlink_to(s.image_path)
        (dest / "masks" / s.mask_path.name).symlink_to(s.mask_path)
    return dest


@pytest.fixture
def synth(tmp_path):
    return write_synthetic_dataset(tmp_path / "synth", n=5, size=96, seed=1)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_cli(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


# ------------------------------------------------------------------------------------------
# Inference


def test_logits_shape_and_batch_invariance(model):
    images = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[10, 10, 60, 70], [0, 0, 127, 127], [40, 30, 90, 100]], dtype=torch.float32)
    batched = predict_logits(model, images, boxes)
    assert batched.shape == (3, 1, 32, 32)  # input / 4
    single = torch.cat([predict_logits(model, images[i : i + 1], boxes[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    masks = logits_to_masks(upsample_logits(batched, (128, 128)))
    assert masks.shape == (3, 128, 128) and masks.dtype == torch.bool
    assert torch.equal(masks, torch.sigmoid(upsample_logits(batched, (128, 128)))[:, 0] > 0.5)


def test_forward_logits_is_differentiable(model):
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[10, 10, 60, 70], [20, 30, 100, 90]], dtype=torch.float32)
    logits = forward_logits(model, images, boxes)
    torch.testing.assert_close(logits.detach(), predict_logits(model, images, boxes))
    assert not predict_logits(model, images, boxes).requires_grad
    logits.sum().backward()
    assert model.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_segment_gives_masks_at_original_size(model):
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (50, 70, 3)), rng.uniform(0, 255, (200, 90, 3)), rng.uniform(0, 255, (128, 128, 3))]
    boxes = [[5, 5, 40, 30], [10, 20, 80, 150], [0, 0, 127, 127]]
    masks = segment(model, images, boxes, batch_size=2)
    assert [m.shape for m in masks] == [(50, 70), (200, 90), (128, 128)]
    assert all(m.dtype == bool for m in masks)


# ------------------------------------------------------------------------------------------
# Evaluation


@needs_shared
def test_end_to_end_on_shared_data(model, tmp_path):
    kvasir = subset(SHARED_DATA / "kvasir-seg-256", 3, tmp_path / "kvasir")
    drive = subset(SHARED_DATA / "drive", 2, tmp_path / "drive")  # .tif images with .gif masks
    out = tmp_path / "out"
    result = evaluate(model, [kvasir, drive], split="all", out_dir=out, batch_size=2, progress=False)

    rows = read_csv(out / "per_image.csv")
    assert len(rows) == 5 and tuple(rows[0]) == CSV_COLUMNS
    assert [r["dataset"] for r in rows] == ["kvasir"] * 3 + ["drive"] * 2
    assert {(r["height"], r["width"]) for r in rows[3:]} == {("584", "565")}
    assert {(r["eval_height"], r["eval_width"]) for r in rows} == {("128", "128")}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 5 and summary["n_skipped"] == 0
    for name in ("kvasir", "drive"):
        for metric in METRIC_NAMES:
            values = [float(r[metric]) for r in rows if r["dataset"] == name]
            assert summary["datasets"][name][metric] == pytest.approx(np.mean(values), rel=1e-5)
    for metric in METRIC_NAMES:
        expected = (summary["datasets"]["kvasir"][metric] + summary["datasets"]["drive"][metric]) / 2
        assert summary["macro"][metric] == pytest.approx(expected)
    assert summary["model"]["input_size"] == 128

    # The first row, recomputed by hand from the lower-level pieces.
    item = SegmentationDataset(discover(kvasir), input_spec(model), box_jitter=5)[0]
    logits = predict_logits(model, item["image"][None], item["box"][None])
    pred = logits_to_masks(upsample_logits(logits, (128, 128)))[0].numpy()
    expected = all_metrics(pred, item["mask"].numpy(), empty_distance=128)
    for metric in METRIC_NAMES:
        assert result.rows[0][metric] == pytest.approx(expected[metric])
    assert [float(rows[0][k]) for k in ("box_x0", "box_y0", "box_x1", "box_y1")] == item["box"].tolist()


def test_original_resolution(model, synth):
    result = evaluate(model, [synth], split="all", resolution="original", progress=False)
    assert {(r["eval_height"], r["eval_width"]) for r in result.rows} == {(96, 96)}
    assert all(0 <= r["dice"] <= 1 and (r["hd95"] <= 96) for r in result.rows)


def test_deterministic_whatever_the_parallelism(model, synth, tmp_path):
    evaluate(model, [synth], split="all", out_dir=tmp_path / "a", batch_size=2, metric_threads=1, progress=False)
    evaluate(model, [synth], split="all", out_dir=tmp_path / "b", batch_size=2, num_workers=1,
             metric_threads=3, progress=False)
    a, b = (tmp_path / d / "per_image.csv" for d in "ab")
    assert len(read_csv(a)) == 5 and a.read_text() == b.read_text()


def test_splits_written_and_reused(model, tmp_path):
    data = write_synthetic_dataset(tmp_path / "synth", n=10, size=64, seed=2)
    out = tmp_path / "out"
    first = evaluate(model, [data], split="test", out_dir=out, progress=False)
    assert len(first.rows) == 2
    splits = json.loads((out / "splits.json").read_text())
    assert [r["name"] for r in first.rows] == splits["datasets"]["synth"]["test"]
    kept, dropped = splits["datasets"]["synth"]["test"]
    splits["datasets"]["synth"]["test"] = [kept]
    (out / "splits.json").write_text(json.dumps(splits))
    with pytest.warns(UserWarning, match="1 file"):  # the one the edit dropped
        again = evaluate(model, [data], split="test", splits_path=out / "splits.json", progress=False)
    assert [r["name"] for r in again.rows] == [kept]
    val = evaluate(model, [data], split="val", out_dir=tmp_path / "o2", progress=False)
    assert {r["name"] for r in val.rows}.isdisjoint(r["name"] for r in first.rows)


def test_split_too_small(model, tmp_path):
    data = write_synthetic_dataset(tmp_path / "two", n=2, size=64)
    with pytest.raises(MedcoreError, match="no image in the test split .*--split all"):
        evaluate(model, [data], split="test", progress=False)


# ------------------------------------------------------------------------------------------
# Bad inputs


def test_unreadable_image(model, synth, tmp_path):
    (synth / "images" / "synth_002.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(MedcoreError, match=r"cannot read image .*synth_002\.png"):
        evaluate(model, [synth], split="all", progress=False)
    result = evaluate(model, [synth], split="all", skip_bad=True, out_dir=tmp_path / "out", progress=False)
    assert len(result.rows) == 4
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_skipped"] == 1 and summary["datasets"]["synth"]["skipped"] == 1
    assert summary["skipped"][0]["name"] == "synth_002" and "synth_002.png" in summary["skipped"][0]["error"]


def test_unreadable_image_cli(synth, tmp_path):
    (synth / "images" / "synth_002.png").write_bytes(b"junk")
    res = run_cli("--model", "tiny", "--random-init", "--data", synth, "--split", "all", "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert "Error: cannot read image" in res.output and "synth_002.png" in res.output
    assert "Traceback" not in res.output
    res = run_cli("--model", "tiny", "--random-init", "--data", synth, "--split", "all", "--out", tmp_path / "o",
                  "--skip-bad", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "skipped synth/synth_002" in res.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["n_skipped"] == 1


def test_size_mismatch(model, synth):
    Image.fromarray(np.zeros((50, 60), dtype=np.uint8)).save(synth / "masks" / "synth_001.png")
    with pytest.raises(MedcoreError, match=r"images/synth_001\.png is 96x96 but mask .*masks/synth_001\.png is 60x50"):
        evaluate(model, [synth], split="all", progress=False)


def test_empty_folder_and_no_common_stem(model, synth, tmp_path):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(MedcoreError, match=r"empty/images holds no image files"):
        evaluate(model, [synth, empty], split="all", progress=False)
    for path in (synth / "masks").iterdir():
        path.rename(path.with_name("gt_" + path.name))
    res = run_cli("--model", "tiny", "--random-init", "--data", synth, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "no file stem in common" in res.output


def test_mask_without_foreground(model, synth):
    Image.fromarray(np.zeros((96, 96), dtype=np.uint8)).save(synth / "masks" / "synth_003.png")
    result = evaluate(model, [synth], split="all", progress=False)
    (row,) = [r for r in result.rows if r["name"] == "synth_003"]
    assert row["gt_pixels"] == 0
    assert [row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"]] == [0, 0, 127, 127]
    if row["pred_pixels"] == 0:
        assert (row["dice"], row["iou"], row["boundary_f1"], row["hd95"], row["nsd"]) == (1.0, 1.0, 1.0, 0.0, 1.0)
    else:
        assert (row["dice"], row["iou"], row["boundary_f1"], row["hd95"], row["nsd"]) == (0.0, 0.0, 0.0, 128.0, 0.0)
    assert all(np.isfinite(result.summary["macro"][m]) for m in METRIC_NAMES)


# ------------------------------------------------------------------------------------------
# Command line


@needs_shared
def test_cli_end_to_end(tmp_path):
    a = subset(SHARED_DATA / "cvc-clinicdb-256", 3, tmp_path / "cvc")
    b = subset(SHARED_DATA / "ct-organs-samed2d", 2, tmp_path / "ct")
    args = ["--model", "tiny", "--random-init", "--data", f"{a},{b}", "--split", "all", "--batch-size", "2"]
    res = run_cli(*args, "--out", tmp_path / "o1")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert any(line.startswith("cvc ") for line in lines) and any(line.startswith("ct ") for line in lines)
    assert any(line.startswith("macro") and " 5 " in line for line in lines)
    assert "evaluate: 100%" in res.output  # the progress bar (stderr)
    assert len(read_csv(tmp_path / "o1" / "per_image.csv")) == 5
    # --random-init is seeded: a second run gives the same table and rows.
    res2 = run_cli(*args, "--out", tmp_path / "o2", "--no-progress")
    table = [line for line in lines if line.startswith(("cvc ", "ct ", "macro "))]
    assert res2.exit_code == 0 and [line for line in res2.output.splitlines() if line in table] == table
    assert (tmp_path / "o1" / "per_image.csv").read_text() == (tmp_path / "o2" / "per_image.csv").read_text()


def test_cli_needs_exactly_one_weight_source(synth, tmp_path):
    res = run_cli("--model", "tiny", "--data", synth)  # tiny has no packaged weights
    assert res.exit_code == 2 and "has no packaged weights: give --checkpoint PATH or --random-init" in res.output
    res = run_cli("--model", "tiny", "--random-init", "--checkpoint", tmp_path / "x.pth", "--data", synth)
    assert res.exit_code == 2 and "--checkpoint PATH or --random-init, not both" in res.output


def test_cli_dense_and_pruned_checkpoints(model, synth, tmp_path):
    dense = tmp_path / "dense.pth"
    torch.save(model.state_dict(), dense)
    res = run_cli("--model", "tiny", "--checkpoint", dense, "--data", synth, "--split", "all",
                  "--out", tmp_path / "od", "--no-progress")
    assert res.exit_code == 0, res.output
    dense_summary = json.loads((tmp_path / "od" / "summary.json").read_text())
    assert dense_summary["model"]["pruned"] is False
    assert dense_summary["macro"]["dice"] == pytest.approx(
        evaluate(model, [synth], split="all", progress=False).summary["macro"]["dice"])

    prepare_pruning(model)
    apply_plan(model.image_encoder, {0: BlockPlan(heads=(0, 2), mlp=tuple(range(100))), 3: BlockPlan(heads=(1,))})
    pruned = tmp_path / "pruned.pth"
    save_pruned(model, pruned, base="tiny")
    res = run_cli("--model", "tiny", "--checkpoint", pruned, "--data", synth, "--split", "all",
                  "--out", tmp_path / "op", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "tiny (pruned)" in res.output
    summary = json.loads((tmp_path / "op" / "summary.json").read_text())
    assert summary["model"]["pruned"] is True
    in_memory = evaluate(model, [synth], split="all", progress=False).summary
    for metric in METRIC_NAMES:
        assert summary["macro"][metric] == pytest.approx(in_memory["macro"][metric], abs=1e-6)
    assert input_size(model) == 128


def test_dataset_with_every_file_bad(synth, tmp_path):
    bad = write_synthetic_dataset(tmp_path / "bad", n=2, size=64)
    for path in (bad / "images").iterdir():
        path.write_bytes(b"junk")
    res = run_cli("--model", "tiny", "--random-init", "--data", f"{synth},{bad}", "--split", "all",
                  "--out", tmp_path / "o", "--skip-bad", "--no-progress")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())  # strict JSON: no NaN
    assert summary["datasets"]["bad"] == {"n": 0, "skipped": 2, **dict.fromkeys(METRIC_NAMES)}
    assert summary["macro"]["n_datasets"] == 1
    assert summary["macro"]["dice"] == summary["datasets"]["synth"]["dice"]
    assert any(line.startswith("bad ") and line.rstrip().endswith("-") for line in res.output.splitlines())
