"""Candidate evaluation at the paper's scale: exact speed-ups and paired racing against the
one-by-one eager loop (issue: candidate evaluation).

The posterior: the CIFAR-10 run of the evidence benchmark (benchmarks/paper_regime.py, seed 0:
shake-shake-8-2x32d at 16x16 trained on 5,000 images). Scoring uses 5,000 validation images the
network never trained on: the run's 2,000 held-out images and 3,000 more from the unused part of
the training set (stratified, fixed). The test split (10,000) only measures regret.

Per seed of the candidate draw (10 seeds, 300 candidates each):
* ``baseline``: one by one, the masked super-network, eager, 500 images a pass (the loop and batch
  of the previous release; timed on the first 30 candidates, whose scores are also checked
  against the exact path's), and the same loop at the new CPU default of 128 images a pass;
* ``exact``: pgnas's default path on this device (``eval_path=auto``: each candidate's slim network
  where it needs at most 80 % of the super-network's MACs, tiles of the masked super-network
  otherwise), all 300 candidates on the whole split;
* ``race``: paired racing (``--race``, delta 0.05) on the exact path.
Regret: test accuracy of the exhaustive (exact) validation winner minus the raced winner's, in
points, and the same on validation.

    python benchmarks/candidate_eval.py [--seeds 10] [--candidates 300] [--run benchmarks/runs/paper_regime/pgnas-s0]
Writes benchmarks/results/candidate_eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from pgnas.data.splits import stratified_split
from pgnas.data.tensor_data import TensorBatches
from pgnas.export.from_run import rebuild_supernet
from pgnas.search.run import load_run_data
from pgnas.search.scorer import CandidateScorer
from pgnas.search.scoring import accuracy
from pgnas.search.ranking import rank

HERE = Path(__file__).resolve().parent


class Scoring:
    """The run's data with a 5,000-image validation split (its own 2,000 + 3,000 unused training images)."""

    def __init__(self, data, cfg, n_val: int):
        from pgnas.data import load_dataset

        full = load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, split_seed=cfg.split_seed,
                            image_size=cfg.image_size, data_cache=cfg.data_cache)
        # training images the subset did not use: the subset is a stratified pick of full.train
        _, used = stratified_split(full.train_y, cfg.train_subset, cfg.split_seed)
        spare = torch.ones(len(full.train_y), dtype=torch.bool)
        spare[used] = False
        pool = torch.nonzero(spare).flatten()
        _, extra = stratified_split(full.train_y[pool], n_val - len(data.val_y), 12345)
        extra = pool[extra]
        x = torch.cat([data.val_x, full.train_x[extra]])
        y = torch.cat([data.val_y, full.train_y[extra]])
        self.data = data
        self.val = TensorBatches(data.normalise(x), y)
        self.in_channels, self.image_size = data.in_channels, data.image_size

    def sizes(self):
        return {"train": 0, "val": len(self.val.y), "test": len(self.data.test_y)}

    def eval_batches(self, split, batch_size, device=None, indices=None):
        if split == "val":
            return self.val.eval_batches("val", batch_size, device, indices)
        return self.data.eval_batches(split, batch_size, device, indices)


