"""Paired bootstrap: known differences, an independent bootstrap (SciPy), bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from medcore_tp.errors import MedcoreError
from medcore_tp.paired import paired_difference


def test_constant_difference_has_a_zero_width_interval():
    b = np.linspace(0.2, 0.9, 30)
    d = paired_difference(b + 0.05, b)
    assert d.n == 30 and d.mean_diff == pytest.approx(0.05)
    assert d.low == pytest.approx(0.05) and d.high == pytest.approx(0.05)
    assert d.mean_a == pytest.approx(b.mean() + 0.05) and d.mean_b == pytest.approx(b.mean())


def test_interval_matches_scipy_percentile_bootstrap_and_normal_theory():
    rng = np.random.default_rng(7)
    b = rng.uniform(0.5, 0.9, 400)
    diff = rng.normal(0.03, 0.1, 400)
    d = paired_difference(b + diff, b, resamples=4000, seed=1)
    ref = stats.bootstrap((diff,), np.mean, n_resamples=4000, method="percentile", confidence_level=0.95,
                          random_state=2).confidence_interval
    assert d.low == pytest.approx(ref.low, abs=0.002) and d.high == pytest.approx(ref.high, abs=0.002)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))  # the mean is close to normal at n = 400
    assert d.low == pytest.approx(diff.mean() - half, abs=0.002)
    assert d.high == pytest.approx(diff.mean() + half, abs=0.002)
    assert d.low < 0.03 < d.high


def test_non_finite_pairs_are_left_out_and_bad_input_is_refused():
    d = paired_difference([1.0, 2.0, np.nan, 4.0], [0.0, 1.0, 1.0, np.inf])
    assert d.n == 2 and d.mean_diff == pytest.approx(1.0)
    with pytest.raises(MedcoreError, match="equal-length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(MedcoreError, match="no item"):
        paired_difference([np.nan], [1.0])
