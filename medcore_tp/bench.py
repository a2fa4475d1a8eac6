"""Latency of a dense and a pruned model side by side, in several backends, dtypes and batch sizes.

For every (backend, dtype, batch) the dense and the pruned model are timed alternately in one process
(warm-up first), so drifts in machine load hit both alike; each figure is the median of the repeats
with its min and max. ``pause`` puts untimed seconds of quiet before every run (default
:data:`PAUSE_S`, none): a runtime's worker threads spin on for a while after a run, and ONNX Runtime
gives every session a pool of its own, so back to back the model just timed can take cores from the
next one, a cost that would fall on the shorter (pruned) run the most. ``part="encoder"`` times the
image encoder, ``"model"`` the encoder plus the box decoder (one box per image). Speedups sit next to
the encoder FLOP ratio (``torch.utils.flop_counter``).
Every backend runs the same fixed inputs (:func:`medcore_tp.export.example_inputs`), and each row
records how far its output lies from the same model's eager fp32 output on the same device at the
same thread count (``*_max_rel_diff``: the largest absolute difference over the reference's largest
magnitude), so a faster backend or dtype is read next to what it changes. On CUDA, TF32 is turned
off for the whole run (restored afterwards): fp32 rows, and the reference, are plain fp32.

Backends: ``torch`` (eager, segment_anything's own attention), ``fold`` (eager with every batch norm
folded into its convolution, :mod:`medcore_tp.conv_bn_fold`; TinyViT only, SAM ViT has none),
``sdpa`` (eager with :mod:`medcore_tp.fast_attention` and :mod:`medcore_tp.token_layout`; SAM ViT only), ``compile`` (``torch.compile``
of the sdpa model for SAM ViT, whose attention cores stay eager on the CPU, of the folded one for TinyViT), ``onnxruntime`` (the export of
:mod:`medcore_tp.export`, fp32 only) and ``openvino`` (the same export in OpenVINO on the CPU, fp32 or
bf16, :mod:`medcore_tp.runtime`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcore_tp.atomic import atomic_write
from medcore_tp.conv_bn_fold import fold_conv_bn
from medcore_tp.errors import MedcoreError
from medcore_tp.export import BoxDecoder, example_inputs, export_onnx, exportable
from medcore_tp.fast_attention import use_sdpa
from medcore_tp.profile import flops_torch
from medcore_tp.runtime import RUNTIME_PRECISIONS, check_runtime
from medcore_tp.token_layout import use_contiguous_tokens

BACKENDS = ("torch", "fold", "sdpa", "compile", "onnxruntime", "openvino")
EXPORTED = ("onnxruntime", "openvino")  # backends that run the ONNX export
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PARTS = ("encoder", "model")

__all__ = [
    "BACKENDS", "DTYPES", "BenchRow", "backend_model", "check_request", "format_rel_diff", "plot", "rows_to_dicts",
    "run_bench",
]


@dataclass
class BenchRow:
    """One (backend, dtype, batch, part) measurement of the dense and the pruned model."""

    backend: str
    dtype: str
    batch: int
    part: str
    threads: int  # intra-op threads of torch, ONNX Runtime and OpenVINO for this row
    dense_median_s: float
    dense_min_s: float
    dense_max_s: float
    pruned_median_s: float
    pruned_min_s: float
    pruned_max_s: float
    speedup: float  # dense / pruned median latency
    flop_ratio: float  # dense / pruned encoder FLOPs
    speedup_over_flop_ratio: float
    pruned_vs_dense_torch_fp32: float  # dense eager fp32 latency / this pruned latency (same batch, part)
    images_per_s_dense: float
    images_per_s_pruned: float
    # max |output - eager fp32 output| / max |eager fp32 output|, same model and inputs (0 for torch fp32)
    dense_max_rel_diff: float = float("nan")
    pruned_max_rel_diff: float = float("nan")


def check_request(backends: Sequence[str], dtypes: Sequence[str], device: torch.device, is_vit: bool) -> list[str]:
    """One-line errors for combinations that cannot run, before any work; returns notes on what is skipped."""
    for b in backends:
        if b not in BACKENDS:
            raise MedcoreError(f"--backends {b}: unknown backend, choose from {', '.join(BACKENDS)}")
    for d in dtypes:
        if d not in DTYPES:
            raise MedcoreError(f"--dtype {d}: unknown dtype, choose from {', '.join(DTYPES)}")
    for b in backends:
        allowed = RUNTIME_PRECISIONS.get(b, tuple(DTYPES))
        if not any(d in allowed for d in dtypes):
            raise MedcoreError(f"--dtype {','.join(dtypes)}: the {b} backend runs {' or '.join(allowed)} only; "
                               f"leave {b} out of --backends or add --dtype {allowed[0]}")
    for b in EXPORTED:
        if b in backends and device.type != "cpu":
            raise MedcoreError(f"--device {device}: the {b} backend is measured on cpu only here")
    if "openvino" in backends and "bf16" in dtypes:
        check_runtime("openvino", "bf16")
    if device.type == "cpu" and "fp16" in dtypes:
        raise MedcoreError("--dtype fp16: PyTorch has no fast fp16 kernels on the CPU; use bf16 or fp32 there")
    notes = [f"{b}: skipped, {_ONE_FAMILY[b][1]}" for b in backends if not _runs(b, is_vit)]
    return notes + [f"{b} {d}: skipped, the {b} backend runs {' or '.join(RUNTIME_PRECISIONS[b])} only"
                    for b in backends if b in RUNTIME_PRECISIONS and _runs(b, is_vit) for d in dtypes if d not in RUNTIME_PRECISIONS[b]]


# backends for one encoder family only: (runs on SAM ViT?, why it is skipped on the other family)
_ONE_FAMILY = {
    "sdpa": (True, "the fused rel-pos attention is for SAM's ViT (TinyViT keeps its own attention)"),
    "fold": (False, "SAM's ViT has no batch norm to fold into a convolution"),
}


def _runs(backend: str, is_vit: bool, dtype: str | None = None) -> bool:
    """Whether ``backend`` applies to the architecture (:data:`_ONE_FAMILY`; the others run on both)
    and, given ``dtype``, runs it (:data:`RUNTIME_PRECISIONS`)."""
    if dtype is not None and dtype not in RUNTIME_PRECISIONS.get(backend, tuple(DTYPES)):
        return False
    return backend not in _ONE_FAMILY or _ONE_FAMILY[backend][0] == is_vit


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def backend_model(model: nn.Module, backend: str) -> nn.Module:
    """An eval-mode CPU fp32 copy of ``model`` with the module changes the eager ``backend`` times:
    ``sdpa`` and ``compile`` swap SAM ViT's attention (:func:`medcore_tp.fast_attention.use_sdpa`) and
    token layout (:func:`medcore_tp.token_layout.use_contiguous_tokens`); ``fold`` and ``compile`` fold
    TinyViT's batch norms (:func:`medcore_tp.conv_bn_fold.fold_conv_bn`); other backends change nothing.
    ``model`` itself is left alone."""
    from medcore_tp.arch import sam_vit

    model = exportable(model)
    is_vit = sam_vit.is_encoder(model.image_encoder)
    if backend in ("sdpa", "compile") and is_vit:
        use_contiguous_tokens(use_sdpa(model))
    if backend in ("fold", "compile") and not is_vit:
        fold_conv_bn(model)
    return model.eval()  # the swapped-in modules start in training mode


def _torch_runner(model: nn.Module, backend: str, dtype: torch.dtype, device: torch.device, batch: int,
                  part: str) -> Callable[[], Any]:
    model = backend_model(model, backend).to(device=device, dtype=dtype)
    model.prompt_encoder.float()  # fp32 in every dtype: see BoxDecoder
    images, boxes = example_inputs(model, batch)
    images = images.to(device=device, dtype=dtype)
    boxes = boxes.to(device=device)
    encoder = model.image_encoder
    decoder = BoxDecoder(model)
    if backend == "compile":
        encoder = torch.compile(encoder)
        decoder = torch.compile(decoder)

    def encode():
        with torch.inference_mode():
            return encoder(images)

    def whole():
        with torch.inference_mode():
            return decoder(encoder(images), boxes)

    return encode if part == "encoder" else whole


def _export_runner(model: nn.Module, folder: Path, label: str, batch: int, part: str, name: str,
                   threads: int, runtime: str, precision: str) -> Callable[[], Any]:
    from medcore_tp.runtime import OnnxSam

    path = folder / f"{label}.onnx"
    if not path.exists():  # exported once, run by every runtime
        export_onnx(model, path, name, pruned=label == "pruned")
    ort_model = OnnxSam(path, threads=threads, runtime=runtime, precision=precision)
    images, boxes = (t.numpy() for t in example_inputs(model, batch))
    if part == "encoder":
        return lambda: ort_model.encode(images)
    return lambda: ort_model.decode(ort_model.encode(images), boxes)


def _rel_diff(out: Any, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| for a runner's output (a tensor of any dtype and device, or an array)."""
    out = torch.as_tensor(out).detach().float().cpu()
    if out.shape != ref.shape:  # broadcasting would hide it
        raise MedcoreError(f"a backend returned shape {tuple(out.shape)}, eager fp32 {tuple(ref.shape)}")
    scale = ref.abs().max().item()
    return (out - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def format_rel_diff(x: float | None) -> str:
    """A ``*_max_rel_diff`` for tables: "0", "1.2e-03", or "-" when not measured (None or NaN)."""
    if x is None or x != x:
        return "-"
    return "0" if x == 0 else f"{x:.1e}"


# none by default: in a loop of two bare ONNX Runtime sessions on the 2-core CPU, 10-300 ms of quiet took
# the 50% LiteMedSAM's pruned encoder from 315 to 282-293 ms at two threads, but in bench's own runs
# (bench_deploy_lite_cpu2_pause.json against _nopause.json) 0.1 s moved no ratio beyond the spread
PAUSE_S = 0.0


def _time(fn: Callable[[], Any], sync: Callable[[], None], pause: float) -> float:
    sync()
    time.sleep(pause)
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def run_bench(
    dense: nn.Module,
    pruned: nn.Module,
    name: str,
    backends: Sequence[str] = ("torch", "sdpa"),
    dtypes: Sequence[str] = ("fp32",),
    batches: Sequence[int] = (1,),
    parts: Sequence[str] = ("encoder",),
    device: torch.device | None = None,
    repeats: int = 3,
    warmup: int = 1,
    log: Callable[[str], None] = print,
    threads: Sequence[int] | None = None,
    pause: float = PAUSE_S,
) -> list[BenchRow]:
    """Time ``dense`` against ``pruned`` (architecture ``name``) in every combination; see the module docstring.

    ``threads``: intra-op thread counts to measure, each for every other combination (torch's
    ``set_num_threads`` and ONNX Runtime's ``intra_op_num_threads`` alike; restored afterwards);
    default: torch's current count only. On a small CPU one thread can give the larger pruned / dense
    ratio, because the pruned model's smaller GEMMs parallelise worse. ``pause``: untimed seconds of
    quiet before every run (0 to 60; see the module docstring)."""
    if repeats < 1 or warmup < 0:
        raise MedcoreError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    if not 0 <= pause <= 60:
        raise MedcoreError(f"pause {pause}: give seconds from 0 to 60", "pause")
    before = torch.get_num_threads()
    threads = list(threads) if threads else [before]
    if min(threads) < 1:
        raise MedcoreError(f"--threads {','.join(map(str, threads))}: thread counts must be >= 1")
    from medcore_tp.arch import sam_vit

    device = device or torch.device("cpu")
    is_vit = sam_vit.is_encoder(dense.image_encoder)
    notes = check_request(backends, dtypes, device, is_vit)
    for note in notes:
        log(note)
    flop_ratio = flops_torch(dense)["total"] / flops_torch(pruned)["total"]
    sync = _sync(device)
    rows: list[BenchRow] = []
    eager_fp32: dict[tuple[int, int, str], float] = {}
    refs: dict[tuple, torch.Tensor] = {}  # eager fp32 outputs per (model, threads, batch, part)

    def reference(key: tuple, model: nn.Module, batch: int, part: str) -> torch.Tensor:
        if key not in refs:
            out = _torch_runner(model, "torch", torch.float32, device, batch, part)()
            refs[key] = torch.as_tensor(out).float().cpu()
        return refs[key]

    combos = [(t, b, d, n, p) for t in threads for b in backends for d in dtypes if _runs(b, is_vit, d)
              for n in batches for p in parts]
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with tempfile.TemporaryDirectory(prefix="medcore-bench-") as tmp:
            for t, backend, dtype, batch, part in combos:
                torch.set_num_threads(t)
                what = f"{backend} {dtype} batch {batch} {part}, {t} thread{'s' if t > 1 else ''}"
                log(f"{what}: preparing")
                if backend in EXPORTED:
                    runs = {label: _export_runner(m, Path(tmp), label, batch, part, name, t, backend, dtype)
                            for label, m in (("dense", dense), ("pruned", pruned))}
                else:
                    runs = {label: _torch_runner(m, backend, DTYPES[dtype], device, batch, part)
                            for label, m in (("dense", dense), ("pruned", pruned))}
                diffs = {}
                for label, m in (("dense", dense), ("pruned", pruned)):
                    out = runs[label]()  # the first call doubles as a warm-up (and compiles)
                    key = (label, t, batch, part)
                    if backend == "torch" and dtype == "fp32":  # is the reference: no second eager run
                        refs.setdefault(key, torch.as_tensor(out).float().cpu())
                    diffs[label] = _rel_diff(out, reference(key, m, batch, part))
                    del out
                for _ in range(warmup - 1 + (1 if backend == "compile" else 0)):
                    for fn in runs.values():
                        _time(fn, sync, pause)
                times: dict[str, list[float]] = {"dense": [], "pruned": []}
                for _ in range(repeats):
                    for label, fn in runs.items():
                        times[label].append(_time(fn, sync, pause))
                row = _row(backend, dtype, batch, part, t, times, flop_ratio)
                row.dense_max_rel_diff, row.pruned_max_rel_diff = diffs["dense"], diffs["pruned"]
                if backend == "torch" and dtype == "fp32":
                    eager_fp32[(t, batch, part)] = row.dense_median_s
                ref = eager_fp32.get((t, batch, part))
                row.pruned_vs_dense_torch_fp32 = ref / row.pruned_median_s if ref else float("nan")
                rows.append(row)
                log(f"{what}: dense {row.dense_median_s:.3f} s, pruned {row.pruned_median_s:.3f} s, "
                    f"speedup {row.speedup:.2f}x (FLOP ratio {flop_ratio:.2f}x), output vs eager fp32 "
                    f"{row.dense_max_rel_diff:.1e} / {row.pruned_max_rel_diff:.1e}")
                del runs
    finally:
        torch.set_num_threads(before)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return rows


def _row(backend: str, dtype: str, batch: int, part: str, threads: int, times: dict[str, list[float]],
         flop_ratio: float) -> BenchRow:
    d, p = times["dense"], times["pruned"]
    dm, pm = statistics.median(d), statistics.median(p)
    return BenchRow(
        backend=backend, dtype=dtype, batch=batch, part=part, threads=threads,
        dense_median_s=dm, dense_min_s=min(d), dense_max_s=max(d),
        pruned_median_s=pm, pruned_min_s=min(p), pruned_max_s=max(p),
        speedup=dm / pm, flop_ratio=flop_ratio, speedup_over_flop_ratio=dm / pm / flop_ratio,
        pruned_vs_dense_torch_fp32=float("nan"), images_per_s_dense=batch / dm, images_per_s_pruned=batch / pm,
    )


def rows_to_dicts(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    """Rows as plain dicts (NaN as None, for JSON)."""
    out = []
    for r in rows:
        d = asdict(r)
        out.append({k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()})
    return out


def plot(rows: Sequence[BenchRow], path: str | Path, title: str) -> None:
    """Bar chart: median latency of dense and pruned per (backend, dtype, batch, part), min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len({r.threads for r in rows}) > 1
    labels = [f"{r.backend}\n{r.dtype} b{r.batch}" + ("" if r.part == "encoder" else "\nwhole")
              + (f"\n{r.threads}t" if several else "") for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    for offset, key, colour in ((-0.2, "dense", "#888888"), (0.2, "pruned", "#2a7ab9")):
        med = [getattr(r, f"{key}_median_s") for r in rows]
        err = [[m - getattr(r, f"{key}_min_s") for m, r in zip(med, rows, strict=True)],
               [getattr(r, f"{key}_max_s") - m for m, r in zip(med, rows, strict=True)]]
        ax.bar([i + offset for i in x], med, width=0.4, yerr=err, capsize=3, color=colour, label=key)
    for i, r in enumerate(rows):
        ax.annotate(f"{r.speedup:.2f}x", (i + 0.2, r.pruned_median_s), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("latency per batch (s), median of repeats")
    ax.set_title(title + f"  (encoder FLOP ratio {rows[0].flop_ratio:.2f}x)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)

