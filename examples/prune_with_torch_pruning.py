"""Plain Torch-Pruning on a SAM/MedSAM image encoder, prepared by medcore-tp.

    python examples/prune_with_torch_pruning.py                       # tiny model, random weights
    python examples/prune_with_torch_pruning.py --model lite-medsam   # LiteMedSAM's packaged weights
    python examples/prune_with_torch_pruning.py --model medsam --checkpoint medsam_vit_b.pth

Removes half the heads and half the MLP channels of every block with Torch-Pruning's own
MetaPruner and magnitude importance, saves the pruned checkpoint and reloads it. Works on every
registered model (``medcore_tp.MODEL_NAMES``): the adapter of the model's family says where its
blocks, heads and MLP channels are.
"""

from __future__ import annotations

import argparse

import torch
import torch_pruning as tp

import medcore_tp
from medcore_tp.arch import adapter_for
from medcore_tp.profile import count_params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", choices=medcore_tp.MODEL_NAMES)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--out", default="pruned.pth")
    args = parser.parse_args()

    # like the CLI: the packaged weights where the model has some, random weights otherwise
    weights = args.checkpoint or medcore_tp.default_weights(args.model)
    model = medcore_tp.build_model(args.model, weights)
    print(f"model: {args.model}, weights: {weights or 'random'}")
    adapter = adapter_for(model)
    before = count_params(model.image_encoder)
    heads_before = adapter.heads_per_block(model.image_encoder)
    spec = medcore_tp.prepare_pruning(model)
    pruner = tp.pruner.MetaPruner(
        spec.encoder,
        spec.example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        head_pruning_ratio=0.5,
        **spec.pruner_kwargs(),
    )
    pruner.step()
    after = count_params(model.image_encoder)
    heads = adapter.heads_per_block(model.image_encoder)
    print(f"encoder parameters {before:,} -> {after:,}; heads per block {heads_before} -> {heads}")
    print(f"MLP per block {adapter.mlp_per_block(model.image_encoder)}")

    medcore_tp.save_pruned(model, args.out, base=args.model)
    reloaded = medcore_tp.load_pruned(args.out)
    size = medcore_tp.input_spec(model).input_size
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        diff = (reloaded.image_encoder(x) - model.image_encoder(x)).abs().max().item()
    print(f"saved {args.out}; reloaded model differs by at most {diff:.2e}")


if __name__ == "__main__":
    main()
