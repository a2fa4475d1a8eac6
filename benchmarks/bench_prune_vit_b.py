"""Full-size SAM/MedSAM ViT-B: cost of preparing and pruning, equivalence, and dense vs pruned latency.

Prunes a randomly initialised ViT-B with the paper's configuration (heads 0.5, MLP 0.7, blocks 10-11
protected: 60.03% of encoder parameters), then, side by side in one run:

* times ``prepare_pruning`` + dependency graph + scoring/removal;
* checks the physically pruned encoder against the dense one with the same groups zeroed by hooks;
* reloads the pruned checkpoint through ``load_pruned`` (segment_anything's own classes) and times
  the encoder forward dense vs pruned, alternating, and reports the speedup next to the FLOP ratio.

Usage: ``python benchmarks/bench_prune_vit_b.py [--device cpu|cuda] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _machine import machine_info, machine_tag  # noqa: E402

from medcore_tp import build_model, load_pruned, prepare_pruning, save_pruned  # noqa: E402
from medcore_tp.arch import sam_vit  # noqa: E402
from medcore_tp.atomic import save_json  # noqa: E402
from medcore_tp.budget import ratio_budget  # noqa: E402
from medcore_tp.graph import apply_plan, build_graph  # noqa: E402
from medcore_tp.profile import count_params, flops_paper, flops_torch  # noqa: E402
from medcore_tp.prune import make_importance, plan_from_scores, score_blocks  # noqa: E402


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _forward_time(encoder, x, sync) -> float:
    sync()
    start = time.perf_counter()
    encoder(x)
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    torch.manual_seed(0)
    model = build_model("sam-vit-b")
    with torch.no_grad():  # SAM zero-initialises rel-pos; random tables make "kept intact" observable
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.5)
    dense = copy.deepcopy(model.image_encoder).to(device).eval()

    spec, t_prepare = _timed(lambda: prepare_pruning(model))
    graph, t_graph = _timed(lambda: build_graph(spec))
    budget = ratio_budget([12] * 12, [3072] * 12, 0.5, 0.7, protect=[10, 11])

    def _prune():
        scores = score_blocks(spec.encoder, graph, make_importance("magnitude"))
        plan = plan_from_scores(scores, budget)
        apply_plan(spec.encoder, plan, graph)
        return plan

    plan, t_prune = _timed(_prune)
    pruned_params = count_params(spec.encoder)
    print(f"prepare {t_prepare:.2f} s, graph {t_graph:.2f} s, score+remove {t_prune:.2f} s; "
          f"encoder params {pruned_params:,} ({1 - pruned_params / 89_670_912:.2%} removed)")

    x = torch.rand(1, 3, 1024, 1024, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pruned.pth")
        save_pruned(model, path, base="sam-vit-b")
        reloaded = load_pruned(path).image_encoder.to(device).eval()

    with torch.inference_mode():
        pruned_out = reloaded(x)
        handles = sam_vit.zero_groups_hooks(
            dense, {b: list(p.heads) for b, p in plan.items()}, {b: list(p.mlp) for b, p in plan.items()}
        )
        zeroed_out = dense(x)
        for h in handles:
            h.remove()
        diff = (pruned_out - zeroed_out).abs().max().item()
        scale = zeroed_out.abs().max().item()
        print(f"equivalence: max |pruned - dense with zeroed groups| = {diff:.3g} (output scale {scale:.3g}, "
              f"ratio {diff / scale:.3g})")

        _forward_time(dense, x, sync), _forward_time(reloaded, x, sync)  # warm-up
        t_dense, t_pruned = [], []
        for _ in range(args.repeats):  # alternate so drifts in machine load hit both alike
            t_dense.append(_forward_time(dense, x, sync))
            t_pruned.append(_forward_time(reloaded, x, sync))

    f_torch = (flops_torch(dense)["total"], flops_torch(reloaded)["total"])
    f_paper = (flops_paper(dense)["total"], flops_paper(reloaded)["total"])
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    speedup = med(t_dense) / med(t_pruned)
    ratio_torch, ratio_paper = f_torch[0] / f_torch[1], f_paper[0] / f_paper[1]
    result = {
        "machine": machine_info(device),
        "config": {"model": "sam-vit-b", "heads_ratio": 0.5, "mlp_ratio": 0.7, "protect_blocks": [10, 11],
                   "importance": "magnitude", "repeats": args.repeats},
        "seconds_prepare": t_prepare,
        "seconds_graph": t_graph,
        "seconds_score_and_remove": t_prune,
        "encoder_params_dense": 89_670_912,
        "encoder_params_pruned": pruned_params,
        "equivalence_max_abs_diff": diff,
        "equivalence_output_scale": scale,
        "latency_dense_s": t_dense,
        "latency_pruned_s": t_pruned,
        "speedup": speedup,
        "flops_torch_g": [f / 1e9 for f in f_torch],
        "flops_paper_g": [f / 1e9 for f in f_paper],
        "flop_ratio_torch": ratio_torch,
        "flop_ratio_paper": ratio_paper,
        "speedup_over_flop_ratio_torch": speedup / ratio_torch,
    }
    print(f"latency dense {med(t_dense):.2f} s, pruned {med(t_pruned):.2f} s: speedup {speedup:.2f}x; "
          f"FLOP ratio {ratio_torch:.2f}x (torch) / {ratio_paper:.2f}x (paper); "
          f"speedup / FLOP ratio = {speedup / ratio_torch:.1%} (target >= 90%)")
    path = os.path.join(args.out, f"prune_vit_b_{machine_tag(device)}.json")
    save_json(result, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
