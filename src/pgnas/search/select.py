"""Guided sampling and selection: draw candidates from the posterior, score them on the held-out
validation split (never the test split), rank them.

Three ways to score, all giving a candidate's exact validation accuracy on what it has seen:

* exhaustive: every candidate on the whole split, K candidates per forward pass (the batch is
  tiled K times, tile j under candidate j's masks; BN in eval mode is per example, so this is
  exactly one-by-one evaluation, only faster);
* racing (successive halving): every candidate on a small slice, the best 1/eta go on to a slice
  eta times larger, ... until the finalists have seen the whole split and are ranked on it;
* either of them sharded over ranks under torchrun (candidates split, scores gathered), giving the
  single-process scores.

Optional BN re-estimation per candidate (off by default, as in the paper) recomputes the BN
statistics on training batches in candidate mode before scoring.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from pgnas.posterior import Posterior
from pgnas.search.distributed import Dist, gather_objects
from pgnas.search.train import autocast_for, split_output


# ---------------------------------------------------------------------------------- accuracy
@torch.no_grad()
def accuracy(model: nn.Module, data, split: str, batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` (in eval mode, BN on running statistics) on a split."""
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    total = 0
    for x, y in data.eval_batches(split, batch_size, device):
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device):
            logits, _ = split_output(model(x))
        correct += (logits.argmax(1) == y).sum()
        total += len(y)
    return int(correct) / max(total, 1)


@torch.no_grad()
def correct_counts(
    model: nn.Module,
    posterior: Posterior,
    masks: Sequence[dict],
    x: Tensor,
    y: Tensor,
    *,
    tile: int,
    batch_size: int,
) -> list[int]:
    """Number of correct predictions of each candidate on (x, y), ``tile`` candidates per pass
    (each pass holds about ``batch_size`` rows: ``batch_size // tile`` examples per candidate)."""
    model.eval()
    out: list[int] = []
    n = len(y)
    try:
        for g in range(0, len(masks), tile):
            group = masks[g : g + tile]
            k = len(group)
            posterior.set_candidates(group)
            step = max(1, batch_size // k)
            correct = torch.zeros(k, device=x.device, dtype=torch.long)
            for s in range(0, n, step):
                xb, yb = x[s : s + step], y[s : s + step]
                xt = xb.repeat(k, *([1] * (xb.dim() - 1))) if k > 1 else xb
                if xt.is_cuda:
                    xt = xt.contiguous(memory_format=torch.channels_last)
                with autocast_for(x.device):
                    logits, _ = split_output(model(xt))
                pred = logits.argmax(-1).view(k, -1)
                correct += (pred == yb[None]).sum(1)
            out.extend(correct.tolist())
    finally:
        posterior.clear_candidate()
    return out


# ---------------------------------------------------------------------------------- BN re-estimation
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, posterior: Posterior, masks: dict, data, batches: int, batch_size: int, device) -> None:
    """Re-estimate BN running statistics of one candidate on ``batches`` un-augmented-order
    training batches (cumulative average), the rest of the model in eval mode."""
    from pgnas.data.augment import AugmentSpec

    model.eval()
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    posterior.set_candidate(masks)
    g = torch.Generator().manual_seed(0)
    try:
        for i, (x, _) in enumerate(data.train_batches(batch_size, g, device, AugmentSpec())):
            if i >= batches:
                break
            with autocast_for(device):
                model(x)
    finally:
        posterior.clear_candidate()
        for m in bns:
            m.eval()


# ---------------------------------------------------------------------------------- records
def read_candidates(path: Path) -> dict[int, dict]:
    """Candidates already scored (a resumed selection continues after them); a torn last line
    from a killed run is ignored."""
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            done[int(rec["index"])] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return done


def rank(records: Iterable[dict]) -> list[dict]:
    """Best first: candidates scored on the whole split before raced-out ones, then highest
    validation accuracy, then fewer parameters, then lower index."""
    return sorted(records, key=lambda r: (-r.get("val_seen", 0), -r["val_acc"], r["params"], r["index"]))


