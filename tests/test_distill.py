"""Distillation towards cached teacher outputs: the views, the cache, and that it closes the gap."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medcore_tp.calibration import CalibrationBatch, synthetic_batch
from medcore_tp.distill import augmented_views, cache_teacher, distill, distillation_loss, held_back_loss
from medcore_tp.inference import decode_logits
from medcore_tp.models.spec import input_spec
from medcore_tp.pipeline import PruneConfig, RatioRequest, prune_scored, score_importance


def _box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_mirrored_views_carry_their_boxes():
    side = 32
    images = torch.zeros(1, 3, side, side)
    mask = torch.zeros(1, side, side, dtype=torch.bool)
    mask[0, 5:12, 3:20] = True
    images[:, :, 5:12, 3:20] = 1.0
    batch = CalibrationBatch(images, torch.tensor([_box(mask[0].numpy())]).float(), mask)
    views = augmented_views([batch])
    assert len(views.images) == 3
    for i in range(3):
        # the box of the mirrored mask is the mirrored box, and the image moved with the mask
        assert views.boxes[i].tolist() == [float(v) for v in _box(views.masks[i].numpy())]
        assert torch.equal(views.images[i, 0] > 0.5, views.masks[i])
    with pytest.raises(ValueError, match="view rot90"):
        augmented_views([batch], ("rot90",))


def test_cached_teacher_outputs_equal_recomputed_ones(tiny_model):
    samples = augmented_views([synthetic_batch(3, input_spec(tiny_model), seed=4)], ("identity", "hflip"))
    cached = cache_teacher(tiny_model, samples, batch_size=2)
    with torch.no_grad():
        emb = tiny_model.image_encoder(samples.images)
        logits = decode_logits(tiny_model, emb, samples.boxes)
    torch.testing.assert_close(cached.embeddings.float(), emb, rtol=1e-3, atol=1e-3)  # stored as float16
    torch.testing.assert_close(cached.logits, logits)
    # against its own outputs the embedding term vanishes
    _, parts = distillation_loss(emb, logits, cached.embeddings, cached.logits)
    assert float(parts["embedding"]) < 1e-6


def test_distillation_lowers_the_student_teacher_gap(tiny_model):
    config = PruneConfig(importance="random", ratios=RatioRequest(ratio=0.4), calib_size=8, recover_steps=0, refit="none")
    student = copy.deepcopy(tiny_model)
    prune_scored(student, config, score_importance(student, config, log=lambda _m: None), log=lambda _m: None)
    targets = cache_teacher(tiny_model, augmented_views([synthetic_batch(6, input_spec(tiny_model), seed=3)]))
    held = cache_teacher(tiny_model, synthetic_batch(4, input_spec(tiny_model), seed=11))
    before = held_back_loss(student, targets)
    record = distill(student, targets, steps=12, lr=1e-3, batch_size=2, held_back=held)
    assert len(record["loss"]) == 12
    assert held_back_loss(student, targets) < before
    assert record["held_back_after"] < record["held_back_before"]
    assert all(p.requires_grad for p in student.parameters())  # the decoder was frozen only while training


def test_held_back_quality_equals_a_direct_computation(tiny_model):
    from medcore_tp.inference import forward_logits
    from medcore_tp.metrics import boundary_f1, dice
    from medcore_tp.monitor import held_back_quality

    batches = [synthetic_batch(3, input_spec(tiny_model), seed=5), synthetic_batch(2, input_spec(tiny_model), seed=6)]
    got = held_back_quality(tiny_model, batches)
    d, b = [], []
    with torch.no_grad():
        for batch in batches:
            pred = (forward_logits(tiny_model.eval(), batch.images, batch.boxes)[:, 0] > 0).numpy()
            for p, g in zip(pred, batch.masks.numpy(), strict=True):
                d.append(dice(p, g))
                b.append(boundary_f1(p, g, tolerance=1))
    assert got["dice"] == pytest.approx(np.mean(d)) and got["boundary_f1"] == pytest.approx(np.mean(b))
    assert got["score"] == pytest.approx((np.mean(d) + np.mean(b)) / 2)


def test_best_state_restores_the_best_check_not_the_last(tiny_model):
    from medcore_tp.monitor import BestState

    enc = tiny_model.image_encoder
    start = {k: v.clone() for k, v in enc.state_dict().items()}
    best = BestState()
    assert best.offer(0, {"score": 0.5}, enc)
    with torch.no_grad():
        next(enc.parameters()).add_(1.0)
    moved = {k: v.clone() for k, v in enc.state_dict().items()}
    assert not best.offer(1, {"score": 0.49}, enc)
    assert best.kept_step == 1  # within the tolerance: noise, the last weights stay
    best.restore(enc)
    assert all(torch.equal(v, moved[k]) for k, v in enc.state_dict().items())
    assert not best.offer(2, {"score": 0.4}, enc)  # clearly worse than the best: back to step 0
    assert best.kept_step == 0 and [c["step"] for c in best.checks] == [0, 1, 2]
    best.restore(enc)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, start[k]), k


def test_distillation_with_a_monitor_ends_at_its_best_check(tiny_model):
    from medcore_tp.monitor import DEFAULT_TOLERANCE, held_back_quality

    config = PruneConfig(importance="random", ratios=RatioRequest(ratio=0.4), calib_size=8, recover_steps=0, refit="none")
    student = copy.deepcopy(tiny_model)
    prune_scored(student, config, score_importance(student, config, log=lambda _m: None), log=lambda _m: None)
    targets = cache_teacher(tiny_model, augmented_views([synthetic_batch(6, input_spec(tiny_model), seed=3)]))
    monitor = [synthetic_batch(4, input_spec(tiny_model), seed=12)]
    # a learning rate far too high: some checks get worse, and the run must not end on a worse one
    record = distill(student, targets, steps=8, lr=0.3, batch_size=2, monitor=monitor, checks=4)
    steps = [c["step"] for c in record["checks"]]
    assert steps == [0, 2, 4, 6, 8]
    scores = [c["score"] for c in record["checks"]]
    best = max(s for s, v in zip(steps, scores, strict=True) if v == max(scores))  # ties: the latest
    kept = steps[-1] if scores[-1] >= max(scores) - DEFAULT_TOLERANCE else best
    assert record["kept_step"] == kept
    assert held_back_quality(student, monitor)["score"] == pytest.approx(scores[steps.index(kept)])
