"""``medcore-tp prune``: score, budget and remove heads and MLP channels; write a pruned checkpoint."""

from __future__ import annotations

import csv
import io
import math
import os
import time

import click
import torch

from medcore_tp.atomic import save_json, save_text
from medcore_tp.checkpoint import save_pruned
from medcore_tp.cli import main
from medcore_tp.cli._common import (
    choose_weights,
    gflops,
    guarded,
    mask_threshold_option,
    overwrite_option,
    parse_device,
    parse_protect,
    parse_views,
    table,
)
from medcore_tp.data import load_datasets
from medcore_tp.distributed import init_from_env, is_main, world_size
from medcore_tp.errors import MedcoreError
from medcore_tp.importance_registry import CALIBRATED_IMPORTANCES, IMPORTANCE_NAMES, importance_entry
from medcore_tp.maskcheck import check_masks
from medcore_tp.models import MODEL_NAMES, build_model
from medcore_tp.outdir import RunFolder
from medcore_tp.pipeline import (
    ALLOCATION_RULES,
    ALLOCATIONS,
    DEFAULT_ALLOCATION,
    PruneConfig,
    RatioRequest,
    default_protection,
    max_ratio,
    run_prune,
)
from medcore_tp.profile import profile_model
from medcore_tp.prune import summary
from medcore_tp.recovery import SCHEDULES
from medcore_tp.report import snapshot


def _float_list(option: str, text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MedcoreError(f"{option} {text}: not a comma-separated list of numbers") from None


@main.command("prune")
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default="lite-medsam", show_default=True,
              help="Model architecture (lite-medsam: the packaged, trained LiteMedSAM unless --checkpoint).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Dense checkpoint to prune.")
@click.option("--random-init", is_flag=True, help="Prune a randomly initialised model (must be asked for).")
@click.option("--source-checkpoint", type=click.Path(dir_okay=False),
              help="The source model (SAM) the target was adapted from: enables Dreset and alpha.")
@click.option("--data", "data", default=None, help="Calibration dataset folder(s), comma-separated.")
@click.option("--data-weights", default=None, help="Weights of the datasets, e.g. 0.2,0.3,0.5 (normalised).")
@mask_threshold_option
@click.option("--ratio", type=float, default=None,
              help="Fraction of encoder parameters to remove (0.6 = paper); not together with --heads-ratio/--mlp-ratio.")
@click.option("--importance", type=click.Choice(IMPORTANCE_NAMES), default="refit", show_default=True)
@click.option("--heads-ratio", type=float, default=None, help="Instead of --ratio: fraction of ALL heads to remove.")
@click.option("--mlp-ratio", type=float, default=None, help="Instead of --ratio: fraction of ALL MLP channels to remove.")
@click.option("--protect-blocks", default=None, help="Blocks left untouched, e.g. 10,11, or none (default with --ratio: the model family's, the last two "
                   "on SAM's ViT while --ratio stays reachable, none on LiteMedSAM's TinyViT).")
@click.option("--alpha", default="auto", show_default=True, help="MedCore alpha: auto (paper) or a number in [0, 1].")
@click.option("--calib-size", type=click.IntRange(min=1), default=None,
              help="Calibration images per dataset, first of the training split [default: 128; 8 without --data].")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Calibration batch size.")
@click.option("--recover-steps", type=click.IntRange(min=0), default=None,
              help="Recovery steps after removing heads and after removing MLP channels, 0 to skip "
                   "[default: 200; 40 without --data; 0 with --random-init].")
@click.option("--recover-lr", type=click.FloatRange(min=0, min_open=True), default=1e-5, show_default=True,
              help="Recovery learning rate (AdamW).")
@click.option("--recover-schedule", type=click.Choice(SCHEDULES), default="constant", show_default=True,
              help="Recovery learning rate within each stage: --recover-lr throughout, or annealed from it to 0 (cosine).")
@click.option("--prune-steps", type=click.IntRange(min=1), default=1, show_default=True,
              help="1: the cascade (heads, then MLP channels, each refitted and recovered); K >= 2: progressive, "
                   "K stages each removing about 1/K of every block's heads and channels, each refitted and recovered.")
@click.option("--recover-teacher", type=click.Choice(["stage", "dense"]), default="stage", show_default=True,
              help="What recovery trains towards: the model as each stage starts (stage) or the dense model.")
@click.option("--recover-views", default="identity", show_default=True,
              help="Views of each calibration image recovery draws from, comma-separated: identity, hflip, vflip "
                   "(mirrored with boxes and masks; the teacher's outputs computed on each view).")
