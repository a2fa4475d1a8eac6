"""examples/medcore_importance_metapruner.py runs as a user would run it (tiny model, default args)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "medcore_importance_metapruner.py"


def test_medcore_importance_in_plain_metapruner():
    run = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    out = run.stdout
    assert run.returncode == 0, run.stdout + run.stderr
    assert "stand-in for SAM -> MedSAM" in out
    assert "SYNTHETIC" in out
    assert "heads per block [4, 4, 4, 4] -> [2, 2, 2, 2]" in out
    assert "MLP per block -> [128, 128, 128, 128]" in out
    assert "check: removed heads are exactly the lowest-Q heads in every block (8 heads removed)" in out
    assert "check: removed MLP channels are the lowest-Q channels in every block" in out
    assert "FAILED" not in out
    # one line per block: two heads removed, two kept, and every removed Q <= every kept Q
    rows = re.findall(r"block (\d): removed heads \[(.*?)\] Q \[(.*?)\] \| kept heads \[(.*?)\] Q \[(.*?)\]", out)
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    for _, gone, q_gone, kept, q_kept in rows:
        gone_heads = [int(x) for x in gone.split(",")]
        kept_heads = [int(x) for x in kept.split(",")]
        assert len(gone_heads) == 2 and len(kept_heads) == 2
        assert sorted(gone_heads + kept_heads) == [0, 1, 2, 3]
        assert max(float(x) for x in q_gone.split(",")) <= min(float(x) for x in q_kept.split(","))
    alphas = [float(a) for a in re.search(r"alpha per block: (.*)", out).group(1).split(",")]
    assert len(alphas) == 4 and all(0.0 <= a <= 1.0 for a in alphas)
