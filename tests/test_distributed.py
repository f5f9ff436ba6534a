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
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
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


def test_two_process_search_is_close_to_single_process(two_rank_run, tmp_path):
    one = tmp_path / "one"
    single("search", *NET, "--epochs", "6", "--candidates", "8", "--out", str(one))
    s2, s1 = summary(two_rank_run), summary(one)
    assert s2["world_size"] == 2 and s1["world_size"] == 1
    metrics = [json.loads(x) for x in (two_rank_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["world_size"] for m in metrics] == [2] * 6
    # same seed and global batch; BN statistics are per rank, so close, not equal
    assert abs(s2["selected"]["val_acc"] - s1["selected"]["val_acc"]) < 0.08
    assert s2["selected"]["val_acc"] > 0.7


def test_sample_with_one_and_two_processes_gives_identical_scores(two_rank_run, tmp_path):
    single("sample", str(two_rank_run), "--candidates", "9", "--seed", "4", "--quiet", "--out", str(tmp_path / "s1"))
    torchrun(2, "sample", str(two_rank_run), "--candidates", "9", "--seed", "4", "--quiet", "--out", str(tmp_path / "s2"))
    assert scores(tmp_path / "s1") == scores(tmp_path / "s2")
    assert summary(tmp_path / "s1")["selected"]["index"] == summary(tmp_path / "s2")["selected"]["index"]
    # racing sharded over ranks equals racing in one process too
    single("sample", str(two_rank_run), "--candidates", "9", "--race", "--race-rungs", "2", "--quiet", "--out", str(tmp_path / "r1"))
    torchrun(2, "sample", str(two_rank_run), "--candidates", "9", "--race", "--race-rungs", "2", "--quiet", "--out", str(tmp_path / "r2"))
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
                time.sleep(0.5)
                assert subprocess.run(["pgrep", "-f", str(run)], capture_output=True).returncode == 1
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
