"""Metrics: hand-built cases with known answers, brute-force and MONAI cross-checks on random masks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from medcore_tp import metrics as M


def square(shape, top, left, side):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def random_masks(seed, count=30, kinds=("blob", "noise")):
    """Pairs of random masks: smooth blobs (often touching the image edge) and speckle."""
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < count:
        shape = (int(rng.integers(12, 60)), int(rng.integers(12, 60)))
        kind = kinds[len(pairs) % len(kinds)]
        masks = []
        for _ in range(2):
            if kind == "blob":
                field = ndimage.gaussian_filter(rng.random(shape), float(rng.uniform(1.0, 4.0)))
                masks.append(field > np.quantile(field, rng.uniform(0.3, 0.9)))
            else:
                masks.append(rng.random(shape) < rng.uniform(0.05, 0.5))
        if masks[0].any() and masks[1].any():
            pairs.append(tuple(masks))
    return pairs


# ------------------------------------------------------------------------------------------
# Hand-built cases


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        # 10x10 squares shifted sideways: overlap 10*(10-s); HD = s; BF1 and NSD by counting (see below).
        (2, dict(dice=0.8, iou=80 / 120, hd95=2.0, boundary_f1=1.0, nsd=1.0)),
        (3, dict(dice=0.7, iou=70 / 130, hd95=3.0, boundary_f1=0.9)),
        (4, dict(dice=0.6, iou=60 / 140, hd95=4.0, boundary_f1=0.8)),
    ],
)
def test_shifted_squares(shift, expected):
    gt = square((40, 40), 10, 10, 10)
    pred = square((40, 40), 10, 10 + shift, 10)
    # BF1 at shift 3: both 5x5 bands hold 14*14 - 6*6 = 160 pixels; 16 of each side's band are more
    # than 2 px (chessboard) from the other band (a 14-pixel column and 2 inner pixels): 144/160 = 0.9.
    # NSD at shift 2: every contour point lies exactly 2 px or closer to the other contour.
    got = M.all_metrics(pred, gt)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert M.hausdorff(pred, gt, percentile=100) == pytest.approx(float(shift))
    if shift > 2:
        assert got["nsd"] < 1.0


def test_disc_inside_square():
    yy, xx = np.mgrid[-20:21, -20:21]
    disc = yy**2 + xx**2 <= 100  # 317 pixels
    box = (np.abs(yy) <= 10) & (np.abs(xx) <= 10)  # 441 pixels, contains the disc
    assert disc.sum() == 317 and box.sum() == 441
    assert M.dice(disc, box) == pytest.approx(2 * 317 / (317 + 441))
    assert M.iou(disc, box) == pytest.approx(317 / 441)
    # Farthest surface point: the square's corner (10, 10), nearest disc surface pixel (7, 7).
    assert M.hausdorff(box, disc, percentile=100) == pytest.approx(math.sqrt(18))
    assert 0 < M.hd95(box, disc) < math.sqrt(18)
    assert M.hd95(box, disc) == M.hd95(disc, box)  # symmetric by construction
    assert 0.9 < M.boundary_f1(box, disc) < 1.0


def test_one_pixel():
    one = square((20, 20), 10, 10, 1)
    assert M.all_metrics(one, one) == {"dice": 1.0, "iou": 1.0, "boundary_f1": 1.0, "hd95": 0.0, "nsd": 1.0}
    beside = square((20, 20), 10, 11, 1)
    got = M.all_metrics(beside, one)
    assert got["dice"] == 0.0 and got["iou"] == 0.0
    assert got["hd95"] == 1.0 and got["boundary_f1"] == 1.0 and got["nsd"] == 1.0
    # 3 px diagonal shift: each 5x5 band keeps 4x4 of its 25 pixels within 2 px of the other -> 16/25.
    far = square((20, 20), 13, 13, 1)
    assert M.boundary_f1(far, one) == pytest.approx(0.64)
    assert M.hd95(far, one) == pytest.approx(math.sqrt(18))
    # Each contour is 4 corner points of length sqrt(0.5); the nearest pair is sqrt(8) = 2.83 apart.
    assert M.nsd(far, one, tolerance=2) == 0.0
    assert M.nsd(far, one, tolerance=3) == pytest.approx(0.25)


def test_both_empty():
    empty = np.zeros((32, 48), dtype=bool)
    assert M.all_metrics(empty, empty) == {"dice": 1.0, "iou": 1.0, "boundary_f1": 1.0, "hd95": 0.0, "nsd": 1.0}


@pytest.mark.parametrize("which", ["pred", "gt"])
def test_one_empty(which):
    empty = np.zeros((32, 48), dtype=bool)
    full = square((32, 48), 5, 5, 10)
    pred, gt = (empty, full) if which == "pred" else (full, empty)
    assert M.all_metrics(pred, gt) == {"dice": 0.0, "iou": 0.0, "boundary_f1": 0.0, "hd95": 48.0, "nsd": 0.0}
    assert M.hd95(pred, gt, empty_distance=1024) == 1024.0


def test_image_edge_counts_as_boundary():
    full = np.ones((10, 10), dtype=bool)
    assert M.inner_surface(full).sum() == 36  # the outer ring
    assert M.boundary_band(full, 2).sum() == 100 - 6 * 6
    assert M.all_metrics(full, full)["hd95"] == 0.0


def test_identical_masks_are_perfect():
    for pred, _ in random_masks(3, count=6):
        got = M.all_metrics(pred, pred)
        assert got == {"dice": 1.0, "iou": 1.0, "boundary_f1": 1.0, "hd95": 0.0, "nsd": 1.0}


def test_bad_arguments():
    a = np.zeros((4, 4), dtype=bool)
    with pytest.raises(ValueError, match="differ in shape"):
        M.dice(a, np.zeros((4, 5), dtype=bool))
    with pytest.raises(ValueError, match="2-D"):
        M.iou(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="tolerance"):
        M.boundary_f1(a, a, tolerance=0)
    with pytest.raises(ValueError, match="connectivity"):
        M.inner_surface(a, connectivity=3)


def test_non_bool_input_is_read_as_nonzero():
    gt = square((20, 20), 2, 2, 6)
    assert M.dice(gt.astype(np.uint8) * 255, gt) == 1.0


# ------------------------------------------------------------------------------------------
# Independent implementations


def _shifted(mask, dy, dx):
    """mask moved by (dy, dx) with zeros coming in from outside the image."""
    padded = np.pad(mask, 3)
    h, w = mask.shape
    return padded[3 - dy : 3 - dy + h, 3 - dx : 3 - dx + w]


def _surface_8(mask):
    """Mask pixels with at least one of their 8 neighbours outside the mask (or the image)."""
    inside = np.ones_like(mask)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inside &= _shifted(mask, dy, dx)
    return mask & ~inside


def _brute_hd(pred, gt, q):
    sp, sg = np.argwhere(_surface_8(pred)), np.argwhere(_surface_8(gt))
    d = cdist(sp, sg)
    return max(np.percentile(d.min(axis=1), q), np.percentile(d.min(axis=0), q))


def _brute_bf1(pred, gt, t):
    offsets = [(dy, dx) for dy in range(-t, t + 1) for dx in range(-t, t + 1)]

    def band(m):
        grown = np.zeros_like(m)
        core = np.ones_like(m)
        for dy, dx in offsets:
            grown |= _shifted(m, dy, dx)
            core &= _shifted(m, dy, dx)
        return grown & ~core

    bp, bg = np.argwhere(band(pred)), np.argwhere(band(gt))
    d = cdist(bp, bg, metric="chebyshev")
    precision = (d.min(axis=1) <= t).mean()
    recall = (d.min(axis=0) <= t).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_hd95_against_brute_force():
    for pred, gt in random_masks(11):
        assert M.hd95(pred, gt) == pytest.approx(_brute_hd(pred, gt, 95), abs=1e-9)
        assert M.hausdorff(pred, gt, 100) == pytest.approx(_brute_hd(pred, gt, 100), abs=1e-9)


def test_boundary_f1_against_brute_force():
    for pred, gt in random_masks(12, count=20):
        for t in (1, 2):
            assert M.boundary_f1(pred, gt, t) == pytest.approx(_brute_bf1(pred, gt, t), abs=1e-12)


def smooth_large_masks(seed, count=6):
    """Big smooth blobs: few surface pixels for the area, so distances take the k-d tree path."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        shape = (int(rng.integers(100, 160)), int(rng.integers(100, 160)))
        pair = []
        for _ in range(2):
            field = ndimage.gaussian_filter(rng.random(shape), 8.0)
            pair.append(field > np.quantile(field, rng.uniform(0.4, 0.8)))
        pairs.append(tuple(pair))
    return pairs


