"""Ranking candidates, and budgets: the order selection uses, the candidates within a deployment
budget (slim parameters, MACs, batch-1 latency measured and cached per network), the accuracy-size
front. Works on candidate records (``candidates.jsonl`` lines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from pgnas.errors import PgnasError
from pgnas.search.checkpoint import atomic_write_text
from pgnas.slim import slim_model
from pgnas.slim.latency import device_name, latency_ms, network_key


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



def fully_scored(ranked: Sequence[dict], n: int | None = None) -> list[dict]:
    """The records of ``ranked`` scored on the whole validation split of ``n`` images (default:
    the most any record has seen), in their order: raced-out partial scores are not comparable.
    All of them if none is."""
    n = max((r.get("val_seen", 0) for r in ranked), default=0) if n is None else n
    return [r for r in ranked if r.get("val_seen", n) == n] or list(ranked)



# ---------------------------------------------------------------------------------- budgets and the front
def _fmt_count(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:g}"



def within_budget(ranked: Sequence[dict], *, max_params: float | None = None, max_macs: float | None = None,
                  max_latency_ms: float | None = None, latency_of: Callable[[int], float] | None = None,
                  need: int = 1) -> list[dict]:
    """The candidates of ``ranked`` (best first) within every budget given, best first: slim
    parameters and MACs exactly (every record holds them); latency measured only for the
    candidates the selection has to look at (best first, until ``need`` are within budget), with
    ``latency_ms`` added to their records. No candidate within budget: a PgnasError saying the
    smallest cost found."""
    ok = [r for r in ranked if (max_params is None or r["params"] <= max_params) and (max_macs is None or r["macs"] <= max_macs)]
    if not ok:
        raise PgnasError(f"no candidate within the budget (max params {_fmt_count(max_params) if max_params else '-'}, "
                         f"max MACs {_fmt_count(max_macs) if max_macs else '-'}): the smallest has "
                         f"{_fmt_count(min(r['params'] for r in ranked))} params and {_fmt_count(min(r['macs'] for r in ranked))} MACs")
    if max_latency_ms is None:
        return ok
    if latency_of is None:
        raise PgnasError("a latency budget needs the network to measure (latency_of)")
    out, fastest = [], float("inf")
    for r in ok:
        r["latency_ms"] = latency_of(r["index"])
        fastest = min(fastest, r["latency_ms"])
        if r["latency_ms"] <= max_latency_ms:
            out.append(r)
            if len(out) >= need:
                break
    if not out:
        raise PgnasError(f"no candidate runs within {max_latency_ms:g} ms here: the fastest measured took {fastest:.3g} ms")
    return out



def pareto_front(records: Sequence[dict], keys: Sequence[str] = ("params", "macs")) -> list[dict]:
    """The candidates no other candidate dominates: at least as accurate on validation and at most
    as costly in every one of ``keys``, better in one. Best validation accuracy first."""
    front: list[dict] = []
    for r in sorted(records, key=lambda r: (-r["val_acc"], *[r[k] for k in keys], r["index"])):
        if not any(all(f[k] <= r[k] for k in keys) and (f["val_acc"] > r["val_acc"] or any(f[k] < r[k] for k in keys))
                   for f in front):
            front.append(r)
    return front



def cached_latency(run_dir: Path | None, model: nn.Module, masks_of: Callable[[int], Mapping[str, Tensor]],
                   input_shape: Sequence[int], device: torch.device) -> Callable[[int], float]:
    """``latency_of(index)``: measured once per network and device, kept in ``latency.json`` keyed by
    the device and :func:`network_key` (never by the index alone: another seed, tempering or
    super-network draws other networks under the same indices)."""
    path = Path(run_dir) / "latency.json" if run_dir is not None else None
    cache: dict = {}
    if path is not None and path.is_file():
        try:
            cache = json.loads(path.read_text())
        except ValueError:
            cache = {}
    mine = cache.setdefault(device_name(device), {})
    known: dict[int, float] = {}

    def latency_of(index: int) -> float:
        if index not in known:
            masks = masks_of(index)
            key = network_key(model, masks, input_shape)
            if key not in mine:
                slim = slim_model(model, masks, input_shape, check=False).model
                mine[key] = latency_ms(slim, input_shape, device)
                if path is not None:
                    atomic_write_text(path, json.dumps(cache, indent=1) + "\n")
            known[index] = mine[key]
        return known[index]

    return latency_of
