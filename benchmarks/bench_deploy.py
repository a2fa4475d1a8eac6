"""Deployment latency: ``medcore-tp bench`` on ViT-B (dense vs the paper's 60.03%) and LiteMedSAM
(packaged, dense vs 50%), written under benchmarks/results/ tagged with the machine.

The pruned checkpoints are made first (magnitude importance, no refit or recovery: latency does not
depend on which channels go or on their values): ViT-B random init with heads 0.5, MLP 0.7, blocks 10-11 protected (60.03% of
encoder parameters, as benchmarks/bench_prune_vit_b.py); LiteMedSAM's packaged weights at --ratio 0.5.

Usage: ``python benchmarks/bench_deploy.py --which vit-b|lite|both [--device cpu|cuda]
[--prune-device cpu] [--backends torch,sdpa] [--dtype fp32] [--batch 1] [--threads 1,2] [--repeats 3] [--warmup 1] [--pause S] [--tag-suffix X] [--round-to N]
[--release-freed-memory]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SCRATCH = os.path.join(HERE, "..", "out", "bench_deploy")  # where the pruned checkpoints are kept
PRUNE = {
    "vit-b": ("sam-vit-b", ["--random-init", "--heads-ratio", "0.5", "--mlp-ratio", "0.7", "--protect-blocks", "10,11"]),
    "lite": ("lite-medsam", ["--ratio", "0.5"]),
}


def cli(*args: str) -> None:
    print("$ medcore-tp " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "medcore_tp", *args], check=True)


def round_tag(round_to: int) -> str:
    """The suffix result files of a ``--round-to N`` run carry (none for 1)."""
    return f"_round{round_to}" if round_to > 1 else ""


def pruned_checkpoint(which: str, scratch: str, device: str = "cpu", round_to: int = 1) -> str:
    """Prune once on ``device`` (reused by later runs), MLP widths at multiples of ``round_to``; returns the
    checkpoint path."""
    model, extra = PRUNE[which]
    if round_to > 1:
        extra = [*extra, "--round-to", str(round_to)]
    out = os.path.join(scratch, f"{which}-pruned" + (f"-round{round_to}" if round_to > 1 else ""))
    path = os.path.join(out, "pruned.pth")
    if not os.path.exists(path):
        cli("prune", "--model", model, *extra, "--importance", "magnitude", "--recover-steps", "0", "--refit", "none",
            "--no-report", "--no-progress", "--device", device, "--out", out)
    return path


def deploy_models(which: str, scratch: str = SCRATCH) -> dict:
    """``{"dense": model, "pruned": model}`` for ``which`` (``vit-b`` or ``lite``): the dense architecture
    (LiteMedSAM's packaged weights, ViT-B random) and the checkpoint of :func:`pruned_checkpoint`."""
    from medcore_tp.checkpoint import load_model
    from medcore_tp.models import PACKAGED

    name = PRUNE[which][0]
    return {"dense": load_model(name, PACKAGED if which == "lite" else None)[0],
            "pruned": load_model(name, pruned_checkpoint(which, scratch))[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["vit-b", "lite", "both"], default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prune-device", default="cpu",
                        help="Where the pruned checkpoint is made (latency does not depend on it) [default: cpu].")
    parser.add_argument("--backends", default="torch,sdpa")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--batch", default="1")
    parser.add_argument("--parts", default="encoder")
    parser.add_argument("--repeats", default="3")
    parser.add_argument("--warmup", default="1", help="Untimed runs per model before the timed ones.")
    parser.add_argument("--pause", default=None, help="bench's --pause: untimed seconds before every run [its default].")
    parser.add_argument("--threads", default=None, help="Intra-op thread counts, e.g. 1,2 [default: torch's].")
    parser.add_argument("--tag-suffix", default="")
    parser.add_argument("--round-to", type=int, default=1,
                        help="Prune with --round-to N (tagged _roundN) to see what aligned MLP widths buy.")
    parser.add_argument("--scratch", default=SCRATCH)
    parser.add_argument("--release-freed-memory", action="store_true",
                        help="Run medcore-tp --release-freed-memory bench (glibc's malloc defaults, tagged _released): "
                             "large freed blocks go back to the kernel and page faults cost the stock dense ViT-B "
                             "encoder 10.06 s instead of 6.30 s per forward on the 2-core VM.")
    parser.add_argument("--dry-run", action="store_true", help="Print the commands only.")
    args = parser.parse_args()
    targets = ["vit-b", "lite"] if args.which == "both" else [args.which]
    if args.dry_run:  # no torch import: the dry run only checks the arguments
        machine = "cuda-GPU" if args.device.startswith("cuda") else "cpuN"
    else:
        from _machine import machine_tag

        machine = machine_tag(args.device)
    for which in targets:
        model = PRUNE[which][0]
        tag = (f"{which}_{machine}{args.tag_suffix}" + round_tag(args.round_to)
               + ("_released" if args.release_freed_memory else ""))
        if args.dry_run:
            print(f"would prune {model} and run {'--release-freed-memory ' if args.release_freed_memory else ''}"
                  f"bench --backends {args.backends} --dtype {args.dtype} "
                  f"--batch {args.batch} --device {args.device} -> {RESULTS}/bench_deploy_{tag}.*")
            continue
        ckpt = pruned_checkpoint(which, args.scratch, args.prune_device, args.round_to)
        cli(*(["--release-freed-memory"] if args.release_freed_memory else []),
            "bench", "--model", model, "--checkpoint", ckpt, "--backends", args.backends, "--dtype", args.dtype,
            "--batch", args.batch, "--parts", args.parts, "--repeats", args.repeats, "--warmup", args.warmup,
            "--device", args.device,
            "--out", RESULTS, "--tag", f"deploy_{tag}".removeprefix("bench_"),
            *(["--threads", args.threads] if args.threads else []),
            *(["--pause", args.pause] if args.pause is not None else []))


if __name__ == "__main__":
    main()
