"""Cost of one distillation step and one recovery step against one plain student forward + backward,
side by side.

Distillation step (:mod:`medcore_tp.distill`): the student's encoder and decoder on a batch of cached
samples, the embedding + boundary-weighted logit loss against the cached teacher outputs, backward,
AdamW step. Plain: the same student, the same batch, encoder + decoder forward, ``logits.mean()``
backward, no optimiser. The teacher's outputs are cached beforehand (that cost is paid once per image
and reported separately, per sample). The two alternate, round after round, after one warm-up each;
figures are medians over rounds. Target: step / plain <= 1.3.

Recovery step (:mod:`medcore_tp.recovery`, the default after each cascade stage with ``--data``): the
same student and batch, the recovery loss against the teacher's outputs, backward, AdamW step. A
recovery stage computes the teacher's outputs for a sample the first time it is drawn
(:class:`~medcore_tp.recovery.TeacherOutputs`; 100 draws from about 30 calibration images): timed
twice, with those outputs already computed (every later draw of the sample) and with the teacher run
in the step (its first draw; before the cache, every step). Recovery does not train the encoder's
stem (the layers before the first prunable block): its output is cached with the teacher's, and the
student's step runs the trunk only, so it is also timed against a plain forward + backward of the
trunk and decoder from the same cached stem output (``plain_trunk_forward_backward``), the same work
less the loss and the optimiser. A stage's mean step cost lies between
the two: ``amortised`` gives it for the recoveries ``prune`` runs (pool of calibration images less the
4 held back, steps per stage), from the expected share of first draws when ``steps`` draws are made
with replacement from the pool; uniform draws are assumed, the most first draws any weighting gives.

The student is the packaged LiteMedSAM with 50% of its encoder parameters removed (random importance,
uniform allocation, no refit: the cost does not depend on which groups went).

Usage: ``python benchmarks/bench_distill.py [--rounds 5] [--batch 2]``; writes
``benchmarks/results/distill_cost_<machine>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _machine import machine_info, machine_tag  # noqa: E402

from medcore_tp.calibration import synthetic_batch, train_with_frozen_norms  # noqa: E402
from medcore_tp.checkpoint import load_model  # noqa: E402
from medcore_tp.cli.prune import DATA_RECOVER_STEPS, QUICK_RECOVER_STEPS  # noqa: E402
from medcore_tp.distill import augmented_views, cache_teacher, student_loss  # noqa: E402
from medcore_tp.inference import decode_logits  # noqa: E402
from medcore_tp.models.spec import input_spec  # noqa: E402
from medcore_tp.pipeline import HELD_BACK, PruneConfig, RatioRequest, prune_scored, score_importance  # noqa: E402
from medcore_tp.recovery import StemTrunk, TeacherOutputs, same_stem, sample_loss, stem_prefixes  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
# (what runs it, calibration images in the recovery pool, recovery steps per stage)
STAGES = (("built-in default: prune --ratio 0.6 (8 synthetic calibration images)", 8 - HELD_BACK, QUICK_RECOVER_STEPS),
          ("prune --data DIR (128 calibration images)", 128 - HELD_BACK, DATA_RECOVER_STEPS),
          ("the 50% sweep recipe on all 120 training images", 120 - HELD_BACK, DATA_RECOVER_STEPS))


def first_draw_share(pool: int, draws: int) -> float:
    """Expected fraction of ``draws`` uniform draws with replacement from ``pool`` items that draw an item
    for the first time."""
    return pool * (1 - (1 - 1 / pool) ** draws) / draws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args()

    dense, _ = load_model("lite-medsam", "packaged")
    config = PruneConfig(importance="random", ratios=RatioRequest(ratio=args.ratio), recover_steps=0, refit="none")
    student = copy.deepcopy(dense)
    prune_scored(student, config, score_importance(student, config, log=lambda _m: None), log=lambda _m: None)
    batch = synthetic_batch(args.batch, input_spec(dense), seed=0)
    samples = augmented_views([batch], ("identity",))
    began = time.perf_counter()
    targets = cache_teacher(dense, samples, batch_size=1)
    teacher_per_sample = (time.perf_counter() - began) / len(samples.images)
    for p in student.parameters():
        p.requires_grad_(False)  # only the encoder trains, as in distill()
    for p in student.image_encoder.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(student.image_encoder.parameters(), lr=1e-6)
    train_with_frozen_norms(student)
    idx = list(range(len(targets)))

    def step() -> None:
        loss, _ = student_loss(student, targets, idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    cached = TeacherOutputs(dense, [batch])
    cached.get(idx)
    # recovery's own student: distillation above trains the stem too, recovery (recover()) does not
    recovering = copy.deepcopy(student)
    stem = stem_prefixes(recovering)
    for n, p in recovering.named_parameters():
        p.requires_grad_(n.startswith("image_encoder.") and not n.startswith(stem))
    recovery_optimizer = torch.optim.AdamW([p for p in recovering.parameters() if p.requires_grad], lr=1e-6)
    train_with_frozen_norms(recovering)

    def recovery_step(targets: TeacherOutputs) -> None:
        loss = sample_loss(recovering, targets, None, idx)
        recovery_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        recovery_optimizer.step()

    def recovery_cached() -> None:
        recovery_step(cached)

    def recovery_first_draw() -> None:
        recovery_step(TeacherOutputs(dense, [batch]))

    def plain() -> None:
        emb = student.image_encoder(targets.images)
        decode_logits(student, emb, targets.boxes).mean().backward()
        student.zero_grad(set_to_none=True)

    trunk, stem_out = StemTrunk(recovering.image_encoder), cached.features(idx)

    def plain_trunk() -> None:
        decode_logits(recovering, trunk(stem_out), targets.boxes).mean().backward()
        recovering.zero_grad(set_to_none=True)

    timed = {"distill_step": step, "recovery_step_cached": recovery_cached,
             "recovery_step_first_draw": recovery_first_draw, "plain_forward_backward": plain,
             "plain_trunk_forward_backward": plain_trunk}
    times: dict[str, list[float]] = {name: [] for name in timed}
    for fn in timed.values():
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, fn in timed.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    record = {
        "machine": machine_info(), "model": "lite-medsam", "removed_ratio": args.ratio, "batch": args.batch,
        "rounds": args.rounds, "seconds": times, "median_s": med,
        "ratio_step_over_plain": med["distill_step"] / med["plain_forward_backward"], "target": 1.3,
        "ratio_recovery_cached_over_plain": med["recovery_step_cached"] / med["plain_forward_backward"],
        "ratio_recovery_first_draw_over_plain": med["recovery_step_first_draw"] / med["plain_forward_backward"],
        "teacher_seconds_per_sample": teacher_per_sample,
        "recovery_from_cached_stem": same_stem(recovering, dense),
        "ratio_recovery_cached_over_plain_trunk": med["recovery_step_cached"] / med["plain_trunk_forward_backward"],
    }
    cached_r, first_r = record["ratio_recovery_cached_over_plain"], record["ratio_recovery_first_draw_over_plain"]
    record["amortised"] = [{"run": run, "pool": pool, "steps": steps, "first_draw_share": first_draw_share(pool, steps),
                            "ratio_stage_over_plain": cached_r + first_draw_share(pool, steps) * (first_r - cached_r)}
                           for run, pool, steps in STAGES]
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"distill_cost_{machine_tag()}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"plain forward + backward {med['plain_forward_backward']:.3f} s (batch {args.batch}); distillation step "
          f"{med['distill_step']:.3f} s: ratio {record['ratio_step_over_plain']:.3f}; recovery step, teacher outputs "
          f"cached {med['recovery_step_cached']:.3f} s: ratio {record['ratio_recovery_cached_over_plain']:.3f}, "
          f"first draw {med['recovery_step_first_draw']:.3f} s: ratio {record['ratio_recovery_first_draw_over_plain']:.3f} "
          f"(target <= 1.3); teacher {teacher_per_sample:.3f} s per cached sample, once")
    print(f"  recovery runs the trunk from the cached stem output: {record['recovery_from_cached_stem']}; plain "
          f"trunk + decoder forward + backward {med['plain_trunk_forward_backward']:.3f} s, cached recovery step "
          f"over it {record['ratio_recovery_cached_over_plain_trunk']:.3f}")
    for a in record["amortised"]:
        print(f"  a recovery stage of {a['run']}: {a['steps']} draws from {a['pool']} images, "
              f"{a['first_draw_share']:.0%} first draws: mean step / plain {a['ratio_stage_over_plain']:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