def test_acc(model, post, masks, data) -> float:
    post.set_candidate(masks)
    acc = accuracy(model, data, "test", 1000, torch.device("cpu"))
    post.clear_candidate()
    return acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(HERE / "runs" / "paper_regime" / "pgnas-s0"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--baseline-candidates", type=int, default=30)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--out", default=str(HERE / "results" / "candidate_eval.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    cfg, model, post, _ = rebuild_supernet(Path(args.run))
    data = Scoring(load_run_data(cfg), cfg, args.val)
    cpu = torch.device("cpu")
    per_seed = []
    for seed in range(args.seeds):
        base = CandidateScorer(model, post, data, seed=seed, device=cpu, tile=1, path="masked", batch_size=500)  # today's loop
        masked = CandidateScorer(model, post, data, seed=seed, device=cpu, tile=1, path="masked", batch_size=128)  # its new batch
        exact = CandidateScorer(model, post, data, seed=seed, device=cpu, path="auto", batch_size=128)
        race = CandidateScorer(model, post, data, seed=seed, device=cpu, path="auto", batch_size=128)
        nb = args.baseline_candidates
        # sizes (the slim network's params/MACs, recorded for every candidate on every path) are timed apart
        t0 = time.perf_counter()
        for i in range(args.candidates):
            exact.stats(i)
        t_sizes = (time.perf_counter() - t0) / args.candidates
        for sc in (base, masked, race):
            for i in range(args.candidates if sc is race else nb):
                sc.stats(i)
        t0 = time.perf_counter()
        b = base.exhaustive(range(nb))
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        masked.exhaustive(range(nb))
        t_masked = time.perf_counter() - t0
        t0 = time.perf_counter()
        e = exact.exhaustive(range(args.candidates))
        t_exact = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = race.race(range(args.candidates), delta=args.delta, keep_min=1)
        t_race = time.perf_counter() - t0
        mismatches = sum(x["val_acc"] != y["val_acc"] for x, y in zip(b, e[:nb]))
        win_e = rank(e)[0]
        win_r = rank(r)[0]
        full = {x["index"]: x["val_acc"] for x in e}
        te = test_acc(model, post, post.sample_candidate(win_e["index"], seed), data)
        tr = te if win_r["index"] == win_e["index"] else test_acc(model, post, post.sample_candidate(win_r["index"], seed), data)
        seen = sum(x["val_seen"] for x in r)
        row = {
            "seed": seed,
            "baseline_candidates_per_s": nb / t_base, "masked_batch128_candidates_per_s": nb / t_masked,
            "exact_candidates_per_s": args.candidates / t_exact,
            "race_candidates_per_s": args.candidates / t_race, "sizes_seconds_per_candidate": t_sizes,
            "score_mismatches_in_baseline_check": mismatches, "baseline_checked": nb,
            "exact_winner": win_e["index"], "race_winner": win_r["index"],
            "exact_winner_val": win_e["val_acc"], "race_winner_val_full": full[win_r["index"]],
            "exact_winner_test": te, "race_winner_test": tr,
            "race_images_scored_fraction": seen / (args.candidates * data.sizes()["val"]),
            "slim_share": sum(exact.use_slim(i) for i in range(args.candidates)) / args.candidates,
            "candidate_val_std_pts": 100 * statistics.pstdev(full.values()),
        }
        per_seed.append(row)
        print(json.dumps(row), flush=True)
        mean = lambda k: statistics.fmean(x[k] for x in per_seed)  # noqa: E731
        result = {
            "baseline_candidates_per_s": mean("baseline_candidates_per_s"),
            "exact_candidates_per_s": mean("exact_candidates_per_s"),
            "exact_speedup": mean("exact_candidates_per_s") / mean("baseline_candidates_per_s"),
            "masked_batch128_candidates_per_s": mean("masked_batch128_candidates_per_s"),
            "exact_speedup_over_masked_batch128": mean("exact_candidates_per_s") / mean("masked_batch128_candidates_per_s"),
            "sizes_seconds_per_candidate": mean("sizes_seconds_per_candidate"),
            "exact_speedup_counting_sizes": (1 / mean("baseline_candidates_per_s"))
            / (1 / mean("exact_candidates_per_s") + mean("sizes_seconds_per_candidate")),
            "exact_same_winner": sum(x["score_mismatches_in_baseline_check"] == 0 for x in per_seed) / len(per_seed),
            "race_candidates_per_s": mean("race_candidates_per_s"),
            "race_speedup": mean("race_candidates_per_s") / mean("baseline_candidates_per_s"),
            "race_test_regret_pct_points": 100 * statistics.fmean(x["exact_winner_test"] - x["race_winner_test"] for x in per_seed),
            "race_val_regret_pct_points": 100 * statistics.fmean(x["exact_winner_val"] - x["race_winner_val_full"] for x in per_seed),
            "race_same_winner": sum(x["exact_winner"] == x["race_winner"] for x in per_seed) / len(per_seed),
            "race_delta": args.delta,
            "per_seed": per_seed,
            "config": {"run": args.run, "candidates": args.candidates, "validation_images": data.sizes()["val"],
                       "baseline_candidates_timed": nb, "baseline_batch": 500, "exact_batch": 128,
                       "exact_path": "auto (slim below 80% MACs on a CPU, else the masked super-network)"},
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d"),
        }
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}, indent=2))


if __name__ == "__main__":
    main()
