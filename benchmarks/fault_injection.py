"""Kill -9 a search at random moments (mid-epoch, mid-scoring, mid-export), resume it, and check
that every resumed run ends exactly as an uninterrupted one: the same candidates and scores, the
same selection, the same trained weights and the same exported model; and how much training each
kill cost (time since the last checkpoint).

    python benchmarks/fault_injection.py [--trials 10] [--seed 0] [--out benchmarks/results/fault_injection.json]

The search: digits, shake-shake-8-2x16d, 3 epochs of 89 steps, 60 candidates, checkpoints every
0.005 min (0.3 s, so that a few seconds of training hold several mid-epoch checkpoints; the
default is 10 min). Each kill waits for its stage to begin (a mid-epoch checkpoint, the scoring
file, the last candidate scored) and strikes after a random delay within that stage's duration in
the uninterrupted run (measured first): 4 kills in training, 3 in scoring, 2 in test evaluation or
export, the rest at a random moment of the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ARGS = ["--supernet", "shake-shake-8-2x16d", "--epochs", "3", "--batch-size", "16", "--candidates", "60", "--top-k", "2",
        "--checkpoint-minutes", "0.005", "--quiet"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def outcome(run: Path) -> dict:
    from pgnas.search.checkpoint import load_checkpoint

    summary = json.loads((run / "summary.json").read_text())
    return {
        "candidates": sorted((run / "candidates.jsonl").read_text().splitlines()),
        "selected": {k: summary["selected"][k] for k in ("index", "val_acc", "test_acc", "params")},
        "weights": load_checkpoint(run / "checkpoint.pt")["model"],
        "exported": torch.load(run / "model.pt", weights_only=True)["state_dict"],
    }


def same(a: dict, b: dict) -> dict:
    eq = lambda x, y: x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)  # noqa: E731
    return {
        "candidates": a["candidates"] == b["candidates"],
        "selection": a["selected"] == b["selected"],
        "weights": eq(a["weights"], b["weights"]),
        "model": eq(a["exported"], b["exported"]),
    }


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def _mid_epoch_checkpoint(run: Path) -> bool:
    from pgnas.search.checkpoint import load_checkpoint

    try:
        return load_checkpoint(run / "checkpoint.pt").get("batch", 0) > 0
    except Exception:
        return False


def stage_at_kill(run: Path, epochs: int) -> str:
    from pgnas.search.checkpoint import load_checkpoint

    if (run / "summary.json").exists():
        return "finished (summary written)"
    if (run / "model.pt").exists():
        return "export (model written, summary not yet)"
    if (run / "scoring.json").exists():
        n = len((run / "candidates.jsonl").read_text().splitlines()) if (run / "candidates.jsonl").exists() else 0
        return f"scoring ({n} scored)" if n < 60 else "test evaluation or export"
    if (run / "checkpoint.pt").exists():
        try:
            st = load_checkpoint(run / "checkpoint.pt")
        except Exception:
            return "training (checkpoint being written)"
        return f"training (checkpoint epoch {st['epoch']} batch {st.get('batch', 0)})"
    return "before the first checkpoint"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "fault_injection.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="pgnas-faults-"))
    ref = tmp / "ref"
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "pgnas", "search", *ARGS, "--out", str(ref)], check=True, env=ENV,
                   capture_output=True)
    wall = time.time() - t0
    secs = json.loads((ref / "summary.json").read_text())["seconds"]
    # the stages on the process's clock: [start, end) of each
    # when each stage begins (a file it leaves) and how long it lasts in the uninterrupted run
    ckpt_mid = lambda run: _mid_epoch_checkpoint(run)  # noqa: E731
    triggers = {
        "train": (ckpt_mid, 0.6),
        "score": (lambda run: (run / "scoring.json").exists(), secs["score"]),
        "test/export": (lambda run: _lines(run / "candidates.jsonl") >= 60, secs["test"] + secs["export"]),
        "any": (lambda run: True, wall),
    }
    plan = ["train"] * 4 + ["score"] * 3 + ["test/export"] * 2 + ["any"] * max(0, args.trials - 9)
    plan = plan[: args.trials]
    reference = outcome(ref)
    trials = []
    for i, stage in enumerate(plan):
        began, span = triggers[stage]
        delay = rng.uniform(0.0, span)
        run = tmp / f"t{i}"
        proc = subprocess.Popen([sys.executable, "-m", "pgnas", "search", *ARGS, "--out", str(run)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while proc.poll() is None and not began(run):
            time.sleep(0.002)
        start = time.time()
        while time.time() - start < delay and proc.poll() is None:
            time.sleep(0.002)
        kill_at = delay
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_time = time.time()
        where = stage_at_kill(run, 4) if killed else "finished before the kill"
        ckpt = run / "checkpoint.pt"
        since_ckpt = kill_time - ckpt.stat().st_mtime if ckpt.exists() else kill_time - start
        res = subprocess.run([sys.executable, "-m", "pgnas", "search", "--out", str(run), "--resume", "--quiet"], env=ENV,
                             capture_output=True, text=True)
        ok = res.returncode == 0
        eq = same(outcome(run), reference) if ok else {}
        trials.append({
            "aimed_stage": stage, "kill_after_stage_start_s": round(kill_at, 3), "killed": killed, "stage_at_kill": where,
            "seconds_since_last_checkpoint": round(since_ckpt, 3) if where.startswith("training") else None,
            "resume_exit": res.returncode, "equal": eq, "all_equal": ok and all(eq.values()),
            "stderr": res.stderr.strip().splitlines()[-1:] if not ok else [],
        })
        print(json.dumps(trials[-1]))
    result = {
        "trials": trials,
        "all_equal": sum(t["all_equal"] for t in trials),
        "of": len(trials),
        "max_training_seconds_lost": max((t["seconds_since_last_checkpoint"] or 0.0) for t in trials),
        "checkpoint_seconds": 0.3,
        "reference_seconds": secs,
        "reference_wall_seconds": round(wall, 3),
        "command": "pgnas search " + " ".join(ARGS),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['all_equal']}/{result['of']} resumed runs equal to the uninterrupted one; "
          f"at most {result['max_training_seconds_lost']:.2f}s of training lost (checkpoints every 0.3 s)")


if __name__ == "__main__":
    main()
