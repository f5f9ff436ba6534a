"""Paired racing: score every candidate on growing prefixes of one random order of the validation
split and drop those an exact sign test says are worse, so that the exhaustive winner survives with
probability at least 1 - delta (``race``; the rule and why it holds are in its docstring)."""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from pgnas.search.distributed import gather_objects


@functools.lru_cache(maxsize=8)
def sign_test_critical(max_discordant: int, alpha: float) -> Tensor:
    """``k[D]`` for D = 0 .. ``max_discordant``: the fewest wins out of D discordant images for
    which the exact one-sided sign test rejects "not better" at level ``alpha``, i.e. the least
    k with ``P(Binomial(D, 1/2) >= k) <= alpha`` (D + 1 where no k does)."""
    out = torch.empty(max_discordant + 1, dtype=torch.long)
    log_alpha = math.log(alpha)
    for d in range(max_discordant + 1):
        k = torch.arange(d + 1, dtype=torch.float64)
        log_pmf = math.lgamma(d + 1) - torch.lgamma(k + 1) - torch.lgamma(d - k + 1) - d * math.log(2.0)
        log_tail = torch.logcumsumexp(log_pmf.flip(0), 0).flip(0)  # log P(X >= k)
        hit = torch.nonzero(log_tail <= log_alpha)
        out[d] = int(hit[0]) if len(hit) else d + 1
    return out



class RaceStopped(Exception):
    """A stop was requested during racing (racing restarts on resume)."""



def race(scorer, indices: Sequence[int], *, delta: float = 0.05, first: int | None = None, keep_min: int = 1,
         costs: Sequence[str] = (), eligible: Iterable[int] | None = None,
         on_look: Callable[[int, int, int], None] | None = None, should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Paired racing over the validation split, with a guarantee: the exhaustive winner (the
    candidate :func:`rank` puts first among ``eligible``) is dropped with probability at most
    ``delta``, over the random order of the images.

    Every candidate sees the same images in the same (seeded, random) order, looked at in
    doubling prefixes (``first``, 2 x ``first``, ..., the whole split; ``first`` defaults to
    1/32 of the split, at least 64 images). At each look before the last, candidate j is
    dropped when some other candidate i at most as costly in every one of ``costs`` (e.g.
    ``("params", "macs")``; none: any candidate) is better by an exact one-sided sign test on
    the images where exactly one of the two is right: i right on K of those D images, with
    ``P(Binomial(D, 1/2) >= K) <= delta / ((C - 1) (looks - 1))``.

    Why it holds: if j is the exhaustive winner, every i is at most as good on the whole split,
    so among the D discordant images of a random prefix the count i wins is hypergeometric
    with a proportion of at most 1/2, whose upper tail the binomial's bounds; a wrong drop
    needs one rejection among at most C - 1 comparators at one of looks - 1 decision points,
    so the union bound gives delta (checked by simulation in tests/test_racing.py). Pairing
    makes it efficient: candidates of one posterior agree on most images, and only the
    images where they differ count. With ``costs``, a candidate is only ever dropped for a
    cheaper (or equal) better one, so the best candidate within any budget on those costs,
    and every candidate on the accuracy-cost front, survives with the same guarantee.

    The top ``keep_min`` by count so far (among ``eligible``, default all) are never dropped.
    The survivors are scored on the whole split, so their scores and order are exact; dropped
    candidates keep their partial scores (``val_seen`` < N).
    """
    n_all = scorer.n
    indices = list(indices)
    order = torch.randperm(n_all, generator=torch.Generator().manual_seed(scorer.seed + 7919))
    first = first or max(64, math.ceil(n_all / 32))
    looks = []
    while not looks or looks[-1] < n_all:
        looks.append(min(n_all, first * 2 ** len(looks)))
    alpha = delta / (max(1, len(indices) - 1) * max(1, len(looks) - 1))
    critical = sign_test_critical(n_all, alpha)
    protect_from = set(indices if eligible is None else eligible)
    alive = list(indices)
    seen_rows: dict[int, list[Tensor]] = {i: [] for i in alive}
    records: dict[int, dict] = {}
    seen = 0
    for look, target in enumerate(looks):
        rows = scorer.correct(alive, order[seen:target])
        for i in alive:
            seen_rows[i].append(rows[i])
        seen = target
        if on_look is not None:
            on_look(look, len(alive), seen)
        if seen == n_all:
            break
        if should_stop is not None and any(gather_objects(bool(should_stop()), scorer.dist)):
            raise RaceStopped()  # the caller turns it into a stop: racing restarts on resume
        mat = torch.stack([torch.cat(seen_rows[i]) for i in alive]).float()  # (candidates, images seen), exact integers
        counts = mat.sum(1)
        wins = counts[:, None] - mat @ mat.T  # wins[i, j]: images i gets right and j wrong
        discordant = (wins + wins.T).long()
        beats = wins.long() >= critical[discordant]
        beats.fill_diagonal_(False)
        for key in costs:
            cost = torch.tensor([float(scorer.stats(i)[key]) for i in alive])
            beats &= cost[:, None] <= cost[None, :]
        dropped = beats.any(0).tolist()
        count = dict(zip(alive, counts.long().tolist()))
        protected = set(sorted((i for i in alive if i in protect_from),
                               key=lambda i: (-count[i], scorer.stats(i)["params"], i))[:keep_min])
        keep = []
        for i, drop in zip(alive, dropped):
            if drop and i not in protected:
                records[i] = scorer.record(i, count[i], seen)
                scorer._masks.pop(i, None)
                seen_rows.pop(i)
            else:
                keep.append(i)
        alive = keep
    for i in alive:
        records[i] = scorer.record(i, int(torch.cat(seen_rows[i]).sum()), seen)
    scorer._masks.clear()
    return [records[i] for i in indices]
