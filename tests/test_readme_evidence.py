"""The README's evidence table is the fair-evidence JSON, as benchmarks/plot_evidence.py prints it:
no number in it is typed by hand (issue: fair evidence)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "fair_evidence.json"


def _plot_evidence():
    spec = importlib.util.spec_from_file_location("plot_evidence", REPO / "benchmarks" / "plot_evidence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_readme_evidence_table_is_the_json_as_printed():
    if not RESULT.is_file():
        pytest.skip("benchmarks/results/fair_evidence.json is not there yet")
    result = json.loads(RESULT.read_text())
    mod = _plot_evidence()
    readme = (REPO / "README.md").read_text()
    assert mod.table(result) in readme, "README's evidence table differs from `python benchmarks/plot_evidence.py`"
    results_md = (REPO / "benchmarks" / "RESULTS.md").read_text()
    assert mod.targets_table(result) in results_md, "RESULTS.md's targets table differs from plot_evidence.py's"


def test_the_table_is_the_mean_of_the_seeds():
    """The table's cells are means over the rows of a point, with every seed's value listed."""
    mod = _plot_evidence()
    row = lambda seed, acc: {"point": "80", "lambda_w": 15.0, "seed": seed,  # noqa: E731
                             "plain": {"test_acc": 0.7, "params": 1000},
                             "pgnas": {"test_acc": acc, "params": 800, "kept_fraction_of_supernet_params": 0.8}}
    result = {"rows": [row(0, 0.6), row(1, 0.5)], "config": {"candidates": 30, "epochs": 8}, "finetune": {"epochs": 2}}
    table = mod.table(result)
    assert "| **PGNAS**: best of 30 on validation, no fine-tuning | 45.00 % (40.0, 50.0) |" in table
    assert "| the full super-network trained plainly (1k params) | 30.00 % (30.0, 30.0) |" in table
