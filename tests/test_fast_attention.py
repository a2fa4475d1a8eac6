"""SdpaAttention computes what segment_anything's own Attention computes, dense and pruned."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from medcore_tp.arch import sam_vit
from medcore_tp.arch.sam_vit_tp import PrunableAttention
from medcore_tp.errors import MedcoreError
from medcore_tp.fast_attention import SdpaAttention, use_sdpa, uses_sdpa
from medcore_tp.models import build_model


def _stock_pruned(model, heads, mlp):
    """A pruned-shape encoder (fresh weights) built with segment_anything's own classes."""
    torch.manual_seed(3)
    sam_vit.resize(model.image_encoder, heads, mlp)
    with torch.no_grad():
        for p in model.image_encoder.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("block", [0, 1])  # block 0: windowed (3 x 3, padded); block 1: global
@pytest.mark.parametrize("pruned", [False, True])
def test_block_attention_matches_segment_anything(tiny_model, block, pruned):
    if pruned:
        _stock_pruned(tiny_model, [2, 3, 1, 4], [100, 256, 30, 256])
    stock = tiny_model.image_encoder.blocks[block].attn
    assert type(stock) is Attention
    fast = SdpaAttention(stock)
    assert fast.num_heads == stock.num_heads
    x = torch.randn(2, 8, 8, 64, generator=torch.Generator().manual_seed(2))
    if block == 0:  # what a windowed block hands its attention: padded 3 x 3 windows
        x = x[:, :3, :3]
    x.requires_grad_(True)
    ref = stock(x)
    out = fast(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the same gradients (training): inputs, projections and the rel-pos tables
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x, stock.qkv.weight, stock.rel_pos_h, stock.rel_pos_w], g)
    out_grads = torch.autograd.grad(out, [x, fast.qkv.weight, fast.rel_pos_h, fast.rel_pos_w], g)
    for a, b in zip(out_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pruned", [False, True])
def test_whole_encoder_matches_and_keeps_heads(tiny_model, tiny_input, pruned):
    if pruned:
        _stock_pruned(tiny_model, [2, 3, 1, 4], [100, 256, 30, 256])
    heads = sam_vit.heads_per_block(tiny_model.image_encoder)
    fast = use_sdpa(copy.deepcopy(tiny_model))
    assert uses_sdpa(fast) and not uses_sdpa(tiny_model)  # the original is left alone
    assert sam_vit.heads_per_block(fast.image_encoder) == heads
    assert list(fast.state_dict()) == list(tiny_model.state_dict())  # same keys: checkpoints load
    with torch.no_grad():
        torch.testing.assert_close(fast.image_encoder(tiny_input), tiny_model.image_encoder(tiny_input),
                                   rtol=1e-5, atol=1e-5)
    assert use_sdpa(fast) is fast and uses_sdpa(fast)  # idempotent


def test_prunable_attention_converts_and_prunes_after_sdpa(tiny_model, tiny_input):
    """A model on SDPA can still be prepared for Torch-Pruning (prepare swaps its attention)."""
    use_sdpa(tiny_model)
    with torch.no_grad():
        before = tiny_model.image_encoder(tiny_input)
    sam_vit.prepare(tiny_model.image_encoder)
    assert isinstance(tiny_model.image_encoder.blocks[0].attn, PrunableAttention)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model.image_encoder(tiny_input), before, rtol=1e-5, atol=1e-5)


def test_sdpa_refuses_tinyvit():
    with pytest.raises(MedcoreError, match="SAM's ViT encoder, not TinyViT"):
        use_sdpa(build_model("lite-tiny", checkpoint=None))


@pytest.mark.parametrize("pruned", [False, True])
def test_headwise_inference_matches_segment_anything(tiny_model, tiny_input, pruned, monkeypatch):
    """Large masks go head by head through one buffer at inference: the same outputs as the stock encoder."""
    import medcore_tp.fast_attention as fast_attention

    if pruned:
        _stock_pruned(tiny_model, [2, 3, 1, 4], [100, 256, 30, 256])
    fast = use_sdpa(copy.deepcopy(tiny_model))
    attn = fast.image_encoder.blocks[1].attn  # global: the whole 8 x 8 grid
    q, k, v = torch.randn(3, 2, attn.num_heads, 64, attn.head_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn.rel_pos_mask(q, 8, 8),
                                                                 scale=attn.scale)
        torch.testing.assert_close(attn._headwise(q, k, v, 8, 8), whole, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(fast_attention, "HEADWISE_MASK_ELEMENTS", 1)  # every block goes head by head
    with torch.no_grad():
        torch.testing.assert_close(fast.image_encoder(tiny_input), tiny_model.image_encoder(tiny_input),
                                   rtol=1e-5, atol=1e-5)
    # with gradients on, the whole-mask path runs (the reused buffer would break autograd)
    out = fast.image_encoder(tiny_input)
    assert out.requires_grad
    torch.testing.assert_close(out, tiny_model.image_encoder(tiny_input), rtol=1e-5, atol=1e-5)


def test_sdpa_model_exports_with_the_headwise_path_enabled(tiny_model, tiny_input, tmp_path, monkeypatch):
    """Export traces the whole-mask path: an ``out=`` add does not export and the size test would guard the batch."""
    import medcore_tp.fast_attention as fast_attention
    from medcore_tp.export import export_pt2

    monkeypatch.setattr(fast_attention, "HEADWISE_MASK_ELEMENTS", 1)
    fast = use_sdpa(copy.deepcopy(tiny_model)).eval()
    encoder_pt2, _ = export_pt2(fast, tmp_path / "fast.pt2")
    program = torch.export.load(str(encoder_pt2))
    with torch.no_grad():
        expected = tiny_model.image_encoder(tiny_input)
        torch.testing.assert_close(program.module()(tiny_input), expected, rtol=1e-5, atol=1e-5)
        # the encoder traced by ONNX export inside no_grad, as a user may call it
        torch.onnx.export(fast.image_encoder, (tiny_input,), str(tmp_path / "enc.onnx"), dynamo=False)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: tiny_input.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4)


def test_compile_on_cpu_runs_the_attention_core_eagerly(tiny_model, tiny_input):
    """torch.compile on the CPU breaks the graph around each attention core (so its head-by-head path
    keeps its one mask buffer) and still gives the eager outputs."""
    fast = use_sdpa(copy.deepcopy(tiny_model)).eval()
    encoder = fast.image_encoder
    with torch.no_grad():
        explained = torch._dynamo.explain(encoder)(tiny_input)
        # one break per block's attention core; the projections and MLPs around them are compiled
        assert explained.graph_break_count >= len(encoder.blocks)
        assert explained.graph_count >= len(encoder.blocks) + 1
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(encoder)(tiny_input), tiny_model.image_encoder(tiny_input),
                                   rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()
