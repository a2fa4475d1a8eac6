"""Cost of the boundary-aware diagonal Fisher per calibration image, against a plain forward + backward.

Fisher: ``medcore_tp.fisher.diagonal_fisher`` over N calibration images (one forward + backward per
image, per-sample squared gradients accumulated), divided by N. Plain: for the same N images, one at a
time, ``forward_logits`` + ``calibration_loss(...).sum().backward()`` (batch of 1), divided by N. The
two run alternately, round after round, after one warm-up of each; the figures are medians over
rounds. Target: Fisher / plain <= 1.15. Each timed run also records how many cores other processes kept
busy meanwhile (from /proc/stat and /proc/self/stat), so that a run disturbed by other work shows it.

Peak memory, CPU: each mode runs once more in its own fresh subprocess, with the model and images
already in memory; the kernel's peak-RSS mark is reset (``echo 5 > /proc/self/clear_refs``) just before
the run and the figure is the peak resident set after it (``VmHWM`` of ``/proc/self/status``) minus
the resident set just before (tracemalloc does not see torch's allocations). Plain
``getrusage(RUSAGE_SELF).ru_maxrss`` deltas are stored too, but they are not usable as such: ru_maxrss
never goes down, a transient peak while loading hides a small model's run, and on Linux a child
inherits, across fork + exec, the peak of the parent that started it (here the benchmark process). CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, minus the allocated memory before, in the same process.

Usage: ``python benchmarks/bench_fisher_cost.py [--models tiny,sam-vit-b] [--device cpu]``. Defaults:
``tiny`` with 16 Kvasir-SEG images and 15 rounds, ``sam-vit-b`` with 2 images and 3 rounds (about a
quarter of an hour on a 2-core CPU). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _machine import machine_info, machine_tag  # noqa: E402

from medcore_tp import build_model  # noqa: E402
from medcore_tp.atomic import save_json  # noqa: E402
from medcore_tp.calibration import CalibrationBatch, calibration_sets  # noqa: E402
from medcore_tp.fisher import calibration_loss, diagonal_fisher  # noqa: E402
from medcore_tp.inference import forward_logits  # noqa: E402
from medcore_tp.models import input_spec  # noqa: E402
from medcore_tp.paths import data_dir  # noqa: E402

DATA = str(data_dir("kvasir-seg-256"))  # $MEDCORE_DATA, else ../shared/data
DEFAULTS = {"tiny": (16, 15), "sam-vit-b": (2, 3)}  # images, rounds


def load(model_name: str, images: int, device: str):
    torch.manual_seed(0)
    model = build_model(model_name, device=device)
    batches = calibration_sets([DATA], images, input_spec(model)).batches
    batch = next(iter(batches.values()))
    merged = CalibrationBatch(*(torch.cat([getattr(b, f) for b in batch]) for f in ("images", "boxes", "masks")))
    return model, merged


def run_fisher(model, batch) -> None:
    diagonal_fisher(model, [batch])


def run_plain(model, batch) -> None:
    model.train()  # as diagonal_fisher does (SAM has no dropout or batch norm: same maths)
    for i in range(len(batch.images)):
        model.zero_grad(set_to_none=True)
        logits = forward_logits(model, batch.images[i : i + 1], batch.boxes[i : i + 1])
        calibration_loss(logits, batch.masks[i : i + 1].to(logits.device)).sum().backward()
    model.zero_grad(set_to_none=True)
    model.eval()


MODES = {"fisher": run_fisher, "plain": run_plain}


def cpu_counters() -> tuple[float, float]:
    """(CPU seconds busy on the whole machine, CPU seconds used by this process), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy / tick, (int(own[11]) + int(own[12])) / tick  # utime + stime, all threads


