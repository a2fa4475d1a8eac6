"""Row strips of TinyViT's full-resolution stage: the stock modules' outputs, eval mode only."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from medcore_tp import fold_conv_bn, use_row_strips
from medcore_tp.arch import tiny_vit
from medcore_tp.errors import MedcoreError
from medcore_tp.models import build_model
from medcore_tp.row_strips import StripMBConv, StripPatchMerging, uses_row_strips


def _vendor():
    build_model("lite-tiny", checkpoint=None)  # imports the vendored TinyViT
    return sys.modules[tiny_vit._VENDOR]


def _random_bn(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return module.eval()


@pytest.mark.parametrize("height", [37, 16, 5])
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_strip_mbconv_equals_the_stock_block(height, rows):
    """Every strip size against every map height, odd ones included: halos and the zero rows at the
    image's top and bottom."""
    torch.manual_seed(0)
    block = _random_bn(_vendor().MBConv(8, 8, 4.0, nn.GELU, 0.0))
    x = torch.randn(2, 8, height, 11)
    with torch.no_grad():
        ref = block(x)
        out = StripMBConv(block, rows)(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("out_dim", [16, 320])  # TinyViT merges with stride 2, or stride 1 for 320/448/576
@pytest.mark.parametrize("height", [37, 12])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_strip_patch_merging_equals_the_stock_module(out_dim, height, rows):
    torch.manual_seed(0)
    merging = _random_bn(_vendor().PatchMerging((height, 9), 8, out_dim, nn.GELU))
    x = torch.randn(2, 8, height, 9)
    with torch.no_grad():
        ref = merging(x)
        strips = StripPatchMerging(merging, rows)
        out = strips(x)
        tokens = strips(x.flatten(2).transpose(1, 2))  # the (B, H * W, C) form of later stages
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    torch.testing.assert_close(tokens, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("folded", [False, True])
def test_row_strips_keep_the_encoder_outputs_and_keys(lite_tiny, pruned, folded):
    model = lite_tiny(pruned)
    if folded:
        fold_conv_bn(model)
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    fast = use_row_strips(copy.deepcopy(model), rows=16)
    assert uses_row_strips(fast) and not uses_row_strips(model)
    assert list(fast.state_dict()) == list(model.state_dict())  # checkpoints load either way
    assert not fast.training and not any(m.training for m in fast.modules())
    with torch.no_grad():
        ref = model.image_encoder(images)
        out = fast.image_encoder(images)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    assert use_row_strips(fast, rows=5) is fast and fast.image_encoder.layers[0].blocks[0].rows == 5  # idempotent
    with torch.no_grad():
        torch.testing.assert_close(fast.image_encoder(images), ref, rtol=0, atol=1e-5 * ref.abs().max().item())


def test_training_mode_runs_the_whole_map(lite_tiny):
    """A training-mode batch norm normalises by the batch: strips would each see other statistics, so
    in training mode the swapped modules give the stock outputs and gradients."""
    model = lite_tiny(False).train()
    fast = use_row_strips(copy.deepcopy(model), rows=8)
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    ref = model.image_encoder(images)
    out = fast.image_encoder(images)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    weight = model.image_encoder.layers[0].blocks[0].conv1.c.weight
    g = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, [weight], g)
    (out_grad,) = torch.autograd.grad(out, [fast.image_encoder.layers[0].blocks[0].conv1.c.weight], g)
    torch.testing.assert_close(out_grad, ref_grad, rtol=0, atol=1e-5 * ref_grad.abs().max().item())


def test_row_strips_refuse_sam_vit_and_bad_rows(lite_tiny):
    with pytest.raises(MedcoreError, match="TinyViT's .LiteMedSAM's. stem, not ImageEncoderViT"):
        use_row_strips(build_model("tiny"))
    for rows in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="rows must be a positive integer"):
            use_row_strips(lite_tiny(False), rows=rows)
