"""A sweep of pruning ratios x importances: FLOPs and measured latency against boundary quality.

Every point starts from the same dense weights: calibration statistics (Fisher, Taylor gradients) are
computed once per importance on the dense model and reused for every ratio; each point then prunes a
fresh copy, recovers, optionally fine-tunes, and is evaluated on the same images with the same boxes
as the dense model (one ``splits.json`` for the whole sweep, boxes fixed per file). Encoder latency of
each point is measured in the same process, interleaved with the dense model.

Layout of ``out``: ``settings.json`` (what the sweep was asked; a rerun with other settings is
refused), ``splits.json``, one folder per point (``dense``, ``<importance>-<ratio>``) holding
``pruned.pth``, ``per_image.csv``, ``summary.json`` and, written last, ``point.json``: a point counts
as done only when its ``point.json`` exists, so an interrupted point is redone and a finished one is
never recomputed. ``sweep.csv``, ``sweep.json``, ``comparisons.csv`` and ``pareto.png`` are rewritten
from the finished points after each point.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import os
import platform
import shutil
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam
from tqdm.auto import tqdm

from medcore_tp.atomic import save_json, save_text
from medcore_tp.checkpoint import load_model, load_pruned, save_pruned
from medcore_tp.data import load_datasets, make_splits, resolve_splits, select_split
from medcore_tp.distill import VIEWS
from medcore_tp.errors import MedcoreError
from medcore_tp.evaluate import evaluate
from medcore_tp.importance_registry import IMPORTANCE_NAMES, importance_entry
from medcore_tp.metrics import METRIC_NAMES
from medcore_tp.models import PACKAGED, build_model
from medcore_tp.paired import paired_difference
from medcore_tp.pipeline import (
    ALLOCATIONS,
    DEFAULT_ALLOCATION,
    REFITS,
    PruneConfig,
    RatioRequest,
    Scoring,
    prune_scored,
    score_importance,
    settle_ratios,
)
from medcore_tp.profile import profile_model

IMPORTANCES: tuple[str, ...] = IMPORTANCE_NAMES
SETTINGS_FILE = "settings.json"
# What a setting left unsaid meant when the folder was written: a point pruned under earlier defaults
# (equal counts for importances without 1/s_b, the last two blocks protected on every family) must not
# be mixed with new ones on resume, so the record names the defaults it ran under.
DEFAULTS_RECORD = {"allocation_fallback": DEFAULT_ALLOCATION, "protection": "family"}
POINT_FILE = "point.json"
DENSE = "dense"
# Stages a point goes through, in order (``stage_hook`` is told each one as it starts).
STAGES = ("prune", "finetune", "evaluate", "latency")


@dataclass
class SweepConfig:
    """What a sweep computes; everything here must match for a rerun to reuse an output folder."""

    model: str
    data: list[str]
    ratios: list[float]
    importances: list[str]
    checkpoint: str | None = None
    source_checkpoint: str | None = None
    eval_data: list[str] | None = None
    split: str = "test"
    eval_images: int | None = None
    recover_steps: int = 200
    recover_lr: float = 1e-5
    prune_steps: int = 1
    recover_teacher: str = "stage"
    recover_views: str = "identity"  # comma-separated (a string, so settings.json compares as written)
    recover_schedule: str = "constant"
    finetune_epochs: int = 0
    calib_size: int = 128
    batch_size: int = 8
    repeats: int = 3
    box_jitter: int = 5
    protect: list[int] | None = None
    seed: int = 0
    refit: str = "dense"
    allocation: str = DEFAULT_ALLOCATION
    distill_steps: int = 0
    distill_lr: float = 1e-4

    def settings(self) -> dict[str, Any]:
        """The settings record (paths made absolute, so that a rerun from elsewhere still matches)."""
        record = asdict(self)
        record["defaults"] = DEFAULTS_RECORD
        for key in ("data", "eval_data"):
            if record[key] is not None:
                record[key] = [os.path.abspath(p) for p in record[key]]
        for key in ("checkpoint", "source_checkpoint"):
            if record[key] is not None and record[key] != PACKAGED:
                record[key] = os.path.abspath(record[key])
        return record

    @property
    def evaluation_data(self) -> list[str]:
        return list(self.eval_data or self.data)


def point_name(importance: str, ratio: float) -> str:
    """Folder name of a point, e.g. ``medcore-0.5``."""
    return f"{importance}-{ratio:g}"


def validate(config: SweepConfig) -> None:
    """Refuse bad settings in one line each (``MedcoreError``), before anything is loaded or written."""
    if not config.ratios:
        raise MedcoreError("--ratios: no ratio given")
    dup = sorted({r for r in config.ratios if config.ratios.count(r) > 1})
    if dup:
        raise MedcoreError(f"--ratios: {', '.join(f'{r:g}' for r in dup)} given more than once")
    if not config.importances:
        raise MedcoreError("--importances: no importance given")
    for imp in config.importances:
        if imp not in IMPORTANCES:
            raise MedcoreError(f"--importances: unknown importance '{imp}', choose from {', '.join(IMPORTANCES)}")
    dup_i = sorted({i for i in config.importances if config.importances.count(i) > 1})
    if dup_i:
        raise MedcoreError(f"--importances: {', '.join(dup_i)} given more than once")
    if config.eval_images is not None and config.eval_images < 1:
        raise MedcoreError(f"--eval-images must be >= 1, got {config.eval_images}")
    if config.repeats < 1:
        raise MedcoreError(f"--repeats must be >= 1, got {config.repeats}")
    if config.split not in ("test", "val", "train", "all"):
        raise MedcoreError(f"--split must be test, val, train or all, got '{config.split}'")
    if not config.data:
        raise MedcoreError("--data: no folder given")
    if config.refit not in REFITS:
        raise MedcoreError(f"--refit: unknown refit '{config.refit}', choose from {', '.join(REFITS)}")
    views = [v.strip() for v in config.recover_views.split(",") if v.strip()]
    if not views or any(v not in VIEWS for v in views) or len(set(views)) != len(views):
        raise MedcoreError(f"--recover-views {config.recover_views}: give distinct views from {', '.join(VIEWS)}")
    if config.allocation not in ALLOCATIONS:
        raise MedcoreError(f"--allocation: unknown allocation '{config.allocation}', choose from {', '.join(ALLOCATIONS)}")


def check_ratios(arch: Sam, ratios: Sequence[float], protect: Sequence[int] | None) -> None:
    """Every ratio must be reachable on ``arch``; the error names the ratio and the maximum."""
    for r in ratios:
        try:
            settle_ratios(arch, RatioRequest(ratio=r, protect=None if protect is None else tuple(protect)))
        except MedcoreError as exc:
            raise MedcoreError(str(exc).replace(f"ratio {r}:", f"--ratios: {r:g} is unreachable, it", 1)) from None


def check_settings(out: Path, settings: dict[str, Any]) -> bool:
    """True when ``out`` already holds this sweep; ``MedcoreError`` when it holds another one."""
    path = out / SETTINGS_FILE
    if not path.exists():
        if out.is_dir() and any(out.iterdir()):
            raise MedcoreError(f"--out {out}: the folder is not empty and holds no sweep; --out must be a new folder")
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise MedcoreError(f"--out {out}: {path} is unreadable; --out must be a new folder") from None
    # a setting added to SweepConfig after the folder was written counts as its default there
    defaults = {f.name: f.default for f in fields(SweepConfig) if f.default is not MISSING}
    if old.get("defaults") != settings.get("defaults"):
        raise MedcoreError(f"--out {out} holds a sweep run under earlier defaults (equal-count allocation, the last "
                           "two blocks protected); --out must be a new folder")
    differ = sorted(k for k in set(old) | set(settings) if old.get(k, defaults.get(k)) != settings.get(k))
    if differ:
        raise MedcoreError(
            f"--out {out} holds a sweep with other settings ({', '.join(differ)} differ); "
            "--out must be a new folder or the settings must match"
        )
    return True


def _check_data(config: SweepConfig) -> dict:
    """Discover the calibration and evaluation folders (errors name the option); the evaluation datasets."""
    try:
        load_datasets(config.data)
    except MedcoreError as exc:
        raise MedcoreError(f"--data: {exc}") from None
    try:
        datasets = load_datasets(config.evaluation_data)
    except MedcoreError as exc:
        raise MedcoreError(f"--eval-data: {exc}" if config.eval_data else f"--data: {exc}") from None
    if config.split != "all":
        chosen = select_split(datasets, make_splits(datasets), config.split)
        for name, samples in chosen.items():
            if not samples:
                raise MedcoreError(f"{'--eval-data' if config.eval_data else '--data'} {name}: no image in the "
                                   f"{config.split} split ({len(datasets[name])} images); use --split all")
    return datasets


def interleaved_latency(models: dict[str, Sam], repeats: int = 3, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Encoder forward time (s) of each model, measured in turn ``repeats`` times (A B A B ...), so that
    a change in the machine's load hits all of them alike; median, min, max and every time."""
    times: dict[str, list[float]] = {k: [] for k in models}
    inputs = {}
    for name, model in models.items():
        enc = model.image_encoder.eval()
        device = next(enc.parameters()).device
        inputs[name] = torch.rand(1, 3, enc.img_size, enc.img_size, device=device,
                                  generator=torch.Generator(device=device).manual_seed(0))
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, model in models.items():
                device = inputs[name].device
                sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
                sync()
                start = time.perf_counter()
                model.image_encoder(inputs[name])
                sync()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "times_s": v}
            for k, v in times.items()}


