"""Machine description stored next to every benchmark figure."""

from __future__ import annotations

import os

import torch

from medcore_tp.machine import machine_info

__all__ = ["gpu_tag", "machine_info", "machine_tag"]


def gpu_tag(name: str) -> str:
    """The model of a GPU from its CUDA name: "NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA GeForce RTX 4090"
    -> "rtx4090", "NVIDIA A100-SXM4-80GB" -> "a100" (vendor and product-line words dropped, up to the first
    word with a digit, memory and form factor left out)."""
    words = [w for w in name.split() if w.lower() not in ("nvidia", "tesla", "geforce", "quadro")]
    kept = []
    for w in words:
        kept.append(w.split("-")[0])
        if any(c.isdigit() for c in w):
            break
    tag = "".join(c for c in "".join(kept).lower() if c.isalnum())
    return tag or "gpu"


def machine_tag(device: str = "cpu") -> str:
    """Short tag for result file names, e.g. ``cpu2`` or ``cuda-h100``."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return "cuda-" + gpu_tag(torch.cuda.get_device_name(torch.device(device)))
    return f"cpu{os.cpu_count()}"
