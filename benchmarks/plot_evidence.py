"""The headline figure of the evidence benchmarks (docs/evidence.png), from their JSON results and
the runs they left in benchmarks/runs/guided_vs_random:

1. selected test error against the number of candidates, guided and random (mean over seeds);
2. candidate validation accuracies of all seeds, guided vs random (each run's own weights);
3. the same trained posterior sampled with its learned p and with a uniform p of the same mean.

    python benchmarks/plot_evidence.py [--out docs/evidence.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
BLUE, RED, GREY = "#1f77b4", "#d62728", "#7f7f7f"


def val_accs(run_dir: Path) -> list[float]:
    return [100 * json.loads(line)["val_acc"] for line in (run_dir / "candidates.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE.parent / "docs" / "evidence.png"))
    ap.add_argument("--runs", default=str(HERE / "runs" / "guided_vs_random"))
    args = ap.parse_args()
    res = HERE / "results"
    nc = json.loads((res / "num_candidates.json").read_text())
    gvr = json.loads((res / "guided_vs_random.json").read_text())
    abl = json.loads((res / "guided_ablation.json").read_text())
    runs = Path(args.runs)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ns = nc["num_candidates"]
    ax.plot(ns, [100 * e for e in nc["guided_test_error"]], "o-", color=BLUE, label="guided (learned p)")
    ax.plot(ns, [100 * e for e in nc["random_test_error"]], "s-", color=RED, label=f"random (fixed p {gvr['random_drop_rate']:.3f})")
    ax.axhline(100 * gvr["supernet_test_error"], color=BLUE, ls="--", lw=1, label="guided arm's super-network")
    rs = [r["random_supernet_test_error"] for r in gvr["per_seed"]]
    ax.axhline(100 * sum(rs) / len(rs), color=RED, ls="--", lw=1, label="random arm's super-network")
    ax.set_xscale("log")
    ax.set_xlabel("candidates evaluated")
    ax.set_ylabel("selected network's test error (%)")
    ax.set_title(f"Selection vs candidates ({len(nc['seeds'])} seeds)")
    ax.legend(fontsize=8)

    ax = axes[1]
    g = [a for s in gvr["seeds"] for a in val_accs(runs / f"guided-s{s}")]
    r = [a for s in gvr["seeds"] for a in val_accs(runs / f"random-s{s}")]
    lo = min(min(g), min(r))
    bins = [lo + i * (max(max(g), max(r)) - lo) / 40 for i in range(41)]
    ax.hist(r, bins=bins, alpha=0.55, color=RED, label=f"random: mean {sum(r) / len(r):.1f}%")
    ax.hist(g, bins=bins, alpha=0.55, color=BLUE, label=f"guided: mean {sum(g) / len(g):.1f}%")
    ax.set_xlabel("candidate validation accuracy (%)")
    ax.set_ylabel("candidates")
    ax.set_title("Candidates, each arm's own weights")
    ax.legend(fontsize=8)

    ax = axes[2]
    rows = abl["per_run"]
    for k, row in enumerate(rows):
        for j, (arm, color) in enumerate((("learned_p", BLUE), ("uniform_p", RED))):
            v = row[arm]["val_acc"]
            x = k + (j - 0.5) * 0.3
            ax.errorbar(x, 100 * v["mean"], yerr=100 * v["std"], fmt="o", color=color, capsize=3,
                        label=(("learned p" if arm == "learned_p" else "uniform p, same mean") if k == 0 else None))
            ax.plot([x], [100 * v["max"]], marker="^", color=color, ms=5)
    ax.set_xticks(range(len(rows)), [f"seed {row['seed']}" for row in rows])
    ax.set_ylabel("candidate validation accuracy (%)")
    ax.set_title("Same trained weights: learned vs uniform p")
    ax.text(0.02, 0.02, "dot: mean +/- std, triangle: best", transform=ax.transAxes, fontsize=7, color=GREY)
    ax.legend(fontsize=8)
    fig.suptitle(f"PGNAS at small scale: {gvr['config']['supernet']}, CIFAR-10 ({gvr['config']['train_subset']} training images, "
                 f"{gvr['config']['epochs']} epochs)", fontsize=11)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
