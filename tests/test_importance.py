"""MedCore's scores against a direct computation from the formulas, and inside a plain MetaPruner."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch_pruning as tp

from medcore_tp import build_model, prepare_pruning
from medcore_tp.arch import sam_vit
from medcore_tp.budget import ratio_budget
from medcore_tp.importance import BlockStats, MedCoreImportance, block_statistics, medcore_scores
from medcore_tp.prune import prune_by_budget
from medcore_tp.recipe import sensitivity_weights


def _random_fisher(encoder, seed):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen) ** 3 for n, p in encoder.named_parameters()}


@pytest.fixture
def setting():
    torch.manual_seed(0)
    source = build_model("tiny")
    target = copy.deepcopy(source)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fm = [_random_fisher(target.image_encoder, s) for s in (1, 2, 3)]
    fs = _random_fisher(source.image_encoder, 4)
    src_state = {n: p.detach().clone() for n, p in source.image_encoder.named_parameters()}
    return target, fm, fs, src_state


def _direct(target, fm, fs, src, block):
    """Dzero, Dreset per head and MLP channel from the formulas, with explicit index lists (numpy)."""
    enc = target.image_encoder
    th = {n: p.detach().double().numpy() for n, p in enc.named_parameters()}
    f = {n: v.double().numpy() for n, v in fm.items()}
    fsn = {n: v.double().numpy() for n, v in fs.items()}
    sn = {n: v.double().numpy() for n, v in src.items()}
    pre = f"blocks.{block}."

    def d(name, idx):
        k = pre + name
        z = 0.5 * (f[k][idx] * th[k][idx] ** 2).sum()
        r = 0.5 * (np.sqrt(f[k][idx] * fsn[k][idx]) * (th[k][idx] - sn[k][idx]) ** 2).sum()
        return np.array([z, r])

    heads = []
    for h in range(4):
        rows = [part * 64 + h * 16 + i for part in range(3) for i in range(16)]
        cols = list(range(h * 16, h * 16 + 16))
        heads.append(d("attn.qkv.weight", (rows, slice(None))) + d("attn.qkv.bias", rows)
                     + d("attn.proj.weight", (slice(None), cols)))
    mlp = [d("mlp.lin1.weight", ([n], slice(None))) + d("mlp.lin1.bias", [n]) + d("mlp.lin2.weight", (slice(None), [n]))
           for n in range(256)]
    return np.array(heads), np.array(mlp)


def test_scores_equal_a_direct_computation(setting):
    target, fm, fs, src = setting
    stats = block_statistics(target, fm, fs, src)
    pi = np.array([0.2, 0.3, 0.5])
    scores = medcore_scores(stats, weights=[2, 3, 5], beta=0.3)
    for b in range(4):
        per_set = [_direct(target, fm[r], fs, src, b) for r in range(3)]
        q_heads, q_mlp, alphas = [], [], []
        for heads, mlp in per_set:
            rho = np.corrcoef(heads[:, 0], heads[:, 1])[0, 1]
            a = (1 + rho) / 2
            alphas.append(a)
            q_heads.append(a * heads[:, 0] + (1 - a) * heads[:, 1])
            q_mlp.append(a * mlp[:, 0] + (1 - a) * mlp[:, 1])
        q_heads, q_mlp = np.array(q_heads), np.array(q_mlp)
        expect_h = pi @ q_heads + 0.3 * q_heads.var(0)
        expect_m = pi @ q_mlp + 0.3 * q_mlp.var(0)
        np.testing.assert_allclose(stats[b].head_zero.numpy(), np.array([h[:, 0] for h, _ in per_set]), rtol=1e-9)
        np.testing.assert_allclose(stats[b].head_reset.numpy(), np.array([h[:, 1] for h, _ in per_set]), rtol=1e-9)
        np.testing.assert_allclose(scores[b].head_q.numpy(), expect_h, rtol=1e-9)
        np.testing.assert_allclose(scores[b].mlp_q.numpy(), expect_m, rtol=1e-9)
        assert scores[b].alpha == pytest.approx(float(pi @ np.array(alphas)), rel=1e-9)
        sens = sum(pi[r] * sum(v.double().sum().item() for n, v in fm[r].items() if n.startswith(f"blocks.{b}.")) for r in range(3))
        assert scores[b].sensitivity == pytest.approx(sens, rel=1e-9)


def test_first_order_terms_equal_a_direct_computation(setting):
    target, fm, fs, src = setting
    gen = torch.Generator().manual_seed(7)
    grads = [{n: torch.randn(p.shape, generator=gen) for n, p in target.image_encoder.named_parameters()} for _ in fm]
    stats = block_statistics(target, fm, fs, src, target_gradients=grads)
    enc = target.image_encoder
    for b in range(4):
        for r in range(3):
            th = {n: p.detach().double() for n, p in enc.named_parameters() if n.startswith(f"blocks.{b}.")}
            g = {n: grads[r][n].double() for n in th}
            sn = {n: src[n].double() for n in th}
            pre = f"blocks.{b}."

            def gz(name, idx, g=g, th=th, sn=sn, pre=pre):  # (g . (0 - theta), g . (theta_S - theta)) over idx
                k = pre + name
                return np.array([float((-g[k][idx] * th[k][idx]).sum()), float((g[k][idx] * (sn[k][idx] - th[k][idx])).sum())])

            heads = np.array([gz("attn.qkv.weight", [p * 64 + h * 16 + i for p in range(3) for i in range(16)])
                              + gz("attn.qkv.bias", [p * 64 + h * 16 + i for p in range(3) for i in range(16)])
                              + gz("attn.proj.weight", (slice(None), list(range(h * 16, h * 16 + 16)))) for h in range(4)])
            mlp = np.array([gz("mlp.lin1.weight", [c]) + gz("mlp.lin1.bias", [c]) + gz("mlp.lin2.weight", (slice(None), [c]))
                            for c in range(256)])
            np.testing.assert_allclose(stats[b].head_grad_zero[r].numpy(), heads[:, 0], rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(stats[b].head_grad_reset[r].numpy(), heads[:, 1], rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(stats[b].mlp_grad_zero[r].numpy(), mlp[:, 0], rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(stats[b].mlp_grad_reset[r].numpy(), mlp[:, 1], rtol=1e-7, atol=1e-9)
    # Q' is MedCore's Q computed on G + D, alpha included
    plus = [BlockStats(s.head_zero + s.head_grad_zero, s.head_reset + s.head_grad_reset, s.mlp_zero + s.mlp_grad_zero,
                       s.mlp_reset + s.mlp_grad_reset, s.sensitivity) for s in stats]
    for got, want in zip(medcore_scores(stats, first_order=True), medcore_scores(plus), strict=True):
        torch.testing.assert_close(got.head_q, want.head_q)
        torch.testing.assert_close(got.mlp_q, want.mlp_q)
        assert got.alpha == want.alpha
    with pytest.raises(ValueError, match="first_order"):
        medcore_scores(block_statistics(target, fm, fs, src), first_order=True)


def test_without_source_alpha_is_one_and_q_is_dzero(setting):
    target, fm, _, _ = setting
    stats = block_statistics(target, fm[:1])
    sc = medcore_scores(stats)
    assert all(s.alpha == 1.0 and s.head_reset is None for s in sc)
    torch.testing.assert_close(sc[0].head_q, stats[0].head_zero[0])


def test_flat_scores_give_alpha_one(setting):
    target, fm, fs, src = setting
    stats = block_statistics(target, fm[:1], fs, src)
    stats[0].head_reset = torch.ones_like(stats[0].head_reset)  # std 0 -> rho = 1
    assert medcore_scores(stats)[0].alpha == 1.0
    assert medcore_scores(stats, alpha=0.25)[1].alpha == 0.25


def test_plain_metapruner_removes_exactly_the_lowest_q(setting, tiny_input):
    target, fm, fs, src = setting
    imp = MedCoreImportance(target, block_statistics(target, fm, fs, src))
    q_heads = [s.head_q for s in imp.scores]
    q_mlp = [s.mlp_q for s in imp.scores]
    dense = copy.deepcopy(target.image_encoder)
    spec = prepare_pruning(target)
    pruner = tp.pruner.MetaPruner(spec.encoder, spec.example_inputs, importance=imp, pruning_ratio=0.25,
                                  head_pruning_ratio=0.5, **spec.pruner_kwargs())
    pruner.step()
    assert sam_vit.heads_per_block(spec.encoder) == [2, 2, 2, 2]
    removed_h = {b: sorted(torch.argsort(q)[:2].tolist()) for b, q in enumerate(q_heads)}
    removed_m = {b: sorted(torch.argsort(q)[:64].tolist()) for b, q in enumerate(q_mlp)}
    sam_vit.zero_groups_hooks(dense, removed_h, removed_m)
    with torch.no_grad():
        out, ref = spec.encoder(tiny_input), dense(tiny_input)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_budget_prunes_more_where_sensitivity_is_lower(setting):
    target, fm, fs, src = setting
    for b in range(4):  # make block sensitivities clearly different: block 0 most sensitive
        for n in fm[0]:
            if n.startswith(f"blocks.{b}."):
                fm[0][n] = fm[0][n] * (10.0 ** (3 - b))
    imp = MedCoreImportance(target, block_statistics(target, fm[:1], fs, src))
    w = sensitivity_weights(imp)
    assert w == sorted(w)
    budget = ratio_budget([4] * 4, [256] * 4, 0.25, 0.4, weights=w)
    assert budget.mlp == sorted(budget.mlp) and budget.mlp[0] < budget.mlp[3]
    plan = prune_by_budget(target, imp, budget)
    for b, bp in plan.items():
        assert set(bp.mlp) == set(torch.argsort(imp.scores[b].mlp_q)[: budget.mlp[b]].tolist())


def test_stale_statistics_are_refused(setting):
    target, fm, _, _ = setting
    imp = MedCoreImportance(target, block_statistics(target, fm[:1]))
    spec = prepare_pruning(target)
    from medcore_tp import BlockPlan, apply_plan
    from medcore_tp.graph import build_graph, head_group

    apply_plan(spec.encoder, {0: BlockPlan(heads=(0,))})
    with pytest.raises(RuntimeError, match="computed for 4 heads in block 0, the model now has 3"):
        imp(head_group(build_graph(spec), spec.encoder, 0, [0, 1, 2]))


def test_plain_metapruner_global_ranking_removes_the_lowest_q_heads_overall(setting):
    target, fm, fs, src = setting
    imp = MedCoreImportance(target, block_statistics(target, fm, fs, src))
    q = torch.stack([s.head_q for s in imp.scores])  # (blocks, heads), comparable across blocks
    lowest = set(torch.argsort(q.flatten())[:3].tolist())
    per_block = [sum(1 for i in lowest if i // 4 == b) for b in range(4)]
    assert max(per_block) < 4  # no block would lose every head: plain global ranking applies
    spec = prepare_pruning(target)
    # Torch-Pruning 1.6 only removes heads when the width ratio is > 0 as well
    pruner = tp.pruner.MetaPruner(spec.encoder, spec.example_inputs, importance=imp, global_pruning=True,
                                  pruning_ratio=0.25, head_pruning_ratio=3 / 16, **spec.pruner_kwargs())
    pruner.step()
    assert sam_vit.heads_per_block(spec.encoder) == [4 - n for n in per_block]