@click.option("--refit", type=click.Choice(["dense", "paired", "none"]), default="dense", show_default=True,
              help="Least-squares refit of the layers that read removed groups, after each stage: from the dense "
                   "model's statistics, then (paired) on the pruned model's own inputs; none to skip.")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default=DEFAULT_ALLOCATION, show_default=True,
              help="How removals are shared among blocks: the same fraction of each (even), the same number "
                   "from each (count, which strips narrow blocks first) or MedCore's 1/s_b (sensitivity; "
                   "Fisher importances only: medcore, medcore-grad, boundary-fisher).")
@click.option("--distill-steps", type=click.IntRange(min=0), default=None,
              help="Distillation steps towards the dense model's cached outputs after pruning "
                   "[default: 0; 0 without --data].")
@click.option("--distill-lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Distillation learning rate (AdamW, cosine schedule).")
@click.option("--recover-batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Recovery images per step and process (under torchrun the step's batch is this x processes).")
@click.option("--report/--no-report", default=None,
              help="Measure latency and Dice/BF1/HD95 before and after [default: on without --data (on the "
                   "built-in synthetic set), off with --data; --report with --data measures on its test split].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--round-to", type=click.IntRange(min=1), default=1, show_default=True,
              help="Keep each pruned block's MLP width a multiple of N (Torch-Pruning's round_to).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (random importance, random init).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out/prune", show_default=True,
              help="Output folder.")
