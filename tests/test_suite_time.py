"""benchmarks/suite_time.py reads pytest's output: the final counts line wherever it is, the workers
and the slowest tests; a run that printed nothing (pytest refused its arguments) still gives a record."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "suite_time.py"


def _module():
    spec = importlib.util.spec_from_file_location("suite_time", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_counts_workers_and_slowest_tests_are_read():
    out = """2 workers [357 items]
........................................................................ [ 20%]
============================= slowest 15 durations =============================
311.41s call     tests/test_readme.py::test_readme_chain[first]
26.40s setup    tests/test_distributed.py::test_sample_with_one_and_two_processes_gives_identical_scores
=========================== short test summary info ============================
SKIPPED [1] tests/test_export_files.py:99: could not import 'onnx': No module named 'onnx'
FAILED tests/test_cli.py::test_x - AssertionError
== 1 failed, 353 passed, 2 skipped, 2 errors, 1 warning in 838.52s (0:13:58) ==
"""
    r = _module().parse(out)
    assert r["counts"] == {"failed": 1, "passed": 353, "skipped": 2, "error": 2, "warning": 1}
    assert r["workers_started"] == 2
    assert r["slowest"][0] == {"seconds": 311.41, "when": "call", "test": "tests/test_readme.py::test_readme_chain[first]"}
    assert r["slowest"][1]["when"] == "setup" and len(r["slowest"]) == 2


def test_nothing_printed_gives_an_empty_record():
    r = _module().parse("")
    assert r["counts"] == {} and r["slowest"] == [] and r["workers_started"] is None
