"""The tables in README.md and docs/benchmarks.md are the numbers in benchmarks/results, not typed."""

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

    page = (ROOT / "README.md").read_text()
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

    page = (ROOT / "README.md").read_text()
    start = page.index("<!-- table:deploy -->") + len("<!-- table:deploy -->\n")
    end = page.index("<!-- /table:deploy -->")
    emptied = page[:start] + page[end:]
    assert rt.render(emptied) == page
