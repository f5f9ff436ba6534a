"""Stratified, seeded splits of a labelled set (numpy-free, on torch tensors)."""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_split(labels: Tensor, size: float | int, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices into (rest, held_out), the held-out part stratified by class.

    ``size`` is a fraction (< 1) or a count (>= 1) of the whole set. Each class gives
    round(size * its share) examples (largest remainders make the total exact); the choice within
    a class is a seeded permutation, so the split is fixed by (labels, size, seed).
    """
    labels = labels.reshape(-1).cpu()
    n = labels.numel()
    total = int(round(size * n)) if size < 1 else int(size)
    if not 0 < total < n:
        raise ValueError(f"held-out size {size} leaves no data on one side of a set of {n}")
    g = torch.Generator().manual_seed(int(seed))
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * total / n
    take = exact.floor().long()
    short = total - int(take.sum())
    if short > 0:
        order = torch.argsort(exact - take.double(), descending=True, stable=True)
        take[order[:short]] += 1
    held = []
    for c, k in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(labels == c).reshape(-1)
        held.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
    held_idx = torch.sort(torch.cat(held)).values
    keep = torch.ones(n, dtype=torch.bool)
    keep[held_idx] = False
    return torch.nonzero(keep).reshape(-1), held_idx
