"""The examples run as a user would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_plain_torch_pruning_example(tmp_path):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "prune_with_torch_pruning.py"), "--out", str(tmp_path / "p.pth")],
        check=True, capture_output=True, text=True,
    ).stdout
    assert "heads per block [2, 2, 2, 2]" in out
    diff = float(re.search(r"differs by at most (\S+)", out).group(1))
    assert diff < 1e-4
