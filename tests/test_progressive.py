"""Progressive pruning: the budget removed in K smaller stages lands where one-shot removal lands."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner

from medcore_tp.arch import adapter_for
from medcore_tp.budget import Budget, ratio_budget
from medcore_tp.cli import main
from medcore_tp.distill import augmented_views
from medcore_tp.errors import MedcoreError
from medcore_tp.models import build_model, input_spec
from medcore_tp.pipeline import PruneConfig, RatioRequest, prune_scored, score_importance
from medcore_tp.profile import count_params
from medcore_tp.prune import (
    BlockScores,
    make_importance,
    plan_from_scores,
    progressive_schedule,
    prune_by_budget,
)
from medcore_tp.recovery import TeacherOutputs, hold_back, pool_loss


def _quiet(_message: str) -> None:
    pass


def _scores(seed: int, heads: list[int], mlp: list[int]) -> list[BlockScores]:
    gen = torch.Generator().manual_seed(seed)
    return [BlockScores(heads=torch.rand(h, generator=gen), mlp=torch.rand(m, generator=gen)) for h, m in zip(heads, mlp, strict=True)]


@pytest.mark.parametrize("steps", [2, 3, 5])
def test_schedule_splits_every_blocks_budget_lowest_scores_first(steps):
    scores = _scores(1, [4, 6, 2], [40, 17, 9])
    budget = Budget(heads=[3, 2, 0], mlp=[30, 7, 1])
    parts = progressive_schedule(scores, budget, steps)
    whole = plan_from_scores(scores, budget)
    for b in range(3):
        heads = [h for p in parts if b in p for h in p[b].heads]
        mlp = [c for p in parts if b in p for c in p[b].mlp]
        assert sorted(heads) == list(whole[b].heads if b in whole else ())  # nothing twice, nothing missed
        assert sorted(mlp) == list(whole[b].mlp if b in whole else ())
        # after step s, round(s / K x budget) are gone, and they are the lowest-scoring ones
        gone: list[int] = []
        for s, part in enumerate(parts, 1):
            gone += list(part[b].mlp) if b in part else []
            assert len(gone) == round(budget.mlp[b] * s / len(parts))
            lowest = torch.argsort(scores[b].mlp, stable=True)[: len(gone)].tolist()
            assert sorted(gone) == sorted(lowest)
    with pytest.raises(MedcoreError, match="steps 0"):
        progressive_schedule(scores, budget, 0)


@pytest.mark.parametrize("name", ["tiny", "lite-tiny"])
def test_progressive_removal_ends_with_the_one_shot_model(name):
    torch.manual_seed(0)
    dense = build_model(name)
    adapter = adapter_for(dense.image_encoder)
    heads, mlp = adapter.heads_per_block(dense.image_encoder), adapter.mlp_per_block(dense.image_encoder)
    budget = ratio_budget(heads, mlp, 0.6, 0.5)
    one_shot, progressive = copy.deepcopy(dense), copy.deepcopy(dense)
    plan = prune_by_budget(one_shot, make_importance("magnitude"), budget)
    stages: list[tuple[str, dict]] = []

    def run_stage(stage, remove, part):
        remove()
        stages.append((stage, dict(part)))

    assert prune_by_budget(progressive, make_importance("magnitude"), budget, run_stage=run_stage, steps=3) == plan
    assert [s for s, _ in stages] == ["step 1/3", "step 2/3", "step 3/3"]
    # some block gives up heads in more than one stage (the index bookkeeping is exercised)
    seen: dict[int, int] = {}
    grew: dict[int, int] = {}
    for _, part in stages:
        for b, bp in part.items():
            if len(bp.heads) > seen.get(b, 0):
                grew[b], seen[b] = grew.get(b, 0) + 1, len(bp.heads)
    assert max(grew.values()) > 1
    # each stage is told everything removed so far from the blocks it touched, in dense indices
    assert all(set(stages[-1][1][b].mlp) == set(plan[b].mlp) for b in stages[-1][1] if plan[b].mlp)
    s = input_spec(dense).input_size
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        assert torch.equal(one_shot.image_encoder(x), progressive.image_encoder(x))
    assert count_params(one_shot) == count_params(progressive)


def test_progressive_run_with_the_dense_refit_lands_where_the_cascade_does(tiny_model):
    """Without recovery the refit from the dense statistics depends only on what is kept, so K stages
    must end with the cascade's weights: the refit is told the right (cumulative, dense) indices."""
    s = input_spec(tiny_model).input_size
    x = torch.randn(2, 3, s, s)
    outs, fractions = {}, {}
    for steps in (1, 4):
        model = copy.deepcopy(tiny_model)
        config = PruneConfig(importance="magnitude", ratios=RatioRequest(ratio=0.5), calib_size=4, recover_steps=0,
                             refit="dense", prune_steps=steps)
        run = prune_scored(model, config, score_importance(model, config, log=_quiet), log=_quiet)
        assert {r["stage"] for r in run.refits} == ({"heads", "mlp"} if steps == 1 else {f"step {k}/4" for k in range(1, 5)})
        # a layer is refitted only in the stages that removed more of its inputs (a refit of an
        # unchanged layer from the dense statistics would undo what recovery trained into it)
        removed: dict[tuple[int, str], list[int]] = {}
        for r in run.refits:
            removed.setdefault((r["block"], r["kind"]), []).append(r["removed"])
        assert all(counts == sorted(set(counts)) for counts in removed.values()), removed
        fractions[steps] = 1 - count_params(model.image_encoder) / count_params(tiny_model.image_encoder)
        with torch.no_grad():
            outs[steps] = model.image_encoder(x)
    assert fractions[4] == fractions[1] and abs(fractions[4] - 0.5) < 0.01
    torch.testing.assert_close(outs[4], outs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("teacher", ["stage", "dense"])
def test_recovery_teacher_is_the_dense_model_when_asked(tiny_model, teacher):
    dense = copy.deepcopy(tiny_model).eval()
    model = copy.deepcopy(tiny_model)
    config = PruneConfig(importance="random", ratios=RatioRequest(ratio=0.4), calib_size=8, recover_steps=2,
                         recover_lr=1e-3, refit="none", prune_steps=2, recover_teacher=teacher)
    scoring = score_importance(model, config, log=_quiet)
    run = prune_scored(model, config, scoring, log=_quiet)
    assert [r["stage"] for r in run.recovery] == ["step 1/2", "step 2/2"]
    _, held = hold_back(scoring.pool, 4)
    # the last stage's held-back loss after recovery, recomputed against the dense model's outputs
    against_dense = pool_loss(model, TeacherOutputs(dense, held))
    recorded = run.recovery[-1]["held_back_after"]
    if teacher == "dense":
        assert recorded == pytest.approx(against_dense, rel=1e-5)
    else:
        assert recorded != pytest.approx(against_dense, rel=1e-3)


def test_recovery_views_draw_mirrored_samples_with_the_teachers_outputs_on_them(tiny_model):
    model = copy.deepcopy(tiny_model)
    config = PruneConfig(importance="random", ratios=RatioRequest(ratio=0.4), calib_size=10, recover_steps=2,
                         recover_lr=1e-3, refit="none", recover_views=("identity", "hflip"))
    scoring = score_importance(model, config, log=_quiet)
    run = prune_scored(model, config, scoring, log=_quiet)
    train, held = hold_back(scoring.pool, 4)
    n = sum(len(b.images) for b in train)
    assert [(r["views"], r["samples"], r["held_back_images"]) for r in run.recovery] == [(["identity", "hflip"], 2 * n, 4)] * 2
    # the mirrored sample's box is mirrored with it, and the teacher's logits on it are those of the
    # mirrored image, not the original's logits flipped (the encoder is not mirror-equivariant)
    views = augmented_views(train, ("identity", "hflip"))
    side = views.images.shape[-1]
    assert torch.equal(views.images[n], train[0].images[0].flip(-1))
    assert views.boxes[n].tolist() == [side - train[0].boxes[0][2].item(), train[0].boxes[0][1].item(),
                                       side - train[0].boxes[0][0].item(), train[0].boxes[0][3].item()]
    targets = TeacherOutputs(tiny_model, [views])
    _, logits = targets.get([n])
    _, original = targets.get([0])
    assert not torch.allclose(logits, original.flip(-1), atol=1e-4)
    with pytest.raises(MedcoreError, match="recover_views identity,rotate: give distinct views"):
        PruneConfig(recover_views=("identity", "rotate")).check(tiny_model)
    with pytest.raises(MedcoreError, match="recover_schedule linear: must be one of constant, cosine"):
        PruneConfig(recover_schedule="linear").check(tiny_model)


def test_cli_progressive_prune_records_its_stages_and_refuses_zero_steps(tmp_path):
    runner = CliRunner()
    args = ["prune", "--model", "tiny", "--random-init", "--ratio", "0.4", "--calib-size", "2", "--no-report",
            "--no-progress", "--recover-steps", "1"]
    res = runner.invoke(main, [*args, "--prune-steps", "3", "--recover-teacher", "dense", "--recover-schedule", "cosine",
                               "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["prune_steps"] == 3 and summary["recover_teacher"] == "dense"
    assert all(r["schedule"] == "cosine" for r in summary["recovery"])
    assert [r["stage"] for r in summary["recovery"]] == ["step 1/3", "step 2/3", "step 3/3"]
    assert abs(summary["encoder_params_removed_fraction"] - 0.4) < 0.01
    assert "recovery after removing step 1/3" in res.output
    # where the time went, printed and recorded: the phases never add up to more than the whole run
    phases = summary["seconds_per_phase"]
    assert set(phases) == {"calibration", "pruning_and_refit", "recovery", "measuring"}
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= summary["seconds"]
    assert phases["recovery"] == pytest.approx(sum(r["seconds"] for r in summary["recovery"]))
    assert f"took {summary['seconds']:.0f} s from loading the model to the end (calibration" in res.output
    res = runner.invoke(main, [*args, "--prune-steps", "0", "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "--prune-steps" in res.output and not (tmp_path / "z").exists()
    res = runner.invoke(main, [*args, "--recover-views", "identity,identity", "--out", str(tmp_path / "v")])
    assert res.exit_code == 2 and "Error: --recover-views identity,identity: give distinct views" in res.output
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("name", ["lite-medsam", "sam-vit-b"])
def test_progressive_removal_on_the_real_architectures_lands_on_the_one_shot_widths(name):
    """Shapes only (meta device): every stage's head groups are checked against the qkv rows of those
    heads before anything goes, which is where a stale dependency graph would show."""
    widths = {}
    for steps in (1, 4):
        model = build_model(name, device="meta")
        adapter = adapter_for(model.image_encoder)
        budget = ratio_budget(adapter.heads_per_block(model.image_encoder), adapter.mlp_per_block(model.image_encoder),
                              0.6, 0.5)
        torch.manual_seed(0)
        prune_by_budget(model, make_importance("random"), budget, steps=steps)
        enc = model.image_encoder
        widths[steps] = (adapter.heads_per_block(enc), adapter.mlp_per_block(enc), count_params(enc))
    assert widths[4] == widths[1]
