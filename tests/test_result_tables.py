"""The tables in README.md, docs/benchmarks.md and docs/deployment.md are the numbers in benchmarks/results,
not typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "render_tables.py"


def test_pages_match_their_results_files():
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 page(s) differ" in run.stdout


def test_a_hand_edited_number_is_put_back_from_the_results(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # the script imports its sibling renderers
    import render_tables as rt

    page = (ROOT / "docs" / "deployment.md").read_text()
    start = page.index("<!-- table:deploy -->")
    end = page.index("<!-- /table:deploy -->")
    table = page[start:end]
    row = next(line for line in table.splitlines() if line.startswith("| torch |"))
    edited = page.replace(row, row.replace("| torch |", "| torch (typed) |", 1))
    assert edited != page
    assert rt.render(edited) == page


def test_an_empty_pair_of_markers_is_filled(monkeypatch):
    # a table just added to a page has nothing between its markers; --check must not pass it as it is
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import render_tables as rt

    page = (ROOT / "docs" / "deployment.md").read_text()
    start = page.index("<!-- table:deploy -->") + len("<!-- table:deploy -->\n")
    end = page.index("<!-- /table:deploy -->")
    emptied = page[:start] + page[end:]
    assert rt.render(emptied) == page


def _bench_run(path: Path, model: str, folder: str, widths: list[int], rows: list[tuple]) -> None:
    """A ``bench_deploy`` record of a pruned model (its checkpoint folder and an architecture record with
    MLP ``widths``), with one encoder row per (backend, dtype, batch, threads, FLOP ratio, speedup /
    FLOP ratio, dense eager fp32 / pruned) - threads None: the row lacks the field, as older records
    do - and one whole-model row that the summary must skip."""
    import json

    def row(backend, dtype, batch, threads, flop, frac, vs, part="encoder"):
        r = {"backend": backend, "dtype": dtype, "batch": batch, "part": part, "flop_ratio": flop,
             "speedup_over_flop_ratio": frac, "pruned_vs_dense_torch_fp32": vs}
        return r if threads is None else {**r, "threads": threads}

    body = [row(*r) for r in rows] + [row("torch", "fp32", 1, 2, 2.0, 0.99, 9.0, part="model")]
    path.write_text(json.dumps({"model": model, "checkpoint": f"out/{folder}/pruned.pth", "arch": {"mlp": widths},
                                "machine": {"torch_threads": 2}, "rows": body}))


def test_the_targets_summary_counts_every_run_against_its_models_target(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import deploy_table

    _bench_run(tmp_path / "bench_deploy_vit-b_m1.json", "sam-vit-b", "vit-b-pruned", [491], [
        ("sdpa", "fp32", 1, 2, 2.37, 0.96, 3.0), ("sdpa", "fp32", 1, 1, 2.37, 0.90, 2.5),
        ("sdpa", "fp32", 4, 2, 2.37, 0.97, None), ("sdpa", "bf16", 1, 2, 2.37, 0.80, 7.0)])
    # the same pruned model in a second run; a row without threads falls back to the machine's 2
    _bench_run(tmp_path / "bench_deploy_vit-b_m1_again.json", "sam-vit-b", "vit-b-pruned", [491], [
        ("sdpa", "fp32", 1, None, 2.37, 0.95, None)])
    # two pruned models whose FLOP ratios round alike (1.788, 1.792) stay apart
    _bench_run(tmp_path / "bench_deploy_lite_m1.json", "lite-medsam", "lite-pruned", [170], [
        ("openvino", "bf16", 1, 2, 1.788, 0.74, 4.2), ("onnxruntime", "fp32", 1, 2, 1.788, 0.9, 2.1)])
    _bench_run(tmp_path / "bench_deploy_lite_m1_more.json", "lite-medsam", "lite-pruned", [170], [
        ("openvino", "bf16", 1, 2, 1.788, 0.72, 3.9)])
    _bench_run(tmp_path / "bench_deploy_lite_m1_round.json", "lite-medsam", "lite-pruned-round32", [160], [
        ("openvino", "bf16", 1, 2, 1.792, 0.77, 4.8), ("onnxruntime", "fp32", 1, 2, 1.792, 0.899, 4.1)])
    _bench_run(tmp_path / "bench_deploy_lite_m2.json", "lite-medsam", "lite-pruned", [170], [  # another machine
        ("openvino", "bf16", 1, 2, 1.788, 0.99, 9.9)])
    lines = deploy_table.targets("m1", str(tmp_path)).splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    # model, pruned model, FLOP ratio, backend, dtype, batch, threads, runs, range, target, at target, vs eager
    assert cells == [
        ["lite-medsam", "lite-pruned-round32", "1.79x", "onnxruntime", "fp32", "1", "2", "1", "0.90", "0.9", "0 of 1",
         "**4.10x**"],
        ["lite-medsam", "lite-pruned-round32", "1.79x", "openvino", "bf16", "1", "2", "1", "0.77", "0.9", "0 of 1",
         "**4.80x**"],
        # 0.9 exactly is at the target
        ["lite-medsam", "lite-pruned", "1.79x", "onnxruntime", "fp32", "1", "2", "1", "0.90", "0.9", "**1 of 1**", "2.10x"],
        ["lite-medsam", "lite-pruned", "1.79x", "openvino", "bf16", "1", "2", "2", "0.72-0.74", "0.9", "0 of 2",
         "3.90-4.20x"],
        ["sam-vit-b", "vit-b-pruned", "2.37x", "sdpa", "bf16", "1", "2", "1", "0.80", "0.95", "0 of 1", "7.00x"],
        ["sam-vit-b", "vit-b-pruned", "2.37x", "sdpa", "fp32", "1", "1", "1", "0.90", "0.95", "0 of 1", "2.50x"],
        ["sam-vit-b", "vit-b-pruned", "2.37x", "sdpa", "fp32", "1", "2", "2", "0.95-0.96", "0.95", "**2 of 2**",
         "3.00x (1 of 2 runs)"],
        ["sam-vit-b", "vit-b-pruned", "2.37x", "sdpa", "fp32", "4", "2", "1", "0.97", "0.95", "**1 of 1**", "-"],
    ]
