"""The results of a search or sample: ``summary.json`` (what the run selected and reports, how it
was scored, what it cost) and :class:`SearchResult`, what ``pgnas.search()`` returns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgnas.posterior import Posterior, count_parameters
from pgnas.search.checkpoint import atomic_write_text
from pgnas.search.evaluation import TestReport
from pgnas.search.ranking import fully_scored, pareto_front
from pgnas.search.run import Run
from pgnas.search.select import Selection


@dataclass
class SearchResult:
    """What a search returns: its folder, the summary (as in summary.json), and the trained
    super-network with the selected candidate's masks."""

    run_dir: Path
    summary: dict[str, Any]
    model: nn.Module
    posterior: Posterior
    selected_masks: dict[str, torch.Tensor]
    candidates: list[dict]

    @property
    def selected(self) -> dict[str, Any]:
        return self.summary["selected"]


def summary(run: Run, selection: Selection, report: TestReport, *, command: str, train_seconds: float,
            source: Path | None = None) -> dict[str, Any]:
    """The summary of a finished selection (``export`` and ``seconds`` are added by the caller)."""
    cfg, posterior, scorer = run.cfg, run.posterior, selection.scorer
    full = fully_scored(selection.ranked, scorer.n)
    out = {
        "selected": report.top[0],
        "top_k": report.top,
        "supernet": cfg.supernet,
        "dataset": cfg.dataset,
        "supernet_params": count_parameters(run.model),
        "supernet_val_acc": report.supernet_val_acc,
        "supernet_test_acc": report.supernet_test_acc,
        "num_candidates": cfg.candidates,
        "selection": "race" if cfg.race else "exhaustive",
        "scoring": selection.setup,
        "budget": {k: getattr(cfg, k) for k in ("max_params", "max_macs", "max_latency_ms") if getattr(cfg, k)},
        "within_budget": (len(selection.eligible) if not cfg.max_latency_ms else None) if selection.budget_met else 0,
        "budget_met": selection.budget_met,
        "pareto": [{k: r.get(k) for k in ("index", "val_acc", "params", "macs", "latency_ms") if k in r} for r in pareto_front(full)],
        "calibration": {k: {m: v[m] for m in ("accuracy", "nll", "ece", "reliability")} for k, v in report.calibration.items()},
        "candidate_val_acc": _spread(selection.records, scorer.n),
        "posterior": {
            "mode": "learned" if cfg.fixed_p is None else f"fixed:{cfg.fixed_p}",
            "mean_p": posterior.mean_p(), "layers": len(posterior), "groups": posterior.num_groups(), "p": posterior.probs(),
        },
        "splits": run.data.sizes(),
        "epochs": cfg.epochs,
        "command": command,
        "training_seconds": train_seconds,
        "device": str(run.device),
        "world_size": run.dist.world_size,
        "torch": torch.__version__,
    }
    if selection.budget_met and full and selection.eligible[0]["index"] != full[0]["index"]:
        out["best_overall"] = {k: full[0][k] for k in ("index", "val_acc", "params", "macs")}  # over the budget
    unsized = [r for r in selection.records if "size_error" in r]
    if unsized:
        out["unsized_candidates"] = [{"index": r["index"], "why": r["size_error"]} for r in unsized]
    if source is not None:
        out["source_run"] = str(source)
    return out


def _spread(records: list[dict], n: int) -> dict[str, float]:
    """The candidates' validation accuracies (those scored on the whole split: raced-out partial
    scores are not comparable)."""
    vals = [r["val_acc"] for r in fully_scored(records, n)]
    mean = sum(vals) / len(vals)
    return {"candidates": len(vals), "mean": mean, "std": (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5,
            "min": min(vals), "max": max(vals)}


def write_summary(run_dir: Path | None, summary: dict[str, Any], timings: dict[str, float], total: float) -> None:
    """``seconds`` (the stages' and the rest, adding up to ``total``) into the summary, and the summary
    into ``run_dir/summary.json`` (``run_dir`` None: not written, on ranks other than 0)."""
    summary["seconds"] = {**{k: round(v, 3) for k, v in timings.items()},
                          "other": round(max(0.0, total - sum(timings.values())), 3), "total": round(total, 3)}
    if run_dir is not None:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