def test_both_distance_methods_against_brute_force(monkeypatch):
    used = []
    tree, edt = M.cKDTree, M.ndimage.distance_transform_edt
    monkeypatch.setattr(M, "cKDTree", lambda *a, **k: used.append("tree") or tree(*a, **k))
    monkeypatch.setattr(M.ndimage, "distance_transform_edt", lambda *a, **k: used.append("edt") or edt(*a, **k))
    for pred, gt in smooth_large_masks(13) + random_masks(14, count=6, kinds=("noise",)):
        assert M.hd95(pred, gt) == pytest.approx(_brute_hd(pred, gt, 95), abs=1e-9)
    assert {"tree", "edt"} <= set(used)


def test_cropping_changes_nothing():
    # A small object in a big image: the metrics work on a crop, the brute force on everything.
    rng = np.random.default_rng(5)
    for _ in range(5):
        pred = np.zeros((200, 150), dtype=bool)
        gt = np.zeros((200, 150), dtype=bool)
        pred[60:75, 40:70] = rng.random((15, 30)) < 0.7
        gt[62:80, 45:66] = rng.random((18, 21)) < 0.7
        assert M.hd95(pred, gt) == pytest.approx(_brute_hd(pred, gt, 95))
        assert M.boundary_f1(pred, gt) == pytest.approx(_brute_bf1(pred, gt, 2))


