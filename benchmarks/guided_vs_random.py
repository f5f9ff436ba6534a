"""Guided (PGNAS) vs random (fixed-drop, Bender et al.) sampling at small scale, plus the
number-of-candidates curve, on CIFAR-10 (JPEG, ../shared/data) by default.

Per seed: (1) a PGNAS search (learned p); (2) the random baseline: the same super-network,
schedule and candidates with p fixed at the rate that matches the guided selection's kept
channel fraction (comparable size); (3) the random winner fine-tuned for a few epochs in
candidate mode. Test error of the selected networks, their parameters, the full super-network's
error, and the candidate accuracy distributions are written to
benchmarks/results/guided_vs_random.json; selected test error against the number of candidates
(guided and random) to benchmarks/results/num_candidates.json. The runs stay in --work for
`pgnas report`.

    python benchmarks/guided_vs_random.py [--seeds 0 1 2] [--epochs 20] [--train-subset 10000]
    python benchmarks/guided_vs_random.py --quick        # digits, a minute: checks the script
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import pgnas
from pgnas.search.scoring import accuracy
from pgnas.search.ranking import rank
from pgnas.search.train import PosteriorTrainer

HERE = Path(__file__).resolve().parent
SHARED_CIFAR = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def finetune_and_test(result: pgnas.SearchResult, cfg: pgnas.SearchConfig, epochs: int, lr: float) -> float:
    """Fine-tune the selected candidate (hard masks fixed, p fixed) and return its test accuracy."""
    from pgnas.search.run import build_run

    run = build_run(cfg.replace(out=None))
    model, post, data = result.model, result.posterior, run.data
    post.set_candidate(result.selected_masks)
    ft_cfg = cfg.replace(epochs=epochs, lr=lr)
    for d in post:  # freeze p: only the weights move
        d.dropout.logit.requires_grad_(False)
    trainer = PosteriorTrainer(model, post, data, ft_cfg, device=run.device, augment=run.augment,
                               lambda_w=cfg.lambda_w, n_data=cfg.n_data)
    for _ in range(epochs):
        trainer.train_epoch()
    acc = accuracy(model, data, "test", cfg.eval_batch(run.device.type), run.device)
    post.clear_candidate()
    return acc


def best_of_first(result: pgnas.SearchResult, n: int, seed: int, data) -> tuple[int, float]:
    """The winner among the first n candidates (by validation) and its test accuracy."""
    best = rank(result.candidates[:n])[0]
    post = result.posterior
    post.set_candidate(post.sample_candidate(best["index"], seed))
    acc = accuracy(result.model, data, "test", 500, torch.device("cpu"))
    post.clear_candidate()
    return best["index"], acc


def curves_from_runs(work: Path, seeds: list[int], ns: list[int]) -> dict:
    """The num_candidates curves recomputed from finished runs (their checkpoints, candidates.jsonl)."""
    from types import SimpleNamespace

    from pgnas.data import load_dataset
    from pgnas.export.from_run import rebuild_supernet
    from pgnas.search.ranking import read_candidates

    curves: dict = {"guided": {}, "random": {}}
    data = None
    for name in curves:
        for seed in seeds:
            run_dir = work / f"{name}-s{seed}"
            cfg, model, post, _ = rebuild_supernet(run_dir, data)
            if data is None:
                data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, split_seed=cfg.split_seed)
            cands = [c for _, c in sorted(read_candidates(run_dir / "candidates.jsonl").items())]
            res = SimpleNamespace(candidates=cands, posterior=post, model=model)
            curves[name][seed] = {n: 1 - best_of_first(res, n, cfg.seed, data)[1] for n in ns}
    return curves


def write_curves(curves: dict, seeds: list[int], ns: list[int], config: dict, suffix: str = "") -> None:
    nc = {
        "num_candidates": ns,
        "guided_test_error": [statistics.mean(curves["guided"][s][n] for s in seeds) for n in ns],
        "random_test_error": [statistics.mean(curves["random"][s][n] for s in seeds) for n in ns],
        "per_seed": curves,
        "seeds": seeds,
        "config": config,
        "date": time.strftime("%Y-%m-%d"),
    }
    (HERE / "results" / f"num_candidates{suffix}.json").write_text(json.dumps(nc, indent=2) + "\n")


def write_results(args, common, per_seed, curves, ns, t_start) -> dict:
    seeds = [r["seed"] for r in per_seed]

    def mean(key):
        return statistics.mean(r[key] for r in per_seed)

    out = {
        "pgnas_test_error": mean("pgnas_test_error"),
        "random_test_error": mean("random_test_error"),
        "random_finetuned_test_error": mean("random_finetuned_test_error"),
        "supernet_test_error": mean("supernet_test_error"),
        "pgnas_params": mean("pgnas_params"),
        "random_params": mean("random_params"),
        "random_drop_rate": mean("random_drop_rate"),
        "error_ratio_pgnas_over_random": mean("pgnas_test_error") / max(1e-9, mean("random_test_error")),
        "guided_candidates_mean_val_acc": statistics.mean(r["pgnas_candidates"]["mean"] for r in per_seed),
        "random_candidates_mean_val_acc": statistics.mean(r["random_candidates"]["mean"] for r in per_seed),
        "guided_candidates_std_val_acc": statistics.mean(r["pgnas_candidates"]["std"] for r in per_seed),
        "random_candidates_std_val_acc": statistics.mean(r["random_candidates"]["std"] for r in per_seed),
        "seeds": seeds,
        "per_seed": per_seed,
        "config": {**common, "finetune_epochs": args.finetune_epochs, "quick": args.quick, "digits": args.digits},
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": time.time() - t_start,
    }
    suffix = "_quick" if args.quick else "_digits" if args.digits else ""
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"guided_vs_random{suffix}.json").write_text(json.dumps(out, indent=2) + "\n")
    write_curves(curves, seeds, ns, out["config"], suffix)
    print(json.dumps({k: out[k] for k in ("pgnas_test_error", "random_test_error", "random_finetuned_test_error",
                                           "supernet_test_error", "error_ratio_pgnas_over_random")}, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--supernet", default="shake-shake-8-2x16d")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--candidates", type=int, default=150)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--lambda-w", type=float, default=50.0)
    ap.add_argument("--n-data", type=float, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--work", default=str(HERE / "runs" / "guided_vs_random"))
    ap.add_argument("--quick", action="store_true", help="digits, tiny budget: a smoke test of this script")
    ap.add_argument("--digits", action="store_true",
                    help="the embedded digits data at the given budget (a setting where the super-network converges); "
                         "writes guided_vs_random_digits.json, runs in --work + '_digits'")
    ap.add_argument("--curves-only", action="store_true",
                    help="recompute num_candidates.json from the finished runs in --work (no training)")
    args = ap.parse_args()
    if args.curves_only:
        work = Path(args.work)
        ns = [n for n in (1, 2, 5, 10, 20, 50, 100, 150, 200, 300, 500) if n <= args.candidates]
        prev = json.loads((HERE / "results" / "guided_vs_random.json").read_text())
        curves = curves_from_runs(work, args.seeds, ns)
        write_curves(curves, args.seeds, ns, prev["config"])
        print(json.dumps({n: (curves["guided"][args.seeds[0]][n], curves["random"][args.seeds[0]][n]) for n in ns}))
        return

    if args.digits:
        data = dict(dataset="digits", data_dir=None, val_size=None, train_subset=None)
        args.work = args.work + "_digits"
    elif args.quick:
        data = dict(dataset="digits", data_dir=None, val_size=None, train_subset=None)
        args.epochs, args.candidates, args.finetune_epochs, args.seeds = 3, 12, 1, args.seeds[:1]
        args.work = args.work + "_quick"  # never the folders of the real benchmark
    else:
        if not SHARED_CIFAR.exists():
            raise SystemExit(f"guided_vs_random: {SHARED_CIFAR} is absent (the shared CIFAR-10 JPEG archive)")
        data = dict(dataset="imagefolder", data_dir=str(SHARED_CIFAR), val_size=args.val_size, train_subset=args.train_subset)
    work = Path(args.work)
    common = dict(supernet=args.supernet, epochs=args.epochs, candidates=args.candidates, lr=args.lr,
                  lambda_w=args.lambda_w, n_data=args.n_data, top_k=1, **data)
    t_start = time.time()
    per_seed = []
    curves = {"guided": {}, "random": {}}
    ns = [n for n in (1, 2, 5, 10, 20, 50, 100, 150, 200, 300, 500) if n <= args.candidates]
    for seed in args.seeds:
        g_cfg = pgnas.SearchConfig(**common, seed=seed, out=str(work / f"guided-s{seed}"))
        g = pgnas.search(g_cfg, progress=False, force=True)
        p_random = round(min(0.9, max(0.02, 1.0 - g.selected["kept_fraction"])), 3)
        r_cfg = pgnas.SearchConfig(**common, seed=seed, posterior=f"fixed:{p_random}", out=str(work / f"random-s{seed}"))
        r = pgnas.search(r_cfg, progress=False, force=True)
        from pgnas.search.run import build_run

        test_data = build_run(pgnas.SearchConfig.from_toml(g.run_dir / "config.toml")).data
        for name, res in (("guided", g), ("random", r)):  # before fine-tuning: it changes r.model in place
            curves[name][seed] = {n: 1 - best_of_first(res, n, seed, test_data)[1] for n in ns}
        ft_acc = finetune_and_test(r, pgnas.SearchConfig.from_toml(r.run_dir / "config.toml"), args.finetune_epochs, args.lr * 0.2)
        row = {
            "seed": seed,
            "random_drop_rate": p_random,
            "pgnas_test_error": 1 - g.selected["test_acc"],
            "random_test_error": 1 - r.selected["test_acc"],
            "random_finetuned_test_error": 1 - ft_acc,
            "supernet_test_error": 1 - g.summary["supernet_test_acc"],
            "random_supernet_test_error": 1 - r.summary["supernet_test_acc"],
            "pgnas_params": g.selected.get("params_kept_slices", g.selected["params"]),
            "random_params": r.selected.get("params_kept_slices", r.selected["params"]),
            "pgnas_slim_params": (g.summary.get("export") or {}).get("params"),
            "random_slim_params": (r.summary.get("export") or {}).get("params"),
            "pgnas_kept_fraction": g.selected["kept_fraction"],
            "random_kept_fraction": r.selected["kept_fraction"],
            "pgnas_mean_p": g.summary["posterior"]["mean_p"],
            "pgnas_candidates": g.summary["candidate_val_acc"],
            "random_candidates": r.summary["candidate_val_acc"],
            "seconds": {"guided": g.summary["seconds"], "random": r.summary["seconds"]},
        }
        per_seed.append(row)
        write_results(args, common, per_seed, curves, ns, t_start)  # after every seed: a kill keeps what is done
        print(json.dumps({k: row[k] for k in ("seed", "pgnas_test_error", "random_test_error", "random_finetuned_test_error",
                                                 "supernet_test_error", "pgnas_params", "random_params")}), flush=True)


if __name__ == "__main__":
    main()
