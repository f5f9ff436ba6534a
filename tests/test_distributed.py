"""Multi-process search with torchrun (gloo on CPU): training, sharded sampling, resume across
different numbers of ranks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pgnas.search.checkpoint import load_checkpoint

NET = ["--supernet", "shake-shake-8-2x16d", "--quiet"]


def torchrun(n: int, *args: str, background: bool = False):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "pgnas", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def single(*args: str):
    proc = subprocess.run([sys.executable, "-m", "pgnas", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})  # as torchrun's ranks
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def scores(run: Path) -> list[tuple[int, float]]:
    return [(r["index"], r["val_acc"]) for r in map(json.loads, (run / "candidates.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "two"
    torchrun(2, "search", *NET, "--epochs", "6", "--candidates", "8", "--out", str(out))
    return out


def test_sample_with_one_and_two_processes_gives_identical_scores(two_rank_run, tmp_path):
    metrics = [json.loads(x) for x in (two_rank_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["world_size"] for m in metrics] == [2] * 6 and summary(two_rank_run)["world_size"] == 2
    assert summary(two_rank_run)["selected"]["val_acc"] > 0.7
    single("sample", str(two_rank_run), "--candidates", "9", "--seed", "4", "--quiet", "--out", str(tmp_path / "s1"))
    torchrun(2, "sample", str(two_rank_run), "--candidates", "9", "--seed", "4", "--quiet", "--out", str(tmp_path / "s2"))
    assert scores(tmp_path / "s1") == scores(tmp_path / "s2")
    assert summary(tmp_path / "s1")["selected"]["index"] == summary(tmp_path / "s2")["selected"]["index"]
    # racing sharded over ranks equals racing in one process too
    single("sample", str(two_rank_run), "--candidates", "9", "--race", "--quiet", "--out", str(tmp_path / "r1"))
    torchrun(2, "sample", str(two_rank_run), "--candidates", "9", "--race", "--quiet", "--out", str(tmp_path / "r2"))
    assert scores(tmp_path / "r1") == scores(tmp_path / "r2")


def _kill_after_a_checkpoint(proc: subprocess.Popen, run: Path, epochs: int) -> int:
    ckpt = run / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline:
        if ckpt.exists():
            try:
                epoch = load_checkpoint(ckpt)["epoch"]
            except Exception:
                epoch = 0
            if 1 <= epoch < epochs:
                # kill torchrun and every worker (workers may sit in sessions of their own)
                os.killpg(proc.pid, signal.SIGKILL)
                subprocess.run(["pkill", "-KILL", "-f", str(run)], check=False)
                proc.wait()
                gone = time.time() + 10  # a killed rank can take a moment to leave (a busy machine)
                while subprocess.run(["pgrep", "-f", str(run)], capture_output=True).returncode != 1:
                    assert time.time() < gone, "a killed rank is still running"
                    time.sleep(0.1)
                return load_checkpoint(ckpt)["epoch"]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail("the run finished or stalled before it could be killed mid-training")


@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_resume_with_a_different_number_of_ranks(tmp_path, first, second):
    run = tmp_path / "run"
    epochs = 12
    args = ["search", *NET, "--epochs", str(epochs), "--candidates", "4", "--out", str(run)]
    if first == 2:
        proc = torchrun(2, *args, background=True)
    else:
        proc = subprocess.Popen([sys.executable, "-m", "pgnas", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    k = _kill_after_a_checkpoint(proc, run, epochs)
    assert 1 <= k < epochs
    if second == 2:
        torchrun(2, "search", "--out", str(run), "--resume", "--quiet")
    else:
        single("search", "--out", str(run), "--resume", "--quiet")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["epoch"] == epochs
    assert [m["world_size"] for m in metrics][k:] == [second] * (epochs - k)
    assert summary(run)["num_candidates"] == 4


def test_one_ddp_step_equals_one_step_on_the_whole_global_batch(tmp_path):
    """Same global batch, same weights: two ranks averaging gradients take exactly the step one
    process takes, so the KL term (computed on every rank) counts once, not world-size times."""
    script = str(Path(__file__).with_name("ddp_one_step.py"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, script, str(one)], check=True, env=env, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, str(two)],
                          env=env, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7), (k, (a[k] - b[k]).abs().max())
    torch.manual_seed(0)
    first = torch.nn.Conv2d(3, 8, 3, padding=1).weight
    assert not torch.allclose(a["0.weight"], first)  # the step moved the weights
