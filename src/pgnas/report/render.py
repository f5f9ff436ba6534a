"""``pgnas report``: the pictures and one Markdown + HTML page for one or more finished runs."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from pgnas.errors import PgnasError
from pgnas.report import plots
from pgnas.report.runs import RunRecord, load_run
from pgnas.report.summary import plural


def _fmt_params(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.3f}M" if n >= 1e5 else f"{int(n):,}"


def _fmt_macs(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.3f}G" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _slim(run: RunRecord, key: str):
    info = run.model_info or {}
    for src in (info, info.get("numbers", {}) if isinstance(info.get("numbers"), dict) else {}, run.summary.get("export") or {}):
        if isinstance(src, dict) and src.get(key) is not None:
            return src[key]
    return None


def table_rows(runs: Sequence[RunRecord]) -> list[dict]:
    rows = []
    for r in runs:
        s = r.summary
        secs = s.get("seconds", {})
        plain = r.trained_plainly
        sel = s if plain else s["selected"]
        rows.append({
            "run": r.path.name,
            "super-network": s["supernet"],
            "dataset": s.get("dataset", "-"),
            "posterior": r.mode,
            "epochs": s.get("epochs", "-"),
            "candidates": "-" if plain else s["num_candidates"],
            "selected": "-" if plain else sel["index"],
            "val acc": f"{100 * sel['val_acc']:.2f}%",
            "test acc": f"{100 * sel['test_acc']:.2f}%",
            "params (kept slices)": "-" if plain else _fmt_params(sel.get("params_kept_slices", sel["params"])),
            "slim params": _fmt_params(s["params"] if plain else _slim(r, "params")),
            "slim MACs": _fmt_macs(_slim(r, "macs")),
            "super-net params": "-" if plain else _fmt_params(s["supernet_params"]),
            "time": f"{secs['total']:.0f}s" if "total" in secs else "-",  # the command's wall time, as its summary says
        })
    return rows


def _md_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def _html_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(run_dirs: Sequence[str | Path], out: str | Path, *, force: bool = False) -> dict:
    """Write PNG figures and ``report.md`` / ``report.html`` for the runs into ``out``."""
    if not run_dirs:
        raise PgnasError("pgnas report needs at least one results folder")
    runs = [load_run(p) for p in run_dirs]
    for r in runs:
        if not r.trained_plainly and not r.candidates:
            raise PgnasError(f"{r.path} has no candidates.jsonl")
    out = Path(out)
    if (out / "report.md").exists() and not force:
        raise PgnasError(f"{out} already holds a report; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    searched = [r for r in runs if not r.trained_plainly]  # runs with candidates (a train run has none)
    figures: list[tuple[str, Path]] = []
    if searched:
        figures.append(("Candidate validation accuracies", plots.candidate_histogram(searched, out / "candidates_hist.png")))
    figures.append(("Training curves" + (" and best-so-far selection" if searched else ""),
                    plots.training_curves(runs, out / "training_curves.png")))
    front = plots.pareto(searched, out / "pareto.png") if searched else None
    if front is not None:
        figures.append(("Accuracy against MACs, with each run's Pareto front", front))
    for i, r in enumerate(searched):
        tag = f"_{i}" if len(searched) > 1 else ""
        figures.append((f"Selected architecture: {r.label}", plots.architecture_diagram(r, out / f"architecture{tag}.png")))
        rel = plots.reliability(r, out / f"reliability{tag}.png")
        if rel is not None:
            figures.append((f"Calibration (reliability diagram): {r.label}", rel))
        if r.mode != "learned":  # a fixed (or tempered) posterior: the learned p is the source run's
            continue
        figures.append((f"Learned p per layer: {r.label}", plots.p_per_layer(r, out / f"p_layers{tag}.png")))
        pe = plots.p_over_epochs(r, out / f"p_epochs{tag}.png")
        if pe is not None:
            figures.append((f"p over training: {r.label}", pe))
    rows = table_rows(runs)
    stats = []
    for r in runs:
        if r.trained_plainly:
            stats.append(f"- **{r.label}**: {r.summary['network']}, {plural(r.summary['epochs'], 'epoch')}, weight decay "
                         f"{r.summary.get('weight_decay', 0):g}: validation {100 * r.summary['val_acc']:.2f}%, "
                         f"test {100 * r.summary['test_acc']:.2f}%")
            continue
        c = r.summary["candidate_val_acc"]
        stats.append(f"- **{r.label}**: {c['candidates']} candidates scored on the whole validation split, accuracy mean "
                     f"{100 * c['mean']:.2f}%, std {100 * c['std']:.2f} pts, best {100 * c['max']:.2f}%; "
                     f"mean p {r.summary['posterior']['mean_p']:.3f}")
    md = ["# pgnas report", "", _md_table(rows), "", *stats, ""]
    for title, path in figures:
        md += [f"## {title}", "", f"![{title}]({path.name})", ""]
    (out / "report.md").write_text("\n".join(md))
    body = ["<h1>pgnas report</h1>", _html_table(rows), "<ul>" + "".join(f"<li>{html.escape(s[2:]).replace('**', '')}</li>" for s in stats) + "</ul>"]
    for title, path in figures:
        body.append(f"<h2>{html.escape(title)}</h2><img src='{html.escape(path.name)}' style='max-width:100%'>")
    style = "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
    (out / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>pgnas report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    return {"out": str(out), "figures": [str(p) for _, p in figures], "rows": rows}
