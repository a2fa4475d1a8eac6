"""ContiguousPatchEmbed: the same encoder outputs and gradients, with a contiguous residual stream."""

from __future__ import annotations

import copy

import pytest
import torch

from medcore_tp.errors import MedcoreError
from medcore_tp.fast_attention import use_sdpa
from medcore_tp.models import build_model
from medcore_tp.token_layout import use_contiguous_tokens, uses_contiguous_tokens


def test_stock_patch_embed_hands_on_a_strided_view(tiny_model, tiny_input):
    """Why the swap exists: segment_anything's tokens are a permuted view of the conv output."""
    with torch.no_grad():
        assert not tiny_model.image_encoder.patch_embed(tiny_input).is_contiguous()


@pytest.mark.parametrize("sdpa", [False, True])
def test_contiguous_tokens_keep_outputs_and_gradients(tiny_model, tiny_input, sdpa):
    fast = use_contiguous_tokens(copy.deepcopy(tiny_model))
    if sdpa:
        use_sdpa(fast)
    assert uses_contiguous_tokens(fast) and not uses_contiguous_tokens(tiny_model)
    assert list(fast.state_dict()) == list(tiny_model.state_dict())  # checkpoints load either way
    tokens = fast.image_encoder.patch_embed(tiny_input)
    assert tokens.is_contiguous() and tokens.shape == (2, 8, 8, 64)
    ref = tiny_model.image_encoder(tiny_input)
    out = fast.image_encoder(tiny_input)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    weight = tiny_model.image_encoder.patch_embed.proj.weight
    (ref_grad,) = torch.autograd.grad(ref, [weight], g)
    (out_grad,) = torch.autograd.grad(out, [fast.image_encoder.patch_embed.proj.weight], g)
    # summation order differs (the conv's weight gradient sums over a differently laid out input)
    torch.testing.assert_close(out_grad, ref_grad, rtol=0, atol=1e-5 * ref_grad.abs().max().item())
    assert use_contiguous_tokens(fast) is fast and uses_contiguous_tokens(fast)  # idempotent


def test_contiguous_tokens_refuse_tinyvit():
    with pytest.raises(MedcoreError, match="SAM's ViT encoder, not TinyViT"):
        use_contiguous_tokens(build_model("lite-tiny", checkpoint=None))
