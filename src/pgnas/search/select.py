"""Guided sampling and selection: draw candidates from the posterior, score each on the held-out
validation split (never the test split), rank them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from pgnas.posterior import Posterior
from pgnas.search.train import autocast_for, split_output


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


def evaluate_candidate(model, posterior: Posterior, data, index: int, seed: int, batch_size: int, device, split: str = "val") -> dict:
    masks = posterior.sample_candidate(index, seed)
    posterior.set_candidate(masks)
    try:
        acc = accuracy(model, data, split, batch_size, device)
    finally:
        posterior.clear_candidate()
    stats = posterior.candidate_stats(masks)
    return {
        "index": index,
        f"{split}_acc": acc,
        "params": stats["params"],
        "kept_fraction": round(stats["kept_fraction"], 6),
        "removed_ops": len(stats["removed_ops"]),
    }


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


def score_candidates(
    model,
    posterior: Posterior,
    data,
    indices: Iterable[int],
    *,
    seed: int,
    batch_size: int,
    device,
    out_path: Path | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Score candidates on the validation split, appending one JSON line per candidate."""
    results = []
    f = open(out_path, "a") if out_path is not None else None
    try:
        for i in indices:
            rec = evaluate_candidate(model, posterior, data, i, seed, batch_size, device)
            results.append(rec)
            if f is not None:
                f.write(json.dumps(rec) + "\n")
                f.flush()
            if on_result is not None:
                on_result(rec)
    finally:
        if f is not None:
            f.close()
    return results


def rank(records: Iterable[dict]) -> list[dict]:
    """Best first: highest validation accuracy, then fewer parameters, then lower index."""
    return sorted(records, key=lambda r: (-r["val_acc"], r["params"], r["index"]))
