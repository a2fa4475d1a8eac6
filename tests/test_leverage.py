"""Boundary leverage: a step's per-pixel leverage against a direct numpy computation; ``leverage`` on tiny."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medcore_tp import build_model
from medcore_tp.cli import main
from medcore_tp.leverage import LeverageConfig, blr95, near_boundary, pixel_leverage, run_leverage
from medcore_tp.synthetic import write_synthetic_dataset


def _direct(z0: np.ndarray, z1: np.ndarray, gt: np.ndarray, tau: float, delta: float) -> np.ndarray:
    """The METHOD.md formula written out: loops, explicit kernels, brute-force distances."""
    h, w = gt.shape
    z0, z1 = z0.astype(np.float64), z1.astype(np.float64)
    pad = np.pad(z0, 1, mode="symmetric")
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    grad = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            win = pad[y : y + 3, x : x + 3]
            grad[y, x] = math.hypot((win * kx).sum(), (win * kx.T).sum()) / 8
    surface = []
    for y in range(h):
        for x in range(w):
            if not gt[y, x]:
                continue
            nb = [gt[yy, xx] if 0 <= yy < h and 0 <= xx < w else False
                  for yy in (y - 1, y, y + 1) for xx in (x - 1, x, x + 1)]
            if not all(nb):
                surface.append((y, x))
    near = [(y, x) for y in range(h) for x in range(w)
            if min(math.hypot(y - sy, x - sx) for sy, sx in surface) <= tau]
    g = np.array([grad[p] for p in near])
    floor = np.percentile(g, 5)
    return np.array([abs(z1[p] - z0[p]) / max(grad[p], floor) / delta for p in near])


def test_pixel_leverage_matches_direct_computation():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    gt = (yy - 11) ** 2 + (xx - 12) ** 2 <= 36
    gt[3, 3:6] = True  # a second, thin piece whose whole area is surface
    z0 = 4.0 * (6 - np.hypot(yy - 11.5, xx - 12.0)) + rng.normal(0, 0.3, gt.shape)
    z0[15:20, 0:5] = 0.7  # a flat patch: its gradient falls below the 5th-percentile floor
    z1 = z0 + rng.normal(0, 0.5, gt.shape)
    for tau in (1.5, 3.0):
        got = pixel_leverage(z0, z1, gt, tau, delta_reduction_pct=2.5)
        want = _direct(z0, z1, gt, tau, 2.5)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert near_boundary(np.zeros((5, 5), bool), 3).sum() == 0


def test_blr95_is_a_ratio_of_medians():
    assert blr95([1.0, 3.0, 8.0, 0.5, 1.0, 2.0], ["head", "head", "head", "mlp", "mlp", "mlp"]) == pytest.approx(3.0)
    assert math.isnan(blr95([1.0], ["head"]))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lev")
    data = write_synthetic_dataset(root / "syn", n=6, size=128, seed=4)
    torch.manual_seed(0)
    ckpt = root / "tiny.pth"
    torch.save(build_model("tiny").state_dict(), ckpt)
    return root, data, ckpt


def test_leverage_on_tiny_recomputes_from_the_grid(tiny_setup):
    root, data, _ = tiny_setup
    torch.manual_seed(0)
    model = build_model("tiny")
    config = LeverageConfig(model="tiny", data=[str(data)], head_ratios=[0.25, 0.5], mlp_ratios=[0.3, 0.6],
                            taus=[3.0], split="all", resamples=50)
    res = run_leverage(config, model, root / "out", progress=False, log=lambda _m: None)
    assert [r["kind"] for r in res.steps] == ["head", "head", "mlp", "mlp"]
    grid = {(g.heads_ratio, g.mlp_ratio): g for g in res.grid}
    from medcore_tp.data import SegmentationDataset, discover
    from medcore_tp.models import input_spec

    ds = SegmentationDataset(discover(data), input_spec(model), box_jitter=5)
    gts = [ds[i]["mask_low"].numpy() for i in range(len(ds))]
    step = res.steps[2]  # MLP 0.3 -> 0.6 at heads 0.25
    a, b = grid[(0.25, 0.3)], grid[(0.25, 0.6)]
    delta = 100 * (b.removed_fraction - a.removed_fraction)
    pooled = np.concatenate([_direct(za, zb, gt, 3.0, delta) for za, zb, gt in zip(a.logits, b.logits, gts, strict=True)
                             if gt.any()])
    assert step["delta_reduction_pct"] == pytest.approx(delta)
    assert step["leverage_p95"] == pytest.approx(np.percentile(pooled, 95), rel=1e-9)
    s = res.summary["per_tau"]["3"]
    assert s["blr95"] == pytest.approx(blr95([r["leverage_p95"] for r in res.steps], [r["kind"] for r in res.steps]))
    assert s["ci_low"] <= s["blr95"] <= s["ci_high"]
    saved = json.loads((root / "out" / "leverage.json").read_text())
    assert saved["per_tau"]["3"]["blr95"] == pytest.approx(s["blr95"])
    assert (root / "out" / "leverage.png").exists() and (root / "out" / "leverage.csv").exists()


def test_leverage_bad_inputs_one_line_each(tiny_setup, tmp_path):
    _, data, ckpt = tiny_setup
    base = ["leverage", "--model", "tiny", "--checkpoint", str(ckpt), "--data", str(data), "--no-progress",
            "--out", str(tmp_path / "o")]
    for extra, want in ((["--head-ratios", "0.3,0.9"], "--head-ratios 0.9: asks for"),
                        (["--mlp-ratios", "0.6,0.3"], "--mlp-ratios 0.6,0.3: must be strictly increasing"),
                        (["--tau", "0"], "--tau")):
        res = CliRunner().invoke(main, base + extra, catch_exceptions=False)
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and want in lines[0], res.output
    assert not (tmp_path / "o").exists()
