"""Fault tolerance end to end, as a user meets it: kill -9 mid-epoch and resume, SIGTERM, a
damaged checkpoint, a closed pipe, a log file instead of a terminal. Every interrupted run must
end exactly as the uninterrupted one (CPU: bit for bit)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pgnas.search.checkpoint import load_checkpoint, previous_path

ARGS = ["--supernet", "shake-shake-8-2x16d", "--epochs", "3", "--candidates", "6", "--top-k", "2"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def pgnas(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pgnas", *args], capture_output=True, text=True, timeout=600, env=ENV)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pgnas", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, start_new_session=True)


def outcome(run: Path) -> dict:
    """What a finished run decided: every candidate's score, the selection, the trained weights,
    the per-epoch metrics (without timings) and the exported model."""
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        m.pop("seconds")
    summary = json.loads((run / "summary.json").read_text())
    exported = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    return {
        "candidates": sorted((run / "candidates.jsonl").read_text().splitlines()),
        "selected": {k: summary["selected"][k] for k in ("index", "val_acc", "test_acc", "params")},
        "weights": load_checkpoint(run / "checkpoint.pt")["model"],
        "metrics": metrics,
        "exported": exported,
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["candidates"] == b["candidates"]
    assert a["selected"] == b["selected"]
    assert a["metrics"] == b["metrics"]
    for store in ("weights", "exported"):
        assert a[store].keys() == b[store].keys()
        for k in a[store]:
            assert torch.equal(a[store][k], b[store][k]), (store, k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    proc = pgnas("search", *ARGS, "--out", str(run))
    return run, proc, outcome(run)


def _wait_for_checkpoint(proc: subprocess.Popen, run: Path, mid_epoch: bool) -> dict:
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpt = run / "checkpoint.pt"
        if ckpt.exists():
            try:
                st = load_checkpoint(ckpt)
            except Exception:
                st = None
            if st is not None and (st.get("batch", 0) > 0 if mid_epoch else True) and st["epoch"] < 3:
                return st
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    pytest.fail("the run finished before it could be interrupted mid-training")


def test_log_file_gets_one_line_per_epoch_and_no_progress_bars(reference):
    _, proc, _ = reference
    err = proc.stderr
    assert "\r" not in err  # stderr was not a terminal: no bar redraws
    assert [line.split()[1] for line in err.splitlines() if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]


def test_kill_9_mid_epoch_then_resume_ends_as_the_uninterrupted_run(reference, tmp_path):
    run = tmp_path / "run"
    proc = start("search", *ARGS, "--out", str(run), "--checkpoint-minutes", "0.0005")
    st = _wait_for_checkpoint(proc, run, mid_epoch=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert st["batch"] > 0  # a checkpoint from inside an epoch
    pgnas("search", "--out", str(run), "--resume", "--quiet")
    assert_same(outcome(run), reference[2])


def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(reference, tmp_path):
    run = tmp_path / "run"
    proc = start("search", *ARGS, "--out", str(run), "--checkpoint-minutes", "0")
    before = _wait_for_checkpoint(proc, run, mid_epoch=False)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert time.time() - t0 < 30
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in last and f"pgnas search --out {run} --resume" in last, err[-2000:]
    after = load_checkpoint(run / "checkpoint.pt")
    assert (after["epoch"], after["batch"]) > (before["epoch"], before.get("batch", 0))  # written at the stop
    pgnas("search", "--out", str(run), "--resume", "--quiet")
    assert_same(outcome(run), reference[2])


def test_damaged_checkpoint_is_named_and_resume_falls_back_to_the_previous_one(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    ckpt = run / "checkpoint.pt"
    assert previous_path(ckpt).is_file()
    ckpt.write_bytes(ckpt.read_bytes()[:5000])  # truncated
    proc = pgnas("export", str(run), "--out", str(tmp_path / "m.pt"), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert str(ckpt) in proc.stderr and "damaged" in proc.stderr
    proc = pgnas("search", "--out", str(run), "--resume", "--quiet")
    assert "resuming from the previous checkpoint" in proc.stderr
    assert_same(outcome(run), reference[2])  # the last epoch trained again, bit for bit


def test_closed_pipe_ends_quietly(tmp_path):
    proc = subprocess.run(f"{sys.executable} -m pgnas presets | true", shell=True, capture_output=True, text=True, env=ENV, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
