"""``medcore-tp bench``: dense vs pruned latency and throughput in several backends, dtypes and batches."""

from __future__ import annotations

import csv
import io
import os

import click
import torch

from medcore_tp.allocator import keeps_freed_memory
from medcore_tp.atomic import save_json, save_text
from medcore_tp.bench import (
    BACKENDS,
    DTYPES,
    PARTS,
    PAUSE_S,
    check_request,
    format_rel_diff,
    plot,
    rows_to_dicts,
    run_bench,
)
from medcore_tp.checkpoint import load_model
from medcore_tp.cli import main
from medcore_tp.cli._common import model_option, parse_device, parse_int_list, table
from medcore_tp.errors import MedcoreError
from medcore_tp.machine import machine_info
from medcore_tp.models import PACKAGED, build_model


def _names(option: str, text: str, allowed) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise MedcoreError(f"{option}: nothing given, choose from {', '.join(allowed)}")
    return names


def _machine(device: torch.device) -> dict:
    # other jobs on the same cores slow both models; the ratios hold better than the seconds
    info = dict(machine_info(str(device)), load_average_1_5_15=list(os.getloadavg()))
    if device.type == "cuda":
        info["tf32"] = False  # run_bench turns it off: fp32 rows are plain fp32
    for runtime in ("onnxruntime", "openvino"):
        try:
            info[runtime] = __import__(runtime).__version__
        except ImportError:
            pass
    return info


@main.command("bench")
@model_option
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The pruned model (medcore-tp .pth or .safetensors) to time against its dense architecture.")
@click.option("--dense-checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="Dense weights [default: the packaged ones for lite-medsam, random otherwise; latency "
                   "does not depend on them].")
@click.option("--backends", default="torch,sdpa", show_default=True, help=f"Comma-separated: {', '.join(BACKENDS)}.")
@click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--dtype", "dtypes", default="fp32", show_default=True, help=f"Comma-separated: {', '.join(DTYPES)}.")
@click.option("--parts", default="encoder", show_default=True,
              help="encoder (image encoder) and/or model (encoder + box decoder), comma-separated.")
@click.option("--threads", "thread_counts", default=None,
              help="Intra-op thread counts of torch, ONNX Runtime and OpenVINO, comma-separated, each measured in turn "
                   "[default: torch's current count].")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed runs per model.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed runs first (the first one, always made, also gives the output's difference from "
                   "eager fp32).")
@click.option("--pause", type=click.FloatRange(0, 60), default=PAUSE_S,
              help="Untimed seconds of quiet before every run, so that the threads of the model run before "
                   "have stopped spinning [default: none, back to back].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out/bench", show_default=True,
              help="Folder for bench.csv, bench.json and bench.png.")
@click.option("--tag", default=None, help="Name the files bench_TAG.* instead of bench.*.")
def bench(model_name, checkpoint, dense_checkpoint, backends, batches, device, dtypes, parts, thread_counts,
          repeats, warmup, pause, out_dir, tag) -> None:
    """Time the dense and the pruned model alternately; median, min-max, speedup next to the FLOP ratio."""
    backend_list = _names("--backends", backends, BACKENDS)
    dtype_list = _names("--dtype", dtypes, DTYPES)
    part_list = _names("--parts", parts, PARTS)
    for p in part_list:
        if p not in PARTS:
            raise MedcoreError(f"--parts {p}: choose from {', '.join(PARTS)}")
    batch_list = parse_int_list("--batch", batches)
    if not batch_list or min(batch_list) < 1:
        raise MedcoreError(f"--batch {batches}: give batch sizes >= 1")
    threads = parse_int_list("--threads", thread_counts) if thread_counts else [torch.get_num_threads()]
    if not threads or min(threads) < 1:
        raise MedcoreError(f"--threads {thread_counts}: give thread counts >= 1")
    dev = parse_device(device)
    arch = build_model(model_name, device="meta")
    from medcore_tp.arch import sam_vit

    check_request(backend_list, dtype_list, dev, sam_vit.is_encoder(arch.image_encoder))
    pruned, record = load_model(model_name, checkpoint)
    if record is None:
        raise MedcoreError(f"--checkpoint {checkpoint}: a dense checkpoint; bench needs a pruned one "
                           "(medcore-tp prune writes it)")
    if dense_checkpoint is None and model_name == "lite-medsam":
        dense_checkpoint = PACKAGED
    torch.manual_seed(0)
    dense, _ = load_model(model_name, dense_checkpoint)
    click.echo(f"{model_name}: dense vs {checkpoint} on {dev}, {'/'.join(map(str, threads))} threads, "
               f"{repeats} repeats after {warmup} warm-up, alternating"
               + (f", {pause:g} s pause before each run" if pause else "")
               + ("; glibc keeps freed memory (medcore-tp --release-freed-memory: its defaults)"
                  if keeps_freed_memory() else ""))
    rows = run_bench(dense, pruned, model_name, backend_list, dtype_list, batch_list, part_list, dev, repeats,
                     warmup, log=click.echo, threads=threads, pause=pause)
    shown = [(r.backend, r.dtype, r.batch, r.part, r.threads, f"{r.dense_median_s:.3f}", f"{r.pruned_median_s:.3f}",
              f"{r.speedup:.2f}x", f"{r.flop_ratio:.2f}x", f"{r.speedup_over_flop_ratio:.2f}",
              "-" if r.pruned_vs_dense_torch_fp32 != r.pruned_vs_dense_torch_fp32 else f"{r.pruned_vs_dense_torch_fp32:.2f}x",
              f"{r.images_per_s_pruned:.2f}", f"{format_rel_diff(r.dense_max_rel_diff)} / {format_rel_diff(r.pruned_max_rel_diff)}")
             for r in rows]
    click.echo(table(shown, ("backend", "dtype", "batch", "part", "threads", "dense s", "pruned s", "speedup", "FLOP ratio",
                             "speedup/FLOPs", "vs dense torch fp32", "pruned img/s", "max rel diff dense / pruned")))
    stem = f"bench_{tag}" if tag else "bench"
    data = rows_to_dicts(rows)
    record_out = {"model": model_name, "checkpoint": checkpoint, "dense_checkpoint": dense_checkpoint,
                  "arch": record, "repeats": repeats, "warmup": warmup, "pause_s": pause, "machine": _machine(dev), "rows": data}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(data[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(data)
    save_text(buf.getvalue(), os.path.join(out_dir, stem + ".csv"))
    save_json(record_out, os.path.join(out_dir, stem + ".json"))
    try:
        plot(rows, os.path.join(out_dir, stem + ".png"), f"{model_name} dense vs pruned on {dev}")
        click.echo(f"wrote {stem}.csv, {stem}.json and {stem}.png to {out_dir}")
    except ImportError:
        click.echo(f"wrote {stem}.csv and {stem}.json to {out_dir} (no plot: pip install medcore-tp[bench])")