def timed(fn, model, batch, sync) -> tuple[float, float]:
    """(wall seconds, CPU seconds other processes used meanwhile: a contention check)."""
    sync()
    busy0, own0 = cpu_counters()
    start = time.perf_counter()
    fn(model, batch)
    sync()
    wall = time.perf_counter() - start
    busy1, own1 = cpu_counters()
    return wall, max(0.0, (busy1 - busy0) - (own1 - own0))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where not allowed.

    Without it, a transient peak while building the model and reading the images would hide the peak
    of a small model's run (ru_maxrss only ever grows).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def memory_probe(model_name: str, mode: str, images: int, device: str) -> dict:
    """Peak memory of one run of ``mode`` (meant for a fresh process)."""
    model, batch = load(model_name, images, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        MODES[mode](model, batch)
        torch.cuda.synchronize()
        return {"method": "torch.cuda.max_memory_allocated - memory_allocated before",
                "peak_increase_bytes": torch.cuda.max_memory_allocated() - before}
    reset = reset_peak_rss()
    before_rss = rss_bytes()
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    MODES[mode](model, batch)
    after_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    hwm = vm_hwm()
    if reset:
        method, peak = "VmHWM after - resident set before, peak mark reset via /proc/self/clear_refs", hwm
    else:
        method, peak = "ru_maxrss after - resident set before (peak mark could not be reset)", after_max
    return {"method": method + ", fresh subprocess",
            "peak_increase_bytes": peak - before_rss, "resident_before_bytes": before_rss,
            "vm_hwm_after_bytes": hwm, "peak_reset": reset,
            "ru_maxrss_before_bytes": before_max, "ru_maxrss_after_bytes": after_max,
            "ru_maxrss_increase_over_resident_bytes": after_max - before_rss}


def measure(model_name: str, images: int, rounds: int, device: str) -> dict:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    model, batch = load(model_name, images, device)
    load_before = os.getloadavg()
    timed(run_fisher, model, batch, sync)  # warm-up
    timed(run_plain, model, batch, sync)
    fisher, plain, foreign = [], [], {"fisher": [], "plain": []}
    for r in range(rounds):  # alternate, and swap the order every round, so drifts hit both alike
        first, second = ("fisher", "plain") if r % 2 == 0 else ("plain", "fisher")
        for mode in (first, second):
            wall, other = timed(MODES[mode], model, batch, sync)
            (fisher if mode == "fisher" else plain).append(wall / images)
            foreign[mode].append(other / wall)
        print(f"  {model_name} round {r + 1}/{rounds}: fisher {fisher[-1] * 1e3:.1f} ms/img, "
              f"plain {plain[-1] * 1e3:.1f} ms/img; other processes used {foreign['fisher'][-1]:.2f} / "
              f"{foreign['plain'][-1]:.2f} cores meanwhile", flush=True)
    load_after = os.getloadavg()
    del model
    memory = {}
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-probe", mode, "--models", model_name, "--images", str(images),
             "--device", device],
            check=True, capture_output=True, text=True,
        ).stdout
        memory[mode] = json.loads(out.strip().splitlines()[-1])
    med_f, med_p = statistics.median(fisher), statistics.median(plain)
    return {
        "model": model_name,
        "images": images,
        "rounds": rounds,
        "fisher_s_per_image": fisher,
        "plain_s_per_image": plain,
        "fisher_median_s_per_image": med_f,
        "plain_median_s_per_image": med_p,
        "ratio_of_medians": med_f / med_p,
        "median_of_round_ratios": statistics.median(f / p for f, p in zip(fisher, plain, strict=True)),
        "other_processes_cores": foreign,
        "other_processes_cores_max": max(foreign["fisher"] + foreign["plain"]),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "memory": memory,
        "peak_memory_ratio": memory["fisher"]["peak_increase_bytes"] / memory["plain"]["peak_increase_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,sam-vit-b")
    parser.add_argument("--images", type=int, default=None, help="calibration images (default per model)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default per model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="first wait up to this many minutes for the 1-minute load average to fall below 0.3")
    parser.add_argument("--memory-probe", choices=tuple(MODES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    names = [m for m in args.models.split(",") if m]

    if args.memory_probe:
        print(json.dumps(memory_probe(names[0], args.memory_probe, args.images, args.device)))
        return

    deadline = time.time() + 60 * args.wait_idle
    while args.wait_idle and os.getloadavg()[0] >= 0.3 and time.time() < deadline:
        time.sleep(10)
    print(f"load average {os.getloadavg()}", flush=True)
    results = []
    for name in names:
        images, rounds = DEFAULTS.get(name, (2, 3))
        images, rounds = args.images or images, args.rounds or rounds
        print(f"{name}: {images} images, {rounds} alternating rounds on {args.device}", flush=True)
        results.append(measure(name, images, rounds, args.device))

    print(f"\n{'model':<10} {'images':>6} {'rounds':>6} {'Fisher/img':>12} {'plain/img':>12} {'ratio':>7} "
          f"{'peak mem Fisher':>16} {'peak mem plain':>15} {'mem ratio':>9}")
    for r in results:
        f, p = r["fisher_median_s_per_image"], r["plain_median_s_per_image"]
        unit, scale = ("s", 1.0) if p >= 1 else ("ms", 1e3)
        mf, mp = (r["memory"][m]["peak_increase_bytes"] / 2**20 for m in ("fisher", "plain"))
        print(f"{r['model']:<10} {r['images']:>6} {r['rounds']:>6} {f * scale:>9.2f} {unit:<2} {p * scale:>9.2f} {unit:<2} "
              f"{r['ratio_of_medians']:>6.3f}x {mf:>12.0f} MiB {mp:>11.0f} MiB {r['peak_memory_ratio']:>8.2f}x")
    print("other processes kept at most " + ", ".join(f"{r['model']} {r['other_processes_cores_max']:.2f}"
                                                     for r in results) + " cores busy during the timed runs")
    print("target: Fisher / plain <= 1.15x; peak memory: "
          + ("torch.cuda.max_memory_allocated" if args.device.startswith("cuda")
             else "VmHWM after - RSS before (peak mark reset), each mode in a fresh subprocess"))

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"fisher_cost_{machine_tag(args.device)}.json")
    save_json({
        "machine": machine_info(args.device),
        "config": {"data": DATA, "device": args.device,
                   "fisher": "medcore_tp.fisher.diagonal_fisher over the N images, time / N",
                   "plain": "per image: forward_logits + calibration_loss(...).sum().backward(), batch 1; time / N",
                   "timing": "one warm-up each, then alternating rounds (order swapped every round); medians",
                   "memory": "CPU: VmHWM after the run - resident set before, model and images loaded, "
                             "each mode in a fresh subprocess, peak mark reset via /proc/self/clear_refs; CUDA: max_memory_allocated - allocated before"},
        "results": results,
    }, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
