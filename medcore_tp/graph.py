"""Torch-Pruning on SAM-style encoders: the preparation call, dependency graphs and explicit plans.

Typical use with any Torch-Pruning importance::

    spec = medcore_tp.prepare_pruning(model)          # model: a SAM/MedSAM model or its image encoder
    pruner = tp.pruner.MetaPruner(
        spec.encoder, spec.example_inputs, importance=tp.importance.GroupMagnitudeImportance(),
        pruning_ratio=0.5, head_pruning_ratio=0.5, **spec.pruner_kwargs(),
    )
    pruner.step()                                      # whole heads + MLP channels, rel-pos kept

or remove chosen groups through the same graph::

    medcore_tp.apply_plan(spec.encoder, {3: BlockPlan(heads=(0, 5), mlp=(1, 2, 3))})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from medcore_tp.arch import adapter_for, image_encoder
from medcore_tp.errors import MedcoreError


@dataclass
class PruningSpec:
    """What Torch-Pruning needs to know about a prepared encoder."""

    encoder: nn.Module
    example_inputs: torch.Tensor

    def num_heads(self) -> dict[nn.Linear, int]:
        """``{qkv layer: heads}`` for MetaPruner's ``num_heads`` (a fresh dict each call)."""
        adapter = adapter_for(self.encoder)
        return {
            adapter.attention_linears(blk)[0]: nh
            for blk, nh in zip(adapter.blocks(self.encoder), adapter.heads_per_block(self.encoder), strict=True)
        }

    def ignored_layers(self) -> list[nn.Module]:
        """Layers whose widths stay (patch embedding / residual stream, neck)."""
        return list(adapter_for(self.encoder).ignored_layers(self.encoder))

    def pruner_kwargs(self) -> dict:
        """Keyword arguments for ``tp.pruner.MetaPruner`` that prune whole heads and MLP channels only.

        The channel-group dicts are fresh on every call: Torch-Pruning 1.6 mutates its shared
        default dicts, which would leak stale layers into a second pruner in the same process.
        """
        return {
            "num_heads": self.num_heads(),
            "prune_num_heads": True,
            "prune_head_dims": False,
            "ignored_layers": self.ignored_layers(),
            "unwrapped_parameters": adapter_for(self.encoder).unwrapped_parameters(self.encoder),
            "in_channel_groups": {},
            "out_channel_groups": {},
            "forward_fn": trace_on_meta,
        }


def trace_on_meta(module: nn.Module, example_inputs: torch.Tensor) -> torch.Tensor:
    """Run ``module`` for Torch-Pruning's tracer with meta-device copies of its tensors.

    The tracer only needs the autograd graph and which module produced which tensor, not numbers:
    swapping in meta parameters (same modules, same hooks) turns a full-size ViT-B trace from a real
    1024x1024 forward (tens of seconds on a CPU) into well under a second.
    """
    params = {
        name: torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
        for name, t in module.named_parameters()
    }
    buffers = {name: torch.empty_like(t, device="meta") for name, t in module.named_buffers()}
    x = torch.empty_like(example_inputs, device="meta")
    return torch.func.functional_call(module, {**params, **buffers}, (x,), strict=True)


def prepare_pruning(model: nn.Module, example_inputs: torch.Tensor | None = None) -> PruningSpec:
    """Make the image encoder of ``model`` traceable by Torch-Pruning, in place, and describe it.

    Only the given model changes (its attention modules are swapped for equivalent ones with the same
    parameters); segment_anything's classes are untouched. Calling it twice is harmless.
    """
    encoder = image_encoder(model)
    adapter_for(encoder).prepare(encoder)
    if example_inputs is None:
        param = next(encoder.parameters())
        example_inputs = torch.zeros(1, 3, encoder.img_size, encoder.img_size, device=param.device, dtype=param.dtype)
    return PruningSpec(encoder=encoder, example_inputs=example_inputs)


