"""Machine description stored next to every benchmark figure."""

from __future__ import annotations

import os
import platform
import socket

import torch


def machine_info(device: str = "cpu") -> dict:
    """Host, CPU, thread count, torch version and (for CUDA) the GPU name."""
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_tag(device: str = "cpu") -> str:
    """Short tag for result file names, e.g. ``cpu2`` or ``cuda-h100``."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return "cuda-" + torch.cuda.get_device_name(0).split()[-1].lower()
    return f"cpu{os.cpu_count()}"
