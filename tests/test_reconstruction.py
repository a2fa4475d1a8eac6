"""The least-squares refit: against numpy's lstsq on captured activations, and what it buys a pruned model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medcore_tp.arch import adapter_for
from medcore_tp.calibration import synthetic_batch
from medcore_tp.errors import MedcoreError
from medcore_tp.graph import BlockPlan, apply_plan, prepare_pruning
from medcore_tp.models.spec import input_spec
from medcore_tp.pipeline import PruneConfig, RatioRequest, prune_scored, score_importance
from medcore_tp.reconstruction import LayerStatistics, collect_statistics, refit, refit_weight


def test_refit_weight_is_the_least_squares_solution():
    gen = np.random.default_rng(0)
    x = gen.normal(size=(500, 6)) @ gen.normal(size=(6, 6))  # correlated inputs
    w = gen.normal(size=(3, 6))
    b = gen.normal(size=3)
    y = x @ w.T + b
    xa = np.concatenate([x, np.ones((500, 1))], axis=1)
    stats = LayerStatistics(torch.from_numpy(xa.T @ xa), torch.from_numpy(np.concatenate([w, b[:, None]], 1)), 500)
    kept = [0, 2, 3, 5]
    solved, before, after = refit_weight(stats, kept, ridge=0.0)
    design = np.concatenate([x[:, kept], np.ones((500, 1))], axis=1)
    expected, *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(solved.numpy(), expected.T, rtol=1e-6, atol=1e-8)
    # the unexplained energy fractions, computed directly
    energy = ((y - y.mean(0)) ** 2).sum()  # about the mean
    dropped = design @ np.concatenate([w[:, kept], b[:, None]], 1).T
    assert before == pytest.approx(((y - dropped) ** 2).sum() / energy, rel=1e-6)
    assert after == pytest.approx(((y - design @ expected) ** 2).sum() / energy, rel=1e-6)
    assert after < before


def _capture(layer: torch.nn.Module, encoder: torch.nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    got = {}
    handle = layer.register_forward_hook(lambda _m, i, o: got.update(x=i[0].detach(), y=o.detach()))
    with torch.no_grad():
        encoder(images)
    handle.remove()
    return got["x"].reshape(-1, got["x"].shape[-1]).double().numpy(), got["y"].reshape(-1, got["y"].shape[-1]).double().numpy()


@pytest.mark.parametrize("model_name", ["tiny", "lite-tiny"])
def test_refit_after_removal_matches_lstsq_on_the_dense_activations(model_name):
    from medcore_tp.models import build_model

    torch.manual_seed(0)
    dense = build_model(model_name)
    batch = synthetic_batch(24, input_spec(dense), seed=1)  # many more tokens than fc2 inputs
    stats = collect_statistics(dense, [batch])
    adapter = adapter_for(dense.image_encoder)
    block, removed_mlp = 1, (0, 3, 4, 9, 10)
    fc2 = adapter.mlp_linears(adapter.blocks(dense.image_encoder)[block])[1]
    x, y = _capture(fc2, dense.image_encoder, batch.images)
    assert stats.layers[(block, "mlp")].tokens == x.shape[0]

    pruned = copy.deepcopy(dense)
    prepare_pruning(pruned)
    plan = {block: BlockPlan(mlp=removed_mlp)}
    apply_plan(pruned.image_encoder, plan)
    reports = refit(pruned, stats, plan, "mlp", ridge=0.0)
    kept = [i for i in range(x.shape[1]) if i not in removed_mlp]
    design = np.concatenate([x[:, kept], np.ones((len(x), 1))], axis=1)
    expected, *_ = np.linalg.lstsq(design, y, rcond=None)
    new_fc2 = adapter.mlp_linears(adapter.blocks(pruned.image_encoder)[block])[1]
    got = np.concatenate([new_fc2.weight.detach().double().numpy().T, new_fc2.bias.detach().double().numpy()[None]])
    # the least-squares residual, to 1e-6 of the output energy
    best, energy = ((y - design @ expected) ** 2).sum(), (y**2).sum()
    dropped = ((y - x[:, kept] @ fc2.weight.detach().double().numpy()[:, kept].T - fc2.bias.detach().double().numpy()) ** 2).sum()
    assert ((y - design @ got) ** 2).sum() <= best + 1e-6 * energy < dropped
    (report,) = reports
    assert (report.block, report.kind, report.removed) == (block, "mlp", len(removed_mlp))
    assert report.after < report.before


def test_refit_heads_keeps_the_other_heads_columns(tiny_model):
    batch = synthetic_batch(4, input_spec(tiny_model), seed=2)
    stats = collect_statistics(tiny_model, [batch])
    pruned = copy.deepcopy(tiny_model)
    prepare_pruning(pruned)
    plan = {0: BlockPlan(heads=(1,)), 2: BlockPlan(heads=(0, 3))}
    apply_plan(pruned.image_encoder, plan)
    reports = refit(pruned, stats, plan, "heads")
    assert [(r.block, r.removed) for r in reports] == [(0, 16), (2, 32)]  # 16 value channels per head
    assert all(r.after < r.before for r in reports)
    with pytest.raises(ValueError, match="kind"):
        refit(pruned, stats, plan, "channels")


def test_refit_lowers_the_pruned_encoders_error_on_unseen_images(tiny_model):
    unseen = synthetic_batch(6, input_spec(tiny_model), seed=9).images
    with torch.no_grad():
        target = tiny_model.image_encoder(unseen)
    errors = {}
    for refit_on in (False, True):
        config = PruneConfig(importance="random", ratios=RatioRequest(ratio=0.3), calib_size=8, recover_steps=0,
                             refit="dense" if refit_on else "none")
        model = copy.deepcopy(tiny_model)
        run = prune_scored(model, config, score_importance(model, config, log=lambda _m: None), log=lambda _m: None)
        assert bool(run.refits) == refit_on
        with torch.no_grad():
            errors[refit_on] = float((model.image_encoder(unseen) - target).pow(2).mean() / target.pow(2).mean())
    assert errors[True] < 0.5 * errors[False]


def test_allocation_is_checked():
    from medcore_tp.models import build_model

    arch = build_model("tiny")
    with pytest.raises(MedcoreError, match="allocation uniform"):
        PruneConfig(allocation="uniform").check(arch)
    with pytest.raises(MedcoreError, match="allocation sensitivity: needs a Fisher importance"):
        PruneConfig(importance="taylor", allocation="sensitivity").check(arch)


def test_greedy_removal_order_is_optimal_for_one_removal_and_beats_random_choices():
    from itertools import combinations

    from medcore_tp.refit_importance import _mlp_order, greedy_order

    gen = np.random.default_rng(3)
    x = np.tanh(gen.normal(size=(400, 7)) @ gen.normal(size=(7, 7)))
    w = gen.normal(size=(4, 7))
    xa = np.concatenate([x, np.ones((400, 1))], axis=1)
    stats = LayerStatistics(torch.from_numpy(xa.T @ xa), torch.from_numpy(np.concatenate([w, np.zeros((4, 1))], 1)))

    def error(removed):
        kept = [i for i in range(7) if i not in removed]
        return refit_weight(stats, kept, ridge=1e-3)[2]

    order = _mlp_order(stats, 1e-3)
    assert sorted(order) == list(range(7))
    assert order == greedy_order(stats, [[i] for i in range(7)], 1e-3)  # the vectorised and the group forms agree
    assert error(order[:1]) == pytest.approx(min(error([i]) for i in range(7)), rel=1e-6)
    for k in (2, 3, 4):
        errors = sorted(error(list(c)) for c in combinations(range(7), k))
        assert error(order[:k]) <= errors[len(errors) // 4]  # within the best quarter of all k-subsets