def build_graph(spec: PruningSpec) -> tp.DependencyGraph:
    """Trace the prepared encoder into a Torch-Pruning dependency graph."""
    return tp.DependencyGraph().build_dependency(
        spec.encoder,
        example_inputs=spec.example_inputs,
        forward_fn=trace_on_meta,
        unwrapped_parameters=adapter_for(spec.encoder).unwrapped_parameters(spec.encoder),
        verbose=False,
    )


@dataclass(frozen=True)
class BlockPlan:
    """Heads and MLP hidden channels to remove from one block (indices in the block as it is now)."""

    heads: tuple[int, ...] = field(default_factory=tuple)
    mlp: tuple[int, ...] = field(default_factory=tuple)


Plan = Mapping[int, BlockPlan]


def head_group(graph: tp.DependencyGraph, encoder: nn.Module, block: int, heads: list[int]) -> tp.dependency.Group:
    """The dependency group that removes ``heads`` of ``block`` (qkv rows, proj columns)."""
    layer, idxs = adapter_for(encoder).head_root(encoder, block, heads)
    return graph.get_pruning_group(layer, tp.prune_linear_in_channels, idxs)


def mlp_group(graph: tp.DependencyGraph, encoder: nn.Module, block: int, channels: list[int]) -> tp.dependency.Group:
    """The dependency group that removes MLP hidden ``channels`` of ``block`` (fc1 rows, fc2 columns)."""
    layer, idxs = adapter_for(encoder).mlp_root(encoder, block, channels)
    return graph.get_pruning_group(layer, tp.prune_linear_out_channels, idxs)


def validate_plan(encoder: nn.Module, plan: Plan) -> None:
    """Raise :class:`MedcoreError` unless every index exists and every block keeps a head and a channel."""
    adapter = adapter_for(encoder)
    heads, mlp = adapter.heads_per_block(encoder), adapter.mlp_per_block(encoder)
    for b, bp in plan.items():
        if not 0 <= b < len(heads):
            raise MedcoreError(f"plan: block {b} does not exist (the encoder has {len(heads)} blocks)")
        for what, idx, have in (("head", bp.heads, heads[b]), ("MLP channel", bp.mlp, mlp[b])):
            bad = [i for i in idx if not 0 <= i < have]
            if bad:
                raise MedcoreError(f"plan: block {b} has {have} {what}s, no {what} {bad[0]}")
            if len(set(idx)) != len(idx):
                raise MedcoreError(f"plan: block {b} lists a {what} twice")
            if len(idx) >= have:
                raise MedcoreError(f"plan: block {b} would lose all its {have} {what}s (at least one must stay)")


def apply_plan(encoder: nn.Module, plan: Plan, graph: tp.DependencyGraph | None = None) -> None:
    """Remove the planned heads, then the planned MLP channels, through Torch-Pruning's graph.

    ``encoder`` must have been through :func:`prepare_pruning`. Each head group is checked to cover
    exactly that head's Q, K and V rows before anything is removed.
    """
    encoder = image_encoder(encoder)
    validate_plan(encoder, plan)
    adapter = adapter_for(encoder)
    if graph is None:
        graph = build_graph(prepare_pruning(encoder))
    for b, bp in sorted(plan.items()):
        if bp.heads:
            group = head_group(graph, encoder, b, sorted(bp.heads))
            _check_head_group(group, adapter, encoder, b, sorted(bp.heads))
            group.prune()
    for b, bp in sorted(plan.items()):
        if bp.mlp:
            mlp_group(graph, encoder, b, sorted(bp.mlp)).prune()


def _check_head_group(group, adapter, encoder: nn.Module, block: int, heads: list[int]) -> None:
    qkv = adapter.attention_linears(adapter.blocks(encoder)[block])[0]
    rows = [sorted(int(i) for i in idxs) for dep, idxs in group if dep.target.module is qkv]
    expected = adapter.expected_qkv_rows(encoder, block, heads)
    if rows != [expected]:
        raise RuntimeError(
            f"Torch-Pruning mapped heads {heads} of block {block} to qkv rows {rows[:1]}, expected {expected}; "
            "nothing was removed"
        )
