"""The README's evidence, drawn and tabulated from benchmarks/results/fair_evidence.json (written by
benchmarks/fair_evidence.py): docs/evidence.png (test error against the deployed network's slim
parameters for every arm at every operating point) and the Markdown table the README shows.
``tests/test_readme_evidence.py`` checks the README's table against this script's output.

    python benchmarks/plot_evidence.py [--json benchmarks/results/fair_evidence.json] [--out docs/evidence.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (arm, label in the table and legend; {c} candidates, {e} search epochs, {f} fine-tuning epochs, {n} super-network params)
ARMS = [
    ("pgnas", "**PGNAS**: best of {c} on validation, no fine-tuning"),
    ("pgnas_finetuned", "PGNAS winner fine-tuned ({f})"),
    ("pgnas_reinit", "PGNAS architecture trained from scratch ({e})"),
    ("narrow", "narrower shake-shake trained from scratch ({e})"),
    ("l1_layer_finetuned", "L1-pruned plain network, per layer, fine-tuned ({f})"),
    ("l1_global_finetuned", "L1-pruned plain network, global, fine-tuned ({f})"),
    ("random_protected", "random: fixed p (image and classifier inputs kept), best of {c}"),
    ("random_protected_finetuned", "... fine-tuned ({f})"),
    ("random_all", "random: fixed p on every layer (the paper's code), best of {c}"),
    ("random_all_finetuned", "... fine-tuned ({f})"),
    ("random_same_weights", "PGNAS weights, uniform p of the same size, best of {c}"),
    ("plain", "the full super-network trained plainly ({n} params)"),
]


def labels(result: dict) -> dict[str, str]:
    rows = result["rows"]
    n = rows[0]["plain"]["params"]
    epochs = lambda k: f"{k} epoch" + ("" if k == 1 else "s")  # noqa: E731
    fill = {"c": result["config"]["candidates"], "e": epochs(result["config"]["epochs"]), "f": epochs(result["finetune"]["epochs"]),
            "n": f"{n / 1e3:.0f}k"}
    return {arm: label.format(**fill) for arm, label in ARMS}


def arm_error(row: dict, arm: str) -> float | None:
    if arm.endswith("_finetuned") and arm != "pgnas_finetuned":
        a = row.get(arm[: -len("_finetuned")], {})
        return 1 - a["finetuned"]["test_acc"] if a.get("finetuned") else None
    a = row.get(arm, {})
    return 1 - a["test_acc"] if "test_acc" in a else None


def arm_params(row: dict, arm: str) -> float | None:
    base = arm[: -len("_finetuned")] if arm.endswith("_finetuned") and arm != "pgnas_finetuned" else arm
    a = row.get(base, {})
    if base in ("pgnas_finetuned", "pgnas_reinit"):
        return row["pgnas"]["params"]
    return a.get("params")


def points(result: dict) -> list[str]:
    return sorted({r["point"] for r in result["rows"]}, key=lambda p: -float(p))


def table(result: dict) -> str:
    """Mean test error over the seeds (the seeds in brackets), per arm and operating point."""
    pts = points(result)
    rows = {p: [r for r in result["rows"] if r["point"] == p] for p in pts}
    head = "| arm | " + " | ".join(f"{p} % point (lambda_w {rows[p][0]['lambda_w']:g})" for p in pts) + " |"
    lines = [head, "|---|" + "---:|" * len(pts)]
    for arm, label in labels(result).items():
        cells = []
        for p in pts:
            errs = [e for e in (arm_error(r, arm) for r in rows[p]) if e is not None]
            if not errs:
                cells.append("-")
                continue
            each = ", ".join(f"{100 * e:.1f}" for e in errs)
            cells.append(f"{100 * statistics.fmean(errs):.2f} % ({each})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sizes = []
    for p in pts:
        params = [r["pgnas"]["params"] for r in rows[p]]
        frac = statistics.fmean(r["pgnas"]["kept_fraction_of_supernet_params"] for r in rows[p])
        sizes.append(f"{statistics.fmean(params) / 1e3:.0f}k ({100 * frac:.0f} %)")
    lines.append("| deployed size: PGNAS winner's slim params (of the super-network's) | " + " | ".join(sizes) + " |")
    return "\n".join(lines)


def targets_table(result: dict) -> str:
    """Per operating point: each target of the protocol, its numbers (mean test error, %) and met or
    missed; then each arm's health (its super-network's test accuracy) and whether it was matched."""
    lines = ["| point | target | numbers | met |", "|---|---|---|---|"]
    for p, s in result["summary"].items():
        for name, t in s["targets"].items():
            nums = ", ".join(f"{k} {v:.3f}" if k == "ratio" else (f"{k} {v:+.2f} pts" if k == "gap_points" else f"{k} {100 * v:.2f} %")
                             for k, v in t.items() if k != "met")
            lines.append(f"| {p} % | {name} | {nums} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "| point | arm | super-network (or network) test acc | at chance |", "|---|---|---:|---|"]
    for p, s in result["summary"].items():
        for arm, h in s["health"].items():
            acc = h.get("supernet_test_acc", h.get("test_acc"))
            lines.append(f"| {p} % | {arm} | {100 * acc:.2f} % | {'**yes**' if h.get('at_chance') else 'no'} |")
    return "\n".join(lines)


# What each arm trains to deliver its network: (path in a row, shared by every size?)
COST_PARTS = {
    "pgnas": [(("pgnas",), False)],
    "pgnas_finetuned": [(("pgnas",), False), (("pgnas_finetuned",), False)],
    "pgnas_reinit": [(("pgnas",), False), (("pgnas_reinit",), False)],
    "narrow": [(("narrow",), False)],
    "l1_layer_finetuned": [(("plain",), True), (("l1_layer", "finetuned"), False)],
    "l1_global_finetuned": [(("plain",), True), (("l1_global", "finetuned"), False)],
    "random_protected": [(("random_protected",), False)],
    "random_protected_finetuned": [(("random_protected",), False), (("random_protected", "finetuned"), False)],
    "random_all": [(("random_all",), False)],
    "random_all_finetuned": [(("random_all",), False), (("random_all", "finetuned"), False)],
    "random_same_weights": [(("pgnas",), False)],
    "plain": [(("plain",), True)],
}


def _cost(row: dict, path: tuple) -> dict | None:
    d = row
    for key in path:
        d = d.get(key) or {}
    return d.get("cost")


def costs_table(result: dict) -> str:
    """Each arm's training cost to deliver its network: epochs (per size, and what is trained once
    for every size) and the measured seconds at each point (the median over the seeds, each seed in
    brackets: a run that shared the CPU with another job is slowed several times over, and the median
    of three is not moved by one such run; PGNAS's search includes scoring its candidates)."""
    pts = points(result)
    rows = {p: [r for r in result["rows"] if r["point"] == p] for p in pts}
    lines = ["| arm | epochs of training | " + " | ".join(f"seconds, {p} % point" for p in pts) + " |",
             "|---|---|" + "---:|" * len(pts)]
    any_row = result["rows"][0]
    for arm, label in labels(result).items():
        parts = COST_PARTS[arm]
        per_size = [c["epochs"] for path, shared in parts if not shared and (c := _cost(any_row, path))]
        once = [c["epochs"] for path, shared in parts if shared and (c := _cost(any_row, path))]
        epochs = " + ".join(str(e) for e in per_size) + (" per size" if per_size else "")
        if once:
            epochs = f"{' + '.join(str(e) for e in once)} once" + (f", then {epochs}" if per_size else "")
        cells = []
        for p in pts:
            secs = []
            for r in rows[p]:
                cs = [_cost(r, path) for path, _ in parts]
                if all(cs):
                    secs.append(sum(c["seconds"] for c in cs))
            cells.append(f"{statistics.median(secs):,.0f} ({', '.join(f'{x:,.0f}' for x in secs)})" if secs else "-")
        lines.append(f"| {label.replace('**', '')} | {epochs or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_label(result: dict) -> str:
    seeds = sorted({r["seed"] for r in result["rows"]})
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of {len(seeds)} seeds"


def figure(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab20").colors
    for i, (arm, label) in enumerate(labels(result).items()):
        xs, ys = [], []
        for p in points(result):
            rows = [r for r in result["rows"] if r["point"] == p]
            pairs = [(arm_params(r, arm), arm_error(r, arm)) for r in rows]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            if not pairs:
                continue
            xs.append(statistics.fmean(x for x, _ in pairs) / 1e3)
            ys.append(100 * statistics.fmean(y for _, y in pairs))
            ax.scatter([x / 1e3 for x, _ in pairs], [100 * y for _, y in pairs], s=8, color=colors[i % 20], alpha=0.5)
        if arm == "plain" and ys:
            ax.axhline(statistics.fmean(ys), color="black", ls=":", lw=1, label=label.replace("**", ""))
            continue
        if xs:
            style = dict(lw=2.5, marker="*", ms=12) if arm == "pgnas" else dict(lw=1, marker="o", ms=4)
            ax.plot(xs, ys, color="black" if arm == "pgnas" else colors[i % 20], label=label.replace("**", ""), **style)
    ax.set_xlabel("deployed network: slim parameters (thousands)")
    ax.set_ylabel("test error (%)")
    cfg = result["config"]
    ax.set_title(f"{cfg['dataset']} ({cfg.get('image_size') or 'native'} px), {cfg['supernet']}: "
                 f"{seeds_label(result)}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=str(HERE / "results" / "fair_evidence.json"))
    ap.add_argument("--out", default=str(HERE.parent / "docs" / "evidence.png"))
    args = ap.parse_args()
    result = json.loads(Path(args.json).read_text())
    figure(result, Path(args.out))
    print(table(result))
    print()
    print(targets_table(result))
    print()
    print(costs_table(result))


if __name__ == "__main__":
    main()
