"""The headline figure of the evidence in the paper's regime (docs/evidence_paper_regime.png), from
benchmarks/results/paper_regime.json, num_candidates_paper_regime.json and lambda_sweep.json:

1. test error of every arm, each seed a dot, the mean a bar (pgnas, random, random fine-tuned,
   magnitude, the super-network, the plain network), parameters under each bar;
2. selected test error against the number of candidates, guided and random (Table 6 analogue);
3. lambda_w against the selected network's parameters and test error (Table 4 analogue).

    python benchmarks/plot_paper_regime.py [--out docs/evidence_paper_regime.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
ARMS = [("pgnas", "PGNAS\n(guided)", "#1f77b4"), ("random", "random\n(fixed p)", "#d62728"),
        ("random_finetuned", "random\nfine-tuned", "#ff9896"), ("magnitude", "magnitude\npruning", "#9467bd"),
        ("supernet", "super-\nnetwork", "#7f7f7f"), ("plain", "plain\n(no dropout)", "#2ca02c")]


def _params(seed_arm: dict) -> float | None:
    return seed_arm.get("params_slim") or seed_arm.get("params")


def markdown(pr: dict) -> str:
    """The per-arm, per-seed table of benchmarks/RESULTS.md."""
    seeds = [s["seed"] for s in pr["per_seed"]]
    head = "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | params (kept slices / slim) |"
    rows = [head, "|---|" + "---:|" * (len(seeds) + 2)]
    for key, label, _ in ARMS:
        errs = [100 * (1 - s[key]["test_acc"]) for s in pr["per_seed"]]
        ks = [s[key].get("params_kept_slices") for s in pr["per_seed"] if s[key].get("params_kept_slices")]
        sl = [_params(s[key]) for s in pr["per_seed"] if _params(s[key])]
        size = (f"{sum(ks) / len(ks) / 1e3:.1f}k / " if ks else "- / ") + (f"{sum(sl) / len(sl) / 1e3:.1f}k" if sl else "-")
        rows.append(f"| {label.replace(chr(10), ' ')} | " + " | ".join(f"{e:.2f} %" for e in errs) + f" | **{sum(errs) / len(errs):.2f} %** | {size} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--out", default=str(HERE.parent / "docs" / "evidence_paper_regime.png"))
    ap.add_argument("--markdown", action="store_true", help="print the table of test errors instead")
    args = ap.parse_args()
    res = Path(args.results)
    pr = json.loads((res / "paper_regime.json").read_text())
    if args.markdown:
        print(markdown(pr))
        return
    nc = json.loads((res / "num_candidates_paper_regime.json").read_text())
    sweep_path = res / "lambda_sweep.json"
    sweep = json.loads(sweep_path.read_text()) if sweep_path.exists() else None
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))

    ax = axes[0]
    for i, (key, label, color) in enumerate(ARMS):
        errs = [100 * (1 - s[key]["test_acc"]) for s in pr["per_seed"]]
        ax.bar(i, sum(errs) / len(errs), color=color, alpha=0.75)
        ax.scatter([i] * len(errs), errs, color="k", s=10, zorder=3)
        p = [_params(s[key]) for s in pr["per_seed"] if _params(s[key])]
        if p:
            ax.text(i, 2, f"{sum(p) / len(p) / 1e3:.0f}k", ha="center", fontsize=8, color="white")
    ax.set_xticks(range(len(ARMS)))
    ax.set_xticklabels([a[1] for a in ARMS], fontsize=8)
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Selected networks, {len(pr['per_seed'])} seeds (params of the slim network in the bars)", fontsize=9)

    ax = axes[1]
    ns = [int(n) for n in nc["test_error"]["pgnas"]]
    ax.plot(ns, [100 * nc["test_error"]["pgnas"][str(n)] for n in ns], "o-", color=ARMS[0][2], label="guided (PGNAS)")
    nr = [int(n) for n in nc["test_error"]["random"]]
    ax.plot(nr, [100 * nc["test_error"]["random"][str(n)] for n in nr], "s-", color=ARMS[1][2], label="random (fixed p)")
    ax.set_xscale("log")
    ax.set_xlabel("candidates drawn")
    ax.set_ylabel("selected test error (%)")
    ax.set_title("Best on validation of the first n candidates (Table 6 analogue)", fontsize=9)
    ax.legend(fontsize=8)

    ax = axes[2]
    if sweep:
        pts = sorted(sweep["points"], key=lambda p: p["lambda_w"])
        lw = [p["lambda_w"] for p in pts]
        ax.plot(lw, [(p["params_slim"] or p["params"]) / 1e3 for p in pts], "o-", color="#1f77b4", label="params (slim, k)")
        ax.set_xscale("log")
        ax.set_xlabel("lambda_w")
        ax.set_ylabel("selected network's parameters (thousands)", color="#1f77b4")
        ax2 = ax.twinx()
        ax2.plot(lw, [100 * p["test_error"] for p in pts], "s--", color="#d62728", label="test error")
        ax2.set_ylabel("selected test error (%)", color="#d62728")
        ax.set_title("The weight prior sets the size (Table 4 analogue, one seed)", fontsize=9)
    fig.suptitle(f"CIFAR-10 at 16x16, 5,000 training images, shake-shake-8-2x32d, 80 epochs ({pr['machine']})", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
