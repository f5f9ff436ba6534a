"""Budget-aware sampling: the tempered posterior ``p' = sigmoid(logit p + shift)`` whose candidates
fit a size budget.

One common shift moves every layer's drop probability together on the logit scale, so the
posterior's preferences between layers stay and only the size moves. The shift is aimed at what a
budget is checked on, the **slim** network's parameters or MACs: the mean slim cost of a fixed set
of draws (common random numbers: the same uniforms at every shift, so the mean falls monotonically
as the shift rises) is brought to ``TARGET`` x the budget by a bracketed root search (regula falsi),
a few evaluations of ``DRAWS`` slim sizes each.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from pgnas.posterior import Posterior
from pgnas.search.console import log
from pgnas.search.scoring import candidate_sizes

TARGET = 0.9  # the tempered posterior's mean slim cost, as a fraction of the budget
DRAWS = 12  # candidates whose mean slim cost stands for the tempered posterior's
BN_BATCHES = 8  # BN re-estimation default for candidates of a tempered posterior
TOLERANCE = 0.01  # the search stops when the shift is known to this ...
ACCEPT = 0.05  # ... or the mean slim cost is within this fraction of the budget below its target


class SlimCosts:
    """Mean slim ``params`` and ``macs`` of candidates 0 .. draws-1 of ``seed`` at a given shift
    (each shift's sizes computed once)."""

    def __init__(self, model: nn.Module, posterior: Posterior, input_shape: Sequence[int], seed: int, draws: int | None = None,
                 sizes: Callable | None = None):
        self.model, self.posterior, self.input_shape, self.seed = model, posterior, tuple(input_shape), seed
        self.draws = draws or DRAWS
        self._sizes = sizes or (lambda masks: candidate_sizes(model, posterior, masks, self.input_shape, self.layer_costs))
        self._costs: dict | None = None
        self._mean: dict[float, dict[str, float]] = {}

    def layer_costs(self) -> dict:
        if self._costs is None:
            self._costs = self.posterior.layer_costs(self.input_shape)
        return self._costs

    def mean(self, shift: float) -> dict[str, float]:
        if shift not in self._mean:
            rows = [self._sizes(self.posterior.sample_candidate(i, self.seed, shift)) for i in range(self.draws)]
            self._mean[shift] = {k: sum(float(r[k]) for r in rows) / len(rows) for k in ("params", "macs")}
        return self._mean[shift]


def tempered_shift(costs: SlimCosts, budgets: dict[str, float | None], shift: float = 0.0) -> tuple[float, dict[str, float], list[str]]:
    """The shift of the tempered posterior for ``budgets`` ({"params": .., "macs": ..}, None for
    none), starting from ``shift``: unchanged when the mean slim cost already meets every budget;
    otherwise the least shift whose mean slim cost is at most ``TARGET`` x each budget it exceeded.
    Returns the shift, the mean slim costs there, and the budgets that were exceeded. A budget no
    shift reaches gives the largest shift (almost every channel dropped): the selection then says so."""
    mean = costs.mean(shift)
    over = [k for k, b in budgets.items() if b and mean[k] > b]
    if not over:
        return shift, mean, []
    best = shift
    for kind in over:
        target = TARGET * float(budgets[kind])
        f = lambda x: costs.mean(x)[kind] - target  # noqa: E731
        lo, hi = _bracket(f, best, costs.posterior.max_shift())
        if f(hi) > 0:  # even dropping almost everything does not reach it: as far as tempering goes
            best = hi
            continue
        best = max(best, _root(f, lo, hi, target))
    return best, costs.mean(best), over


def _root(f: Callable[[float], float], lo: float, hi: float, scale: float) -> float:
    """A shift in [lo, hi] with ``-ACCEPT * scale <= f <= 0`` (f falls as the shift rises, f(lo) > 0 >= f(hi)):
    regula falsi with the Illinois step (a handful of evaluations of an expensive, step-shaped f),
    ending once the bracket is within ``TOLERANCE``."""
    f_lo, f_hi = f(lo), f(hi)
    w_lo, w_hi, side = f_lo, f_hi, 0  # the values interpolated (Illinois halves a stale end's)
    for _ in range(40):
        if -ACCEPT * scale <= f_hi or hi - lo <= TOLERANCE:
            return hi
        mid = hi - w_hi * (hi - lo) / (w_hi - w_lo) if w_lo != w_hi else 0.5 * (lo + hi)
        mid = min(max(mid, lo + 0.05 * (hi - lo)), hi - 0.05 * (hi - lo))  # the bracket always shrinks
        f_mid = f(mid)
        if f_mid > 0:
            lo, f_lo, w_lo = mid, f_mid, f_mid
            w_hi = 0.5 * w_hi if side == -1 else w_hi
            side = -1
        else:
            hi, f_hi, w_hi = mid, f_mid, f_mid
            w_lo = 0.5 * w_lo if side == 1 else w_lo
            side = 1
    return hi


def _bracket(f: Callable[[float], float], lo: float, top: float) -> tuple[float, float]:
    """[lo, hi] with f(lo) > 0 >= f(hi), growing the step from ``lo`` (1, 2, 4, ... logit units;
    the shifts a budget needs are a few units) up to ``top``, where f may still be positive."""
    step, hi = 1.0, min(top, lo + 1.0)
    while f(hi) > 0 and hi < top:
        lo, step = hi, 2.0 * step
        hi = min(top, hi + step)
    return lo, hi


def describe(budgets: dict[str, float | None], over: list[str], before: dict[str, float], after: dict[str, float], shift: float) -> str:
    what = ", ".join(f"{k} {before[k]:.4g} > budget {budgets[k]:.4g}" for k in over)
    return (f"the posterior's candidates average {what} (slim networks): drawing from the tempered posterior "
            f"sigmoid(logit p + {shift:.3f}) instead (average slim params {after['params']:.4g}, MACs {after['macs']:.4g})")


def temper(run, say: bool) -> None:
    """Budget-aware sampling: when the candidates' mean slim cost exceeds ``max_params`` or
    ``max_macs``, draw from the tempered posterior whose mean slim cost is 90 % of the budget
    (``logit_shift``, :mod:`pgnas.search.tempering`). Tempered candidates keep fewer channels than
    the super-network's BN statistics were estimated with, so unless ``bn_recalibrate`` was given
    they get theirs re-estimated (``BN_BATCHES``)."""
    cfg = run.cfg
    budgets = {"params": cfg.max_params, "macs": cfg.max_macs}
    if any(budgets.values()):
        costs = SlimCosts(run.model, run.posterior, (run.data.in_channels, *run.data.image_size), cfg.seed)
        shift, after, over = tempered_shift(costs, budgets, cfg.logit_shift)
        if over:
            if say:
                log(describe(budgets, over, costs.mean(cfg.logit_shift), after, shift))
            run.cfg = cfg = cfg.replace(logit_shift=shift)
    if cfg.bn_recalibrate is None:  # resolved: the paper's none, or re-estimation for a tempered posterior
        run.cfg = cfg.replace(bn_recalibrate=BN_BATCHES if cfg.logit_shift else 0)
        if cfg.logit_shift and say:
            log(f"tempered candidates get their BN statistics re-estimated from {BN_BATCHES} training batches "
                f"(--bn-recalibrate 0 turns it off)")

