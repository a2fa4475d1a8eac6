"""MedCore's importance (Q) in a plain Torch-Pruning ``MetaPruner``, end to end.

    python examples/medcore_importance_metapruner.py                  # tiny model, stand-in source/target
    python examples/medcore_importance_metapruner.py --model lite-tiny  # the TinyViT family, same steps
    python examples/medcore_importance_metapruner.py --data ../shared/data/kvasir-seg-256
    python examples/medcore_importance_metapruner.py --model medsam --checkpoint medsam_vit_b.pth \\
        --source-checkpoint sam_vit_b_01ec64.pth --data ../shared/data/kvasir-seg-256

Steps: build the target (MedSAM) and, when there is one, its source (SAM); compute the boundary-aware
Fisher of both on the calibration images; turn Dzero / Dreset / alpha into Q per head and MLP channel
(``MedCoreImportance``); hand it to Torch-Pruning's own ``MetaPruner`` with local ranking (half the
heads and half the MLP channels of every block); then show, block by block, which heads went and their
Q next to the kept heads' Q, and check that the removed heads are exactly the lowest-Q ones.

Without ``--checkpoint`` the weights are random and there is no real SAM -> MedSAM pair: the "source"
is a randomly initialised model and the "target" a copy of it with every encoder weight perturbed. This
is a STAND-IN that only exercises the code path; its scores say nothing about real models.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch_pruning as tp

import medcore_tp
from medcore_tp.arch import adapter_for
from medcore_tp.calibration import calibration_sets, synthetic_batch
from medcore_tp.profile import count_params
from medcore_tp.recipe import calibrate, make_medcore_importance, statistics


def stand_in_pair(name: str, seed: int, noise: float) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(source, target): a random model and a copy whose encoder weights are perturbed by ``noise`` x std."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    source = medcore_tp.build_model(name)
    with torch.no_grad():  # SAM's rel-pos and TinyViT's bias tables start at zero; give them values
        for pname, p in source.named_parameters():
            if "rel_pos" in pname or "attention_biases" in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    target = copy.deepcopy(source)
    with torch.no_grad():
        for p in target.image_encoder.parameters():
            scale = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 1.0
            p.add_(torch.randn(p.shape, generator=gen) * noise * scale)
    return source, target


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3e}" for v in values) + "]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=medcore_tp.MODEL_NAMES)
    parser.add_argument("--checkpoint", default=None, help="target (MedSAM) weights; random stand-in without it")
    parser.add_argument("--source-checkpoint", default=None, help="source (SAM) weights: enables Dreset and alpha")
    parser.add_argument("--data", default=None, help="calibration dataset folder(s), comma-separated")
    parser.add_argument("--calib-size", type=int, default=8, help="calibration images per dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # 1. Target and source.
    if args.checkpoint is None:
        if args.source_checkpoint is not None:
            parser.error("--source-checkpoint needs --checkpoint (the target it was adapted into)")
        source, model = stand_in_pair(args.model, args.seed, noise=0.2)
        print(f"models: {args.model} with RANDOM weights; source = random model, target = perturbed copy "
              "(stand-in for SAM -> MedSAM, not real weights)")
    else:
        model = medcore_tp.build_model(args.model, args.checkpoint)
        source = medcore_tp.build_model(args.model, args.source_checkpoint) if args.source_checkpoint else None
        print(f"models: target {args.checkpoint}; source {args.source_checkpoint or 'none'}")
        if source is None:
            print("no source model: only Dzero is available, alpha = 1 in every block (Q = Dzero)")

    # 2. Calibration: boundary-aware Fisher of the target per dataset, of the source on all images,
    #    preprocessed as the model expects (its input spec: input size, logit size, resize mode).
    frame = medcore_tp.input_spec(model)
    print(f"input spec: {frame}")
    if args.data:
        sets = calibration_sets([r for r in args.data.split(",") if r], args.calib_size, frame).batches
    else:
        sets = {"synthetic": [synthetic_batch(args.calib_size, frame, seed=args.seed)]}
        print(f"calibration: {args.calib_size} built-in SYNTHETIC images (not medical data)")
    calibration = calibrate(model, sets, source=source)
    print(f"calibration samples: {calibration.samples}")

    # 3. MedCore's Q as a Torch-Pruning importance (statistics of the dense encoder).
    importance = make_medcore_importance(model, statistics(model, calibration), "medcore")
    print("alpha per block: " + ", ".join(f"{s.alpha:.3f}" for s in importance.scores))

    # 4. Plain Torch-Pruning: MetaPruner, local ranking, half the heads and half the MLP channels.
    encoder = model.image_encoder
    adapter = adapter_for(encoder)
    hd = adapter.head_dim(encoder)
    heads_before = adapter.heads_per_block(encoder)
    params_before = count_params(encoder)
    spec = medcore_tp.prepare_pruning(model)
    pruner = tp.pruner.MetaPruner(
        spec.encoder,
        spec.example_inputs,
        importance=importance,
        global_pruning=False,
        pruning_ratio=0.5,
        head_pruning_ratio=0.5,
        **spec.pruner_kwargs(),
    )
    block_of = {}
    for b, blk in enumerate(adapter.blocks(encoder)):
        qkv, proj = adapter.attention_linears(blk)
        lin1, _ = adapter.mlp_linears(blk)
        block_of[proj] = ("head", b)
        block_of[lin1] = ("mlp", b)
    # proj columns of every head before pruning, to tell afterwards which heads the weights still hold
    head_cols = [adapter.attention_linears(blk)[1].weight.detach().clone().view(-1, heads_before[b], hd)
                 for b, blk in enumerate(adapter.blocks(encoder))]
    removed_heads: dict[int, list[int]] = {}
    removed_mlp: dict[int, list[int]] = {}
    for group in pruner.step(interactive=True):  # see what each group removes before it goes
        for dep, idxs in group:
            kind, b = block_of.get(dep.target.module, (None, None))
            if kind == "head" and dep.handler == tp.prune_linear_in_channels:
                removed_heads[b] = sorted({int(i) // hd for i in idxs})
            elif kind == "mlp" and dep.handler == tp.prune_linear_out_channels:
                removed_mlp[b] = sorted(int(i) for i in idxs)
        group.prune()
    heads_after = adapter.heads_per_block(encoder)
    for b, blk in enumerate(adapter.blocks(encoder)):  # the groups' indices agree with the weights
        now = adapter.attention_linears(blk)[1].weight.detach().view(-1, heads_after[b], hd)
        held = [h for h in range(heads_before[b]) if any(torch.equal(head_cols[b][:, h], now[:, j])
                                                        for j in range(heads_after[b]))]
        if sorted(set(range(heads_before[b])) - set(held)) != removed_heads.get(b, []):
            print(f"check FAILED: block {b} weights hold heads {held}, groups said {removed_heads.get(b)} went")
            return 1
    mlp_after = adapter.mlp_per_block(encoder)
    print(f"encoder parameters {params_before:,} -> {count_params(encoder):,}")
    print(f"heads per block {heads_before} -> {heads_after}")
    print(f"MLP per block -> {mlp_after}")

    # 5. Which heads went, their Q next to the kept ones', and the check.
    heads_ok = mlp_ok = True
    for b, sc in enumerate(importance.scores):
        q = sc.head_q.tolist()
        gone = removed_heads.get(b, [])
        kept = [h for h in range(len(q)) if h not in gone]
        lowest = sorted(range(len(q)), key=lambda h: q[h])[: len(gone)]
        exact = set(gone) == set(lowest) or (gone and kept and max(q[h] for h in gone) <= min(q[h] for h in kept))
        heads_ok &= bool(exact) and len(kept) == heads_after[b]
        print(f"block {b}: removed heads {gone} Q {fmt([q[h] for h in gone])} | "
              f"kept heads {kept} Q {fmt([q[h] for h in kept])} | lowest-Q: {'yes' if exact else 'NO'}")
        mq = sc.mlp_q
        mg = removed_mlp.get(b, [])
        mk = torch.ones(len(mq), dtype=torch.bool)
        mk[mg] = False
        if mg and bool(mk.any()):
            mlp_ok &= float(mq[mg].max()) <= float(mq[mk].min())
    removed = sum(len(v) for v in removed_heads.values())
    if heads_ok:
        print(f"check: removed heads are exactly the lowest-Q heads in every block ({removed} heads removed)")
    else:
        print("check FAILED: some block lost a head that is not among its lowest-Q heads")
    print("check: removed MLP channels are the lowest-Q channels in every block" if mlp_ok
          else "check FAILED: some block lost an MLP channel that is not among its lowest-Q channels")

    x = torch.rand(1, 3, frame.input_size, frame.input_size)
    with torch.no_grad():
        out = encoder(x)
    print(f"pruned encoder runs: output {tuple(out.shape)}")
    return 0 if heads_ok and mlp_ok else 1


if __name__ == "__main__":
    sys.exit(main())
