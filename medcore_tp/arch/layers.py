"""Small layer helpers every architecture adapter uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def resized_linear(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """A fresh ``nn.Linear`` like ``linear`` (bias, device, dtype) with new widths, to be loaded into."""
    return nn.Linear(
        in_features,
        out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )


def zero_input_channels(channels: list[int]):
    """A forward pre-hook that zeroes the given channels of a layer's input (last dimension)."""
    index = torch.tensor(channels, dtype=torch.long)

    def hook(_module, args):
        x = args[0].clone()
        x[..., index.to(x.device)] = 0
        return (x,) + tuple(args[1:])

    return hook


def zeroing_hooks(targets: Iterable[tuple[nn.Linear, list[int]]]) -> list:
    """Register :func:`zero_input_channels` on each ``(layer, channels)``; returns the hook handles."""
    return [layer.register_forward_pre_hook(zero_input_channels(list(chans))) for layer, chans in targets]


def head_channels(head: int, width: int) -> list[int]:
    """Input channels of an attention's ``proj`` that belong to ``head`` (head-major, ``width`` each)."""
    return list(range(head * width, (head + 1) * width))


def traced_by_torch_pruning(module: nn.Module) -> bool:
    """True while Torch-Pruning's dependency-graph tracer has its recording hook on ``module``."""
    return any(getattr(hook, "__module__", "").startswith("torch_pruning") for hook in module._forward_hooks.values())
