"""Guided sampling and selection, the method's steps 4 and 5: draw the candidates from the trained
(or tempered) posterior, score them on the held-out validation split (never the test split),
exhaustively or by paired racing, rank them, and keep the best within the budgets.

``select`` is the step the workflow calls; it writes ``scoring.json`` (how candidates were scored:
a resumed selection whose setup changed re-scores them all) and ``candidates.jsonl`` (a line per
candidate as it is scored, so a killed run keeps its scores).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from pgnas.config import SearchConfig
from pgnas.errors import PgnasError
from pgnas.search.checkpoint import atomic_write_text
from pgnas.search.console import index_list, log, progress_bar, warn
from pgnas.search.distributed import broadcast_module, gather_objects
from pgnas.search.epochs import stopped
from pgnas.search.racing import RaceStopped
from pgnas.search.ranking import cached_latency, fully_scored, rank, read_candidates, within_budget
from pgnas.search.run import Run
from pgnas.search.scorer import CandidateScorer
from pgnas.search.signals import StopRequests
from pgnas.search.train import Stopped

ENSEMBLE_K = 5  # the summary's ensemble of the top candidates (Bayesian model averaging)


@dataclass
class Selection:
    """What selection found: every candidate's record (index order), the ranking, the candidates within
    the budgets (best first; all of them when no candidate meets the budgets, ``budget_met`` False),
    the scorer (masks and sizes of any candidate) and how they were scored."""

    records: list[dict]
    ranked: list[dict]
    eligible: list[dict]
    budget_met: bool
    scorer: CandidateScorer
    setup: dict[str, Any]
    seconds: float


def scoring_setup(cfg: SearchConfig, device: torch.device) -> dict[str, Any]:
    """What decides a candidate's score beyond its masks: scores computed under another setup
    are not comparable, so a resumed selection re-scores them."""
    return {
        "records": 3,  # 2: params/macs of the slim network, params_kept_slices, removed_layers; 3: sizes under the candidate's BN
        "bn_recalibrate": cfg.bn_recalibrate or 0,
        "bn_batch_size": cfg.batch_size if cfg.bn_recalibrate else None,
        "precision": "bf16" if device.type == "cuda" else "fp32",
        "seed": cfg.seed,
        "logit_shift": cfg.logit_shift,
    }


def select(run: Run, run_dir: Path, *, resume: bool, progress: bool, stop: StopRequests, command: str,
           source: Path | None = None) -> Selection:
    """Score ``run``'s candidates into ``run_dir``, rank them and apply the budgets (see the module)."""
    cfg, main = run.cfg, run.dist.is_main
    t0 = time.perf_counter()
    broadcast_module(run.model, run.dist)  # every rank scores rank 0's network (under torchrun BN statistics differ)
    scorer = CandidateScorer(
        run.model, run.posterior, run.data, seed=cfg.seed, device=run.device, batch_size=cfg.eval_batch(run.device.type),
        tile=cfg.tile(run.device.type), bn_recalibrate=cfg.bn_recalibrate, train_batch_size=cfg.batch_size, dist=run.dist,
        shift=cfg.logit_shift, path=cfg.eval_path,
    )
    setup = scoring_setup(cfg, run.device)
    done = _scores_to_keep(run_dir, setup, resume, progress, main)
    latency_of = None
    if cfg.max_latency_ms:
        latency_of = cached_latency(run_dir if main else None, run.model, scorer.masks, scorer.input_shape, run.device)
    if cfg.race and scorer.n < RACE_MIN_IMAGES and main:
        warn(f"--race: on a validation split of {scorer.n} images racing saves little and costs more passes (its looks "
             f"are small; it pays from about {RACE_MIN_IMAGES} images): scoring without --race is likely faster here")
    if cfg.race:
        records = _race(run, scorer, run_dir, latency_of, stop, progress, command)
    else:
        records = _score_all(run, scorer, run_dir, done, stop, progress, command)
    ranked = rank(records)
    seconds = time.perf_counter() - t0
    if progress:
        log(f"scored {cfg.candidates} candidates in {seconds:.1f}s: best val {ranked[0]['val_acc']:.4f} (candidate {ranked[0]['index']})")
    unsized = [r for r in records if "size_error" in r]
    if unsized and main:
        warn(f"{len(unsized)} of {len(records)} candidates could not be slimmed (candidates "
             f"{index_list([r['index'] for r in unsized])}): {unsized[0]['size_error']}; their params and MACs are the "
             f"kept-slice counts (upper bounds), and they cannot be exported")
    full = fully_scored(ranked, scorer.n)
    _say_ties(full, scorer.n, main)
    eligible, budget_met = _within_budgets(cfg, full, latency_of, main, run_dir if source is None else source)
    if budget_met and eligible[0]["index"] != full[0]["index"] and main:
        b, e = full[0], eligible[0]
        log(f"the budget changed the choice: candidate {e['index']} (val {e['val_acc']:.4f}, {e['params']:,} params, "
            f"{e['macs']:,} MACs) is the best within it; the best overall, candidate {b['index']} (val {b['val_acc']:.4f}, "
            f"{b['params']:,} params, {b['macs']:,} MACs), is over it")
    if setup["precision"] != "fp32":  # the finalists again in fp32: bf16 rounding must not pick the winner
        eligible = scorer.rank_fp32(eligible, cfg.top_k)
    return Selection(records, ranked, eligible, budget_met, scorer, setup, seconds)


