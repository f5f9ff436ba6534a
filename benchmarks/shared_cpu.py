"""A shared CPU: the quick-start search beside another process busy on one core, at two threads, at
one thread, and with the automatic choice (issue: a busy CPU made the quick start 17x slower); then,
just after the other process ended, with the automatic choice again (the 1-minute load average is
still high then, as after `make setup`: a choice read from it would take one thread of two).

The other process is a single-threaded matrix-multiply loop. Each run is the README's default search
at fewer epochs (`pgnas search --epochs E --candidates C`), timed by its own summary (training
seconds); the same search alone (no other process) at two threads is the reference.

    python benchmarks/shared_cpu.py [--epochs 10] [--candidates 20]
Writes benchmarks/results/shared_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOG = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"


def run(args, threads: str | None, env_extra: dict, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(env_extra)
    cmd = [sys.executable, "-m", "pgnas", "search", "--epochs", str(args.epochs), "--candidates", str(args.candidates),
           "--out", str(out), "--quiet"] + (["--threads", threads] if threads else [])
    t0 = time.perf_counter()
    load_average = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    s = json.loads((out / "summary.json").read_text())
    cfg = (out / "config.toml").read_text()
    chosen = next((line.split("=")[1].strip() for line in cfg.splitlines() if line.startswith("threads")), None)
    return {"train_seconds": s["seconds"]["train"], "wall_seconds": round(time.perf_counter() - t0, 1), "threads": chosen,
            "load_average_at_start": round(load_average, 2), "said": [line for line in proc.stderr.splitlines() if "busy" in line or "swing" in line]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--out", default=str(HERE / "results" / "shared_cpu.json"))
    args = ap.parse_args()
    res: dict = {"setup": {"epochs": args.epochs, "candidates": args.candidates, "cores": len(os.sched_getaffinity(0)),
                           "machine": platform.machine()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        res["alone_2_threads"] = run(args, "2", {}, tmp / "alone")
        hog = subprocess.Popen([sys.executable, "-c", HOG])
        try:
            time.sleep(5)
            res["shared_2_threads"] = run(args, "2", {}, tmp / "two")
            res["shared_1_thread"] = run(args, "1", {}, tmp / "one")
            res["shared_automatic"] = run(args, None, {}, tmp / "auto")
        finally:
            hog.kill()
            hog.wait()
        res["after_automatic"] = run(args, None, {}, tmp / "after")
    res["slowdown_shared_2_vs_1"] = res["shared_2_threads"]["train_seconds"] / res["shared_1_thread"]["train_seconds"]
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
