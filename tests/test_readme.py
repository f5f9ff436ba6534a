"""The README runs: every fenced shell command and Python snippet of README.md, in order (in two
chains, each in a temporary folder of its own, so that two test workers can share them), must exit 0, and the quick start must reach the accuracy the README gives. The
README can then no longer drift from the program.

Commands are run exactly as written, except those the table SKIP names (with the reason: they
need a GPU, a data set that cannot be downloaded here, the repository checkout, or hours), which
are not run. Nothing runs at a changed budget: the README's own examples are small.
Files a user would have are made first: nothing (every input the README uses is created by an
earlier README command)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# (pattern, reason it is not run here)
SKIP = [
    (r"^make (search|test)", "the quick start's make targets run in the repository (CI runs `make test` itself; "
                             "`pgnas search --out runs/first` below is the same default search)"),
    (r"--data-dir data/", "needs CIFAR-10 or ImageNet in data/ (no download here)"),
    (r"--nproc_per_node [48]|--nnodes", "needs several GPUs or nodes"),
    (r"mypackage\.models", "stands for the user's own module"),
    (r"gpu_all\.sh", "run by tests/test_gpu_readiness.py::test_gpu_all_runs_every_stage_on_the_cpu"),
    (r"benchmarks/(?!.*--quick)", "a benchmark: minutes to hours (its numbers are in benchmarks/RESULTS.md)"),
    (r"--format onnx|import onnxruntime", None if _has("onnx") and _has("onnxruntime") else "needs the optional onnx extra"),
]


def readme_steps() -> list[tuple[str, str, int]]:
    """(kind, text, line) of every fenced bash command (one per line) and python snippet."""
    steps = []
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(bash|python)\s*$", lines[i])
        if not m:
            i += 1
            continue
        kind, start = m.group(1), i + 1
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        if kind == "python":
            steps.append(("python", "\n".join(body) + "\n", start + 1))
        else:
            for k, line in enumerate(body):
                if line.strip() and not line.lstrip().startswith("#"):
                    steps.append(("bash", line, start + 1 + k))
        i += 1
    return steps


def skip_reason(command: str) -> str | None:
    for pattern, reason in SKIP:
        if reason and re.search(pattern, command):
            return reason
    return None


def test_readme_parses_and_every_skip_is_still_needed():
    steps = readme_steps()
    assert sum(k == "bash" for k, _, _ in steps) > 20 and sum(k == "python" for k, _, _ in steps) >= 4
    for pattern, reason in SKIP:  # a rule nothing matches any more is stale
        assert any(re.search(pattern, t) for k, t, _ in steps if k == "bash"), pattern


# The README's steps run in two chains, each in order in a folder of its own, so that two test workers
# can share them: the quick start's folder `runs/first` and everything that reads it or what is exported
# from it; and the rest. A step both need (the random baseline, which `pgnas report` compares with each)
# runs in both.
FIRST = r"runs/first|cand7|cand17|digit\.png|post3\.pt"
BOTH = r"--out runs/random\b"


def chain_of(text: str) -> set[str]:
    if re.search(BOTH, text):
        return {"first", "rest"}
    return {"first"} if re.search(FIRST, text) else {"rest"}


def test_readme_chains_cover_every_step_and_keep_the_quick_start_first():
    steps = [(k, t, line) for k, t, line in readme_steps() if not skip_reason(t)]
    first = [t for _, t, _ in steps if "first" in chain_of(t)]
    rest = [t for _, t, _ in steps if "rest" in chain_of(t)]
    assert first[0].startswith("pgnas search --out runs/first ") and len(first) > 15 and len(rest) > 15
    assert [t for _, t, _ in steps if chain_of(t) == {"first", "rest"}] == [t for _, t, _ in steps if re.search(BOTH, t)]
    assert not [t for t in rest if re.search(r"runs/first", t)]


@pytest.mark.slow
@pytest.mark.parametrize("chain", ["first", "rest"])
def test_readme_chain(chain, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PGNAS_CACHE": str(tmp_path / "cache")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # pgnas, python, torchrun of this environment
    env["PET_STANDALONE"] = "1"  # torchrun --standalone: a free port, when the other chain runs torchrun too
    ran, skipped, checked_quick_start = 0, [], False
    for n, (kind, text, line) in enumerate(readme_steps()):
        reason = skip_reason(text)
        if reason:
            skipped.append((line, reason))
            continue
        if chain not in chain_of(text):
            continue
        if kind == "bash":
            proc = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        else:
            script = tmp_path / f"readme_snippet_{n}.py"
            script.write_text(text)
            proc = subprocess.run([sys.executable, script.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"README line {line}: {text.strip()[:200]}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
        if text.startswith("pgnas search --out runs/first "):  # the quick start keeps what the README says of it
            summary = json.loads((tmp_path / "runs" / "first" / "summary.json").read_text())
            assert summary["num_candidates"] == 100 and summary["epochs"] == 40
            assert summary["selected"]["test_acc"] >= 0.95, summary["selected"]  # README: 98.9 % measured (quick_start.json)
            checked_quick_start = True
        ran += 1
    assert checked_quick_start == (chain == "first")
    assert ran > 15, (ran, skipped)