RACE_MIN_IMAGES = 2000  # racing looks at prefixes from 1/32 of the split: on fewer images its small passes cost more than they save


def _say_ties(full: list[dict], n: int, main: bool) -> None:
    """Several candidates at the best validation accuracy: the split cannot tell them apart (the tie
    goes to fewer parameters, then the lower index); said, with the split's size."""
    if not full or not main:
        return
    tied = [r for r in full if r["val_acc"] == full[0]["val_acc"]]
    if len(tied) > 1:
        warn(f"{len(tied)} candidates tie at the best validation accuracy ({round(full[0]['val_acc'] * n)} of {n} images): "
             f"the validation split cannot tell them apart, so the one with fewer parameters is selected; a larger "
             f"split (--val-size) ranks them")


def _scores_to_keep(run_dir: Path, setup: dict, resume: bool, progress: bool, main: bool) -> dict[int, dict]:
    """On resume, the candidates already scored under the same setup; ``scoring.json`` (re)written."""
    setup_path = run_dir / "scoring.json"
    done = read_candidates(run_dir / "candidates.jsonl") if resume else {}
    if done and setup_path.is_file() and json.loads(setup_path.read_text()) != setup:
        if progress:
            log(f"scoring changed since these candidates were scored ({setup_path.read_text().strip()} -> {json.dumps(setup)}): "
                f"re-scoring all of them")
        done = {}
    if main:
        atomic_write_text(setup_path, json.dumps(setup) + "\n")
    return done


