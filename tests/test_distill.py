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
