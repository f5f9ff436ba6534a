"""The report's pictures (matplotlib, headless): one function per figure, each writing a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pgnas.report.runs import RunRecord  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def candidate_histogram(runs: Sequence[RunRecord], path: Path) -> Path:
    """Validation accuracy of every candidate, runs overlaid, the selected one marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    accs = [np.array([c["val_acc"] for c in r.fully_scored]) * 100 for r in runs]  # the spread the summary reports
    lo = min(a.min() for a in accs)
    hi = max(a.max() for a in accs)
    bins = np.linspace(lo, hi + 1e-9, 30) if hi > lo else 10
    for i, (r, a) in enumerate(zip(runs, accs)):
        color = COLORS[i % len(COLORS)]
        ax.hist(a, bins=bins, alpha=0.5, color=color, label=f"{r.label}: mean {a.mean():.2f}%, std {a.std():.2f}")
        sel = r.summary["selected"]["val_acc"] * 100
        ax.axvline(sel, color=color, ls="--", lw=1.5)
        ax.annotate("selected", (sel, ax.get_ylim()[1] * (0.9 - 0.1 * i)), color=color, fontsize=8, ha="right")
    ax.set_xlabel("candidate validation accuracy (%)")
    ax.set_ylabel("candidates")
    ax.set_title("Candidates sampled from the posterior (no fine-tuning)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto(runs: Sequence[RunRecord], path: Path) -> Path | None:
    """Validation accuracy against the slim network's MACs for every candidate of every run, each
    run's front (no candidate at least as accurate and cheaper) as a line, the selected marked."""
    if not all(c.get("macs") for r in runs for c in r.candidates):
        return None  # candidates scored before slim sizes were recorded
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        full = r.fully_scored
        ax.scatter([c["macs"] / 1e6 for c in full], [100 * c["val_acc"] for c in full], s=8, alpha=0.4, color=color,
                   label=f"{r.label} candidates")
        front = front_2d(full)  # the front of what is drawn (the summary's is over params and MACs together)
        if front:
            ax.step([c["macs"] / 1e6 for c in front], [100 * c["val_acc"] for c in front], where="post", color=color, lw=1.2,
                    label=f"{r.label} front")
        sel = r.summary["selected"]
        if sel.get("macs"):
            ax.scatter([sel["macs"] / 1e6], [100 * sel["val_acc"]], marker="*", s=160, color=color, edgecolor="k", zorder=5,
                       label=f"{r.label} selected")
    ax.set_xlabel("MACs of the slim network (millions, one input)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy against cost: every candidate, each run's Pareto front")
    ax.legend(fontsize=7)
    return _save(fig, path)


def front_2d(records: Sequence[dict]) -> list[dict]:
    """The candidates no other is at least as accurate and at most as costly in MACs (better in one),
    by increasing MACs: along it accuracy only rises."""
    front: list[dict] = []
    for c in sorted(records, key=lambda c: (c["macs"], -c["val_acc"])):
        if not front or c["val_acc"] > front[-1]["val_acc"]:
            front.append(c)
    return front


def reliability(run: RunRecord, path: Path) -> Path | None:
    """Reliability diagram on the test split: accuracy against confidence (15 equal-width bins)
    for the selected candidate, the mean network and the top-5 ensemble, with their ECE."""
    cal = run.summary.get("calibration")
    if not cal:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 6))
    ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1)
    for i, (name, m) in enumerate(cal.items()):
        bins = [b for b in m["reliability"] if b["count"]]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", ms=3, color=COLORS[i % len(COLORS)],
                label=f"{name.replace('_', ' ')}: ECE {m['ece']:.3f}, NLL {m['nll']:.3f}, acc {100 * m['accuracy']:.1f}%")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Calibration on the test split: {run.label}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)  # below the axes, off the data
    return _save(fig, path)


def p_per_layer(run: RunRecord, path: Path) -> Path:
    """The learned drop probability of every layer: mean over its groups, whiskers from the
    smallest to the largest group p where a layer has several groups."""
    p = run.summary["posterior"]["p"]
    names = list(p)
    vals = np.array([float(np.mean(v)) for v in p.values()])
    lo = vals - np.array([float(np.min(v)) for v in p.values()])
    hi = np.array([float(np.max(v)) for v in p.values()]) - vals
    fig, ax = plt.subplots(figsize=(max(7, 0.18 * len(names)), 4))
    ax.bar(range(len(names)), vals, color=COLORS[0], yerr=np.vstack([lo, hi]) if (lo + hi).any() else None,
           error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "0.3"})
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("drop probability p")
    ax.set_ylim(0, min(1.0, max(0.25, 1.15 * float((vals + hi).max()))))
    ax.set_title(f"Learned p per layer ({run.label})")
    return _save(fig, path)


