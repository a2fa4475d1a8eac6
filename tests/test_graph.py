"""Torch-Pruning on segment_anything's ViT encoder: whole heads and MLP channels, rel-pos kept."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from segment_anything.modeling.image_encoder import Attention

from medcore_tp import BlockPlan, MedcoreError, apply_plan, build_model, prepare_pruning
from medcore_tp.arch import sam_vit
from medcore_tp.budget import ratio_budget
from medcore_tp.profile import count_params
from medcore_tp.prune import make_importance, prune_by_budget


def _zeroed_reference(dense, plan):
    """Dense encoder whose removed heads / channels are zeroed by hooks."""
    return sam_vit.zero_groups_hooks(
        dense, {b: list(p.heads) for b, p in plan.items()}, {b: list(p.mlp) for b, p in plan.items()}
    )


def _assert_close_to_scale(a, b, rel=1e-4):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= rel * b.abs().max().item()


def test_prepared_encoder_computes_the_same_function(tiny_model, tiny_input):
    enc = tiny_model.image_encoder
    with torch.no_grad():
        ref = enc(tiny_input)
    prepare_pruning(tiny_model)
    assert all(isinstance(b.attn, sam_vit.PrunableAttention) for b in enc.blocks)
    with torch.no_grad():
        out = enc(tiny_input)
    _assert_close_to_scale(out, ref, rel=1e-6)
    # same parameters, same state-dict keys
    assert set(build_model("tiny").state_dict()) == set(tiny_model.state_dict())


def test_prepare_does_not_touch_other_models(tiny_model):
    other = build_model("tiny")
    prepare_pruning(tiny_model)
    assert all(type(b.attn) is Attention for b in other.image_encoder.blocks)


def test_explicit_plan_equals_zeroing_the_same_groups(tiny_model, tiny_input):
    dense = copy.deepcopy(tiny_model.image_encoder)
    rel_before = {n: p.clone() for n, p in tiny_model.named_parameters() if "rel_pos" in n}
    plan = {
        0: BlockPlan(heads=(1, 3), mlp=(0, 5, 7, 100)),  # windowed block (with padding)
        1: BlockPlan(heads=(0,), mlp=tuple(range(0, 256, 2))),  # global block
        3: BlockPlan(heads=(0, 1, 2)),
    }
    prepare_pruning(tiny_model)
    apply_plan(tiny_model.image_encoder, plan)
    enc = tiny_model.image_encoder
    assert sam_vit.heads_per_block(enc) == [2, 3, 4, 1]
    assert [b.attn.num_heads for b in enc.blocks] == [2, 3, 4, 1]
    assert sam_vit.mlp_per_block(enc) == [252, 128, 256, 256]
    for b in enc.blocks:  # head_dim, scale and rel-pos tables untouched
        assert b.attn.head_dim == 16 and b.attn.scale == pytest.approx(16**-0.5)
        assert b.attn.qkv.in_features == 64 and b.attn.proj.out_features == 64
    for n, p in tiny_model.named_parameters():
        if "rel_pos" in n:
            assert torch.equal(p, rel_before[n]), n
    assert enc.patch_embed.proj.out_channels == 64 and enc.neck[0].in_channels == 64
    _zeroed_reference(dense, plan)
    with torch.no_grad():
        _assert_close_to_scale(enc(tiny_input), dense(tiny_input))


def test_user_metapruner_removes_whole_heads_and_mlp_channels(tiny_model, tiny_input):
    dense = copy.deepcopy(tiny_model.image_encoder)
    spec = prepare_pruning(tiny_model)
    pruner = tp.pruner.MetaPruner(
        spec.encoder,
        spec.example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        head_pruning_ratio=0.5,
        **spec.pruner_kwargs(),
    )
    pruner.step()
    enc = spec.encoder
    assert sam_vit.heads_per_block(enc) == [2, 2, 2, 2]
    assert [b.attn.num_heads for b in enc.blocks] == [2, 2, 2, 2]
    assert sam_vit.mlp_per_block(enc) == [128] * 4
    assert [tuple(b.attn.rel_pos_h.shape) for b in enc.blocks] == [(5, 16), (15, 16), (5, 16), (15, 16)]
    # Which heads survived: match each kept proj column block against the dense one.
    plan = {}
    for i, (pb, db) in enumerate(zip(enc.blocks, dense.blocks, strict=True)):
        kept_h = [h for h in range(4) if any(
            torch.equal(db.attn.proj.weight[:, h * 16:(h + 1) * 16], pb.attn.proj.weight[:, k * 16:(k + 1) * 16])
            for k in range(pb.attn.num_heads))]
        kept_m = [c for c in range(256) if (db.mlp.lin2.weight[:, c:c + 1] == pb.mlp.lin2.weight).all(0).any()]
        assert len(kept_h) == 2 and len(kept_m) == 128
        plan[i] = BlockPlan(heads=tuple(set(range(4)) - set(kept_h)), mlp=tuple(set(range(256)) - set(kept_m)))
    _zeroed_reference(dense, plan)
    with torch.no_grad():
        _assert_close_to_scale(enc(tiny_input), dense(tiny_input))


def test_second_pruner_in_same_process_is_not_affected_by_the_first(tiny_input):
    for _ in range(2):
        model = build_model("tiny")
        spec = prepare_pruning(model)
        pruner = tp.pruner.MetaPruner(
            spec.encoder, spec.example_inputs, importance=tp.importance.RandomImportance(),
            pruning_ratio=0.25, head_pruning_ratio=0.25, **spec.pruner_kwargs(),
        )
        pruner.step()
        assert sam_vit.heads_per_block(spec.encoder) == [3, 3, 3, 3]
        assert spec.encoder(tiny_input).shape == (2, 32, 8, 8)


def test_ratio_zero_changes_nothing(tiny_model, tiny_input):
    ref = copy.deepcopy(tiny_model)
    plan = prune_by_budget(tiny_model, make_importance("magnitude"), ratio_budget([4] * 4, [256] * 4, 0.0, 0.0))
    assert plan == {}
    for (n, p), (_, q) in zip(tiny_model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    with torch.no_grad():
        assert torch.equal(tiny_model.image_encoder(tiny_input), ref.image_encoder(tiny_input))


def test_magnitude_budget_removes_the_lowest_norm_heads(tiny_model):
    enc = tiny_model.image_encoder
    norms = []  # independent: L2 of each head's qkv rows and proj columns, summed over the group
    for b in enc.blocks:
        w_qkv, w_proj = b.attn.qkv.weight, b.attn.proj.weight
        row_sq = w_qkv.pow(2).sum(1)  # Torch-Pruning leaves biases out by default
        col_sq = w_proj.pow(2).sum(0)
        per_ch = row_sq[:64] + row_sq[64:128] + row_sq[128:] + col_sq
        norms.append(per_ch.view(4, 16).mean(1))
    budget = ratio_budget([4] * 4, [256] * 4, 0.25, 0.0)
    plan = prune_by_budget(tiny_model, make_importance("magnitude"), budget)
    for b, bp in plan.items():
        assert set(bp.heads) == set(torch.argsort(norms[b])[: budget.heads[b]].tolist())


def test_vit_b_paper_config_removes_60_03_percent():
    model = build_model("sam-vit-b", device="meta")  # architecture only: shapes, no arithmetic
    assert count_params(model.image_encoder) == 89_670_912
    budget = ratio_budget([12] * 12, [3072] * 12, 0.5, 0.7, protect=[10, 11])
    assert (budget.total_heads, budget.total_mlp) == (72, 25_805)
    prune_by_budget(model, make_importance("random"), budget)
    enc = model.image_encoder
    assert count_params(enc) == 35_839_027
    assert round(1 - 35_839_027 / 89_670_912, 4) == 0.6003
    assert sam_vit.heads_per_block(enc)[10:] == [12, 12] and sam_vit.mlp_per_block(enc)[10:] == [3072, 3072]
    assert sum(12 - h for h in sam_vit.heads_per_block(enc)) == 72


@pytest.mark.parametrize(
    "plan, message",
    [
        ({7: BlockPlan(heads=(0,))}, "block 7 does not exist"),
        ({0: BlockPlan(heads=(4,))}, "no head 4"),
        ({0: BlockPlan(heads=(0, 1, 2, 3))}, "would lose all its 4 heads"),
        ({0: BlockPlan(mlp=(1, 1))}, "lists a MLP channel twice"),
    ],
)
def test_bad_plans_are_refused_before_anything_changes(tiny_model, plan, message):
    prepare_pruning(tiny_model)
    before = copy.deepcopy(tiny_model.state_dict())
    with pytest.raises(MedcoreError, match=message):
        apply_plan(tiny_model.image_encoder, plan)
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())


def test_taylor_budget_removes_the_lowest_first_order_heads(tiny_model):
    from medcore_tp.calibration import accumulate_gradients, synthetic_batch
    from medcore_tp.models import input_spec

    assert accumulate_gradients(tiny_model, [synthetic_batch(2, input_spec(tiny_model))]) == 2
    enc = tiny_model.image_encoder
    scores = []  # independent: |w * dL/dw| summed over each head's qkv rows and proj columns
    for b in enc.blocks:
        q, p = b.attn.qkv, b.attn.proj
        rows = (q.weight * q.weight.grad).abs().sum(1)
        cols = (p.weight * p.weight.grad).abs().sum(0)
        per_ch = rows[:64] + rows[64:128] + rows[128:] + cols
        scores.append(per_ch.view(4, 16).mean(1))
    budget = ratio_budget([4] * 4, [256] * 4, 0.25, 0.0)
    plan = prune_by_budget(tiny_model, make_importance("taylor"), budget)
    for b, bp in plan.items():
        assert set(bp.heads) == set(torch.argsort(scores[b])[: budget.heads[b]].tolist())
