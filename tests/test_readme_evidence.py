"""The README's evidence table is the fair-evidence JSON, as benchmarks/plot_evidence.py prints it:
no number in it is typed by hand (issue: fair evidence)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "fair_evidence.json"


def _benchmark(name: str):
    """A script of benchmarks/ as a module (benchmarks/ on sys.path while it loads: the scripts import
    each other, fair_evidence_longer -> fair_evidence -> plot_evidence)."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return mod


def _plot_evidence():
    return _benchmark("plot_evidence")


def test_the_readme_evidence_table_is_the_json_as_printed():
    if not RESULT.is_file():
        pytest.skip("benchmarks/results/fair_evidence.json is not there yet")
    result = json.loads(RESULT.read_text())
    mod = _plot_evidence()
    readme = (REPO / "README.md").read_text()
    assert mod.table(result) in readme, "README's evidence table differs from `python benchmarks/plot_evidence.py`"
    results_md = (REPO / "benchmarks" / "RESULTS.md").read_text()
    assert mod.targets_table(result) in results_md, "RESULTS.md's targets table differs from plot_evidence.py's"
    assert mod.costs_table(result) in results_md, "RESULTS.md's costs table differs from plot_evidence.py's"


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


def test_an_arms_cost_counts_everything_it_trains():
    """L1 pruning costs the plain training (once for every size) plus its fine-tuning; the PGNAS
    architecture retrained costs the search plus the retraining; seconds are medians over the seeds."""
    mod = _plot_evidence()
    cost = lambda e, s: {"epochs": e, "images_seen": e * 10, "seconds": s}  # noqa: E731
    row = lambda seed, k: {"point": "80", "lambda_w": 15.0, "seed": seed,  # noqa: E731
                           "plain": {"test_acc": 0.7, "params": 1000, "cost": cost(8, 100.0 * k)},
                           "pgnas": {"test_acc": 0.6, "params": 800, "kept_fraction_of_supernet_params": 0.8, "cost": cost(8, 200.0 * k)},
                           "pgnas_reinit": {"test_acc": 0.65, "params": 800, "cost": cost(8, 90.0 * k)},
                           "l1_layer": {"test_acc": 0.5, "params": 790, "finetuned": {"test_acc": 0.66, "cost": cost(2, 10.0 * k)}}}
    result = {"rows": [row(0, 1), row(1, 2), row(2, 6)], "config": {"candidates": 30, "epochs": 8}, "finetune": {"epochs": 2}}
    table = mod.costs_table(result)  # seed 2 slowed 6x (a shared CPU): the median is not moved by it
    assert "| L1-pruned plain network, per layer, fine-tuned (2 epochs) | 8 once, then 2 per size | 220 (110, 220, 660) |" in table
    assert "| PGNAS architecture trained from scratch (8 epochs) | 8 + 8 per size | 580 (290, 580, 1,740) |" in table
    assert "| narrower shake-shake trained from scratch (8 epochs) | - | - |" in table


def _fair_evidence():
    return _benchmark("fair_evidence")


def _result(seed_accs: dict, config=None):
    """A fair-evidence result of one run: one row per (seed, pgnas test acc) at the 80 % point."""
    rows = [{"point": "80", "lambda_w": 15.0, "seed": seed, "plain": {"test_acc": 0.7, "params": 1000},
             "pgnas": {"test_acc": acc, "params": 800, "kept_fraction_of_supernet_params": 0.8, "supernet_test_acc": 0.65},
             "narrow": {"test_acc": 0.62, "params": 790}} for seed, acc in seed_accs.items()]
    return {"protocol": "p", "config": config or {"candidates": 30, "epochs": 8}, "finetune": {"epochs": 2}, "plain": {},
            "match": 0.05, "points": {"80": 15.0}, "seeds": sorted(seed_accs), "machine": "m", "date": "2026-11-30",
            "rows": rows, "wall_seconds": 10.0}