@dataclass
class SweepResult:
    """Finished points (dense first) as ``sweep.csv`` rows, and the comparison rows."""

    rows: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def _environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def run_sweep(
    config: SweepConfig,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    stage_hook: Callable[[str, str], None] | None = None,
) -> SweepResult:
    """Run (or finish) the sweep ``config`` into ``out_dir``; see the module docstring.

    ``stage_hook(point, stage)`` is called as each stage of each point starts (``STAGES``, and
    ``"calibration"`` once per importance): a place to watch progress or to interrupt.
    """
    validate(config)
    out = Path(out_dir)
    settings = config.settings()
    resuming = check_settings(out, settings)
    datasets = _check_data(config)
    try:
        dense, _ = load_model(config.model, config.checkpoint)
    except MedcoreError as exc:
        raise MedcoreError(f"--checkpoint: {exc}") from None
    check_ratios(dense, config.ratios, config.protect)
    source = None
    if config.source_checkpoint is not None:
        try:
            source = build_model(config.model, config.source_checkpoint)
        except MedcoreError as exc:
            raise MedcoreError(f"--source-checkpoint: {exc}") from None

    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        save_json(settings, out / SETTINGS_FILE)
    splits_path = out / "splits.json"
    if config.split != "all":
        if not splits_path.exists():
            doc = make_splits(datasets)
            if config.eval_images:
                # only the first N of the evaluated split; resolve_splits leaves unlisted files out
                for parts in doc["datasets"].values():
                    parts[config.split] = parts[config.split][: config.eval_images]
            save_json(doc, splits_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resolve_splits(datasets, splits_path)  # written once; every point reads the same split
    dense = dense.to(device).eval()
    if source is not None:
        source = source.to(device)

    points = [(imp, r) for r in config.ratios for imp in config.importances]  # ratio-major: comparisons fill in early
    done = {name for name in [DENSE] + [point_name(i, r) for i, r in points] if (out / name / POINT_FILE).exists()}
    hook = stage_hook or (lambda _p, _s: None)
    bar = tqdm(total=len(points) + 1, desc="sweep", unit="point", disable=not progress, dynamic_ncols=True)
    say = log or (bar.write if progress else print)
    say(f"sweep: {len(points)} points ({len(config.ratios)} ratios x {len(config.importances)} importances) and the "
        f"dense model, refit {config.refit}, {config.allocation} allocation, {config.distill_steps} distillation steps, "
        f"{_stages(config.prune_steps)}, {config.recover_steps} recovery steps per stage at lr {config.recover_lr:g}"
        f"{' (cosine)' if config.recover_schedule == 'cosine' else ''} "
        f"towards the {'dense model' if config.recover_teacher == 'dense' else 'model as each stage starts'}"
        f"{'' if config.recover_views == 'identity' else ' on views ' + config.recover_views}, "
        f"{config.finetune_epochs} fine-tuning epochs, "
        f"latency median of {config.repeats} interleaved with the dense model")
    fallback = [imp for imp in config.importances if _point_allocation(config, imp) != config.allocation]
    if fallback:
        say(f"note: --allocation {config.allocation} needs a Fisher importance; {', '.join(fallback)} use {DEFAULT_ALLOCATION}")
    if done:
        say(f"resuming {out}: {len(done)} finished point(s) kept ({', '.join(sorted(done))})")
    result = SweepResult([], [])
    scorings: dict[str, Scoring] = {}
    dense_profile = profile_model(dense)

    def show(point: str, stage: str) -> None:
        # without a bar, a line per stage: a long sweep must not look stalled
        if progress:
            bar.set_postfix_str(stage)
        else:
            say(f"[{point}] {stage}")

    try:
        bar.set_description(f"sweep [{DENSE}]")
        if DENSE in done:
            result.reused.append(DENSE)
        else:
            show(DENSE, "evaluate and latency")
            _dense_point(config, dense, dense_profile, out / DENSE, splits_path, hook)
            result.computed.append(DENSE)
        bar.update(1)
        _write_outputs(config, out)
        for imp, ratio in points:
            name = point_name(imp, ratio)
            bar.set_description(f"sweep [{name}]")
            if name in done:
                result.reused.append(name)
                bar.update(1)
                continue
            if imp not in scorings:
                show(name, f"calibrating {imp}")
                hook(name, "calibration")
                # the refit statistics depend on the dense model and the calibration images only
                shared = next((s.reconstruction for s in scorings.values() if s.reconstruction is not None), None)
                scorings[imp] = score_importance(dense, _prune_config(config, imp, ratio),
                                                 source=source if imp == "medcore" else None, log=say,
                                                 reconstruction=shared)
            _pruned_point(config, dense, dense_profile, scorings[imp], imp, ratio, out / name, splits_path,
                          hook, lambda stage, name=name: show(name, stage), say,
                          (lambda _m: None) if progress else (lambda m, name=name: say(f"[{name}] {m}")))
            result.computed.append(name)
            bar.update(1)
            _write_outputs(config, out)
    finally:
        bar.close()
    rows, comparisons = _write_outputs(config, out)
    result.rows, result.comparisons = rows, comparisons
    return result


def _prune_config(config: SweepConfig, importance: str, ratio: float) -> PruneConfig:
    """The ``prune`` settings of one point (what ``medcore-tp prune`` with the same flags would use)."""
    return PruneConfig(
        importance=importance,
        ratios=RatioRequest(ratio=ratio, protect=None if config.protect is None else tuple(config.protect)),
        data=tuple(config.data), calib_size=config.calib_size, batch_size=config.batch_size,
        recover_steps=config.recover_steps, recover_lr=config.recover_lr, prune_steps=config.prune_steps,
        recover_teacher=config.recover_teacher, recover_schedule=config.recover_schedule, seed=config.seed,
        refit=config.refit, recover_views=tuple(v.strip() for v in config.recover_views.split(",") if v.strip()),
        distill_steps=config.distill_steps, distill_lr=config.distill_lr,
        allocation=_point_allocation(config, importance),
    )


def _stages(prune_steps: int) -> str:
    """The stages a point is pruned in, in words."""
    return "cascade (heads, then MLP)" if prune_steps == 1 else f"{prune_steps} progressive stages"


def _point_allocation(config: SweepConfig, importance: str) -> str:
    """``config.allocation``, except that 1/s_b needs a Fisher importance: the others fall back to the
    default allocation."""
    if config.allocation == "sensitivity" and importance_entry(importance).needs != "fisher":
        return DEFAULT_ALLOCATION
    return config.allocation


def _timed(seconds: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    value = fn()
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
    return value


def _fresh(folder: Path) -> None:
    """An unfinished point's folder is emptied before it is redone: nothing of the interrupted run stays."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _evaluate(config: SweepConfig, model: Sam, folder: Path, splits_path: Path, info: dict) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # with --eval-images the splits file lists part of each folder
        res = evaluate(model, config.evaluation_data, split=config.split,
                       splits_path=None if config.split == "all" else splits_path, out_dir=folder,
                       box_jitter=config.box_jitter, seed=42, progress=False, model_info=info)
    return {"macro": res.summary["macro"], "datasets": res.summary["datasets"], "n_images": res.summary["n_images"]}


def _dense_point(config: SweepConfig, dense: Sam, profile, folder: Path, splits_path: Path, hook) -> None:
    _fresh(folder)
    seconds: dict[str, float] = {}
    hook(DENSE, "evaluate")
    quality = _timed(seconds, "evaluate", lambda: _evaluate(config, dense, folder, splits_path,
                                                             {"name": config.model, "checkpoint": config.checkpoint}))
    hook(DENSE, "latency")
    lat = _timed(seconds, "latency", lambda: interleaved_latency({DENSE: dense}, config.repeats))[DENSE]
    record = {"point": DENSE, "importance": None, "ratio": 0.0, "removed_fraction": 0.0,
              "profile": profile.to_dict(), "latency": lat, "latency_dense": lat, **quality, "seconds": seconds,
              "environment": _environment()}
    save_json(record, folder / POINT_FILE)


def _pruned_point(config: SweepConfig, dense: Sam, dense_profile, scoring: Scoring, imp: str, ratio: float,
                  folder: Path, splits_path: Path, hook, stage: Callable[[str], None], say,
                  detail: Callable[[str], None]) -> None:
    name = point_name(imp, ratio)
    _fresh(folder)
    seconds: dict[str, float] = {"calibration": scoring.seconds}
    hook(name, "prune")
    stage("prune + recovery")
    model = copy.deepcopy(dense)
    run = _timed(seconds, "prune", lambda: prune_scored(model, _prune_config(config, imp, ratio), scoring,
                                                         log=detail))
    seconds["recovery"] = sum(r.get("seconds", 0.0) for r in run.recovery)
    seconds["distillation"] = run.distillation["seconds"] if run.distillation else 0.0
    seconds["prune"] -= seconds["recovery"] + seconds["distillation"]
    finetune_record = None
    if config.finetune_epochs > 0:
        hook(name, "finetune")
        stage("fine-tuning")
        model, finetune_record = _timed(seconds, "finetune", lambda: _finetune(config, model, folder, splits_path))
    save_pruned(model.cpu(), folder / "pruned.pth", base=config.model)
    model = model.to(next(dense.parameters()).device).eval()
    profile = profile_model(model)
    hook(name, "evaluate")
    stage("evaluating")
    quality = _timed(seconds, "evaluate", lambda: _evaluate(
        config, model, folder, splits_path, {"name": config.model, "checkpoint": str(folder / "pruned.pth"),
                                             "pruned": True}))
    hook(name, "latency")
    stage("latency")
    lat = _timed(seconds, "latency", lambda: interleaved_latency({DENSE: dense, name: model}, config.repeats))
    removed = 1.0 - profile.encoder_params / dense_profile.encoder_params
    record = {
        "point": name, "importance": imp, "ratio": ratio, "removed_fraction": removed,
        "heads_ratio": run.ratios.heads_ratio, "mlp_ratio": run.ratios.mlp_ratio, "protect_blocks": run.ratios.protect,
        "profile": profile.to_dict(), "latency": lat[name], "latency_dense": lat[DENSE], **quality,
        "calibration": scoring.calibration, "extra": scoring.extra,
        "recovery": [{"stage": r["stage"], "steps": r["steps"], "first_loss": r["loss"][0], "last_loss": r["loss"][-1],
                      "held_back_before": r.get("held_back_before"), "held_back_after": r.get("held_back_after"),
                      "checks": r.get("checks"), "kept_step": r.get("kept_step"),
                      "seconds": r["seconds"]} for r in run.recovery],
        "refits": run.refits,
        "distillation": None if run.distillation is None else {k: v for k, v in run.distillation.items() if k != "loss"},
        "removed_heads_per_block": {str(b): list(p.heads) for b, p in run.plan.items() if p.heads},
        "removed_mlp_per_block": {str(b): list(p.mlp) for b, p in run.plan.items() if p.mlp},
        "finetune": finetune_record, "seconds": seconds, "environment": _environment(),
    }
    save_json(record, folder / POINT_FILE)  # last: the point is finished only once this exists
    say(f"{name}: {removed:.2%} removed, Dice {quality['macro']['dice']:.4f}, BF1 {quality['macro']['boundary_f1']:.4f}, "
        f"HD95 {quality['macro']['hd95']:.2f}, latency {lat[name]['median_s']:.3f} s (dense {lat[DENSE]['median_s']:.3f} s)")


def _finetune(config: SweepConfig, model: Sam, folder: Path, splits_path: Path) -> tuple[Sam, dict]:
    from medcore_tp.finetune import BEST_FILE, FinetuneConfig, finetune

    datasets = load_datasets(config.data)
    doc = resolve_splits(datasets, folder / "finetune" / "splits.json")
    train = [s for v in select_split(datasets, doc, "train").values() for s in v]
    val = [s for v in select_split(datasets, doc, "val").values() for s in v]
    device = next(model.parameters()).device
    record = finetune(model, train, val, str(folder / "finetune"), base=config.model,
                      config=FinetuneConfig(epochs=config.finetune_epochs, seed=config.seed), progress=False)
    best = load_pruned(folder / "finetune" / BEST_FILE).to(device)
    return best, {k: v for k, v in record.items() if k != "curves"} | {"curves": record["curves"]}


# --------------------------------------------------------------------------------------------
# Outputs

CSV_COLUMNS = (
    "point", "importance", "ratio", "removed_fraction", "encoder_params", "flops_torch_g", "flops_paper_g",
    "latency_s", "latency_min_s", "latency_max_s", "latency_dense_s", "speedup", *METRIC_NAMES, "n_images",
    "pareto_bf1_flops", "pareto_hd95_flops", "pareto_bf1_latency", "pareto_hd95_latency",
    "seconds_calibration", "seconds_prune", "seconds_recovery", "seconds_distillation", "seconds_finetune",
    "seconds_evaluate", "seconds_latency",
)
COMPARISON_COLUMNS = ("ratio", "importance_a", "importance_b", "metric", "n", "mean_a", "mean_b", "mean_diff",
                      "ci_low", "ci_high", "level", "resamples")


def finished_points(config: SweepConfig, out: Path) -> list[dict[str, Any]]:
    """The ``point.json`` records of the finished points, dense first, in sweep order."""
    names = [DENSE] + [point_name(i, r) for r in config.ratios for i in config.importances]
    return [json.loads((out / n / POINT_FILE).read_text()) for n in names if (out / n / POINT_FILE).exists()]


def pareto_front(costs: Sequence[float], qualities: Sequence[float], higher_is_better: bool = True) -> list[bool]:
    """Which points no other point dominates (cost no higher and quality no worse, one of them strictly)."""
    sign = 1.0 if higher_is_better else -1.0
    q = [sign * x for x in qualities]
    out = []
    for i, (c, v) in enumerate(zip(costs, q, strict=True)):
        out.append(not any((costs[j] <= c and q[j] >= v and (costs[j] < c or q[j] > v))
                           for j in range(len(costs)) if j != i))
    return out


def sweep_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``sweep.csv`` row per finished point."""
    rows = []
    for r in records:
        p, lat, sec = r["profile"], r["latency"], r["seconds"]
        rows.append({
            "point": r["point"], "importance": r["importance"] or "dense", "ratio": r["ratio"],
            "removed_fraction": r["removed_fraction"], "encoder_params": p["encoder_params"],
            "flops_torch_g": p["flops_torch_g"], "flops_paper_g": p["flops_paper_g"],
            "latency_s": lat["median_s"], "latency_min_s": lat["min_s"], "latency_max_s": lat["max_s"],
            "latency_dense_s": r["latency_dense"]["median_s"],
            "speedup": r["latency_dense"]["median_s"] / lat["median_s"],
            **{m: r["macro"][m] for m in METRIC_NAMES}, "n_images": r["n_images"],
            **{f"seconds_{k}": sec.get(k, 0.0) for k in ("calibration", "prune", "recovery", "distillation",
                                                         "finetune", "evaluate", "latency")},
        })
    for metric, hib in (("boundary_f1", True), ("hd95", False)):
        for cost, key in (("flops_torch_g", "flops"), ("latency_s", "latency")):
            front = pareto_front([x[cost] for x in rows], [x[metric] for x in rows], hib)
            for x, f in zip(rows, front, strict=True):
                x[f"pareto_{'bf1' if metric == 'boundary_f1' else 'hd95'}_{key}"] = f
    return rows


def _per_image(out: Path, name: str) -> dict[tuple[str, str], dict[str, float]]:
    with open(out / name / "per_image.csv", newline="") as f:
        return {(r["dataset"], r["name"]): {m: float(r[m]) for m in METRIC_NAMES} for r in csv.DictReader(f)}


def comparison_rows(config: SweepConfig, out: Path, records: Sequence[dict[str, Any]], seed: int = 0) -> list[dict]:
    """For every ratio, every importance against every other one, paired on the same images, per metric."""
    have = {(r["importance"], r["ratio"]) for r in records if r["importance"]}
    rows = []
    for ratio in config.ratios:
        for a, b in itertools.combinations(config.importances, 2):
            if (a, ratio) not in have or (b, ratio) not in have:
                continue
            pa, pb = _per_image(out, point_name(a, ratio)), _per_image(out, point_name(b, ratio))
            keys = sorted(pa.keys() & pb.keys())
            for metric in METRIC_NAMES:
                d = paired_difference([pa[k][metric] for k in keys], [pb[k][metric] for k in keys], seed=seed)
                rows.append({"ratio": ratio, "importance_a": a, "importance_b": b, "metric": metric, "n": d.n,
                             "mean_a": d.mean_a, "mean_b": d.mean_b, "mean_diff": d.mean_diff, "ci_low": d.low,
                             "ci_high": d.high, "level": d.level, "resamples": d.resamples})
    return rows


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _write_outputs(config: SweepConfig, out: Path) -> tuple[list[dict], list[dict]]:
    records = finished_points(config, out)
    rows = sweep_rows(records)
    comparisons = comparison_rows(config, out, records, seed=config.seed)
    save_text(_csv(rows, CSV_COLUMNS), out / "sweep.csv")
    save_text(_csv(comparisons, COMPARISON_COLUMNS), out / "comparisons.csv")
    save_json({"settings": config.settings(), "points": records, "rows": rows, "comparisons": comparisons,
               "environment": _environment()}, out / "sweep.json")
    plot_pareto(rows, out / "pareto.png")
    return rows, comparisons


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """BF1 and HD95 against GFLOPs (torch count) and measured latency; one line per importance, dense
    marked, the Pareto front (over all points, dense included) drawn in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    panels = [("flops_torch_g", "GFLOPs (torch.utils.flop_counter)"), ("latency_s", "encoder latency (s, median)")]
    metrics = [("boundary_f1", "Boundary F1", True), ("hd95", "HD95 (px)", False)]
    importances = list(dict.fromkeys(r["importance"] for r in rows if r["importance"] != "dense"))
    for i, (metric, label, hib) in enumerate(metrics):
        for j, (cost, xlabel) in enumerate(panels):
            ax = axes[i][j]
            for imp in importances:
                pts = sorted((r[cost], r[metric]) for r in rows if r["importance"] == imp)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=imp, alpha=0.8)
            dense = [r for r in rows if r["importance"] == "dense"]
            if dense:
                ax.plot([dense[0][cost]], [dense[0][metric]], "k*", markersize=14, label="dense")
            front = sorted((r[cost], r[metric]) for r, f in zip(rows, pareto_front(
                [r[cost] for r in rows], [r[metric] for r in rows], hib), strict=True) if f)
            if front:
                ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=1.5,
                        alpha=0.6, label="Pareto front")
                ax.scatter([p[0] for p in front], [p[1] for p in front], s=120, facecolors="none",
                           edgecolors="black")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label + (" (higher is better)" if hib else " (lower is better)"))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    from medcore_tp.atomic import atomic_write

    atomic_write(path, lambda f: f.write(buf.getvalue()))


__all__ = [
    "IMPORTANCES", "STAGES", "SweepConfig", "SweepResult", "check_ratios", "check_settings", "comparison_rows",
    "finished_points", "interleaved_latency", "pareto_front", "plot_pareto", "point_name", "run_sweep",
    "sweep_rows", "validate",
]
