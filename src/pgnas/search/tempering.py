"""Budget-aware sampling: the tempered posterior ``p' = sigmoid(logit p + shift)`` whose candidates
fit a size budget.

One common shift moves every layer's drop probability together on the logit scale, so the
posterior's preferences between layers stay and only the size moves. The shift is aimed at what a
budget is checked on, the **slim** network's parameters or MACs: the mean slim cost of a fixed set
of draws (common random numbers: the same uniforms at every shift, so the mean falls monotonically
as the shift rises) is brought to ``TARGET`` x the budget by bisection. The closed-form kept-slice
cost (an upper bound of the slim cost) brackets the search.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from pgnas.errors import PgnasError
from pgnas.posterior import Posterior

TARGET = 0.9  # the tempered posterior's mean slim cost, as a fraction of the budget
DRAWS = 16  # candidates whose mean slim cost stands for the tempered posterior's
BN_BATCHES = 8  # BN re-estimation default for candidates of a tempered posterior
TOLERANCE = 0.01  # bisection stops when the shift is known to this


class SlimCosts:
    """Mean slim ``params`` and ``macs`` of candidates 0 .. draws-1 of ``seed`` at a given shift
    (each shift's sizes computed once)."""

    def __init__(self, model: nn.Module, posterior: Posterior, input_shape: Sequence[int], seed: int, draws: int = DRAWS,
                 sizes: Callable | None = None):
        from pgnas.search.select import candidate_sizes

        self.model, self.posterior, self.input_shape, self.seed, self.draws = model, posterior, tuple(input_shape), seed, draws
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
        lo, hi = best, _upper_bracket(costs, kind, target, best)
        if costs.mean(hi)[kind] > target:  # even this shift does not reach it: as far as tempering goes
            best = hi
            continue
        while hi - lo > TOLERANCE:
            mid = 0.5 * (lo + hi)
            if costs.mean(mid)[kind] > target:
                lo = mid
            else:
                hi = mid
        best = max(best, hi)
    return best, costs.mean(best), over


def _upper_bracket(costs: SlimCosts, kind: str, target: float, lo: float) -> float:
    """A shift at which the mean slim cost is at most ``target``: the kept-slice cost (an upper
    bound of the slim cost) meets it there, else the shift that drops almost everything."""
    post = costs.posterior
    layer_costs = costs.layer_costs()
    try:
        hi = post.shift_for_cost(layer_costs, kind, target)
    except PgnasError:
        hi = post.max_shift()
    hi = max(hi, lo)
    while costs.mean(hi)[kind] > target and hi < post.max_shift():  # Monte-Carlo noise: widen
        hi = min(post.max_shift(), hi + 1.0)
    return hi


def describe(budgets: dict[str, float | None], over: list[str], before: dict[str, float], after: dict[str, float], shift: float) -> str:
    what = ", ".join(f"{k} {before[k]:.4g} > budget {budgets[k]:.4g}" for k in over)
    return (f"the posterior's candidates average {what} (slim networks): drawing from the tempered posterior "
            f"sigmoid(logit p + {shift:.3f}) instead (average slim params {after['params']:.4g}, MACs {after['macs']:.4g})")
