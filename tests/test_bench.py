"""``medcore-tp bench`` on ``tiny`` / ``lite-tiny``, its one-line errors, and the GPU suite's dry run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from medcore_tp import save_pruned
from medcore_tp.arch import adapter_for
from medcore_tp.cli import main
from medcore_tp.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _error_line(res) -> str:
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.fixture(scope="module")
def pruned_tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("tiny")
    adapter_for(model).resize(model.image_encoder, [2, 2, 2, 4], [64, 64, 64, 256])
    path = tmp_path_factory.mktemp("bench") / "pruned.pth"
    save_pruned(model, path, base="tiny")
    return path


@pytest.mark.slow
def test_bench_writes_table_csv_json_png(pruned_tiny, tmp_path):
    res = run("bench", "--model", "tiny", "--checkpoint", pruned_tiny, "--backends", "torch,sdpa,onnxruntime",
              "--batch", "1,2", "--repeats", 2, "--warmup", 0, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    assert [(r["backend"], r["batch"]) for r in rows] == [(b, n) for b in ("torch", "sdpa", "onnxruntime") for n in (1, 2)]
    flops = rows[0]["flop_ratio"]
    assert flops > 1.5 and all(r["flop_ratio"] == flops for r in rows)
    for r in rows:
        assert r["dense_min_s"] <= r["dense_median_s"] <= r["dense_max_s"]
        assert r["speedup"] == pytest.approx(r["dense_median_s"] / r["pruned_median_s"])
        assert r["images_per_s_pruned"] == pytest.approx(r["batch"] / r["pruned_median_s"])
    assert data["machine"]["torch_threads"] >= 1 and data["arch"]["heads_per_block"] == [2, 2, 2, 4]
    # two machines with the same core count can differ several-fold: the record names the CPU
    assert data["machine"]["cpu_count"] == os.cpu_count() and isinstance(data["machine"]["cpu_model"], str)
    assert (tmp_path / "bench.csv").read_text().count("\n") == len(rows) + 1
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "speedup" in res.output and "FLOP ratio" in res.output
    # every backend ran the same inputs: eager fp32 is its own reference, the others agree with it
    for r in rows:
        for label in ("dense", "pruned"):
            diff = r[f"{label}_max_rel_diff"]
            assert diff == 0 if r["backend"] == "torch" else 0 < diff < 1e-4, (r["backend"], label, diff)
    assert "max rel diff dense / pruned" in res.output


def test_bench_bf16_whole_model_and_its_difference_from_fp32(pruned_tiny, tmp_path):
    # bf16 with the box decoder failed before (segment_anything's box embedding is fp32 arithmetic)
    res = run("bench", "--model", "tiny", "--checkpoint", pruned_tiny, "--backends", "torch,sdpa",
              "--dtype", "fp32,bf16", "--parts", "encoder,model", "--repeats", 1, "--warmup", 0, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["backend"], r["dtype"], r["part"]) for r in rows] == [
        (b, d, p) for b in ("torch", "sdpa") for d in ("fp32", "bf16") for p in ("encoder", "model")]
    for r in rows:
        if r["dtype"] == "bf16":  # bf16 keeps 8 bits of mantissa: about 1e-2 of the output's scale
            assert 1e-4 < r["dense_max_rel_diff"] < 0.1 and 1e-4 < r["pruned_max_rel_diff"] < 0.1, r


def test_gpu_tag_names_the_model():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _machine import gpu_tag
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert gpu_tag("NVIDIA H100 80GB HBM3") == "h100"  # not "hbm3", the memory's name
    assert gpu_tag("NVIDIA A100-SXM4-80GB") == "a100"
    assert gpu_tag("NVIDIA GeForce RTX 4090") == "rtx4090"
    assert gpu_tag("Tesla T4") == "t4"


def test_bench_lite_skips_sdpa_and_says_so_and_folds(tmp_path):
    torch.manual_seed(0)
    model = build_model("lite-tiny", checkpoint=None)
    adapter_for(model).resize(model.image_encoder, [1, 1, 2], [40, 96, 150])
    save_pruned(model, tmp_path / "p.pth", base="lite-tiny")
    res = run("bench", "--model", "lite-tiny", "--checkpoint", tmp_path / "p.pth", "--backends", "torch,sdpa,fold",
              "--parts", "encoder,model", "--repeats", 1, "--warmup", 0, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert "sdpa: skipped" in res.output and "fold: skipped" not in res.output
    rows = json.loads((tmp_path / "o" / "bench.json").read_text())["rows"]
    assert [(r["backend"], r["part"]) for r in rows] == [(b, p) for b in ("torch", "fold") for p in ("encoder", "model")]


def test_bench_vit_skips_fold_and_says_so(pruned_tiny, tmp_path):
    res = run("bench", "--model", "tiny", "--checkpoint", pruned_tiny, "--backends", "torch,fold",
              "--repeats", 1, "--warmup", 0, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "fold: skipped, SAM's ViT has no batch norm" in res.output
    assert [r["backend"] for r in json.loads((tmp_path / "bench.json").read_text())["rows"]] == ["torch"]


def test_bench_threads_measures_each_count_and_restores_torch(pruned_tiny, tmp_path):
    before = torch.get_num_threads()
    res = run("bench", "--model", "tiny", "--checkpoint", pruned_tiny, "--backends", "torch,onnxruntime",
              "--threads", "1,2", "--repeats", 1, "--warmup", 0, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["threads"], r["backend"]) for r in rows] == [(t, b) for t in (1, 2) for b in ("torch", "onnxruntime")]
    # each row's reference is the eager fp32 dense model at the same thread count
    for ort_row, eager in ((rows[1], rows[0]), (rows[3], rows[2])):
        assert ort_row["pruned_vs_dense_torch_fp32"] == pytest.approx(eager["dense_median_s"] / ort_row["pruned_median_s"])
    assert torch.get_num_threads() == before
    assert "1/2 threads" in res.output
    # eager fp32 is its own reference at each thread count; ONNX Runtime agrees with it at both
    for r in rows:
        assert r["dense_max_rel_diff"] == r["pruned_max_rel_diff"] == 0 if r["backend"] == "torch" else \
            r["dense_max_rel_diff"] < 1e-4
    res = run("bench", "--model", "tiny", "--checkpoint", pruned_tiny, "--threads", "0", "--out", tmp_path / "x")
    assert "--threads 0: give thread counts >= 1" in _error_line(res)
    assert not (tmp_path / "x").exists()


def test_bench_openvino_runs_the_export_and_skips_what_a_backend_cannot_run(pruned_tiny, tmp_path, openvino_has_bf16):
    # in a child process: OpenVINO stays out of the pytest process (see conftest)
    dtypes = ("fp32", "bf16") if openvino_has_bf16 else ("fp32",)
    out = subprocess.run([sys.executable, "-m", "medcore_tp", "bench", "--model", "tiny", "--checkpoint", str(pruned_tiny),
                          "--backends", "torch,onnxruntime,openvino", "--dtype", ",".join(dtypes), "--threads", "1",
                          "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    expected = [(b, d) for b in ("torch", "onnxruntime", "openvino") for d in dtypes
                if not (b == "onnxruntime" and d == "bf16")]
    assert [(r["backend"], r["dtype"]) for r in rows] == expected
    if "bf16" in dtypes:
        assert "onnxruntime bf16: skipped, the onnxruntime backend runs fp32 only" in out.stdout
    eager = rows[0]["dense_median_s"]
    for r in rows[1:]:  # every row against the eager fp32 dense model of the same run
        assert r["pruned_vs_dense_torch_fp32"] == pytest.approx(eager / r["pruned_median_s"])


def test_bench_cuda_without_gpu(pruned_tiny, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = run("bench", "--model", "tiny", "--checkpoint", pruned_tiny, "--device", "cuda", "--out", tmp_path)
    assert "--device cuda: CUDA is not available on this machine" in _error_line(res)
    assert not list(tmp_path.iterdir())


def test_bench_dtype_the_backend_cannot_run(pruned_tiny, tmp_path):
    res = run("bench", "--model", "tiny", "--checkpoint", pruned_tiny, "--backends", "torch,onnxruntime",
              "--dtype", "bf16", "--out", tmp_path)
    assert ("--dtype bf16: the onnxruntime backend runs fp32 only; leave onnxruntime out of --backends or add "
            "--dtype fp32") in _error_line(res)
    res = run("bench", "--model", "tiny", "--checkpoint", pruned_tiny, "--backends", "tensorrt", "--out", tmp_path)
    assert "--backends tensorrt: unknown backend" in _error_line(res)
    assert not list(tmp_path.iterdir())


def test_gpu_suite_dry_run_fits_and_writes_nothing(tmp_path):
    script = ROOT / "benchmarks" / "gpu_suite.sh"
    results = sorted((ROOT / "benchmarks" / "results").iterdir())
    out = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "nothing is installed, run or written" in out.stdout
    # every step the suite would run, its scripts present, its bench arguments accepted by bench_deploy
    for name in ("bench_deploy.py", "bench_fisher_cost.py", "bench_evaluate.py"):
        assert f"benchmarks/{name}" in out.stdout and (ROOT / "benchmarks" / name).is_file()
    assert out.stdout.count("would prune") == 4 and "--device cuda" in out.stdout
    # the time limits of all steps (the two-GPU NCCL ones included) add up to at most 8 minutes
    limits = [int(n) for n in re.findall(r"^\s*(?:step|deploy|need) (\d+) ", script.read_text(), flags=re.M)]
    assert len(limits) >= 12 and sum(limits) <= 480
    assert sorted((ROOT / "benchmarks" / "results").iterdir()) == results
    bad = subprocess.run(["bash", str(script), "--fast"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown option --fast" in bad.stderr
    # the install leaves the machine's own CUDA torch alone: no CPU pins; offline from MEDCORE_WHEELS
    install = next(line for line in out.stdout.splitlines() if "pip install" in line)
    assert "constraints.txt" not in install and "--no-index" not in install
    offline = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "MEDCORE_WHEELS": "/wheels"})
    install = next(line for line in offline.stdout.splitlines() if "pip install" in line)
    assert "--no-index --find-links /wheels --no-build-isolation" in install
    packed = subprocess.run(["bash", str(script), "--dry-run", "--pack", str(tmp_path / "pack")], capture_output=True,
                            text=True, timeout=120)
    assert packed.returncode == 0 and "would pack" in packed.stdout and not (tmp_path / "pack").exists()
    bad = subprocess.run(["bash", str(script), "--pack"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--pack needs a folder" in bad.stderr


@pytest.mark.skipif(not (sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"),
                    reason="glibc only")
@pytest.mark.parametrize("release", [False, True])
def test_cli_keeps_freed_memory_says_so_and_records_it(pruned_tiny, tmp_path, release):
    # its own process: the setting is process-wide and would outlive this test in pytest's
    res = subprocess.run([sys.executable, "-m", "medcore_tp", *(["--release-freed-memory"] if release else []),
                          "bench", "--model", "tiny", "--checkpoint", str(pruned_tiny), "--backends", "torch",
                          "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    said = "alternating; glibc keeps freed memory (medcore-tp --release-freed-memory: its defaults)" in res.stdout
    recorded = json.loads((tmp_path / "bench.json").read_text())["machine"].get("keep_freed_memory", False)
    assert said is recorded is (not release)


def test_bench_pauses_untimed_before_every_run_and_records_it(pruned_tiny, tmp_path, monkeypatch):
    # back to back, a runtime's still-spinning threads from the model just timed slowed the next one;
    # the pause must come before every warm-up and timed run, outside the timed span
    import medcore_tp.bench as bench_mod
    from medcore_tp.checkpoint import load_model
    from medcore_tp.errors import MedcoreError

    calls: list[float] = []
    clock = [0.0]  # a fake clock: each reading ticks 1 ms, a pause moves it by the pause

    class FakeTime:
        @staticmethod
        def sleep(seconds: float) -> None:
            calls.append(seconds)
            clock[0] += seconds

        @staticmethod
        def perf_counter() -> float:
            clock[0] += 0.001
            return clock[0]

    monkeypatch.setattr(bench_mod, "time", FakeTime)
    dense, _ = load_model("tiny", None)
    pruned, _ = load_model("tiny", pruned_tiny)
    rows = bench_mod.run_bench(dense, pruned, "tiny", backends=("torch",), repeats=3, warmup=2, log=lambda _: None,
                               pause=0.25)
    assert calls == [0.25] * (2 * (2 - 1) + 2 * 3)  # (warm-ups after the first call + repeats) x 2 models
    # every timed span is one tick: the pause lies outside it
    assert rows[0].dense_max_s == pytest.approx(0.001) and rows[0].pruned_max_s == pytest.approx(0.001)
    with pytest.raises(MedcoreError, match=r"^pause -1: give seconds from 0 to 60") as err:
        bench_mod.run_bench(dense, pruned, "tiny", backends=("torch",), pause=-1, log=lambda _: None)
    assert err.value.param == "pause"
    monkeypatch.undo()
    res = run("bench", "--model", "tiny", "--checkpoint", pruned_tiny, "--backends", "torch", "--repeats", 1,
              "--warmup", 0, "--pause", 0.05, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "bench.json").read_text())["pause_s"] == 0.05
    assert "0.05 s pause before each run" in res.output
    res = run("bench", "--model", "tiny", "--checkpoint", pruned_tiny, "--pause", -1, "--out", tmp_path / "x")
    assert "--pause" in _error_line(res)
    assert not (tmp_path / "x").exists()
