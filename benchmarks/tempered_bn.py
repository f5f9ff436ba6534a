"""Tempered posteriors and their BN statistics on the embedded digits run (issue: correctness).

The README's quick-start search (``pgnas search``: digits, shake-shake-14-2x16d, defaults), then
``pgnas sample RUN --candidates 50 --max-macs B`` at two budgets below every candidate of the run
(75 % of its cheapest candidate's slim MACs, and 600K), each with BN statistics re-estimated per
candidate (the default for a tempered posterior: 8 training batches) and without
(``--bn-recalibrate 0``). Reports the best candidate's validation and test accuracy and MACs.

    python benchmarks/tempered_bn.py [--work DIR] [--candidates 50]
Writes benchmarks/results/tempered_bn.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import pgnas
from pgnas.search.ranking import read_candidates

HERE = Path(__file__).resolve().parent


def best(summary: dict) -> dict:
    s = summary["selected"]
    return {"val_acc": s["val_acc"], "test_acc": s["test_acc"], "macs": s["macs"], "params": s["params"],
            "budget_met": summary["budget_met"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--out", default=str(HERE / "results" / "tempered_bn.json"))
    args = ap.parse_args()
    t0 = time.time()
    work = Path(args.work or tempfile.mkdtemp(prefix="pgnas-tempered-"))
    run = work / "first"
    res = pgnas.search(pgnas.SearchConfig(out=str(run)), progress=False) if not (run / "summary.json").is_file() else None
    summary = res.summary if res else json.loads((run / "summary.json").read_text())
    cheapest = min(r["macs"] for r in read_candidates(run / "candidates.jsonl").values())
    out = {"setup": {"run": "pgnas search (defaults: digits, shake-shake-14-2x16d)", "candidates": args.candidates,
                     "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d")},
           "untempered": best(summary), "cheapest_candidate_macs": cheapest, "budgets": []}
    for budget in (int(0.75 * cheapest), 600_000):
        row = {"max_macs": budget}
        for name, bn in (("bn_reestimated", None), ("bn_kept", 0)):
            kw = {} if bn is None else {"bn_recalibrate": bn}
            s = pgnas.sample(run, candidates=args.candidates, out=work / f"t{budget}-{name}", max_macs=budget, force=True,
                             progress=False, **kw).summary
            row[name] = best(s)
            print(f"max_macs {budget}: {name}: val {row[name]['val_acc']:.4f} test {row[name]['test_acc']:.4f} "
                  f"macs {row[name]['macs']}", flush=True)
        out["budgets"].append(row)
    out["setup"]["seconds"] = round(time.time() - t0, 1)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
