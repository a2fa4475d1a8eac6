"""Folding TinyViT's batch norms into their convolutions: same outputs, no batch norm left, eval only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medcore_tp import fold_conv_bn
from medcore_tp.arch import adapter_for
from medcore_tp.conv_bn_fold import conv_bn_pairs
from medcore_tp.models import build_model


def _lite_tiny(pruned: bool) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("lite-tiny", checkpoint=None)
    if pruned:
        adapter_for(model).resize(model.image_encoder, [1, 1, 2], [40, 96, 150])
    # random running statistics and affine terms, so that folding has something to get wrong
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("pruned", [False, True])
def test_folded_encoder_gives_the_same_embeddings(pruned):
    model = _lite_tiny(pruned)
    size = model.image_encoder.img_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        before = model.image_encoder(images)
        assert fold_conv_bn(model) == batch_norms > 0
        after = model.image_encoder(images)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(m.training for m in model.modules())  # the identities left behind are in eval mode too
    assert conv_bn_pairs(model) == []
    assert torch.allclose(after, before, atol=1e-5 * before.abs().max().item(), rtol=0)


def test_folding_refuses_a_model_in_training_mode():
    model = _lite_tiny(False).train()
    with pytest.raises(ValueError, match=r"training mode; call model.eval\(\)"):
        fold_conv_bn(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # nothing was changed
    model.eval()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.train()  # only one convolution left in training mode: refused the same way, not an AssertionError
    with pytest.raises(ValueError, match=r"training mode; call model.eval\(\)"):
        fold_conv_bn(model)


def test_sam_vit_has_nothing_to_fold():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert fold_conv_bn(model) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
