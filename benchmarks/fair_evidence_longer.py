"""What would change the fair evidence's result? One experiment: a longer search.

The fair evidence (benchmarks/RESULTS.md) found the PGNAS architecture good and its weights short:
the search's mean network tests below the same super-network trained plainly, and its winner trails
the plain network. The paper trains 1,800 epochs; the evidence's searches train 80. This script runs
the search and the plain network for ``--epochs`` (default 160, twice the evidence's) at one operating
point and seed, every other setting as in the evidence, and puts them beside the evidence's 80-epoch
row of the same point and seed (read from benchmarks/results/fair_evidence.json, not re-run):

* the winner's test error and slim size, the mean network's test accuracy, and the plain network's;
* the gaps the question turns on: winner - plain (test error, points) and plain - mean network
  (test accuracy, points), at each budget.

    python benchmarks/fair_evidence_longer.py --data-dir DIR [--point 80 --lambda-w 15 --seed 0 --epochs 160]
    python benchmarks/fair_evidence_longer.py --quick   # digits, tiny budget: checks the script end to end

Runs live in --work (reused, continued after a kill); writes benchmarks/results/fair_evidence_longer.json
and prints its table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import pgnas
from fair_evidence import PLAIN, SHARED, cost, log, machine, search, train  # benchmarks/ is on sys.path
from pgnas.presets import preset_settings
from pgnas.search.run import load_run_data

HERE = Path(__file__).resolve().parent


def budget_row(pg: dict, plain: dict, epochs: int, source: str) -> dict:
    """One budget's numbers from a PGNAS arm and a plain arm (the fair-evidence row's shape)."""
    return {"epochs": epochs, "source": source,
            "pgnas_test_error": 1 - pg["test_acc"], "pgnas_params": pg["params"],
            "pgnas_kept_fraction": pg["kept_fraction_of_supernet_params"],
            "mean_network_test_acc": pg["supernet_test_acc"], "mean_p": pg["mean_p"],
            "plain_test_error": 1 - plain["test_acc"],
            "gap_to_plain_points": 100 * (plain["test_acc"] - pg["test_acc"]),
            "mean_network_below_plain_points": 100 * (plain["test_acc"] - pg["supernet_test_acc"]),
            "pgnas_seconds": pg["cost"]["seconds"], "plain_seconds": plain["cost"]["seconds"]}


def table(result: dict) -> str:
    rows = result["budgets"]
    head = "| | " + " | ".join(f"{r['epochs']} epochs" for r in rows) + " |\n|---|" + "---:|" * len(rows) + "\n"
    lines = [
        ("PGNAS winner's test error (no fine-tuning)", lambda r: f"{100 * r['pgnas_test_error']:.2f} %"),
        ("its slim parameters (of the super-network's)", lambda r: f"{r['pgnas_params'] / 1e3:.0f}k ({100 * r['pgnas_kept_fraction']:.0f} %)"),
        ("mean p", lambda r: f"{r['mean_p']:.3f}"),
        ("the full super-network trained plainly, test error", lambda r: f"{100 * r['plain_test_error']:.2f} %"),
        ("**PGNAS behind plain** (points of test error)", lambda r: f"{r['gap_to_plain_points']:+.2f}"),
        ("mean network's test accuracy", lambda r: f"{100 * r['mean_network_test_acc']:.2f} %"),
        ("**mean network below plain** (points of test accuracy)", lambda r: f"{r['mean_network_below_plain_points']:+.2f}"),
        ("seconds: search with scoring / plain", lambda r: f"{r['pgnas_seconds']:,.0f} / {r['plain_seconds']:,.0f}"),
    ]
    return head + "".join(f"| {name} | " + " | ".join(f(r) for r in rows) + " |\n" for name, f in lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--point", default="80")
    ap.add_argument("--lambda-w", type=float, default=15.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=160)
    ap.add_argument("--data-dir", default=str(SHARED))
    ap.add_argument("--evidence", default=str(HERE / "results" / "fair_evidence.json"))
    ap.add_argument("--work", default=str(HERE / "runs" / "fair_evidence_longer"))
    ap.add_argument("--out", default=str(HERE / "results" / "fair_evidence_longer.json"))
    ap.add_argument("--quick", action="store_true", help="digits, tiny budget: checks the script end to end")
    args = ap.parse_args()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    base = {**preset_settings("cifar10-small"), "data_dir": args.data_dir}
    work = Path(args.work)
    if args.quick:
        base = {"supernet": "shake-shake-8-2x16d", "dataset": "digits", "epochs": 2, "candidates": 12, "top_k": 2}
        args.epochs, args.lambda_w = 4, 200.0
        work, args.out = Path(args.work + "-quick"), str(HERE / "results" / "quick" / "fair_evidence_longer.json")
    elif not any((Path(args.data_dir) / f).exists() for f in ("cifar10-jpeg.tar.gz", "cifar-10-python.tar.gz")):
        raise SystemExit(f"fair_evidence_longer: no CIFAR-10 in {args.data_dir} (give --data-dir)")
    t0 = time.time()
    work.mkdir(parents=True, exist_ok=True)
    cfg = pgnas.SearchConfig.from_dict({**base, "seed": args.seed, "lambda_w": args.lambda_w})
    images = load_run_data(cfg).sizes()["train"]
    budgets = []
    if not args.quick:  # the evidence's own row at its budget: read, not re-run
        ev = json.loads(Path(args.evidence).read_text())
        row = next((r for r in ev["rows"] if r["point"] == args.point and r["seed"] == args.seed), None)
        if row is None or row["lambda_w"] != args.lambda_w:
            raise SystemExit(f"fair_evidence_longer: {args.evidence} has no row for point {args.point}, seed {args.seed}, "
                             f"lambda_w {args.lambda_w:g}")
        budgets.append(budget_row(row["pgnas"], row["plain"], ev["config"]["epochs"], "benchmarks/results/fair_evidence.json"))
    longer = cfg.replace(epochs=args.epochs)
    log(f"search, {args.epochs} epochs, lambda_w {args.lambda_w:g}, seed {args.seed}")
    pg = search(longer.replace(out=str(work / f"pgnas-e{args.epochs}")))
    sel = pg["selected"]
    pg_arm = {"test_acc": sel["test_acc"], "params": sel["params"], "kept_fraction_of_supernet_params": sel["params"] / pg["supernet_params"],
              "supernet_test_acc": pg["supernet_test_acc"], "mean_p": pg["posterior"]["mean_p"], "cost": cost(pg, images)}
    log(f"plain, {args.epochs} epochs")
    pl = train(longer.replace(**PLAIN, out=str(work / f"plain-e{args.epochs}")))
    budgets.append(budget_row(pg_arm, {"test_acc": pl["test_acc"], "cost": cost(pl, images)}, args.epochs, "this run"))
    result = {"question": "does a longer search close PGNAS's gap to the plainly trained network?",
              "protocol": "benchmarks/RESULTS.md, Fair evidence: what would change it", "config": base, "plain": PLAIN,
              "point": args.point, "lambda_w": args.lambda_w, "seed": args.seed, "budgets": budgets,
              "machine": machine(),
              "date": time.strftime("%Y-%m-%d"), "wall_seconds": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
