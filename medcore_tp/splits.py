"""Seeded train / val / test splits per dataset, the splits file, and the calibration subset.

Each dataset is split on its own (docs/method.md: seed 42, 60/20/20); ``splits.json`` records the split so
that pruning, evaluation and fine-tuning see the same images.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medcore_tp.atomic import save_json
from medcore_tp.datasets import Sample
from medcore_tp.errors import MedcoreError

SPLIT_NAMES = ("train", "val", "test")
SPLITS_FORMAT = "medcore-tp splits"


def split_stems(stems: Sequence[str], seed: int = 42,
                fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict[str, list[str]]:
    """Shuffle sorted ``stems`` with ``seed`` and cut them into train/val/test.

    val and test get round(fraction * n) (halves rounded up) and train the rest, so with 5 images
    the split is 3/1/1 and with 100 it is 60/20/20.
    """
    ordered = sorted(stems)
    order = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in order]
    n = len(shuffled)
    n_val = int(np.floor(fractions[1] * n + 0.5))
    n_test = int(np.floor(fractions[2] * n + 0.5))
    n_train = n - n_val - n_test
    return {
        "train": shuffled[:n_train],
        "val": shuffled[n_train:n_train + n_val],
        "test": shuffled[n_train + n_val:],
    }


def make_splits(datasets: Mapping[str, Sequence[Sample]], seed: int = 42) -> dict[str, Any]:
    """A splits document (what ``splits.json`` holds) for every dataset, each split on its own."""
    return {
        "format": SPLITS_FORMAT,
        "seed": seed,
        "fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
        "datasets": {name: split_stems([s.name for s in samples], seed) for name, samples in datasets.items()},
    }


def _read_splits(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedcoreError(f"cannot read splits file {path}: {exc}") from None
    ok = isinstance(doc, dict) and isinstance(doc.get("datasets"), dict) and all(
        isinstance(parts, dict) and all(isinstance(parts.get(k), list) for k in SPLIT_NAMES)
        for parts in doc["datasets"].values()
    )
    if not ok:
        raise MedcoreError(f"splits file {path} is not a medcore-tp splits file "
                           f"(expected {{'datasets': {{name: {{'train': [...], 'val': [...], 'test': [...]}}}}}})")
    return doc


@dataclass
class SplitsChoice:
    """The splits a run uses and where they came from.

    ``action``: ``created`` (no file: new splits), ``reused`` (the file covers every dataset) or
    ``extended`` (the file lacked ``added`` datasets, which got new splits with the file's seed);
    ``written``: where the document was written (None when nothing needed writing or no place was given).
    """

    doc: dict[str, Any]
    source: Path | None
    action: str
    added: list[str]
    written: Path | None

    def describe(self) -> str:
        """One line for the screen."""
        if self.action == "reused":
            return f"splits: reused {self.source}"
        where = f", written to {self.written}" if self.written else " (not written)"
        if self.action == "created":
            return f"splits: new (seed {self.doc.get('seed')}){where}"
        kept = f"; {self.source} is unchanged" if self.written != self.source else ""
        return (f"splits: {self.source} extended with new splits of {', '.join(self.added)} "
                f"(seed {self.doc.get('seed')}){where}{kept}")

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "source": str(self.source) if self.source else None,
                "added": self.added, "written": str(self.written) if self.written else None}


def settle_splits(datasets: Mapping[str, Sequence[Sample]], path: str | os.PathLike | None,
                  seed: int = 42, write_to: str | os.PathLike | None = None) -> SplitsChoice:
    """Reuse the splits in ``path`` if it exists, else create them; write what changed to ``write_to``.

    A dataset missing from the file gets a fresh split (with the file's seed); the file itself is only
    rewritten when ``write_to`` is that file. Every stem the file lists must exist in its dataset;
    files of a dataset that the file does not list are left out with a warning.
    """
    source = Path(path) if path is not None else None
    if source is not None and source.exists():
        doc = _read_splits(source)
        action = "reused"
    else:
        doc = {"format": SPLITS_FORMAT, "seed": seed,
               "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "datasets": {}}
        action = "created"
    file_seed = int(doc.get("seed", seed))
    added = []
    for name, samples in datasets.items():
        stems = {s.name for s in samples}
        parts = doc["datasets"].get(name)
        if parts is None:
            doc["datasets"][name] = split_stems(sorted(stems), file_seed)
            added.append(name)
            continue
        listed = [stem for key in SPLIT_NAMES for stem in parts[key]]
        if len(set(listed)) != len(listed):
            twice = next(stem for stem in listed if listed.count(stem) > 1)
            raise MedcoreError(f"splits file {source} lists '{twice}' of dataset '{name}' more than once "
                               f"(the splits must not overlap)")
        missing = [stem for stem in listed if stem not in stems]
        if missing:
            raise MedcoreError(f"splits file {source} lists '{missing[0]}' for dataset '{name}' "
                               f"({len(missing)} missing in all), which is not in its data folder")
        extra = len(stems - set(listed))
        if extra:
            warnings.warn(f"{extra} file(s) of dataset '{name}' are not in {source} and are left out", stacklevel=2)
    if action == "reused" and added:
        action = "extended"
    written = None
    if action != "reused" and write_to is not None:
        written = Path(write_to)
        save_json(doc, written)
    return SplitsChoice(doc, source if action != "created" else None, action, added, written)


def resolve_splits(datasets: Mapping[str, Sequence[Sample]], path: str | os.PathLike,
                   seed: int = 42) -> dict[str, Any]:
    """:func:`settle_splits` writing back into ``path`` itself (created if missing, extended in place)."""
    return settle_splits(datasets, path, seed, write_to=path).doc


def select_split(datasets: Mapping[str, Sequence[Sample]], splits: Mapping[str, Any] | None,
                 split: str) -> dict[str, list[Sample]]:
    """The samples of one split (``train``/``val``/``test``, in split order) or ``all`` of them."""
    if split == "all":
        return {name: list(samples) for name, samples in datasets.items()}
    if split not in SPLIT_NAMES:
        raise MedcoreError(f"split {split}: must be one of train, val, test, all", "split")
    if splits is None:
        raise ValueError("a split other than 'all' needs splits")
    chosen = {}
    for name, samples in datasets.items():
        by_stem = {s.name: s for s in samples}
        chosen[name] = [by_stem[stem] for stem in splits["datasets"][name][split]]
    return chosen


def calibration_subset(train: Sequence[Sample], k: int = 128) -> list[Sample]:
    """The calibration set: the first ``k`` training samples (in split order)."""
    if k < 1:
        raise ValueError(f"calibration size must be >= 1, got {k}")
    return list(train[:k])