def _score_all(run: Run, scorer: CandidateScorer, run_dir: Path, done: dict[int, dict], stop: StopRequests, progress: bool,
               command: str) -> list[dict]:
    """Every candidate on the whole split, those already scored kept; a line of candidates.jsonl each."""
    cfg, main, cand_path = run.cfg, run.dist.is_main, run_dir / "candidates.jsonl"
    done = {i: r for i, r in done.items() if i < cfg.candidates and r.get("val_seen", scorer.n) == scorer.n}
    if main:  # rewrite without torn lines, raced-out partial scores or candidates beyond a lowered count
        atomic_write_text(cand_path, "".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
    todo = [i for i in range(cfg.candidates) if i not in done]
    bar = progress_bar(progress, total=cfg.candidates, initial=len(done), desc="candidates", unit="cand")
    best = [max((r["val_acc"] for r in done.values()), default=0.0)]
    f = open(cand_path, "a") if main else None
    last_line = [time.monotonic()]

    def tick(rec: dict) -> None:
        if f is not None:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        best[0] = max(best[0], rec["val_acc"])
        bar.set_postfix(best_val=f"{best[0]:.4f}", refresh=False)
        bar.update(1)
        if progress and bar.disable and time.monotonic() - last_line[0] > 60:
            last_line[0] = time.monotonic()
            log(f"candidates {bar.n}/{cfg.candidates}  best val {best[0]:.4f}")

    try:
        new = scorer.exhaustive(todo, on_result=tick, should_stop=lambda: stop.requested)
    finally:
        bar.close()
        if f is not None:
            f.close()
    scored = {**done, **{r["index"]: r for r in new}}
    if len(scored) < cfg.candidates:
        exc = Stopped(f"{len(scored)} of {cfg.candidates} candidates scored", max(gather_objects(stop.signum, run.dist)))
        raise stopped(exc, f"candidate scoring ({exc}, kept in {cand_path})", run_dir, command)
    return [scored[i] for i in range(cfg.candidates)]


def _race(run: Run, scorer: CandidateScorer, run_dir: Path, latency_of: Callable[[int], float] | None, stop: StopRequests,
          progress: bool, command: str) -> list[dict]:
    """Paired racing (restarts on resume). Sizes are known before scoring, so under budgets a candidate
    is dropped only for a cheaper better one (the best within the budgets, and the accuracy-size front,
    survive); a latency budget is measured first, and the slower candidates are not raced."""
    cfg = run.cfg
    budgeted = bool(cfg.max_params or cfg.max_macs or cfg.max_latency_ms)
    racing = [i for i in range(cfg.candidates) if latency_of is None or latency_of(i) <= cfg.max_latency_ms]
    excluded = [i for i in range(cfg.candidates) if i not in set(racing)]
    eligible = [i for i in racing if _within_size_budget(scorer.stats(i), cfg)]
    bar = progress_bar(progress, total=scorer.n, desc="racing candidates", unit="image")
    try:
        raced = scorer.race(
            racing, delta=cfg.race_delta, keep_min=max(cfg.top_k, ENSEMBLE_K), costs=("params", "macs") if budgeted else (),
            eligible=eligible, on_look=lambda r, n, seen: (bar.set_postfix(candidates=n, refresh=False), bar.update(seen - bar.n)),
            should_stop=lambda: stop.requested,
        ) if racing else []
    except RaceStopped:
        exc = Stopped("racing restarts on resume", max(gather_objects(stop.signum, run.dist)) or 2)
        raise stopped(exc, "candidate racing", run_dir, command) from None
    finally:
        bar.close()
    scored = {r["index"]: r for r in raced}
    if latency_of is not None:
        for r in raced:
            r["latency_ms"] = latency_of(r["index"])
    for i in excluded:  # over the latency budget: not raced (no score, like a candidate raced out at once)
        scored[i] = {**scorer.record(i, 0, 1), "val_acc": 0.0, "val_seen": 0, "latency_ms": latency_of(i)}
    records = [scored[i] for i in range(cfg.candidates)]
    if run.dist.is_main:
        atomic_write_text(run_dir / "candidates.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return records


def _within_size_budget(stats: dict, cfg: SearchConfig) -> bool:
    return (cfg.max_params is None or stats["params"] <= cfg.max_params) and (cfg.max_macs is None or stats["macs"] <= cfg.max_macs)


def _within_budgets(cfg: SearchConfig, full: list[dict], latency_of, main: bool, source: Path) -> tuple[list[dict], bool]:
    """The candidates within every budget, best first; when none is, all of them, with a warning
    saying what to do: the scores must not be lost to a budget."""
    try:
        eligible = within_budget(full, max_params=cfg.max_params, max_macs=cfg.max_macs, max_latency_ms=cfg.max_latency_ms,
                                 latency_of=latency_of, need=max(cfg.top_k, ENSEMBLE_K))
        return eligible, True
    except PgnasError as exc:
        if main:
            warn(f"{exc}; selected the best candidate regardless. Sample a tempered posterior with more candidates "
                 f"(pgnas sample {source} --candidates N --max-...) or loosen the budget")
        return full, False
