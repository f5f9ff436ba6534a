"""The orchestrator on top of the stages: a search is the method's five steps, one call each, and a
sample is the last three on a trained posterior. The CLI and ``pgnas.search()`` land here.

1. the super-network and the data (``search.run.open_search``: the results folder, the network
   instrumented with the hybrid representation);
2. one ordinary training run learns the posterior (``search.epochs.run_training``);
3. under a budget, the tempered posterior (``search.tempering.temper``);
4. guided sampling: C candidates drawn and scored on the validation split (``search.select``);
5. the best (architecture, weights) pair is the result: reported on the test split
   (``search.evaluation``), written as ``summary.json`` (``search.results``) and exported as a slim
   network (``export.from_run.export_run``).

Under ``torchrun`` every rank runs this code; rank 0 alone writes files.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

from pgnas.config import SearchConfig
from pgnas.export.from_run import export_run
from pgnas.search.checkpoint import atomic_write_text
from pgnas.search.distributed import barrier
from pgnas.search.epochs import run_training
from pgnas.search.evaluation import test_report
from pgnas.search.results import SearchResult, summary, write_summary
from pgnas.search.run import Run, open_sample, open_search, write_sample_folder
from pgnas.search.select import select
from pgnas.search.signals import StopRequests
from pgnas.search.tempering import temper


def search(
    config: SearchConfig | dict | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> SearchResult:
    """Run a posterior-guided search and return its :class:`SearchResult`.

    ``resume=True`` continues the run in ``config.out`` from its last checkpoint (written every
    ``checkpoint_minutes`` and at every epoch end, so a kill loses at most that much training) and
    its already scored candidates. ``force=True`` replaces the pgnas files of an existing results
    folder. SIGTERM or Ctrl-C stops it after the current step with a checkpoint written
    (:class:`~pgnas.search.train.Stopped`).
    """
    t_start = time.perf_counter()
    cfg = SearchConfig.from_dict(config) if isinstance(config, dict) else (config or SearchConfig())
    opened = open_search(cfg, resume=resume, force=force)  # 1. the super-network and the data
    run, run_dir = opened.run, opened.run_dir
    progress = progress and run.dist.is_main
    with StopRequests() as stop:
        t_train = time.perf_counter()  # 2. one ordinary training run learns the posterior
        train_seconds = run_training(opened.trainer, run.cfg, run_dir, state=opened.state, stop=stop, progress=progress,
                                     dist=run.dist, on_epoch_end=on_epoch_end, command="search")
        timings = {"data": run.data_seconds, "train": time.perf_counter() - t_train if opened.to_train else 0.0}
        trained_cfg = run.cfg
        temper(run, progress)  # 3. a budget below the posterior's candidates: the tempered posterior
        if run.cfg != trained_cfg and run.dist.is_main:
            atomic_write_text(run_dir / "config.toml", run.cfg.to_toml())
        return _select_and_report(run, run_dir, resume=resume, progress=progress, stop=stop, train_seconds=train_seconds,
                                  t_start=t_start, timings=timings, command="search")


def sample(
    run_dir: str | Path,
    *,
    candidates: int,
    out: str | Path | None = None,
    seed: int | None = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> SearchResult:
    """Draw and rank ``candidates`` candidates from the trained posterior of ``run_dir``.

    Results go to ``out`` (default ``RUN_DIR/sample-<C>``); ``seed`` picks another set of
    candidates than the search's (default: the search's seed, so candidate i is the same).
    ``resume=True`` continues an interrupted sample in ``out`` from its scored candidates.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    run, out_dir, state, restored = open_sample(run_dir, candidates=candidates, out=out, seed=seed, force=force, resume=resume,
                                                overrides=overrides)
    if not restored:
        temper(run, progress and run.dist.is_main)
    write_sample_folder(run, run_dir, out_dir, resume=resume)
    with StopRequests() as stop:
        return _select_and_report(run, out_dir, resume=resume, progress=progress and run.dist.is_main, stop=stop,
                                  train_seconds=float(state.get("train_seconds", 0.0)), t_start=t_start,
                                  timings={"data": run.data_seconds, "train": 0.0}, command="sample", source=run_dir)


def _select_and_report(run: Run, run_dir: Path, *, resume: bool, progress: bool, stop: StopRequests, train_seconds: float,
                       t_start: float, timings: dict[str, float], command: str, source: Path | None = None) -> SearchResult:
    """Steps 4 and 5: select on validation, report on test, summarise, export the selected network."""
    selection = select(run, run_dir, resume=resume, progress=progress, stop=stop, command=command, source=source)
    timings["score"] = selection.seconds
    t_test = time.perf_counter()
    report = test_report(run, selection)
    timings["test"] = time.perf_counter() - t_test
    result = summary(run, selection, report, command=command, train_seconds=train_seconds, source=source)
    t_export = time.perf_counter()
    if run.dist.is_main:
        info = export_run(run_dir, report.top[0]["index"], model=run.model, posterior=run.posterior, config=run.cfg,
                          data=run.data, force=True, on_error="warn", selected=True)
        if info is not None:
            result["export"] = {k: info[k] for k in ("model", "params", "macs", "supernet_macs", "removed_layers")}
            result["supernet_macs"] = info["supernet_macs"]
    timings["export"] = time.perf_counter() - t_export
    write_summary(run_dir if run.dist.is_main else None, result, timings, time.perf_counter() - t_start)
    barrier(run.dist)
    best_masks = selection.scorer.masks(selection.eligible[0]["index"])
    return SearchResult(run_dir, result, run.model, run.posterior, best_masks, selection.records)


def resume(run_dir, **overrides) -> SearchResult:
    """Continue the search in ``run_dir`` from its last checkpoint (``pgnas search --resume``)."""
    from pgnas.search.run import resume_config

    progress = overrides.pop("progress", True)
    return search(resume_config(run_dir, overrides), resume=True, progress=progress)


class _CallableSearch(types.ModuleType):
    """``pgnas.search`` is the search stage's package and, called, the search: the Python twin of
    ``pgnas search``. The orchestrator gives the package this behaviour, so the stage itself never
    imports the orchestrator above it."""

    def __call__(self, config=None, **kwargs) -> SearchResult:
        return search(config, **kwargs)


sys.modules["pgnas.search"].__class__ = _CallableSearch
