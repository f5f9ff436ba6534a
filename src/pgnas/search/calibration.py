"""How good predicted probabilities are, not only their argmax: accuracy, negative log-likelihood
and expected calibration error (ECE) of a batch of class probabilities, and the reliability
diagram's bins. Used for the selected candidate, the mean network and ensembles (Bayesian model
averaging over posterior samples)."""

from __future__ import annotations

import torch
from torch import Tensor

ECE_BINS = 15


def calibration_metrics(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> dict:
    """``probs`` (n, classes), rows summing to 1; ``labels`` (n,). Returns ``accuracy``, ``nll``
    (mean -log p(true class), probabilities floored at 1e-12) and ``ece``: the confidence (top
    probability) split into ``bins`` equal-width bins over [0, 1], ECE = sum over bins of
    (images in bin / n) x |accuracy in bin - mean confidence in bin|; ``reliability`` lists each
    bin's range, count, mean confidence and accuracy."""
    probs = probs.detach().double().cpu()
    labels = labels.detach().long().cpu()
    n = len(labels)
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    nll = -torch.log(probs[torch.arange(n), labels].clamp_min(1e-12)).mean()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # bin b holds confidences in (edge_b, edge_b+1]; a confidence of exactly 0 goes to the first
    which = torch.clamp(torch.bucketize(conf, edges[1:-1], right=False), 0, bins - 1)
    ece = 0.0
    rel = []
    for b in range(bins):
        sel = which == b
        k = int(sel.sum())
        if k:
            acc_b, conf_b = float(correct[sel].mean()), float(conf[sel].mean())
            ece += k / n * abs(acc_b - conf_b)
        else:
            acc_b = conf_b = None
        rel.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": k, "confidence": conf_b, "accuracy": acc_b})
    return {"accuracy": float(correct.mean()), "nll": float(nll), "ece": float(ece), "images": n, "reliability": rel}


def average_probs(prob_list: list[Tensor]) -> Tensor:
    """The Bayesian model average: the mean of the members' class probabilities."""
    return torch.stack([p.double() for p in prob_list]).mean(0)
