"""Mask checks made before any work: empty masks and masks with nothing above the threshold.

A dataset whose masks are all empty would calibrate on nothing and score Dice 0 / HD95 = image side
without a word; one where some masks are empty deserves a line on screen. Both are counted per
dataset (reading every mask once, which is fast next to any model work).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from medcore_tp.data import Sample, binarize_mask, read_mask_values
from medcore_tp.errors import MedcoreError

__all__ = ["MaskCounts", "check_masks", "count_masks", "threshold_text"]


@dataclass
class MaskCounts:
    """Per dataset: masks read, masks with no non-zero pixel, masks with values but none above the threshold."""

    masks: int
    empty: int
    below_threshold: int

    @property
    def without_foreground(self) -> int:
        return self.empty + self.below_threshold

    def to_dict(self) -> dict:
        return asdict(self)


def threshold_text(threshold: float | None) -> str:
    """How masks are binarised, in words."""
    if threshold is None:
        return "127 (0.5 for masks in [0, 1])"
    return f"{threshold:g} ({threshold / 255:.3g} for masks in [0, 1])"


def count_masks(samples: Sequence[Sample]) -> MaskCounts:
    """Read every mask of ``samples`` and count the empty ones (see :class:`MaskCounts`)."""
    empty = below = 0
    for sample in samples:
        values = read_mask_values(sample.mask_path)
        if not np.any(values):
            empty += 1
        elif not binarize_mask(values, sample.mask_threshold).any():
            below += 1
    return MaskCounts(len(samples), empty, below)


def check_masks(datasets: Mapping[str, Sequence[Sample]], threshold: float | None = None,
                log: Callable[[str], None] = print) -> dict[str, dict]:
    """Count empty masks per dataset, say so when there are any, and refuse a dataset with no foreground.

    Returns the counts per dataset (for summary.json). Raises :class:`MedcoreError` when every mask of
    a dataset is empty or has nothing above the threshold, naming the threshold and ``--mask-threshold``.
    """
    out = {}
    for name, samples in datasets.items():
        counts = count_masks(samples)
        out[name] = counts.to_dict()
        if counts.masks and counts.without_foreground == counts.masks:
            detail = (f"{counts.empty} have no non-zero pixel, {counts.below_threshold} have values but none above it"
                      if counts.below_threshold else "none has a non-zero pixel")
            raise MedcoreError(
                f"--data {name}: all {counts.masks} masks are empty at threshold {threshold_text(threshold)} "
                f"({detail}); check the masks or set --mask-threshold"
            )
        if counts.without_foreground:
            log(f"note: {name}: {counts.empty} of {counts.masks} masks are empty and {counts.below_threshold} have "
                f"no pixel above threshold {threshold_text(threshold)} (--mask-threshold); they get the whole-image box")
    return out
