"""torch.distributed helpers: start from torchrun's environment, shard work, sum across processes.

Under ``torchrun --nproc_per_node N`` every process runs the same command. Calibration samples are
dealt out round-robin by rank and Fisher sums and sample counts are all-reduced, so that N processes
give the same statistics as one. Recovery and fine-tuning train through DistributedDataParallel: each
global batch is drawn identically on every rank and dealt out by rank, and the loss is scaled so that
DDP's gradient average equals the gradient of the mean over the whole global batch, i.e. N processes
with batch b follow the same trajectory as one process with batch N x b. Only rank 0 writes files or
prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA) and return this process's
    device: under torchrun a plain ``cuda`` becomes ``cuda:LOCAL_RANK``. Without torchrun, ``device``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes files and prints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process), e.g. until rank 0 has written a file."""
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over all processes, in place (no-op in a single process)."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel under a process group, else ``module`` itself.

    Buffers are not synchronised at each forward: batch-norm layers stay in eval mode during training here, so every
    rank's buffers are equal already.
    """
    if world_size() == 1:
        return module
    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


def my_share(global_batch: Sequence[int]) -> tuple[list[int], float]:
    """This rank's part of a global batch (every ``world_size``-th index from its rank) and the loss
    scale that makes DDP's gradient average the mean over the global batch: ``world_size / len(batch)``
    applied to the *sum* of this rank's per-sample losses.

    A rank whose share is empty (a last batch smaller than the number of processes) gets the batch's
    first index with scale 0, so that it still takes part in the gradient all-reduce.
    """
    share = list(global_batch[rank()::world_size()])
    scale = world_size() / max(len(global_batch), 1)
    if not share:
        return [global_batch[0]], 0.0
    return share, scale
