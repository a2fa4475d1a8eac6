"""The adapter protocol: what medcore-tp needs to know about an encoder family.

An adapter is a module (``medcore_tp.arch.sam_vit``, ``medcore_tp.arch.tiny_vit``) that provides every
member of :class:`Adapter`. Blocks are numbered 0..n-1 in forward order (:func:`blocks`); a *head* is
one attention head of a block and an *MLP channel* one hidden unit of its MLP, the only groups that are
ever removed. Every per-block answer is a list indexed like ``blocks(encoder)``, whatever the family.
``tests/test_adapter_conformance.py`` checks each registered adapter against this contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Adapter(Protocol):
    """The members an encoder-family adapter module provides (see the module docstring)."""

    FAMILY: str
    """Name of the family, recorded in pruned checkpoints (``"sam_vit"``, ``"tiny_vit"``)."""
    RESIZE_MODE: str
    """How images fit into the input for this family's checkpoints (``square`` / ``longest-side``)."""
    NORMALISATION: str
    """How pixel values are scaled (``min-max``: each image to [0, 1])."""

    def is_encoder(self, module: nn.Module) -> bool:
        """Whether ``module`` is an image encoder of this family (must not import optional packages)."""

    def blocks(self, encoder: nn.Module) -> list[nn.Module]:
        """The prunable transformer blocks, in forward order."""

    DEFAULT_PROTECTED_BLOCKS: int
    """How many final blocks ``--ratio`` leaves untouched unless told otherwise (lifted when the ratio
    cannot be reached with them protected)."""

    STEM_PREFIXES: tuple[str, ...]
    """Parameter-name prefixes (in ``encoder.named_parameters()``) of the stem: the layers before the
    first prunable block, which pruning never changes."""

    def stem_forward(self, encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The stem's output for ``images``: what the first prunable block receives."""

    def trunk_forward(self, encoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """The rest of the encoder from the stem's output: ``trunk_forward(e, stem_forward(e, x))`` is
        ``e(x)``. Lets recovery run the stem once per image when it does not train it."""

    def prepare(self, encoder: nn.Module) -> nn.Module:
        """Make ``encoder`` traceable by Torch-Pruning, in place and idempotent; same function, same
        parameters and state-dict keys (applies the family's ``*_tp`` workarounds; docs/design.md)."""

    def head_dims(self, encoder: nn.Module) -> list[int]:
        """Value channels per head of each block (fixed by pruning)."""

    def head_dim(self, encoder: nn.Module) -> int:
        """Channels per head when every block has the same (raises ``ValueError`` otherwise)."""

    def heads_per_block(self, encoder: nn.Module) -> list[int]:
        """Heads each block holds now, read from the weights."""

    def mlp_per_block(self, encoder: nn.Module) -> list[int]:
        """MLP hidden channels each block holds now, read from the weights."""

    def group_params(self, encoder: nn.Module) -> tuple[list[int], list[int]]:
        """Parameters removed with one head and with one MLP channel, per block."""

    def block_prefix(self, encoder: nn.Module, block: int) -> str:
        """Prefix of ``block``'s parameter names in ``encoder.named_parameters()`` (ends with a dot)."""

    def group_sums(self, encoder: nn.Module, block: int, values: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum per-parameter ``values`` (keys and shapes of the encoder's parameters) over each head and
        each MLP channel of ``block``: (heads,) and (channels,) float64 tensors."""

    def attention_linears(self, block: nn.Module) -> tuple[nn.Linear, nn.Linear]:
        """(fused qkv, output projection) of a block."""

    def mlp_linears(self, block: nn.Module) -> tuple[nn.Linear, nn.Linear]:
        """(first, second) MLP layer of a block."""

    def head_root(self, encoder: nn.Module, block: int, heads: list[int]) -> tuple[nn.Linear, list[int]]:
        """(layer, input channels) where Torch-Pruning roots the removal of ``heads``: the projection's
        input channels, head-major."""

    def mlp_root(self, encoder: nn.Module, block: int, channels: list[int]) -> tuple[nn.Linear, list[int]]:
        """(layer, output channels) where the removal of MLP ``channels`` is rooted: the first MLP layer."""

    def expected_qkv_rows(self, encoder: nn.Module, block: int, heads: list[int]) -> list[int]:
        """The fused qkv rows a correct head group removes (checks the dependency graph)."""

    def qkv_row_heads(self, encoder: nn.Module, block: int, rows: torch.Tensor) -> torch.Tensor:
        """The head owning each fused qkv row."""

    def ignored_layers(self, encoder: nn.Module) -> list[nn.Module]:
        """Layers whose output widths must not change (residual stream, convolutions, neck)."""

    def unwrapped_parameters(self, encoder: nn.Module) -> list[tuple[nn.Parameter, int]]:
        """Parameters outside standard layers, with the dimension holding channels (for Torch-Pruning)."""

    def resize(self, encoder: nn.Module, heads: list[int], mlp: list[int]) -> None:
        """Give each block ``heads[b]`` heads and ``mlp[b]`` channels (fresh weights), to load a pruned
        state dict into."""

    def geometry(self, encoder: nn.Module) -> Iterator:
        """Per-block cost geometry (tokens, attended keys, widths) at the native input size."""

    def paper_flops(self, encoder: nn.Module) -> dict[str, float]:
        """FLOPs (2 x MACs) in the paper's convention: ``attention``, ``mlp``, ``total``, ``block_<i>``..."""

    def zero_groups_hooks(self, encoder: nn.Module, removed_heads: dict[int, list[int]],
                          removed_mlp: dict[int, list[int]]) -> list:
        """Forward pre-hooks making a dense encoder compute what the pruned one computes (handles)."""


__all__ = ["Adapter"]
