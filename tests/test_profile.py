"""Parameters and FLOPs in both conventions, checked against independent arithmetic."""

from __future__ import annotations

import pytest

from medcore_tp import BlockPlan, apply_plan, build_model, prepare_pruning
from medcore_tp.profile import count_params, flops_paper, flops_torch, profile_model


def test_vit_b_paper_convention_matches_the_paper():
    enc = build_model("sam-vit-b", device="meta").image_encoder
    f = flops_paper(enc)
    assert f["total"] / 1e9 == pytest.approx(926.5, rel=0.005)
    assert f["attention"] / 1e9 == pytest.approx(457.8, rel=0.005)
    assert f["mlp"] / 1e9 == pytest.approx(463.9, rel=0.005)
    assert f["patch_embed"] / 1e9 == pytest.approx(4.8, rel=0.02)


def test_vit_b_per_group_costs_match_the_paper():
    """Removing one windowed head, one global head and one MLP neuron costs the paper's figures."""
    model = build_model("sam-vit-b", device="meta")
    dense = flops_paper(model)["total"]
    prepare_pruning(model)
    apply_plan(model.image_encoder, {0: BlockPlan(heads=(3,)), 2: BlockPlan(heads=(5,)), 4: BlockPlan(mlp=(7,))})
    saved = (dense - flops_paper(model)["total"]) / 1e9
    assert saved == pytest.approx(1.816 + 5.906 + 0.01258, rel=1e-3)


def test_torch_counter_counts_attention_matmuls():
    enc = build_model("sam-vit-b", device="meta").image_encoder
    f = flops_torch(enc)
    assert f["total"] / 1e9 == pytest.approx(972.0, rel=0.005)
    # A global block: projections + MLP = 2*N*(4*d*d + 8*d*d); attention matmuls 4*N*N*d;
    # rel-pos einsums 2 * 2*N*64*d (per axis, 64 positions). Independent arithmetic:
    n, d = 64 * 64, 768
    expected = 2 * n * 12 * d * d + 4 * n * n * d + 2 * 2 * n * 64 * d
    assert f["block_2"] == pytest.approx(expected, rel=1e-6)
    # per-op entries add up to the total; convolutions: 16x16 patch embedding, then the neck's 1x1 and 3x3
    assert sum(v for k, v in f.items() if k.startswith("op_")) == pytest.approx(f["total"], rel=1e-9)
    assert f["op_convolution"] == 2 * n * d * 3 * 16 * 16 + 2 * n * 256 * d + 2 * n * 256 * 256 * 9


def test_profile_of_pruned_tiny(tiny_model):
    before = profile_model(tiny_model)
    prepare_pruning(tiny_model)
    apply_plan(tiny_model.image_encoder, {1: BlockPlan(heads=(0, 1), mlp=tuple(range(56)))})
    after = profile_model(tiny_model)
    assert after.heads_per_block == [4, 2, 4, 4] and after.mlp_per_block == [256, 200, 256, 256]
    per_head = 3 * 64 * 16 + 3 * 16 + 16 * 64  # qkv rows (+bias) and proj columns of one head
    per_channel = 64 + 1 + 64
    assert before.encoder_params - after.encoder_params == 2 * per_head + 56 * per_channel
    assert after.encoder_params == count_params(tiny_model.image_encoder)
    assert after.flops_torch_g < before.flops_torch_g and after.flops_paper_g < before.flops_paper_g
    assert sum(after.params_per_block) < sum(before.params_per_block)
