"""How long the README's quick start takes: `pgnas search --out DIR` (the embedded default: digits,
shake-shake-14-2x16d, 40 epochs, 100 candidates) run as a user runs it, a new process in an empty
folder, timed from the start of the process to its exit; with the search's own seconds per stage,
the threads it chose and the selected network's accuracy. Each run is appended with its machine.

    python benchmarks/quick_start_time.py [--repeats 1]
Appends to benchmarks/results/quick_start.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "quick_start.json"))
    args = ap.parse_args()
    from importlib.metadata import version

    from pgnas.config import SearchConfig
    from pgnas.slim.latency import cpu_name

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as a user's shell: threads chosen by pgnas
    records = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "pgnas", "search", "--out", "runs/first", "--quiet"], cwd=tmp,
                                  env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(proc.stderr[-2000:])
            s = json.loads((Path(tmp) / "runs" / "first" / "summary.json").read_text())
            threads = SearchConfig.from_toml(Path(tmp) / "runs" / "first" / "config.toml").threads
        threads = None if threads is None else str(threads)  # as recorded before
        records.append({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(wall, 1), "stage_seconds": s["seconds"], "threads": threads,
            "epochs": s["epochs"], "candidates": s["num_candidates"], "selected_test_acc": s["selected"]["test_acc"],
            "load_average_at_end": round(os.getloadavg()[0], 2),
            "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "arch": platform.machine(),
                        "torch": version("torch")},
        })
        print(f"{wall:.1f} s (search: {s['seconds']['total']:.1f} s; train {s['seconds']['train']:.1f}, "
              f"score {s['seconds'].get('score', 0):.1f}), {threads} threads, test accuracy {s['selected']['test_acc']:.4f}")
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else []
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(old + records, indent=1) + "\n")
    os.replace(tmp_out, out)


if __name__ == "__main__":
    main()
