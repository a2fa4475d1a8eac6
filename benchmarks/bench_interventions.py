"""Exact interventions: do MedCore's second-order estimates Dzero / Dreset rank groups like the real loss change?

MedCore predicts, without extra forward passes, what zeroing a group (Dzero) or resetting it to the
source weights (Dreset) costs in calibration loss. This benchmark makes each intervention for real and
measures the change of the mean calibration loss (boundary-weighted BCE + Dice, ``fisher.calibration_loss``,
the loss the Fisher is taken of) on the same calibration images:

* source = a randomly initialised ``tiny`` SAM; target = the source fine-tuned (AdamW, cosine schedule,
  encoder and mask decoder, prompt encoder frozen, as MedSAM was trained) on the 60 Kvasir-SEG training
  images, so the target differs from the source the way a fine-tune does. Three fine-tunes by default:
  briefly (48 steps) and longer (400 steps) on BCE + Dice (``calibration.segmentation_loss``), and 400
  steps on the calibration loss itself, a control where the target sits near a minimum of the loss
  that the second-order estimates expand (their premise: the gradient term is dropped);
* Fisher of the target and of the source (its own decoder) on the first ``--calib-size`` training
  images; Dzero, Dreset, alpha, Q from ``medcore_tp.recipe``;
* for every head and ``--mlp-sample`` random MLP channels per block: real Delta loss when the group's
  parameters are (a) zeroed, (b) set to the source's values; evaluated in float64 so that the
  smallest changes are far above rounding;
* Spearman rank correlations (``scipy.stats.spearmanr``) of real vs predicted, per kind and overall,
  per block for MLP channels, and of Q with the real changes; for reference a weight-magnitude baseline
  and the estimate with the first-order term g . dtheta (g: gradient of the mean calibration loss) added.

Beyond the paper (it does not measure this). Writes ``benchmarks/results/interventions_<machine>.json``
and ``.png`` (scatter of predicted vs real, log-log on |real|).

Usage: ``python benchmarks/bench_interventions.py [--seeds 0,1,2] [--settings segmentation:48,...]
[--mlp-sample 64]`` (about 13 minutes on a 2-core CPU with the defaults, 1 torch thread).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(__file__))
from _machine import machine_info, machine_tag  # noqa: E402

from medcore_tp import build_model  # noqa: E402
from medcore_tp.arch import sam_vit  # noqa: E402
from medcore_tp.atomic import save_json  # noqa: E402
from medcore_tp.calibration import calibration_sets, segmentation_loss  # noqa: E402
from medcore_tp.fisher import calibration_loss  # noqa: E402
from medcore_tp.inference import forward_logits  # noqa: E402
from medcore_tp.models import input_spec  # noqa: E402
from medcore_tp.paths import data_dir  # noqa: E402
from medcore_tp.recipe import calibrate, make_medcore_importance, statistics  # noqa: E402

DATA = str(data_dir("kvasir-seg-256"))  # $MEDCORE_DATA, else ../shared/data


# ---------------------------------------------------------------------------------------------
# Models


def fine_tune(source, batches, steps: int, lr: float, batch_size: int, seed: int, loss_name: str = "segmentation"):
    """A copy of ``source`` trained ``steps`` AdamW steps (encoder + mask decoder) on ``batches``.

    ``loss_name``: ``segmentation`` (BCE + Dice, how MedSAM was trained) or ``calibration`` (the
    boundary-weighted loss the Fisher is taken of, mean over the batch).
    """
    loss_fn = segmentation_loss if loss_name == "segmentation" else (lambda z, m: calibration_loss(z, m).mean())
    target = copy.deepcopy(source)
    images = torch.cat([b.images for b in batches])
    boxes = torch.cat([b.boxes for b in batches])
    masks = torch.cat([b.masks for b in batches])
    params = list(target.image_encoder.parameters()) + list(target.mask_decoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    # cosine to 1% of lr, as MedSAM-style fine-tuning does: the last iterate settles instead of bouncing
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.01 * lr)
    gen = torch.Generator().manual_seed(seed)
    target.train()
    losses = []
    for _ in range(steps):
        idx = torch.randperm(len(images), generator=gen)[:batch_size]
        loss = loss_fn(forward_logits(target, images[idx], boxes[idx]), masks[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    target.eval()
    return target, losses


def logits64(model, images, boxes):
    """Low-res logits in the encoder's dtype (float64 here); same steps as ``inference.forward_logits``.

    segment_anything's positional encoding only runs in float32, so the prompt encoder stays float32
    (it is never intervened on) and its outputs are cast.
    """
    dtype = next(model.image_encoder.parameters()).dtype
    emb = model.image_encoder(images.to(dtype))
    pe = model.prompt_encoder.get_dense_pe().to(dtype)
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes.float()[:, None, :], masks=None)
    sparse, dense = sparse.to(dtype), dense.to(dtype)
    return torch.cat([
        model.mask_decoder(image_embeddings=emb[i : i + 1], image_pe=pe, sparse_prompt_embeddings=sparse[i : i + 1],
                           dense_prompt_embeddings=dense[i : i + 1], multimask_output=False)[0]
        for i in range(len(images))
    ])


def as_float64(model):
    """A float64 copy of the model (prompt encoder kept float32, see :func:`logits64`)."""
    out = copy.deepcopy(model).double().eval()
    out.prompt_encoder.float()
    return out


@torch.no_grad()
def mean_loss(model, batches) -> float:
    """Mean per-sample calibration loss over all calibration images."""
    total, n = 0.0, 0
    for b in batches:
        total += float(calibration_loss(logits64(model, b.images, b.boxes), b.masks).sum())
        n += len(b.images)
    return total / n


def mean_loss_gradient(model, batches) -> dict:
    """Gradient of the mean calibration loss w.r.t. every encoder parameter (for the first-order term)."""
    model.zero_grad(set_to_none=True)
    n = sum(len(b.images) for b in batches)
    for b in batches:
        (calibration_loss(logits64(model, b.images, b.boxes), b.masks).sum() / n).backward()
    grads = {p: p.grad.detach().clone() for p in model.image_encoder.parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


# ---------------------------------------------------------------------------------------------
# The groups' parameter slices


def head_slices(block, head: int, hd: int):
    """(parameter, index) pairs of one head: Q, K, V rows of qkv (weight, bias) and proj columns."""
    nh = block.attn.qkv.out_features // (3 * hd)
    rows = torch.tensor(sam_vit.head_qkv_rows(head, nh, hd))
    cols = torch.arange(head * hd, (head + 1) * hd)
    qkv, proj = block.attn.qkv, block.attn.proj
    return [(qkv.weight, (rows, slice(None))), (qkv.bias, (rows,)), (proj.weight, (slice(None), cols))]


def mlp_slices(block, channel: int):
    """(parameter, index) pairs of one MLP channel: lin1 row and bias, lin2 column."""
    lin1, lin2 = block.mlp.lin1, block.mlp.lin2
    return [(lin1.weight, (channel, slice(None))), (lin1.bias, (channel,)), (lin2.weight, (slice(None), channel))]


@torch.no_grad()
def intervene(model, slices, values):
    """Set the slices to ``values`` (None = zero); returns the old values for :func:`restore`."""
    old = [p[idx].clone() for p, idx in slices]
    for k, (p, idx) in enumerate(slices):
        p[idx] = 0.0 if values is None else values[k]
    return old


@torch.no_grad()
def restore(slices, old):
    for (p, idx), v in zip(slices, old, strict=True):
        p[idx] = v


@torch.no_grad()
def first_order(slices, grads, new=None) -> float:
    """g . (new - theta) over the group (new = 0 when None): the first-order Taylor term."""
    return float(sum((grads[p][idx] * ((0 if new is None else new[k]) - p[idx])).sum()
                     for k, (p, idx) in enumerate(slices)))


@torch.no_grad()
def magnitude(slices, ref=None) -> float:
    """Sum of squared parameters of the group (or of its difference to ``ref``): a Fisher-free baseline."""
    return float(sum(((p[idx] - (0 if ref is None else ref[k])) ** 2).sum() for k, (p, idx) in enumerate(slices)))


# ---------------------------------------------------------------------------------------------


def spearman(x, y) -> float:
    rho = spearmanr(np.asarray(x), np.asarray(y)).statistic
    return float(rho)


def run_seed(seed: int, loss_name: str, steps: int, args) -> dict:
    torch.manual_seed(seed)
    source = build_model("tiny")
    train = calibration_sets([DATA], 10_000, input_spec(source)).batches  # every training image
    calib = calibration_sets([DATA], args.calib_size, input_spec(source)).batches  # the first calib_size of them
    name = next(iter(calib))
    t0 = time.perf_counter()
    target, ft_losses = fine_tune(source, train[name], steps, args.lr, args.batch_size, seed, loss_name)
    t_ft = time.perf_counter() - t0

    t0 = time.perf_counter()
    cal = calibrate(target, calib, source=source)
    imp = make_medcore_importance(target, statistics(target, cal), "medcore")
    t_fisher = time.perf_counter() - t0

    # the real interventions, in float64 on copies
    tgt64, src64 = (as_float64(m) for m in (target, source))
    batches = calib[name]
    base = mean_loss(tgt64, batches)
    grads = mean_loss_gradient(tgt64, batches)
    hd = sam_vit.head_dim(tgt64.image_encoder)
    gen = torch.Generator().manual_seed(1000 + seed)
    rows = []
    t0 = time.perf_counter()
    tgt_blocks, src_blocks = tgt64.image_encoder.blocks, src64.image_encoder.blocks
    for b, sc in enumerate(imp.scores):
        nh, width = len(sc.head_q), len(sc.mlp_q)
        picked = sorted(torch.randperm(width, generator=gen)[: args.mlp_sample].tolist())
        groups = [("head", h, sc.head_zero, sc.head_reset, sc.head_q) for h in range(nh)]
        groups += [("mlp", c, sc.mlp_zero, sc.mlp_reset, sc.mlp_q) for c in picked]
        for kind, i, dz, dr, q in groups:
            make = (lambda blk, i=i: head_slices(blk, i, hd)) if kind == "head" else (lambda blk, i=i: mlp_slices(blk, i))
            tgt_sl, src_sl = make(tgt_blocks[b]), make(src_blocks[b])
            src_vals = [p[idx].clone() for p, idx in src_sl]
            old = intervene(tgt64, tgt_sl, None)
            real_zero = mean_loss(tgt64, batches) - base
            restore(tgt_sl, old)
            old = intervene(tgt64, tgt_sl, src_vals)
            real_reset = mean_loss(tgt64, batches) - base
            restore(tgt_sl, old)
            rows.append({
                "block": b, "kind": kind, "index": i,
                "d_zero": float(dz[i]), "d_reset": float(dr[i]), "q": float(q[i]), "alpha": sc.alpha,
                "real_zero": real_zero, "real_reset": real_reset,
                "mag_zero": magnitude(tgt_sl), "mag_reset": magnitude(tgt_sl, src_vals),
                "first_zero": first_order(tgt_sl, grads), "first_reset": first_order(tgt_sl, grads, src_vals),
            })
    t_interv = time.perf_counter() - t0
    after = mean_loss(tgt64, batches)
    assert abs(after - base) <= 1e-9 * abs(base), "interventions were not undone"

    # sanity: zeroing a head's parameters == zeroing its output with the library's hooks
    check_head = 0
    old = intervene(tgt64, head_slices(tgt_blocks[0], check_head, hd), None)
    by_params = mean_loss(tgt64, batches)
    restore(head_slices(tgt_blocks[0], check_head, hd), old)
    handles = sam_vit.zero_groups_hooks(tgt64.image_encoder, {0: [check_head]}, {})
    by_hooks = mean_loss(tgt64, batches)
    for h in handles:
        h.remove()

    rel_change = {}
    for b in range(len(tgt_blocks)):
        t = torch.cat([p.detach().flatten() for p in target.image_encoder.blocks[b].parameters()])
        s = torch.cat([p.detach().flatten() for p in source.image_encoder.blocks[b].parameters()])
        rel_change[f"block_{b}"] = float((t - s).norm() / s.norm())
    return {
        "seed": seed,
        "fine_tune_loss": loss_name,
        "fine_tune_steps": steps,
        "fine_tune_loss_first_last": [ft_losses[0], ft_losses[-1]],
        "fine_tune_seconds": t_ft,
        "encoder_relative_weight_change": rel_change,
        "calibration_images": len(torch.cat([b.images for b in batches])),
        "fisher_and_scores_seconds": t_fisher,
        "interventions_seconds": t_interv,
        "baseline_mean_loss": base,
        "source_mean_loss": mean_loss(src64, batches),
        "alpha_per_block": [s.alpha for s in imp.scores],
        "hook_check_abs_diff": abs(by_params - by_hooks),
        "correlations": correlations(rows),
        "rows": rows,
    }


def correlations(rows: list[dict]) -> dict:
    out = {}
    for label, sel in (("heads", lambda r: r["kind"] == "head"), ("mlp", lambda r: r["kind"] == "mlp"),
                       ("all", lambda r: True)):
        rs = [r for r in rows if sel(r)]
        col = lambda k, rs=rs: [r[k] for r in rs]  # noqa: E731
        mix = [r["alpha"] * r["real_zero"] + (1 - r["alpha"]) * r["real_reset"] for r in rs]
        out[label] = {
            "n": len(rs),
            "zero": spearman(col("real_zero"), col("d_zero")),
            "reset": spearman(col("real_reset"), col("d_reset")),
            "zero_abs": spearman(np.abs(col("real_zero")), col("d_zero")),
            "reset_abs": spearman(np.abs(col("real_reset")), col("d_reset")),
            "q_vs_real_zero": spearman(col("real_zero"), col("q")),
            "q_vs_real_reset": spearman(col("real_reset"), col("q")),
            "q_vs_real_alpha_mix": spearman(mix, col("q")),
            "first_plus_d_zero": spearman(col("real_zero"), np.add(col("first_zero"), col("d_zero"))),
            "first_plus_d_reset": spearman(col("real_reset"), np.add(col("first_reset"), col("d_reset"))),
            "magnitude_zero": spearman(col("real_zero"), col("mag_zero")),
            "magnitude_reset": spearman(col("real_reset"), col("mag_reset")),
            "real_zero_negative_fraction": float(np.mean(np.asarray(col("real_zero")) < 0)),
            "real_reset_negative_fraction": float(np.mean(np.asarray(col("real_reset")) < 0)),
            "median_ratio_real_over_pred_zero": float(np.median(np.asarray(col("real_zero")) / np.asarray(col("d_zero")))),
            "median_ratio_real_over_pred_reset": float(np.median(np.asarray(col("real_reset")) / np.asarray(col("d_reset")))),
        }
    blocks = sorted({r["block"] for r in rows})
    out["mlp_within_block"] = {
        f"block_{b}": {
            "zero": spearman(*zip(*[(r["real_zero"], r["d_zero"]) for r in rows if r["kind"] == "mlp" and r["block"] == b],
                                  strict=True)),
            "reset": spearman(*zip(*[(r["real_reset"], r["d_reset"]) for r in rows if r["kind"] == "mlp" and r["block"] == b],
                                   strict=True)),
        }
        for b in blocks
    }
    return out


def _mix(r: dict) -> float:
    return r["alpha"] * r["real_zero"] + (1 - r["alpha"]) * r["real_reset"]


def plot(settings: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(settings), 3, figsize=(15, 4.6 * len(settings)), squeeze=False)
    panels = (("d_zero", "real_zero", "zero the group: Dzero vs real Δloss"),
              ("d_reset", "real_reset", "reset to source: Dreset vs real Δloss"),
              ("q", "mix", "Q vs real α·Δzero + (1-α)·Δreset"))
    for row, setting in zip(axes, settings, strict=True):
        for ax, (px, py, title) in zip(row, panels, strict=True):
            for kind, colour, marker in (("mlp", "tab:blue", "o"), ("head", "tab:red", "s")):
                rs = [r for res in setting["seeds"] for r in res["rows"] if r["kind"] == kind]
                xs = np.asarray([r[px] for r in rs])
                ys = np.asarray([_mix(r) if py == "mix" else r[py] for r in rs])
                pos = ys > 0
                size = 8 if kind == "mlp" else 26
                ax.scatter(xs[pos], ys[pos], s=size, c=colour, marker=marker, alpha=0.55, label=f"{kind}, real Δ > 0")
                ax.scatter(xs[~pos], -ys[~pos], s=size, facecolors="none", edgecolors=colour, marker=marker,
                           alpha=0.55, label=f"{kind}, real Δ < 0 (|Δ| shown)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            lo = max(min(ax.get_xlim()[0], ax.get_ylim()[0]), 1e-12)
            hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
            ax.plot([lo, hi], [lo, hi], "k:", lw=0.8, label="y = x")
            c = setting["pooled"]["all"]
            rho = {"real_zero": c["zero"], "real_reset": c["reset"], "mix": c["q_vs_real_alpha_mix"]}[py]
            ax.set_title(f"{title}\nfine-tuned {setting['steps']} steps on the {setting['fine_tune_loss']} loss; "
                         f"Spearman (all) {rho:.2f}", fontsize=9)
            ax.set_xlabel("predicted (second-order estimate)")
            ax.set_ylabel("|real Δ mean calibration loss|")
        row[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("tiny SAM: source random, target = source fine-tuned on Kvasir-SEG; seeds pooled", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


COLUMNS = (("Dzero", "zero"), ("Dreset", "reset"), ("|Δ|~Dz", "zero_abs"), ("|Δ|~Dr", "reset_abs"), ("Q~zero", "q_vs_real_zero"), ("Q~reset", "q_vs_real_reset"),
           ("Q~mix", "q_vs_real_alpha_mix"), ("g+Dz", "first_plus_d_zero"), ("g+Dr", "first_plus_d_reset"),
           ("|θ|²", "magnitude_zero"), ("|Δθ|²", "magnitude_reset"),
           ("neg0", "real_zero_negative_fraction"), ("negR", "real_reset_negative_fraction"))


def table_line(label: str, c: dict) -> str:
    return f"{label:<24}{c['n']:>5}" + "".join(f" {c[key]:>7.3f}" for _, key in COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--settings", default="segmentation:48,segmentation:400,calibration:400",
                        help="fine-tuning runs LOSS:STEPS (source -> target), comma-separated; LOSS is segmentation "
                             "(BCE + Dice, as MedSAM) or calibration (the boundary-weighted loss the Fisher uses)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--calib-size", type=int, default=32)
    parser.add_argument("--mlp-sample", type=int, default=64, help="random MLP channels per block")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: nothing here is timed, and it stays fast when other jobs share the CPU)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    settings = []
    for item in args.settings.split(","):
        loss_name, steps = item.split(":")
        steps = int(steps)
        if loss_name not in ("segmentation", "calibration"):
            parser.error(f"--settings {item}: loss must be segmentation or calibration")
        label = f"{loss_name[:3]}:{steps}"
        results = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            res = run_seed(seed, loss_name, steps, args)
            results.append(res)
            print(f"{label} seed {seed}: fine-tune loss {res['fine_tune_loss_first_last'][0]:.3f} -> "
                  f"{res['fine_tune_loss_first_last'][1]:.3f}; calibration loss target {res['baseline_mean_loss']:.1f} "
                  f"(source {res['source_mean_loss']:.1f}); relative weight change per block "
                  + ", ".join(f"{v:.3f}" for v in res["encoder_relative_weight_change"].values())
                  + f"; alpha {', '.join(f'{a:.2f}' for a in res['alpha_per_block'])}; "
                  f"interventions {res['interventions_seconds']:.0f} s; hook check {res['hook_check_abs_diff']:.1e}",
                  flush=True)
        pooled = correlations([r for res in results for r in res["rows"]])
        settings.append({"label": label, "fine_tune_loss": loss_name, "steps": steps, "pooled": pooled,
                         "seeds": results})

    print("\nSpearman rho of the real change of the mean calibration loss with each predictor")
    print("(|Δ|~D: |real change| vs D; g+D: first-order term g.dtheta added to D; |θ|², |Δθ|²: weight-magnitude baselines; "
          "neg0/negR: share of groups whose real change is negative)")
    print(f"{'':<24}{'n':>5}" + "".join(f" {name:>7}" for name, _ in COLUMNS))
    for setting in settings:
        for res in setting["seeds"]:
            for kind in ("heads", "mlp", "all"):
                print(table_line(f"{setting['label']} seed {res['seed']} {kind}", res["correlations"][kind]))
        for kind in ("heads", "mlp", "all"):
            print(table_line(f"{setting['label']} pooled {kind}", setting["pooled"][kind]))
        print(f"{setting['label']} MLP within block, zero/reset: " + "; ".join(
            f"seed {res['seed']}: " + ", ".join(f"{v['zero']:.2f}/{v['reset']:.2f}"
                                              for v in res["correlations"]["mlp_within_block"].values())
            for res in setting["seeds"]))

    tag = machine_tag("cpu")
    os.makedirs(args.out, exist_ok=True)
    record = {
        "machine": machine_info("cpu"),
        "config": {"model": "tiny", "data": DATA, **{k: v for k, v in vars(args).items() if k != "out"},
                   "loss": "medcore_tp.fisher.calibration_loss, mean over the calibration images, float64",
                   "fine_tune": "AdamW wd 0.01, cosine to 0.01 lr, encoder + mask decoder, batch 4, grad clip 1.0, "
                                "all 60 Kvasir-SEG training images",
                   "interventions": "group parameters (qkv Q/K/V rows + biases, proj columns; lin1 row + bias, "
                                    "lin2 column) set to 0 (zero) or to the source's values (reset)",
                   "correlation": "scipy.stats.spearmanr of real change vs prediction; pooled = all seeds together"},
        "settings": settings,
    }
    path = os.path.join(args.out, f"interventions_{tag}.json")
    save_json(record, path)
    png = os.path.join(args.out, f"interventions_{tag}.png")
    plot(settings, png)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
