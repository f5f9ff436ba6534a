"""The final summary table a search prints."""

from __future__ import annotations

from typing import Any


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _count(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:g}"


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}%"


def _macs(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _params(n: float) -> str:
    return f"{n / 1e6:.3f}M" if n >= 1e5 else f"{int(n):,}"


STAGES = (("data", "data"), ("train", "training"), ("score", "scoring"), ("test", "test evaluation"), ("export", "export"),
          ("other", "other"))


def format_seconds(seconds: dict[str, float]) -> str:
    """The stages of one command with their seconds, adding up to its wall time."""
    parts = [f"{label} {seconds[key]:.1f}s" for key, label in STAGES if seconds.get(key)]
    return ", ".join(parts) + f" = {seconds.get('total', sum(seconds.values())):.1f}s"


def format_summary(summary: dict[str, Any], run_dir: str | None = None) -> str:
    sel = summary["selected"]
    cand = summary["candidate_val_acc"]
    shift = summary.get("scoring", {}).get("logit_shift") or 0.0
    mode = summary["posterior"]["mode"] + (f", tempered by {shift:+.3f} for the budget" if shift else "")
    lines = [
        "",
        f"pgnas {summary.get('command', 'search')}: {summary['supernet']} on {summary['dataset']}  "
        f"(posterior {mode}, mean p {summary['posterior']['mean_p']:.3f}, "
        f"{plural(summary['epochs'], 'epoch')}, {plural(summary['num_candidates'], 'candidate')})",
        "",
        f"{'':<22}{'val acc':>10}{'test acc':>10}{'params':>12}{'MACs':>10}{'kept ch.':>10}",
        f"{'super-network (mean)':<22}{_pct(summary['supernet_val_acc']):>10}{_pct(summary['supernet_test_acc']):>10}"
        f"{_params(summary['supernet_params']):>12}{_macs(summary.get('supernet_macs')):>10}{'100.0%':>10}",
    ]
    for rank, rec in enumerate(summary["top_k"], 1):
        label = f"#{rank} candidate {rec['index']}" + (" *" if rank == 1 else "")
        lines.append(
            f"{label:<22}{_pct(rec['val_acc']):>10}{_pct(rec['test_acc']):>10}{_params(rec['params']):>12}"
            f"{_macs(rec.get('macs')):>10}{100 * rec['kept_fraction']:>9.1f}%"
        )
    lines.append("(params and MACs: the slim network export writes; kept ch.: fraction of input channels kept)")
    lines += [
        "",
        f"candidates on validation: mean {_pct(cand['mean']).strip()}, std {100 * cand['std']:.2f} pts, "
        f"range {_pct(cand['min']).strip()} - {_pct(cand['max']).strip()}",
        f"selected: candidate {sel['index']} (val {_pct(sel['val_acc']).strip()}, test {_pct(sel['test_acc']).strip()}, "
        f"{_params(sel['params'])} params, {sel.get('removed_layers', 0)} conv/linear layers removed; the paper's "
        f"kept-slice count {_params(sel.get('params_kept_slices', sel['params']))})",
        f"time: {format_seconds(summary['seconds'])} on {summary['device']}",
    ]
    budget = summary.get("budget")
    if budget:
        what = ", ".join(f"{k.replace('_', ' ')} {_count(v)}" for k, v in budget.items())
        if not summary.get("budget_met", True):
            lines.insert(-1, f"budget ({what}): no candidate is within it; selected the best regardless")
        elif summary.get("best_overall"):
            b = summary["best_overall"]
            lines.insert(-1, f"budget ({what}): selected the best within it; the best overall, candidate {b['index']} "
                             f"(val {_pct(b['val_acc']).strip()}, {_params(b['params'])} params, {_macs(b['macs'])} MACs), is over it")
        else:
            lines.insert(-1, f"budget ({what}): the best candidate is within it")
    exp = summary.get("export")
    if exp:
        lines.append(
            f"exported: {exp['model']} - slim network {_params(exp['params'])} params, "
            f"{exp['macs'] / 1e6:.2f}M MACs ({100 * exp['macs'] / max(1, exp['supernet_macs']):.1f}% of the super-network's)"
        )
    if run_dir:
        lines.append(f"results: {run_dir}")
    return "\n".join(lines)