def test_merging_runs_of_other_seeds_summarises_every_seed():
    """Seeds run in separate sessions join into one result whose summary is over all of them."""
    fe = _fair_evidence()
    merged = fe.merge([_result({0: 0.6}), _result({1: 0.5})])
    assert merged["seeds"] == [0, 1]
    s = merged["summary"]["80"]
    assert s["seeds"] == [0, 1]
    assert abs(s["test_error"]["pgnas"] - 0.45) < 1e-12  # mean of 0.4 and 0.5
    assert s["targets"]["pgnas_at_most_narrow"]["met"] is False  # 0.45 > 0.38
    assert merged["wall_seconds"] == 20.0
    # a later run's row of the same point and seed replaces the earlier one
    again = fe.merge([_result({0: 0.6, 1: 0.5}), _result({1: 0.7})])
    assert abs(again["summary"]["80"]["test_error"]["pgnas"] - 0.35) < 1e-12
    assert len(again["rows"]) == 2
    # a merged result merged again keeps every run it was made of (seed 2 joined to seeds 0 and 1)
    third = _result({2: 0.55})
    third["machine"] = "m2"
    thrice = fe.merge([merged, third])
    assert [run["seeds"] for run in thrice["runs"]] == [[0], [1], [2]] and thrice["wall_seconds"] == 30.0
    assert thrice["machine"] == "m; m2" and thrice["seeds"] == [0, 1, 2]
    # a run given twice (the merged file and one of its parts) counts once
    given_twice = fe.merge([thrice, third])
    assert [run["seeds"] for run in given_twice["runs"]] == [[0], [1], [2]] and given_twice["wall_seconds"] == 30.0


def test_merging_runs_of_another_configuration_is_refused():
    fe = _fair_evidence()
    with pytest.raises(ValueError, match="config"):
        fe.merge([_result({0: 0.6}), _result({1: 0.5}, config={"candidates": 300, "epochs": 8})])


def test_merging_ignores_the_presets_default_lambda_w_but_not_a_points():
    """Every arm runs at its point's own lambda_w: a run made after the preset's default moved (50 ->
    15) joins the earlier ones; the same point at another lambda_w is refused."""
    fe = _fair_evidence()
    later = _result({2: 0.55}, config={"candidates": 30, "epochs": 8, "lambda_w": 15.0})
    merged = fe.merge([_result({0: 0.6}, config={"candidates": 30, "epochs": 8, "lambda_w": 50.0}), later])
    assert merged["seeds"] == [0, 2]
    other_point = _result({1: 0.5})
    other_point["points"] = {"80": 20.0}
    with pytest.raises(ValueError, match="lambda_w"):
        fe.merge([_result({0: 0.6}), other_point])


def _longer():
    return _benchmark("fair_evidence_longer")


def test_the_longer_search_gaps_are_plain_minus_pgnas():
    """The gaps the longer-search experiment turns on: winner's error above plain's, mean network's
    accuracy below plain's, in points (positive: PGNAS behind)."""
    mod = _longer()
    pg = {"test_acc": 0.64, "params": 400, "kept_fraction_of_supernet_params": 0.8, "supernet_test_acc": 0.65,
          "mean_p": 0.1, "cost": {"seconds": 300.0}}
    row = mod.budget_row(pg, {"test_acc": 0.67, "cost": {"seconds": 200.0}}, 80, "x")
    assert abs(row["gap_to_plain_points"] - 3.0) < 1e-9
    assert abs(row["mean_network_below_plain_points"] - 2.0) < 1e-9
    assert abs(row["pgnas_test_error"] - 0.36) < 1e-9 and abs(row["plain_test_error"] - 0.33) < 1e-9
    table = mod.table({"budgets": [row]})
    assert "| **PGNAS behind plain** (points of test error) | +3.00 |" in table
    assert "| **mean network below plain** (points of test accuracy) | +2.00 |" in table


def test_results_md_has_the_longer_search_table_as_printed():
    result_file = REPO / "benchmarks" / "results" / "fair_evidence_longer.json"
    if not result_file.is_file():
        pytest.skip("benchmarks/results/fair_evidence_longer.json is not there yet")
    mod = _longer()
    assert mod.table(json.loads(result_file.read_text())) in (REPO / "benchmarks" / "RESULTS.md").read_text()


def test_a_resumed_runs_cost_counts_every_process_that_trained_it():
    """Seed 2's plain network resumed at epoch 70 of 80: its summary's wall time (111.5 s) is the
    last process's; the cost counts all 80 epochs (training_seconds) plus the stages after them."""
    fe = _fair_evidence()
    resumed = {"epochs": 80, "training_seconds": 862.5, "seconds": {"data": 1.1, "train": 98.8, "test": 7.3, "total": 111.5}}
    assert fe.cost(resumed, 100) == {"epochs": 80, "images_seen": 8000, "seconds": 875.2}
    one_process = {"epochs": 8, "training_seconds": 50.0, "seconds": {"train": 50.4, "score": 20.0, "total": 72.0}}
    assert fe.cost(one_process, 10)["seconds"] == 71.6
    assert fe.cost({"epochs": 8, "seconds": {"total": 72.0}}, 10)["seconds"] == 72.0  # an older summary