@pytest.fixture(scope="module")
def monai_metrics():
    """MONAI is a test extra: without it only the MONAI cross-checks are skipped."""
    return pytest.importorskip("monai.metrics")


def _t(mask):
    return torch.from_numpy(mask)[None, None].float()


def _monai(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(*args, **kwargs).item())


def test_against_monai_dice_iou(monai_metrics):
    for pred, gt in random_masks(21):
        assert M.dice(pred, gt) == pytest.approx(_monai(monai_metrics.compute_dice, _t(pred), _t(gt)), abs=1e-6)
        assert M.iou(pred, gt) == pytest.approx(_monai(monai_metrics.compute_iou, _t(pred), _t(gt)), abs=1e-6)


def test_nsd_against_monai_subvoxel_surface_dice(monai_metrics):
    # MONAI's use_subvoxels=True path is DeepMind's surface-distance definition, the one MedSAM uses.
    for pred, gt in random_masks(22) + smooth_large_masks(24, count=4):
        for tol in (1.0, 2.0, 3.5):
            ref = _monai(monai_metrics.compute_surface_dice, _t(pred), _t(gt), class_thresholds=[tol],
                         include_background=True, use_subvoxels=True, spacing=[(1.0, 1.0)])
            assert M.nsd(pred, gt, tol) == pytest.approx(ref, abs=1e-6)


def test_hd95_against_monai_with_its_surface_convention(monai_metrics):
    # MONAI takes the surface with a cross (4-neighbour) erosion; ours takes docs/method.md's 3x3 square.
    # With connectivity=1 both definitions agree, so the distances and percentiles must match.
    for pred, gt in random_masks(23) + smooth_large_masks(25, count=4):
        ref = _monai(monai_metrics.compute_hausdorff_distance, _t(pred), _t(gt), include_background=True,
                     percentile=95)
        assert M.hd95(pred, gt, connectivity=1) == pytest.approx(ref, abs=1e-4)


def test_documented_differences_from_monai(monai_metrics):
    empty = np.zeros((16, 16), dtype=bool)
    nan_nsd = _monai(monai_metrics.compute_surface_dice, _t(empty), _t(empty), class_thresholds=[2.0],
                     include_background=True, use_subvoxels=True, spacing=[(1.0, 1.0)])
    assert math.isnan(nan_nsd) and M.nsd(empty, empty) == 1.0
    one = square((16, 16), 4, 4, 5)
    nan_hd = _monai(monai_metrics.compute_hausdorff_distance, _t(one), _t(empty), include_background=True,
                    percentile=95)
    assert not math.isfinite(nan_hd) and M.hd95(one, empty) == 16.0
