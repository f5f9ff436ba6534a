"""What the learned posterior gives beyond its best sample (issue: budgets and model averaging),
on the CIFAR-10 runs of the evidence benchmark (benchmarks/paper_regime.py, learned-p runs):

* ``single``: the selected candidate (best on validation): test error, ECE (15 bins), NLL;
* ``ensemble``: the average of the softmax outputs of the top K candidates on validation;
* ``posterior_ensemble``: the average over K fresh draws of the posterior (Monte-Carlo predictive);
* ``budgets``: at 50, 35 and 25 % of the super-network's MACs, the best candidate on validation
  within the budget (slim MACs) among C draws of the posterior tempered to that expected cost
  (``pgnas``), against the best of C draws with one uniform p of the same expected MACs on the same
  trained weights (``uniform``); test error of each winner. Both arms re-estimate every
  candidate's BN statistics from 8 training batches (as ``pgnas sample`` does for a tempered
  posterior): the super-network's were estimated under the learned p.

    python benchmarks/posterior_products.py [--runs benchmarks/runs/paper_regime/pgnas-s0 ...] [--k 5] [--budget-candidates 100]
Writes benchmarks/results/posterior_products.json (means over the runs, and each run).
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

from pgnas.export.from_run import rebuild_supernet
from pgnas.posterior.concrete_dropout import logit
from pgnas.search.calibration import average_probs, calibration_metrics
from pgnas.search.run import load_run_data
from pgnas.search.scorer import CandidateScorer
from pgnas.search.scoring import candidate_bn, predict_probs
from pgnas.search.ranking import rank, read_candidates, within_budget

HERE = Path(__file__).resolve().parent
CPU = torch.device("cpu")


def probs_of(model, post, masks, data):
    post.set_candidate(masks)
    p, y = predict_probs(model, data, "test", 1000, CPU)
    post.clear_candidate()
    return p, y


BN_BATCHES = 8  # what pgnas sample uses for a tempered posterior; both arms get it


def budget_winner(model, post, data, seed, shift, n, max_macs, batch_size):
    sc = CandidateScorer(model, post, data, seed=seed + 1000, device=CPU, shift=shift,
                         bn_recalibrate=BN_BATCHES, train_batch_size=batch_size)
    recs = sc.exhaustive(range(n))
    try:
        win = within_budget(rank(recs), max_macs=max_macs)[0]
    except Exception:  # noqa: BLE001 - no draw within the budget
        return None, 0
    masks = sc.masks(win["index"])
    with candidate_bn(model, post, masks, data, BN_BATCHES, batch_size, CPU):
        p, y = probs_of(model, post, masks, data)
    return 1 - float((p.argmax(1) == y).double().mean()), sum(r["macs"] <= max_macs for r in recs)


def one_run(run_dir: Path, k: int, n_budget: int) -> dict:
    cfg, model, post, _ = rebuild_supernet(run_dir)
    data = load_run_data(cfg)
    recs = list(read_candidates(run_dir / "candidates.jsonl").values())
    ranked = rank(recs)
    out: dict = {"run": str(run_dir)}
    members = []
    for r in ranked[:k]:
        p, y = probs_of(model, post, post.sample_candidate(r["index"], cfg.seed, cfg.logit_shift), data)
        members.append(p)
    single = calibration_metrics(members[0], y)
    ens = calibration_metrics(average_probs(members), y)
    fresh = [probs_of(model, post, post.sample_candidate(cfg.candidates + j, cfg.seed), data)[0] for j in range(k)]
    pens = calibration_metrics(average_probs(fresh), y)
    for name, m in (("single", single), ("ensemble", ens), ("posterior_ensemble", pens)):
        out[f"{name}_test_error"], out[f"{name}_ece"], out[f"{name}_nll"] = 1 - m["accuracy"], m["ece"], m["nll"]
    costs = post.layer_costs((data.in_channels, *data.image_size))
    saved = [pl.dropout.logit.detach().clone() for pl in post]
    budgets = []
    for frac in (0.5, 0.35, 0.25):
        target = frac * costs["macs"]
        shift = post.shift_for_cost(costs, "macs", target)
        g_err, g_ok = budget_winner(model, post, data, cfg.seed, shift, n_budget, target, cfg.batch_size)
        # one uniform p of the same expected MACs, on the same weights
        instrumented = sum(c["macs"] for c in costs["layers"].values())
        p_u = min(0.999, max(1e-3, 1 - (target - (costs["macs"] - instrumented)) / instrumented))
        with torch.no_grad():
            for pl in post:
                pl.dropout.logit.fill_(logit(p_u))
        u_err, u_ok = budget_winner(model, post, data, cfg.seed, 0.0, n_budget, target, cfg.batch_size)
        with torch.no_grad():
            for pl, s in zip(post, saved):
                pl.dropout.logit.copy_(s)
        budgets.append({"macs_fraction": frac, "max_macs": target, "pgnas_test_error": g_err, "uniform_test_error": u_err,
                        "pgnas_shift": shift, "uniform_p": p_u, "pgnas_within_budget": g_ok, "uniform_within_budget": u_ok})
        print(json.dumps(budgets[-1]), flush=True)
    out["budgets"] = budgets
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", default=[str(HERE / "runs" / "paper_regime" / f"pgnas-s{s}") for s in range(3)])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--budget-candidates", type=int, default=100)
    ap.add_argument("--out", default=str(HERE / "results" / "posterior_products.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    t0 = time.time()
    per_run = []
    for r in args.runs:
        if not (Path(r) / "summary.json").is_file():
            print(f"skipping {r}: not a finished run")
            continue
        per_run.append(one_run(Path(r), args.k, args.budget_candidates))
        print(json.dumps({k: v for k, v in per_run[-1].items() if k != "budgets"}), flush=True)
        mean = lambda key: statistics.fmean(x[key] for x in per_run)  # noqa: E731
        budgets = []
        for i, frac in enumerate((0.5, 0.35, 0.25)):
            g = [x["budgets"][i]["pgnas_test_error"] for x in per_run if x["budgets"][i]["pgnas_test_error"] is not None]
            u = [x["budgets"][i]["uniform_test_error"] for x in per_run if x["budgets"][i]["uniform_test_error"] is not None]
            budgets.append({"macs_fraction": frac, "pgnas_test_error": statistics.fmean(g) if g else None,
                            "uniform_test_error": statistics.fmean(u) if u else None})
        result = {
            **{f"{a}_{b}": mean(f"{a}_{b}") for a in ("single", "ensemble", "posterior_ensemble") for b in ("test_error", "ece", "nll")},
            "ensemble_k": args.k,
            "budgets": budgets,
            "budget_candidates": args.budget_candidates,
            "bn_recalibrate_batches": BN_BATCHES,
            "targets": {
                "ensemble_ece_at_most_half": mean("ensemble_ece") <= 0.5 * mean("single_ece"),
                "ensemble_error_1pt_lower": mean("ensemble_test_error") <= mean("single_test_error") - 0.01,
                "budgets_at_most_0.9x_uniform": all(b["pgnas_test_error"] is not None and b["uniform_test_error"] is not None
                                                    and b["pgnas_test_error"] <= 0.9 * b["uniform_test_error"] for b in budgets),
            },
            "per_run": per_run,
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d"),
            "wall_seconds": time.time() - t0,
        }
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_run"}, indent=2))


if __name__ == "__main__":
    main()
