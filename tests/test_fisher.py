"""The boundary-aware Fisher against a plain batch-1 loop, and its sample accounting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medcore_tp import MedcoreError
from medcore_tp.calibration import CalibrationBatch, synthetic_batch
from medcore_tp.fisher import boundary_band, calibration_loss, diagonal_fisher
from medcore_tp.inference import forward_logits
from medcore_tp.models import input_spec


def _loss_by_hand(z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """docs/method.md's loss written out for one (h, w) logit map, with explicit loops for the band."""
    h, w = m.shape
    band = torch.zeros(h, w)
    for i in range(h):
        for j in range(w):
            win = m[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            band[i, j] = float(win.any()) - float(win.all())
    mf = m.float()
    bce = -(mf * F.logsigmoid(z) + (1 - mf) * F.logsigmoid(-z))
    p = torch.sigmoid(z)
    dice = (2 * (p * mf).sum() + 1e-5) / ((p * p).sum() + (mf * mf).sum() + 1e-5)
    return ((1 + 3 * band) * bce).sum() + 1 - dice


def test_calibration_loss_matches_the_formula():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 1, 12, 12, generator=gen)
    m = torch.rand(2, 12, 12, generator=gen) > 0.6
    got = calibration_loss(z, m)
    for i in range(2):
        assert got[i].item() == pytest.approx(_loss_by_hand(z[i, 0], m[i]).item(), rel=1e-5)


def test_band_is_dilation_minus_erosion():
    m = torch.zeros(1, 7, 7, dtype=torch.bool)
    m[0, 2:5, 2:5] = True
    band = boundary_band(m)[0]
    assert band[3, 3] == 0 and band[2, 2] == 1 and band[1, 1] == 1 and band[0, 0] == 0
    assert int(band.sum()) == 5 * 5 - 1  # the 5x5 dilation minus the 1-pixel erosion


def test_batched_fisher_equals_a_plain_batch1_loop(tiny_model):
    batch = synthetic_batch(4, input_spec(tiny_model), seed=3)
    encoder = tiny_model.image_encoder
    expected = {n: torch.zeros_like(p) for n, p in encoder.named_parameters()}
    mean_grad = {n: torch.zeros_like(p) for n, p in encoder.named_parameters()}
    tiny_model.train()
    for i in range(4):  # independent: ordinary backward() per sample, then grad^2
        tiny_model.zero_grad()
        logits = forward_logits(tiny_model, batch.images[i : i + 1], batch.boxes[i : i + 1])
        calibration_loss(logits, batch.masks[i : i + 1]).sum().backward()
        for n, p in encoder.named_parameters():
            expected[n] += p.grad.pow(2) / 4
            mean_grad[n] += p.grad / 4
    tiny_model.eval()
    halves = [CalibrationBatch(batch.images[s], batch.boxes[s], batch.masks[s]) for s in (slice(0, 3), slice(3, 4))]
    got = diagonal_fisher(tiny_model, halves)
    assert (got.samples, got.skipped) == (4, 0)
    for n, e in expected.items():
        torch.testing.assert_close(got.fisher[n], e, rtol=1e-5, atol=1e-12 * float(e.abs().max() + 1e-30))
        g = mean_grad[n]
        torch.testing.assert_close(got.gradient[n], g, rtol=1e-4, atol=1e-6 * float(g.abs().max() + 1e-30))


def test_non_finite_samples_are_skipped_and_counted(tiny_model):
    batch = synthetic_batch(3, input_spec(tiny_model))
    batch.images[1] = float("nan")
    res = diagonal_fisher(tiny_model, [batch])
    assert (res.samples, res.skipped) == (2, 1)
    assert all(torch.isfinite(f).all() for f in res.fisher.values())


def test_all_non_finite_is_an_error(tiny_model):
    batch = synthetic_batch(2, input_spec(tiny_model))
    batch.images[:] = float("inf")
    with pytest.raises(MedcoreError, match="all 2 samples gave non-finite gradients"):
        diagonal_fisher(tiny_model, [batch])