@overwrite_option
def prune(model_name, checkpoint, random_init, source_checkpoint, data, data_weights, mask_threshold, ratio,
          importance, heads_ratio, mlp_ratio, protect_blocks, alpha, calib_size, batch_size, recover_steps, recover_lr,
          recover_schedule, prune_steps, recover_teacher, recover_views, refit, allocation, distill_steps, distill_lr, recover_batch_size, report, device, round_to, seed, no_progress, out_dir, overwrite) -> None:
    """Prune whole heads and MLP channels of the image encoder; writes pruned.pth, summary.json, scores.csv.

    With no options at all beyond --ratio it prunes the packaged LiteMedSAM on the built-in synthetic
    set and reports parameters, FLOPs, latency and boundary quality before and after.
    """
    decisions: list[str] = []
    log = click.echo if is_main() else _quiet
    checkpoint = choose_weights(model_name, checkpoint, random_init)
    quick = not data  # the built-in default: small calibration, short recovery, a report
    if ratio is not None and (heads_ratio is not None or mlp_ratio is not None):
        raise click.UsageError("--ratio and --heads-ratio/--mlp-ratio exclude each other: give --ratio R, "
                               "or --heads-ratio and --mlp-ratio")
    if (heads_ratio is None) != (mlp_ratio is None):
        raise click.UsageError("--heads-ratio and --mlp-ratio go together")
    if heads_ratio is None and ratio is None:
        raise click.UsageError("give --ratio R (fraction of encoder parameters) or --heads-ratio and --mlp-ratio")
    protect = parse_protect(protect_blocks)
    roots = [r for r in (data or "").split(",") if r.strip()]
    weights = _data_weights(data_weights, len(roots))
    if recover_steps is None:
        if random_init:
            recover_steps = 0
            log("note: --random-init: recovery skipped (nothing to recover on random weights; "
                "--recover-steps N runs it)")
            decisions.append("recovery skipped for a random-init model")
        else:
            recover_steps = QUICK_RECOVER_STEPS if quick else DATA_RECOVER_STEPS
    report = quick if report is None else report
    if click.get_current_context().get_parameter_source("importance") == click.core.ParameterSource.DEFAULT:
        log(f"importance: {importance} (the default): {importance_entry(importance).description}; "
            "--importance chooses another")
        decisions.append(f"importance {importance} (the default)")
    config = PruneConfig(
        importance=importance,
        ratios=RatioRequest(ratio, heads_ratio, mlp_ratio, None if protect is None else tuple(protect)),
        data=tuple(roots),
        data_weights=None if weights is None else tuple(weights),
        alpha=_parse_alpha(alpha),
        calib_size=calib_size if calib_size is not None else (8 if quick else 128),
        batch_size=batch_size,
        recover_steps=recover_steps,
        recover_batch_size=recover_batch_size,
        recover_lr=recover_lr,
        recover_schedule=recover_schedule,
        prune_steps=prune_steps,
        recover_teacher=recover_teacher,
        recover_views=parse_views(recover_views),
        seed=seed,
        progress=not no_progress,
        round_to=round_to,
        mask_threshold=mask_threshold,
        refit=refit,
        allocation=allocation,
        distill_steps=distill_steps if distill_steps is not None else 0,
        distill_lr=distill_lr,
    )
    arch = build_model(model_name, device="meta")
    ratios = config.check(arch)  # bad values fail before any work
    default = default_protection(arch)
    if click.get_current_context().get_parameter_source("allocation") == click.core.ParameterSource.DEFAULT:
        kept = f"blocks {','.join(map(str, ratios.protect))} untouched" if ratios.protect else "no block protected"
        log(f"allocation: {allocation} (the default): {ALLOCATION_RULES[allocation]}, {kept}; --allocation and "
            "--protect-blocks choose")
        decisions.append(f"allocation {allocation} (the default), {kept}")
    if ratio is not None and protect is None and ratios.protect != default:
        shown, most = ",".join(map(str, default)), max_ratio(arch, default)
        log(f"note: --ratio {ratio} cannot be reached with blocks {shown} protected (at most {most:.4f}): "
            f"protection lifted, every block may be pruned (--protect-blocks chooses)")
        decisions.append(f"protection of blocks {shown} lifted: --ratio {ratio} exceeds {most:.4f}, the most "
                         f"reachable with them protected")
    if roots and not (importance in CALIBRATED_IMPORTANCES or recover_steps > 0 or report):
        log(f"note: --data is not used: {importance} importance without recovery or report needs no images")
        decisions.append(f"--data not used ({importance} importance, no recovery, no report)")
    dev = init_from_env(parse_device(device))
    mask_counts = None
    if roots:  # data folders and their masks, before any model work
        mask_counts = check_masks(load_datasets(roots, mask_threshold), mask_threshold, log=log)
    folder = RunFolder(out_dir, "prune", overwrite=overwrite, inputs=[checkpoint, source_checkpoint])
    if is_main():
        folder.check()

    torch.manual_seed(seed)
    start = time.perf_counter()
    model = build_model(model_name, checkpoint).to(dev)
    source = None
    if source_checkpoint is not None:
        if importance != "medcore":
            click.echo(f"note: --source-checkpoint is only used by the medcore importance, not {importance}")
        else:
            try:
                source = build_model(model_name, source_checkpoint).to(dev)
            except MedcoreError as exc:
                raise MedcoreError(f"--source-checkpoint: {exc}") from None
    with guarded(folder if is_main() else None):
        before = profile_model(model)
        began = time.perf_counter()
        shown_before = (snapshot(model, roots or None, progress=not no_progress, mask_threshold=mask_threshold)
                        if report else None)
        measuring = time.perf_counter() - began
        run = run_prune(model, config, source=source, log=log)
        after = profile_model(model)
        extra = dict(run.extra, refits=run.refits, distillation=run.distillation)
        if report:
            began = time.perf_counter()
            shown_after = snapshot(model, roots or None, progress=not no_progress, mask_threshold=mask_threshold)
            measuring += time.perf_counter() - began
            extra["report"] = {"evaluation_set": "test split of --data" if roots else "built-in SYNTHETIC set",
                               "before": shown_before.to_dict(), "after": shown_after.to_dict()}

        if not is_main():
            return  # every process pruned the same way; only rank 0 writes and reports
        folder.start()
        if folder.removed:
            decisions.append(f"--overwrite removed the earlier run's {', '.join(folder.removed)}")
            log(f"note: --overwrite: removed the earlier run's {', '.join(folder.removed)} from {out_dir}")
        save_pruned(model.cpu(), os.path.join(out_dir, "pruned.pth"), base=model_name)
        ratios = run.ratios
        record = summary(
            before, after, run.budget, run.plan,
            model=model_name, checkpoint=checkpoint, random_init=random_init, importance=importance,
            round_to=round_to, ratio=ratio, ratio_rule=None if ratios.rule is None else vars(ratios.rule), heads_ratio=ratios.heads_ratio,
            mlp_ratio=ratios.mlp_ratio, protect_blocks=ratios.protect,
            protection_lifted=ratio is not None and protect is None and ratios.protect != default,
            alpha=alpha, data=roots, data_weights=weights, mask_threshold=mask_threshold, masks=mask_counts,
            calibration=run.calibration, seed=seed, device=str(dev), processes=world_size(), recovery=run.recovery,
            recover_steps=recover_steps, prune_steps=prune_steps, recover_teacher=recover_teacher,
            recover_views=list(config.recover_views), decisions=decisions,
            seconds=time.perf_counter() - start, seconds_per_phase=dict(run.seconds, measuring=measuring), **extra,
        )
        save_json(record, os.path.join(out_dir, "summary.json"))
        if run.splits is not None:
            save_json(run.splits, os.path.join(out_dir, "splits.json"))
        written = ["pruned.pth", "summary.json"] + (["splits.json"] if run.splits is not None else [])
        if run.scores_rows is not None:
            save_text(_csv(run.scores_rows), os.path.join(out_dir, "scores.csv"))
            written.append("scores.csv")
    _report(before, after, run.budget, record, importance, extra)
    if report:
        _report_quality(extra["report"])
    phases = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in record["seconds_per_phase"].items())
    click.echo(f"took {record['seconds']:.0f} s from loading the model to the end ({phases})")
    click.echo(f"wrote {', '.join(written)} to {out_dir}")


