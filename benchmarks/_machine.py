"""Machine description stored next to every benchmark figure."""

from __future__ import annotations

import os

import torch

from medcore_tp.machine import machine_info

__all__ = ["machine_info", "machine_tag"]


def machine_tag(device: str = "cpu") -> str:
    """Short tag for result file names, e.g. ``cpu2`` or ``cuda-h100``."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return "cuda-" + torch.cuda.get_device_name(0).split()[-1].lower()
    return f"cpu{os.cpu_count()}"
