"""``prune --round-to N``: pruned MLP widths stay multiples of N."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from medcore_tp.budget import Budget, round_mlp_budget
from medcore_tp.cli import main
from medcore_tp.errors import MedcoreError


def test_round_mlp_budget_keeps_multiples():
    budget = Budget(heads=[1, 0, 2], mlp=[1000, 0, 2000])
    out = round_mlp_budget(budget, [3072, 3072, 3072], 64)
    kept = [3072 - m for m in out.mlp]
    assert kept == [2048, 3072, 1088]  # 2072 -> 2048, untouched block stays, 1072 -> 1088 (nearest)
    assert out.heads == budget.heads
    assert round_mlp_budget(budget, [3072] * 3, 1) == budget
    assert round_mlp_budget(Budget([0], [250]), [256], 64).mlp == [192]  # never below one multiple
    with pytest.raises(MedcoreError, match="round_to 0"):
        round_mlp_budget(budget, [3072] * 3, 0)


def test_prune_round_to_on_tiny(tmp_path):
    res = CliRunner().invoke(main, ["prune", "--recover-steps", "0", "--model", "tiny", "--random-init",
                                    "--importance", "magnitude", "--heads-ratio", "0.25", "--mlp-ratio", "0.45",
                                    "--protect-blocks", "3", "--round-to", "48", "--out", str(tmp_path)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "--round-to 48: MLP widths kept at multiples of 48" in res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    widths = summary["mlp_per_block"]
    assert widths[3] == 256 and all(w % 48 == 0 for w in widths[:3]), widths
    assert summary["round_to"] == 48
