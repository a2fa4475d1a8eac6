"""Where an encoder's time goes, dense vs pruned, next to where its FLOPs go: why a pruned model's
speedup stays below its FLOP ratio on a CPU.

``--which vit-b``: SAM ViT-B dense vs the 60.03% model of ``bench_deploy.py``, in the sdpa backend
(:mod:`medcore_tp.fast_attention` + :mod:`medcore_tp.token_layout`). ``--which lite``: LiteMedSAM dense vs
the 50% model, in the fold backend (batch norms folded, :mod:`medcore_tp.conv_bn_fold`). FLOPs by kind
come from ``torch.utils.flop_counter`` on the unmodified model (linear layers: ``mm``/``addmm``;
attention: ``bmm``, i.e. QK^T, AV and ViT's rel-pos products; convolutions). Times come from
``torch.profiler``: self CPU time per ATen op, summed by kind per forward, median over the repeats for
each kind, both models alternating in one process after a warm-up forward each.

Usage: ``python benchmarks/op_profile.py [--which vit-b|lite] [--threads 2] [--repeats 5] [--scratch DIR]
[--pruned-first]``;
writes ``benchmarks/results/op_profile_<which>_<machine>[_pruned-first].json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
from bench_deploy import SCRATCH  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# profiler op name -> category; ops not listed are "other"
OP_KIND = {
    "aten::addmm": "linear", "aten::mm": "linear",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "aten::bmm": "attention",
    "aten::mkldnn_convolution": "conv", "aten::convolution": "conv", "aten::_slow_conv2d_forward": "conv",
    "aten::_softmax": "softmax",
    "aten::native_layer_norm": "layer norm",
    "aten::add": "add", "aten::copy_": "copy", "aten::gelu": "gelu",
}
FLOP_KIND = {"mm": "linear", "addmm": "linear", "bmm": "attention", "convolution": "conv"}


def flops_by_kind(model) -> dict[str, float]:
    """FLOPs of one encoder forward per kind (linear, attention, conv) with the model's own attention."""
    from medcore_tp.profile import flops_torch

    out: dict[str, float] = collections.Counter()
    for key, n in flops_torch(model).items():
        if key.startswith("op_"):
            out[FLOP_KIND.get(key[3:], key[3:])] += n
    return dict(out)