def p_over_epochs(run: RunRecord, path: Path) -> Path:
    """p of every layer over training (heatmap) and the mean p."""
    if not run.metrics:
        return None
    names = list(run.metrics[-1]["p"])

    def mean_p(v):
        return v["mean"] if isinstance(v, dict) else v

    grid = np.array([[mean_p(m["p"].get(n, np.nan)) for m in run.metrics] for n in names])
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.12 * len(names))), gridspec_kw={"width_ratios": [3, 2]})
    im = ax0.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(0.01, float(np.nanmax(grid))),
                    extent=[0.5, len(run.metrics) + 0.5, len(names) - 0.5, -0.5])
    ax0.set_yticks(range(len(names)))
    ax0.set_yticklabels(names, fontsize=5)
    ax0.set_xlabel("epoch")
    ax0.set_title("p per layer over training")
    fig.colorbar(im, ax=ax0)
    ax1.plot([m["epoch"] for m in run.metrics], [m["mean_p"] for m in run.metrics], color=COLORS[1])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("mean p")
    ax1.set_title("mean drop probability")
    return _save(fig, path)


def training_curves(runs: Sequence[RunRecord], path: Path) -> Path:
    """CE, KL and training accuracy per epoch; best-so-far validation accuracy over candidates."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for i, r in enumerate(runs):
        c = COLORS[i % len(COLORS)]
        ep = [m["epoch"] for m in r.metrics]
        axes[0].plot(ep, [m["ce"] for m in r.metrics], color=c, label=r.label)
        axes[1].plot(ep, [m["kl"] for m in r.metrics], color=c)
        axes[2].plot(ep, [100 * m["train_acc"] for m in r.metrics], color=c)
        accs = np.array([cd["val_acc"] for cd in sorted(r.fully_scored, key=lambda d: d["index"])]) * 100
        if len(accs):
            axes[3].plot(np.arange(1, len(accs) + 1), np.maximum.accumulate(accs), color=c)
    for ax, title in zip(axes, ("cross-entropy", "KL term", "train accuracy (%)", "best validation acc. so far (%)")):
        ax.set_title(title, fontsize=10)
    for ax in axes[:3]:
        ax.set_xlabel("epoch")
    axes[3].set_xlabel("candidates evaluated")
    axes[3].set_xscale("log")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def _block_layout(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Rows (blocks) and columns (operations) of the architecture diagram from layer names:
    ``stages.1.0.branch1.conv1`` -> block ``stages.1.0``, operation ``branch1.conv1``."""
    rows, cols = [], []
    for n in names:
        parts = n.split(".")
        cut = len(parts) - 2 if len(parts) >= 4 else max(1, len(parts) - 1)
        block, op = ".".join(parts[:cut]) or n, ".".join(parts[cut:])
        if block not in rows:
            rows.append(block)
        if op not in cols:
            cols.append(op)
    return rows, cols


def architecture_diagram(run: RunRecord, path: Path) -> Path:
    """The selected architecture drawn on the super-network: one box per operation, its kept
    fraction of input channels written on it, removed operations greyed (as the paper's
    supplementary Fig. 2)."""
    layers = run.summary["selected"].get("layers", {})
    names = list(layers)
    rows, cols = _block_layout(names)
    cell = {}
    for n in names:
        parts = n.split(".")
        cut = len(parts) - 2 if len(parts) >= 4 else max(1, len(parts) - 1)
        cell[(".".join(parts[:cut]) or n, ".".join(parts[cut:]))] = layers[n]
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 2.5, 0.42 * len(rows) + 1.5))
    cmap = plt.get_cmap("Blues")
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            if (row, col) not in cell:
                continue
            f = cell[(row, col)]
            color = "#d9d9d9" if f == 0 else cmap(0.25 + 0.6 * f)
            ax.add_patch(plt.Rectangle((j, i), 0.92, 0.8, color=color, ec="black" if f > 0 else "#999999", lw=0.5))
            ax.text(j + 0.46, i + 0.42, "removed" if f == 0 else f"{100 * f:.0f}%", ha="center", va="center",
                    fontsize=7, color="#777777" if f == 0 else "black")
    ax.set_xlim(-0.1, len(cols))
    ax.set_ylim(len(rows), -0.2)
    ax.set_xticks(np.arange(len(cols)) + 0.46)
    ax.set_xticklabels(cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(rows)) + 0.4)
    ax.set_yticklabels(rows, fontsize=7)
    ax.set_frame_on(False)
    sel = run.summary["selected"]
    ax.set_title(f"Selected candidate {sel['index']}: kept input channels per operation "
                 f"({100 * sel['kept_fraction']:.0f}% overall, {sel.get('removed_layers', sel.get('removed_ops', 0))} layers removed)", fontsize=9)
    return _save(fig, path)
