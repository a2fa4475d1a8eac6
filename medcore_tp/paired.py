"""Paired comparisons on the same images: mean difference and a percentile bootstrap interval.

Two models evaluated on the same images give two values per image; their per-image differences are
resampled with replacement (images, not pixels, are the unit), and the 2.5th / 97.5th percentiles of
the resampled means are the 95% interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from medcore_tp.errors import MedcoreError

DEFAULT_RESAMPLES = 2000


@dataclass
class PairedDifference:
    """Mean of a - b over paired items, with a bootstrap interval at ``level``."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    low: float
    high: float
    level: float
    resamples: int

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_means(values: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Means of ``resamples`` resamples (with replacement, same size) of the 1-D ``values``."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[idx].mean(axis=1)


def paired_difference(
    a: Sequence[float], b: Sequence[float], resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """Mean of ``a - b`` (paired item by item) and its percentile bootstrap interval.

    Items where either value is not finite are left out (e.g. an HD95 of an unreadable image).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise MedcoreError(f"paired comparison needs two equal-length lists, got {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise MedcoreError(f"level must be in (0, 1), got {level}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) == 0:
        raise MedcoreError("paired comparison: no item with both values")
    d = a - b
    means = bootstrap_means(d, resamples, seed)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return PairedDifference(n=len(d), mean_a=float(a.mean()), mean_b=float(b.mean()), mean_diff=float(d.mean()),
                            low=float(low), high=float(high), level=level, resamples=resamples)


__all__ = ["DEFAULT_RESAMPLES", "PairedDifference", "bootstrap_means", "paired_difference"]
