"""Small layer helpers every architecture adapter uses."""

from __future__ import annotations

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