# ---------------------------------------------------------------------------------- the scorer
class CandidateScorer:
    """Scores candidates of one trained posterior on the validation split."""

    def __init__(
        self,
        model: nn.Module,
        posterior: Posterior,
        data,
        *,
        seed: int,
        device: torch.device,
        batch_size: int = 500,
        tile: int = 8,
        bn_recalibrate: int = 0,
        train_batch_size: int = 128,
        dist: Dist = Dist(),
    ) -> None:
        self.model, self.posterior, self.data = model, posterior, data
        self.seed, self.device, self.batch_size = seed, device, batch_size
        self.tile = 1 if bn_recalibrate else max(1, tile)  # per-candidate BN statistics cannot share a pass
        self.bn_recalibrate = bn_recalibrate
        self.train_batch_size = train_batch_size
        self.dist = dist
        self.x, self.y = data.eval_tensors("val", device)
        self._masks: dict[int, dict] = {}
        self._stats: dict[int, dict] = {}

    def masks(self, index: int) -> dict:
        if index not in self._masks:
            self._masks[index] = self.posterior.sample_candidate(index, self.seed)
        return self._masks[index]

    def stats(self, index: int) -> dict:
        if index not in self._stats:
            self._stats[index] = self.posterior.candidate_stats(self.masks(index))
        return self._stats[index]

    def record(self, index: int, correct: int, seen: int) -> dict:
        st = self.stats(index)
        return {
            "index": index,
            "val_acc": correct / seen,
            "val_seen": seen,
            "params": st["params"],
            "kept_fraction": round(st["kept_fraction"], 6),
            "removed_ops": len(st["removed_ops"]),
        }

    def _counts(self, indices: Sequence[int], x: Tensor, y: Tensor) -> dict[int, int]:
        """Correct counts on (x, y) of the candidates, this rank's share, gathered from all."""
        mine = list(indices)[self.dist.rank :: self.dist.world_size]
        masks = [self.masks(i) for i in mine]
        if self.bn_recalibrate:
            counts = []
            state = {k: v.clone() for k, v in self.model.state_dict().items()}
            for m in masks:
                recalibrate_bn(self.model, self.posterior, m, self.data, self.bn_recalibrate, self.train_batch_size, self.device)
                counts += correct_counts(self.model, self.posterior, [m], x, y, tile=1, batch_size=self.batch_size)
                self.model.load_state_dict(state)
        else:
            counts = correct_counts(self.model, self.posterior, masks, x, y, tile=self.tile, batch_size=self.batch_size)
        merged: dict[int, int] = {}
        for part in gather_objects(dict(zip(mine, counts)), self.dist):
            merged.update(part)
        return merged

    def exhaustive(self, indices: Sequence[int], on_result: Callable[[dict], None] | None = None) -> list[dict]:
        """Every candidate on the whole validation split, in rounds of ``tile`` per rank."""
        n = len(self.y)
        per_round = self.tile * self.dist.world_size
        records = []
        indices = list(indices)
        for r in range(0, len(indices), per_round):
            chunk = indices[r : r + per_round]
            counts = self._counts(chunk, self.x, self.y)
            for i in chunk:
                rec = self.record(i, counts[i], n)
                self._masks.pop(i, None)
                records.append(rec)
                if on_result is not None:
                    on_result(rec)
        return records

    def race(self, indices: Sequence[int], *, eta: int = 3, rungs: int = 4, keep_min: int = 1,
             on_rung: Callable[[int, int, int], None] | None = None) -> list[dict]:
        """Successive halving: rung r scores the survivors on the first n_r examples of a fixed
        (seeded) order of the split, n_r = ceil(N / eta^(rungs-1-r)); after each rung the best
        ceil(survivors / eta) (at least ``keep_min``) go on. With rungs = 1 this is exhaustive."""
        n = len(self.y)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 7919)).to(self.y.device)
        sizes = sorted({min(n, math.ceil(n / eta ** (rungs - 1 - r))) for r in range(rungs)})
        alive = list(indices)
        correct = {i: 0 for i in alive}
        records: dict[int, dict] = {}
        seen = 0
        for r, target in enumerate(sizes):
            idx = order[seen:target]
            counts = self._counts(alive, self.x[idx], self.y[idx])
            for i in alive:
                correct[i] += counts[i]
            seen = target
            if on_rung is not None:
                on_rung(r, len(alive), seen)
            if seen == n:
                break
            ordered = sorted(alive, key=lambda i: (-correct[i], self.stats(i)["params"], i))
            keep = max(keep_min, math.ceil(len(alive) / eta))
            for i in ordered[keep:]:
                records[i] = self.record(i, correct[i], seen)
                self._masks.pop(i, None)
            alive = ordered[:keep]
        for i in alive:
            records[i] = self.record(i, correct[i], seen)
        self._masks.clear()
        return [records[i] for i in indices]
