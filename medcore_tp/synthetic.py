"""A small built-in synthetic dataset: seeded ellipses on a smooth textured background.

It needs no download and is the same on every machine for a given seed, which makes it useful for
smoke tests, demos and calibration when no real data is at hand. It says nothing about accuracy on
medical images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["synthetic_pairs", "write_synthetic_dataset"]


def _one_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = rng.uniform(0.25, 0.75, size=2) * size
        ry, rx = rng.uniform(0.08, 0.22, size=2) * size
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        mask |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    texture = ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), sigma=(size / 32, size / 32, 0))
    texture = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-8)
    background = rng.uniform(40, 110, size=3)
    foreground = rng.uniform(140, 230, size=3)
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)[..., None]
    image = background * (1 - soft) + foreground * soft + 50 * (texture - 0.5)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def synthetic_pairs(n: int = 12, size: int = 256, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (image (size, size, 3) uint8, mask (size, size) bool) pairs, fixed by ``seed``."""
    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    return [_one_pair(rng, size) for _ in range(n)]


def write_synthetic_dataset(root: str | os.PathLike, n: int = 12, size: int = 256, seed: int = 0) -> Path:
    """Write :func:`synthetic_pairs` as ``root/images/synth_XXX.png`` + ``root/masks/synth_XXX.png``
    (masks 0/255), the layout :func:`medcore_tp.data.discover` reads. Returns ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i, (image, mask) in enumerate(synthetic_pairs(n, size, seed)):
        Image.fromarray(image).save(root / "images" / f"synth_{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"synth_{i:03d}.png")
    return root
