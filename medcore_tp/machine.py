"""What a measurement ran on: host, CPU model, cores, threads, library versions, GPU."""

from __future__ import annotations

import os
import platform
import socket

import torch

from medcore_tp.allocator import keeps_freed_memory


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``; "" if unknown.

    Two machines with the same core count can differ several-fold in speed, so every timing records it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info(device: str = "cpu") -> dict:
    """Host, platform, CPU model, core count, torch threads, torch version, the allocator and thread
    variables set (``environment``, only when any is), ``keep_freed_memory`` when
    :func:`medcore_tp.allocator.keep_freed_memory` was applied, and, for CUDA, the GPU name."""
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
    }
    # the allocator and thread settings change CPU timings (glibc's returns large blocks to the kernel, and
    # page faults then took the stock dense ViT-B encoder from 6.30 to 10.06 s per forward on the 2-core VM)
    env = {k: os.environ[k] for k in ("GLIBC_TUNABLES", "LD_PRELOAD", "OMP_NUM_THREADS", "MALLOC_CONF") if k in os.environ}
    if env:
        info["environment"] = env
    if keeps_freed_memory():
        info["keep_freed_memory"] = True
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