def bound_ms(rows: list[dict]) -> float:
    """The pruned encoder's time if every kind with FLOPs shrank by exactly its FLOP ratio (at the dense
    model's rate) and every other kind took what it was measured to take in the pruned model."""
    return sum(r["dense_ms"] / r["flop_ratio"] if r["flop_ratio"] else r["pruned_ms"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["vit-b", "lite"], default="vit-b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scratch", default=SCRATCH)
    parser.add_argument("--pruned-first", action="store_true",
                        help="Run the pruned model first in each round (tagged _pruned-first): what the order, and "
                             "with it where the allocator puts each tensor, does to the figures.")
    args = parser.parse_args()

    import torch
    from _machine import machine_info, machine_tag
    from bench_deploy import PRUNE, deploy_models
    from torch.profiler import ProfilerActivity, profile

    from medcore_tp.allocator import keep_freed_memory
    from medcore_tp.arch import image_encoder
    from medcore_tp.bench import backend_model

    keep_freed_memory()  # as the CLI does: page faults would otherwise land in whichever op allocates
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name = PRUNE[args.which][0]
    models = deploy_models(args.which, args.scratch)
    if args.pruned_first:
        models = dict(reversed(models.items()))
    flops = {w: flops_by_kind(m) for w, m in models.items()}
    backend = "sdpa" if args.which == "vit-b" else "fold"
    encoders = {which: image_encoder(backend_model(model, backend)) for which, model in models.items()}
    size = encoders["dense"].img_size
    x = torch.rand(1, 3, size, size)
    rounds: dict[str, list[collections.Counter]] = {w: [] for w in encoders}
    with torch.inference_mode():
        for e in encoders.values():
            e(x)
        for rep in range(args.repeats):
            for which, e in encoders.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    e(x)
                per_kind: collections.Counter = collections.Counter()
                for ev in prof.key_averages():
                    per_kind[OP_KIND.get(ev.key, "other")] += ev.self_cpu_time_total / 1e3
                rounds[which].append(per_kind)
            print(f"round {rep + 1}/{args.repeats} done", flush=True)
    # median per kind over the rounds: one slow round (a page fault storm, another process) stays out
    ms = {w: collections.Counter({k: statistics.median(r[k] for r in rs) for k in set().union(*rs)})
          for w, rs in rounds.items()}
    kinds = sorted(set(ms["dense"]) | set(ms["pruned"]), key=lambda k: -ms["dense"][k])
    rows = []
    for k in kinds:
        fd, fp = flops["dense"].get(k), flops["pruned"].get(k)
        rows.append({"kind": k, "dense_ms": ms["dense"][k], "pruned_ms": ms["pruned"][k],
                     "time_ratio": ms["dense"][k] / ms["pruned"][k] if ms["pruned"][k] else None,
                     "dense_gflops": fd / 1e9 if fd else None, "pruned_gflops": fp / 1e9 if fp else None,
                     "flop_ratio": fd / fp if fd and fp else None,
                     "dense_gflop_per_s": fd / 1e9 / (ms["dense"][k] / 1e3) if fd else None,
                     "pruned_gflop_per_s": fp / 1e9 / (ms["pruned"][k] / 1e3) if fp else None})
    total = {w: sum(ms[w].values()) for w in ms}
    flop_total = {w: sum(flops[w].values()) for w in flops}
    print(f"\n{name} {'sdpa' if args.which == 'vit-b' else 'fold'} encoder, {args.threads} threads, profiler self time per forward (median of {args.repeats})")
    print(f"{'kind':12s} {'dense ms':>9s} {'pruned ms':>10s} {'time ratio':>10s} {'FLOP ratio':>10s} "
          f"{'GFLOP/s dense':>13s} {'GFLOP/s pruned':>14s}")
    for r in rows:
        def f(v, spec):
            return format(v, spec) if v is not None else "-"
        print(f"{r['kind']:12s} {r['dense_ms']:9.0f} {r['pruned_ms']:10.0f} {f(r['time_ratio'], '10.2f')} "
              f"{f(r['flop_ratio'], '10.2f')} {f(r['dense_gflop_per_s'], '13.0f')} {f(r['pruned_gflop_per_s'], '14.0f')}")
    ratio_t, ratio_f = total["dense"] / total["pruned"], flop_total["dense"] / flop_total["pruned"]
    print(f"{'all':12s} {total['dense']:9.0f} {total['pruned']:10.0f} {ratio_t:10.2f} {ratio_f:10.2f}   "
          f"(time ratio / FLOP ratio {ratio_t / ratio_f:.2f})")
    bound = bound_ms(rows)
    print(f"{'bound':12s} {total['dense']:9.0f} {bound:10.0f} {total['dense'] / bound:10.2f}   "
          f"(every kind with FLOPs at its FLOP ratio: {total['dense'] / bound / ratio_f:.2f} of the FLOP ratio)")
    path = os.path.join(HERE, "results", f"op_profile_{args.which}_{machine_tag('cpu')}"
                        + ("_pruned-first" if args.pruned_first else "") + ".json")
    with open(path, "w") as fh:
        json.dump({"model": name, "order": list(encoders), "machine": machine_info("cpu"), "threads": args.threads, "repeats": args.repeats,
                   "rows": rows, "total_ms": total, "rounds_ms": {w: [dict(r) for r in rs] for w, rs in rounds.items()}, "total_gflops": {w: v / 1e9 for w, v in flop_total.items()},
                   "time_ratio": ratio_t, "flop_ratio": ratio_f}, fh, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
