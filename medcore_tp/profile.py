"""Counting an encoder: parameters, FLOPs in two conventions, and latency.

* ``flops_torch``: ``torch.utils.flop_counter`` on a meta-device copy (no arithmetic is run). It counts
  the attention matmuls that Torch-Pruning's ``count_ops_and_params`` misses, plus the neck.
* ``flops_paper``: the paper's convention (2 x MACs of patch embedding, projections, attention
  matmuls and MLP; neck, LayerNorm, softmax, biases ignored), from the architecture itself.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medcore_tp.arch import adapter_for, image_encoder

GIGA = 1e9


def count_params(module: nn.Module) -> int:
    """Number of parameters (all of them, trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def _meta_copy(encoder: nn.Module) -> nn.Module:
    if next(encoder.parameters()).device.type == "meta":
        return encoder
    # Deep-copy onto meta without duplicating real storage: swap in meta tensors on the copy only.
    memo = {id(t): torch.empty_like(t, device="meta") for t in list(encoder.parameters()) + list(encoder.buffers())}
    meta = copy.deepcopy(encoder, memo)
    return meta


def flops_torch(model: nn.Module, batch: int = 1) -> dict[str, float]:
    """FLOPs of one encoder forward at its native input size, by ``torch.utils.flop_counter``.

    Returns ``total``, ``block_<i>`` and ``op_<aten op>`` entries (e.g. ``op_addmm``, ``op_bmm``,
    ``op_convolution``), in FLOPs (not GFLOPs).
    """
    encoder = _meta_copy(image_encoder(model))
    size = encoder.img_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.zeros(batch, 3, size, size, device="meta"))
    out = {"total": float(counter.get_total_flops())}
    adapter = adapter_for(encoder)
    # the counter names modules "<root class>.<path>"; blocks by the adapter's parameter prefixes
    block_of = {
        f"{type(encoder).__name__}.{adapter.block_prefix(encoder, i).rstrip('.')}": i
        for i in range(len(adapter.blocks(encoder)))
    }
    for name, per_op in counter.get_flop_counts().items():
        if name in block_of:
            out[f"block_{block_of[name]}"] = float(sum(per_op.values()))
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        out[f"op_{str(op).split('.')[-1]}"] = float(n)
    return out


def flops_paper(model: nn.Module) -> dict[str, float]:
    """FLOPs in the paper's convention (see module docstring); ``total``, parts and ``block_<i>``."""
    encoder = image_encoder(model)
    return adapter_for(encoder).paper_flops(encoder)


@dataclass
class EncoderProfile:
    """What ``medcore-tp info`` reports about an encoder."""

    encoder_params: int
    params: int
    flops_torch_g: float
    flops_paper_g: float
    heads_per_block: list[int]
    mlp_per_block: list[int]
    params_per_block: list[int] = field(default_factory=list)
    flops_torch_g_per_block: list[float] = field(default_factory=list)
    flops_paper_g_per_block: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def profile_model(model: nn.Module) -> EncoderProfile:
    """Parameters, both FLOP counts and widths, in total and per block."""
    encoder = image_encoder(model)
    adapter = adapter_for(encoder)
    blocks = adapter.blocks(encoder)
    torch_f, paper_f = flops_torch(encoder), flops_paper(encoder)
    return EncoderProfile(
        encoder_params=count_params(encoder),
        params=count_params(model),
        flops_torch_g=torch_f["total"] / GIGA,
        flops_paper_g=paper_f["total"] / GIGA,
        heads_per_block=adapter.heads_per_block(encoder),
        mlp_per_block=adapter.mlp_per_block(encoder),
        params_per_block=[count_params(b) for b in blocks],
        flops_torch_g_per_block=[torch_f.get(f"block_{i}", 0.0) / GIGA for i in range(len(blocks))],
        flops_paper_g_per_block=[paper_f[f"block_{i}"] / GIGA for i in range(len(blocks))],
    )


def measure_latency(
    model: nn.Module, device: str | torch.device = "cpu", batch: int = 1, warmup: int = 1, repeats: int = 3
) -> dict[str, float]:
    """Wall time of the encoder forward (seconds): median, min and all repeats.

    Synchronises CUDA around each timed call; runs under ``torch.inference_mode``.
    """
    encoder = image_encoder(model).to(device).eval()
    size = encoder.img_size
    x = torch.rand(batch, 3, size, size, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            encoder(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}