def _data_weights(text: str | None, n_roots: int) -> list[float] | None:
    """``--data-weights``: one finite, non-negative number per data folder, not all zero."""
    weights = _float_list("--data-weights", text)
    if weights is None:
        return None
    if n_roots == 0:
        raise MedcoreError(f"--data-weights {text}: needs --data (one weight per data folder)")
    if len(weights) != n_roots:
        raise MedcoreError(f"--data-weights {text}: {len(weights)} weights for {n_roots} data folders")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise MedcoreError(f"--data-weights {text}: weights must be finite and >= 0")
    if sum(weights) <= 0:
        raise MedcoreError(f"--data-weights {text}: at least one weight must be > 0")
    return weights


# with --data: 2 x 200 beat 2 x 100 on LiteMedSAM at 50% (BF1 +0.043 [+0.023, +0.064], Dice +0.015)
DATA_RECOVER_STEPS = 200
# built-in 60% run, refit importance, idle 2-core CPU: Dice / BF1 0.76 / 0.70 with the refit alone (79 s);
# since recovery leaves the stem, 0.93 / 0.85 with 20 steps (172 s) and 0.99 / 0.98 with 40 (234 s,
# within its 5-minute budget; on the synthetic set that recovery trains on: more steps won on real data)
QUICK_RECOVER_STEPS = 40


def _quiet(_: str) -> None:
    """Log for ranks other than 0 under torchrun: they say nothing."""


def _parse_alpha(alpha: str) -> str | float:
    if alpha == "auto":
        return "auto"
    try:
        value = float(alpha)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise MedcoreError(f"alpha {alpha}: must be 'auto' or a number in [0, 1]", "alpha")
    return value


def _report_quality(rep: dict) -> None:
    b, a = rep["before"], rep["after"]
    click.echo(f"\nmeasured on {rep['evaluation_set']} ({b['images']} images, tight boxes for the synthetic set):")
    click.echo(
        table(
            [
                ("encoder latency (s)", f"{b['latency_s']:.3f}", f"{a['latency_s']:.3f}"),
                ("Dice", f"{b['dice']:.4f}", f"{a['dice']:.4f}"),
                ("Boundary F1", f"{b['boundary_f1']:.4f}", f"{a['boundary_f1']:.4f}"),
                ("HD95 (px)", f"{b['hd95']:.2f}", f"{a['hd95']:.2f}"),
            ],
            ("", "before", "after"),
        )
    )


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _report(before, after, budget, record, importance, extra) -> None:
    click.echo(
        table(
            [
                ("encoder parameters", f"{before.encoder_params:,}", f"{after.encoder_params:,}"),
                ("model parameters", f"{before.params:,}", f"{after.params:,}"),
                ("GFLOPs (torch)", gflops(before.flops_torch_g), gflops(after.flops_torch_g)),
                ("GFLOPs (paper)", gflops(before.flops_paper_g), gflops(after.flops_paper_g)),
            ],
            ("", "before", "after"),
        )
    )
    click.echo(
        f"removed {budget.total_heads} heads and {budget.total_mlp} MLP channels "
        f"({record['encoder_params_removed_fraction']:.2%} of encoder parameters) with {importance} importance"
    )
    click.echo(f"heads per block: {after.heads_per_block}")
    click.echo(f"MLP per block:   {after.mlp_per_block}")
    if "alpha_per_block" in extra:
        click.echo("alpha per block: [" + ", ".join(f"{a:.3f}" for a in extra["alpha_per_block"]) + "]")
