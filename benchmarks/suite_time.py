"""How long the test suite takes: runs it as `make test` does (pytest-xdist, one worker per core,
at most 8, longest tests first) or serially (`--workers 0`), and records the wall time, the counts and the
slowest tests with the machine it ran on. Each run is appended, so that a change is measured
before and after on one machine (compare runs only within one machine and day).

    python benchmarks/suite_time.py [--workers auto|0|N] [-- extra pytest arguments]
Appends to benchmarks/results/test_suite.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def parse(output: str) -> dict:
    """Counts from pytest's final line (``1 failed, 354 passed, 2 skipped in 800.1s``), the workers
    xdist started and the --durations table."""
    final = next((line for line in reversed(output.splitlines()) if re.search(r"\bin [\d.]+s\b", line)), "")
    counts: dict[str, int] = {}
    for n, key in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)", final):
        counts[key.rstrip("s") if key in ("errors", "warnings") else key] = int(n)
    workers = re.search(r"^(\d+) workers? \[", output, flags=re.M)
    slowest = [{"seconds": float(s), "when": w, "test": t.strip()}
               for s, w, t in re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(.+)$", output, flags=re.M)]
    return {"final_line": final.strip("= "), "counts": counts, "workers_started": int(workers.group(1)) if workers else None,
            "slowest": slowest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="auto", help="pytest-xdist workers: auto (one per core, as `make test`), 0 (serial) or N")
    ap.add_argument("--out", default=str(HERE / "results" / "test_suite.json"))
    ap.add_argument("--note", default="", help="what this run measures (kept in the record)")
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "pytest", "--durations=15", "-p", "no:cacheprovider"]  # not -q: the workers line
    if args.workers != "0":
        cmd += ["-n", args.workers, "--dist", "load", "--maxschedchunk", "1"]
    cmd += args.pytest_args
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    from importlib.metadata import version

    from pgnas.slim.latency import cpu_name

    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "note": args.note,
              "command": " ".join(["python"] + cmd[1:]), "workers": args.workers, "exit_status": proc.returncode,
              "wall_seconds": round(wall, 1), "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
                                                           "arch": platform.machine(), "torch": version("torch"),
                                                           "python": platform.python_version()},
              **parse(proc.stdout)}
    out = Path(args.out)
    runs = json.loads(out.read_text()) if out.exists() else []
    runs.append(record)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"{record['wall_seconds']:.0f} s ({wall / 60:.1f} min), exit {proc.returncode}, {record['counts']} on "
          f"{record['machine']['cpu']} ({record['machine']['cores']} cores); appended to {out}")
    if proc.returncode:
        print(proc.stdout[-3000:] + proc.stderr[-2000:], file=sys.stderr)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
