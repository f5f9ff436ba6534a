"""Candidate evaluation speed: one-by-one exhaustive scoring against tiled + raced scoring.

Trains (or reuses) one posterior, then for each of N seeds draws C candidates and scores them
(a) one by one on the whole validation split, in candidate mode (the paper's loop), and
(b) with K candidates per forward pass and successive-halving racing.
Reports the speed-up, the regret (the exhaustive winner's validation accuracy minus the raced
winner's accuracy on the whole split, in percentage points) and how often the winners agree.

    python benchmarks/candidate_eval.py [--run RUN_DIR] [--seeds 10] [--candidates 100]

Writes benchmarks/results/candidate_eval.json.
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
from pgnas.search.pipeline import build_run
from pgnas.search.checkpoint import load_checkpoint
from pgnas.search.select import CandidateScorer, rank

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished search to reuse (default: train the embedded default)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--tile", type=int, default=8)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--rungs", type=int, default=4)
    ap.add_argument("--tiling-seeds", type=int, default=2, help="seeds on which tiled exhaustive scoring is also run (checked exact, timed)")
    ap.add_argument("--keep-min", type=int, default=5, help="finalists at least (pgnas search uses top_k, 5)")
    ap.add_argument("--out", default=str(HERE / "results" / "candidate_eval.json"))
    args = ap.parse_args()

    if args.run:
        run_dir = Path(args.run)
    else:
        run_dir = Path(tempfile.mkdtemp()) / "run"
        pgnas.search(pgnas.SearchConfig(out=str(run_dir), candidates=1), progress=False)
    cfg = pgnas.SearchConfig.from_toml(run_dir / "config.toml")
    run = build_run(cfg)
    run.model.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    dev = run.device
    n_val = len(run.data.val_y)

    per_seed = []
    t_slow_total = t_fast_total = t_tile_total = t_slow_tiling_seeds = 0.0
    for seed in range(args.seeds):
        slow = CandidateScorer(run.model, run.posterior, run.data, seed=seed, device=dev, batch_size=cfg.eval_batch_size, tile=1)
        t0 = time.perf_counter()
        exhaustive = slow.exhaustive(range(args.candidates))
        t_slow = time.perf_counter() - t0
        fast = CandidateScorer(run.model, run.posterior, run.data, seed=seed, device=dev, batch_size=cfg.eval_batch_size, tile=args.tile)
        if seed < args.tiling_seeds:  # tiled exhaustive scoring: checked exact, timed on the first seeds only
            t0 = time.perf_counter()
            tiled = fast.exhaustive(range(args.candidates))
            t_tile = time.perf_counter() - t0
            assert [r["val_acc"] for r in tiled] == [r["val_acc"] for r in exhaustive], "tiling must be exact"
            t_tile_total += t_tile
            t_slow_tiling_seeds += t_slow
        else:
            t_tile = None
        t0 = time.perf_counter()
        raced = fast.race(range(args.candidates), eta=args.eta, rungs=args.rungs, keep_min=args.keep_min)
        t_fast = time.perf_counter() - t0
        full = {r["index"]: r["val_acc"] for r in exhaustive}
        ex_win = rank(exhaustive)[0]
        race_win = rank(raced)[0]
        per_seed.append({
            "seed": seed,
            "exhaustive_winner": ex_win["index"],
            "raced_winner": race_win["index"],
            "exhaustive_best_val": ex_win["val_acc"],
            "raced_winner_full_val": full[race_win["index"]],
            "regret_pct_points": 100 * (ex_win["val_acc"] - full[race_win["index"]]),
            "same_accuracy": full[race_win["index"]] == ex_win["val_acc"],
            "seconds_one_by_one": t_slow,
            "seconds_tiled": t_tile,
            "seconds_tiled_raced": t_fast,
        })
        t_slow_total += t_slow
        t_fast_total += t_fast
        tiled_txt = f"tiled {t_tile:.2f}s, " if t_tile is not None else ""
        print(f"seed {seed}: one-by-one {t_slow:.2f}s, {tiled_txt}tiled+raced {t_fast:.2f}s, "
              f"regret {per_seed[-1]['regret_pct_points']:.3f} pts", flush=True)

    result = {
        "speedup": t_slow_total / t_fast_total,
        "speedup_tiling_only": t_slow_tiling_seeds / t_tile_total,
        "regret_pct_points": sum(s["regret_pct_points"] for s in per_seed) / len(per_seed),
        "winner_agreement": sum(s["exhaustive_winner"] == s["raced_winner"] for s in per_seed) / len(per_seed),
        "winner_accuracy_agreement": sum(s["same_accuracy"] for s in per_seed) / len(per_seed),
        "candidates_per_second_one_by_one": args.seeds * args.candidates / t_slow_total,
        "candidates_per_second_fast": args.seeds * args.candidates / t_fast_total,
        "config": {"run": str(run_dir), "supernet": cfg.supernet, "dataset": cfg.dataset, "val_examples": n_val,
                   "candidates": args.candidates, "seeds": args.seeds, "tiling_seeds": args.tiling_seeds, "tile": args.tile, "eta": args.eta, "rungs": args.rungs, "keep_min": args.keep_min,
                   "eval_batch_size": cfg.eval_batch_size},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
                    "device": str(dev), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "per_seed": per_seed,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup", "speedup_tiling_only", "regret_pct_points", "winner_agreement")}, indent=2))


if __name__ == "__main__":
    main()
