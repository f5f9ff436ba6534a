"""Is racing's guarantee true? How often it drops the exhaustive winner of near-tied candidates,
and how much work it saves, against the rule it replaced (issue: racing bound not valid at delta).

Candidates of one posterior are simulated as correctness rows (candidates x images): most images
are shared (hard or easy for all), 15 % are each candidate's own coin, and accuracies are
within ``spread`` of each other (0.4 points: near ties, the hardest case for a racing rule; and
5 points, where there is work to save). For each set of
rows, several races with different random image orders; the exhaustive winner is the candidate
``rank`` puts first on the whole split.

* ``sign_test``: pgnas's rule (``CandidateScorer.race``): an exact one-sided sign test on the
  discordant images against every other candidate, at delta / ((C - 1) (looks - 1)).
* ``normal_looks_only``: the former rule, re-implemented here: a normal-approximation bound on the
  paired difference to the leader, with a finite-population factor, delta split over looks only.

    python benchmarks/racing_validity.py [--candidates 300] [--images 2000] [--row-sets 10] [--orders 8] [--delta 0.1]
Writes benchmarks/results/racing_validity.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from statistics import NormalDist

import torch

from pgnas.search.distributed import Dist
from pgnas.search.scorer import CandidateScorer
from pgnas.search.ranking import rank

HERE = Path(__file__).resolve().parent


class Rows(CandidateScorer):
    """A scorer over made-up correctness rows (no network)."""

    def __init__(self, rows: torch.Tensor, seed: int):
        self.rows, self.n, self.seed, self.dist = rows, rows.shape[1], seed, Dist()
        self._masks, self.looked = {}, 0

    def correct(self, indices, examples=None, fp32=False):
        self.looked += len(indices) * (self.n if examples is None else len(examples))
        return {i: self.rows[i] if examples is None else self.rows[i][examples] for i in indices}

    def stats(self, index):
        return {"params": 0, "macs": 0}

    def record(self, index, correct, seen):
        return {"index": index, "val_acc": correct / seen, "val_seen": seen, "params": 0}


def near_ties(n_cand: int, n_img: int, seed: int, spread: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    acc = 0.7 - spread * torch.rand(n_cand, generator=g)
    shared = torch.rand(n_img, generator=g)
    own = torch.rand(n_cand, n_img, generator=g) < 0.15
    return torch.where(own, torch.rand(n_cand, n_img, generator=g) < acc[:, None], shared[None] < acc[:, None])


def former_rule(sc: Rows, indices, delta: float) -> tuple[dict[int, int], int]:
    """The rule racing used before: returns images seen per candidate and images scored."""
    n_all = sc.n
    order = torch.randperm(n_all, generator=torch.Generator().manual_seed(sc.seed + 7919))
    first = max(64, math.ceil(n_all / 32))
    looks = []
    while not looks or looks[-1] < n_all:
        looks.append(min(n_all, first * 2 ** len(looks)))
    z = NormalDist().inv_cdf(1 - delta / len(looks))
    alive, seen_of, seen, work = list(indices), {}, 0, 0
    for target in looks:
        work += len(alive) * (target - seen)
        seen = target
        if seen == n_all:
            break
        mats = sc.rows[alive][:, order[:seen]].double()
        counts = mats.sum(1)
        lead = int(torch.argmax(counts))
        d = mats - mats[lead]
        fpc = math.sqrt(max(0.0, 1 - (seen - 1) / max(1, n_all - 1)))
        bound = d.mean(1) + z * (d.var(1, unbiased=True) / seen).sqrt() * fpc
        keep = []
        for j, i in enumerate(alive):
            if j != lead and bound[j] < 0:
                seen_of[i] = seen
            else:
                keep.append(i)
        alive = keep
    for i in alive:
        seen_of[i] = n_all
    return seen_of, work


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--row-sets", type=int, default=10)
    ap.add_argument("--orders", type=int, default=8)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--spread", type=float, default=0.004)
    ap.add_argument("--out", default=str(HERE / "results" / "racing_validity.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = {"setup": {**vars(args), "machine": f"{platform.machine()} {torch.get_num_threads()} threads", "torch": torch.__version__}}
    for name, spread in (("near_ties", args.spread), ("spread_5_points", 0.05)):
        arms = {"sign_test": {"lost": 0, "work": []}, "normal_looks_only": {"lost": 0, "work": []}}
        races = 0
        for rs in range(args.row_sets):
            rows = near_ties(args.candidates, args.images, rs, spread)
            full = rows.sum(1) / args.images
            winner = rank([{"index": i, "val_acc": float(a), "params": 0} for i, a in enumerate(full)])[0]["index"]
            for o in range(args.orders):
                sc = Rows(rows, seed=1000 * rs + o)
                raced = sc.race(range(args.candidates), delta=args.delta)
                arms["sign_test"]["lost"] += raced[winner]["val_seen"] < args.images
                arms["sign_test"]["work"].append(sc.looked / (args.candidates * args.images))
                seen, work = former_rule(Rows(rows, seed=1000 * rs + o), range(args.candidates), args.delta)
                arms["normal_looks_only"]["lost"] += seen[winner] < args.images
                arms["normal_looks_only"]["work"].append(work / (args.candidates * args.images))
                races += 1
        out[name] = {"accuracy_spread": spread, "races": races, **{
            k: {"winner_lost": v["lost"], "winner_lost_rate": v["lost"] / races, "mean_images_scored_fraction": sum(v["work"]) / races}
            for k, v in arms.items()}}
    out["setup"]["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
