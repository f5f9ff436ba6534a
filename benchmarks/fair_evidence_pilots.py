"""The pilots that chose the fair-evidence operating points (benchmarks/RESULTS.md, "Fair
evidence"): one seed-0 search of the `cifar10-small` preset per lambda_w, judged on the size of the
winner selection picks on validation (the test split is not read).

    pgnas search --preset cifar10-small --data-dir DIR --lambda-w LW --seed 0 --out RUNS/pilot-lwLW   # per LW
    python benchmarks/fair_evidence_pilots.py RUNS/pilot-lw*  [--targets 0.8 0.5 0.25]
Writes benchmarks/results/fair_evidence_pilots.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.5, 0.25])
    ap.add_argument("--out", default=str(HERE / "results" / "fair_evidence_pilots.json"))
    args = ap.parse_args()
    pilots = []
    for run in map(Path, args.runs):
        s = json.loads((run / "summary.json").read_text())
        cfg = (run / "config.toml").read_text()
        lw = float(next(line.split("=")[1] for line in cfg.splitlines() if line.startswith("lambda_w")))
        sel = s["selected"]
        pilots.append({"lambda_w": lw, "winner_slim_params": sel["params"], "supernet_params": s["supernet_params"],
                       "winner_kept_fraction": sel["params"] / s["supernet_params"], "winner_val_acc": sel["val_acc"],
                       "mean_p": s["posterior"]["mean_p"], "supernet_val_acc": s["supernet_val_acc"], "run": run.name})
    pilots.sort(key=lambda p: p["lambda_w"])
    chosen = {str(t): min(pilots, key=lambda p: abs(p["winner_kept_fraction"] - t))["lambda_w"] for t in args.targets}
    out = {"rule": "per target, the lambda_w whose seed-0 winner's slim parameters are nearest the target fraction",
           "pilots": pilots, "chosen_lambda_w": chosen}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
