"""Why guided sampling does (not) beat random sampling at small scale: on the *same* trained
posterior (the guided runs of guided_vs_random), draw candidates from the learned per-layer p and
from a uniform p equal to its channel mean (the same expected size), with the same uniform draws
for both (common random numbers), and compare their validation accuracies and the test accuracy
of each arm's winner. This separates what the learned p carries (which channels to drop) from
what the training regime does (how well the weights tolerate dropping).

It also summarises how far the learned p moved from its initial value (spread over layers and
groups), which is what guidance can work with.

    python benchmarks/guided_ablation.py [--runs benchmarks/runs/guided_vs_random/guided-s*] [--candidates 60]

Writes benchmarks/results/guided_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from pgnas.data import load_dataset
from pgnas.export.from_run import rebuild_supernet
from pgnas.posterior.concrete_dropout import logit
from pgnas.search.scoring import correct_counts

HERE = Path(__file__).resolve().parent


@contextmanager
def uniform_p(posterior, p: float):
    """The posterior with every group's p set to ``p`` (restored on exit). Candidate i is then
    drawn by ``sample_candidate`` from the same uniforms as under the learned p."""
    saved = [pl.dropout.logit.detach().clone() for pl in posterior]
    with torch.no_grad():
        for pl in posterior:
            pl.dropout.logit.fill_(logit(p))
    try:
        yield posterior
    finally:
        with torch.no_grad():
            for pl, lg in zip(posterior, saved):
                pl.dropout.logit.copy_(lg)


def summary(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "std": statistics.pstdev(xs), "min": min(xs), "max": max(xs)}


def one_run(run_dir: Path, candidates: int) -> dict:
    search_summary = json.loads((run_dir / "summary.json").read_text())
    cfg, model, post, _ = rebuild_supernet(run_dir)
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, split_seed=cfg.split_seed)
    xv, yv = data.eval_tensors("val")
    xt, yt = data.eval_tensors("test")
    pbar = post.mean_p()
    group_p = [p for ps in post.probs().values() for p in ps]
    out = {"run": str(run_dir), "seed": cfg.seed, "mean_p": pbar, "init_p": cfg.init_p,
           "group_p": summary(group_p), "groups_above_0.2": sum(p > 0.2 for p in group_p),
           "groups_below_0.02": sum(p < 0.02 for p in group_p), "groups": len(group_p),
           "supernet_val_acc": correct_counts(model, post, [{pl.name: torch.ones(pl.dropout.num_channels, dtype=torch.bool) for pl in post}],
                                              xv, yv, tile=1, batch_size=500)[0] / len(yv)}
    for arm, ctx in (("learned_p", nullcontext()), ("uniform_p", uniform_p(post, pbar))):
        with ctx:
            masks = [post.sample_candidate(i, cfg.seed) for i in range(candidates)]
        acc = [c / len(yv) for c in correct_counts(model, post, masks, xv, yv, tile=8, batch_size=500)]
        best = max(range(candidates), key=lambda i: (acc[i], -i))
        test = correct_counts(model, post, [masks[best]], xt, yt, tile=1, batch_size=500)[0] / len(yt)
        kept = [post.candidate_stats(m)["kept_fraction"] for m in masks]
        out[arm] = {"val_acc": summary(acc), "winner_test_error": 1 - test, "kept_fraction": summary(kept),
                    "winner_params": post.candidate_stats(masks[best])["params"]}
    out["selected_in_search"] = search_summary.get("selected", {}).get("index")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", default=sorted(str(p) for p in (HERE / "runs" / "guided_vs_random").glob("guided-s*")))
    ap.add_argument("--candidates", type=int, default=60)
    ap.add_argument("--out", default=str(HERE / "results" / "guided_ablation.json"))
    args = ap.parse_args()
    if not args.runs:
        raise SystemExit("guided_ablation: no guided runs; run benchmarks/guided_vs_random.py first")
    t0 = time.time()
    rows = []
    for r in args.runs:
        rows.append(one_run(Path(r), args.candidates))
        print(json.dumps({k: rows[-1][k] for k in ("seed", "mean_p", "learned_p", "uniform_p")}), flush=True)
    mean = lambda arm, key: statistics.mean(x[arm][key] if key != "val_acc" else x[arm]["val_acc"]["mean"] for x in rows)  # noqa: E731
    out = {
        "learned_p_winner_test_error": mean("learned_p", "winner_test_error"),
        "uniform_p_winner_test_error": mean("uniform_p", "winner_test_error"),
        "learned_p_mean_val_acc": mean("learned_p", "val_acc"),
        "uniform_p_mean_val_acc": mean("uniform_p", "val_acc"),
        "learned_p_std_val_acc": statistics.mean(x["learned_p"]["val_acc"]["std"] for x in rows),
        "uniform_p_std_val_acc": statistics.mean(x["uniform_p"]["val_acc"]["std"] for x in rows),
        "per_run": rows,
        "candidates": args.candidates,
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": time.time() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "per_run"}, indent=2))


if __name__ == "__main__":
    main()
