"""Guided sampling and selection: draw candidates from the posterior, score them on the held-out
validation split (never the test split), rank them.

The validation split is read through the data set's ``eval_batches`` (tensors in memory, or
streamed from files for ImageNet), always the same images in the same order, so each candidate's
correctness is known image by image. Three ways to score, all giving a candidate's exact
validation accuracy on what it has seen:

* exhaustive: every candidate on the whole split, K candidates per forward pass (the batch is
  tiled K times, tile j under candidate j's masks; BN in eval mode is per example and operation
  removal is decided per candidate, so this is exactly one-by-one evaluation, only faster);
* paired racing: every candidate on growing prefixes of one fixed order of the split, dropped when
  a confidence bound on its image-by-image difference to the leader says it is worse; the
  survivors see the whole split and are ranked on it;
* either of them sharded over ranks under torchrun (candidates split, scores gathered), giving the
  single-process scores.

Optional BN re-estimation per candidate (off by default, as in the paper) recomputes the BN
statistics on training batches in candidate mode before scoring.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from pgnas.errors import PgnasError
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
def predict_probs(model: nn.Module, data, split: str, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Class probabilities (softmax, float32, on the CPU) of ``model`` on a split, with the labels."""
    model.eval()
    probs, labels = [], []
    for x, y in data.eval_batches(split, batch_size, device):
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device):
            logits, _ = split_output(model(x))
        probs.append(torch.softmax(logits.float(), 1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


@torch.no_grad()
def correct_matrix(
    model: nn.Module,
    posterior: Posterior,
    masks: Sequence[dict],
    data,
    *,
    tile: int,
    batch_size: int,
    device: torch.device,
    indices: Tensor | None = None,
    split: str = "val",
    fp32: bool = False,
) -> Tensor:
    """Per candidate and image, is its prediction right: a (len(masks), n) bool tensor on the CPU,
    over the images of ``split`` at ``indices`` (all, in order, by default). ``tile`` candidates
    share a forward pass of about ``batch_size`` rows (``batch_size // tile`` images each).
    ``fp32``: no bf16 autocast on a GPU (re-scoring finalists exactly)."""
    model.eval()
    precision = contextlib.nullcontext if fp32 else (lambda: autocast_for(device))
    rows: list[Tensor] = []
    try:
        for g in range(0, len(masks), tile):
            group = masks[g : g + tile]
            k = len(group)
            posterior.set_candidates(group)
            parts = []
            for xb, yb in data.eval_batches(split, max(1, batch_size // k), device, indices):
                xt = xb.repeat(k, *([1] * (xb.dim() - 1))) if k > 1 else xb
                if xt.is_cuda:
                    xt = xt.contiguous(memory_format=torch.channels_last)
                with precision():
                    logits, _ = split_output(model(xt))
                parts.append(logits.argmax(-1).view(k, -1) == yb[None])
            rows.append(torch.cat(parts, 1).cpu() if parts else torch.zeros(k, 0, dtype=torch.bool))
    finally:
        posterior.clear_candidate()
    return torch.cat(rows, 0) if rows else torch.zeros(0, 0, dtype=torch.bool)


@torch.no_grad()
def slim_correct(net: nn.Module, data, *, batch_size: int, device: torch.device, indices: Tensor | None = None,
                 split: str = "val", fp32: bool = False) -> Tensor:
    """Per validation image, is the slim network's prediction right (a bool vector on the CPU):
    the same network as the candidate in candidate mode, fewer operations (the arithmetic differs
    only in the order of floating-point sums)."""
    net = net.to(device).eval()
    precision = contextlib.nullcontext if fp32 else (lambda: autocast_for(device))
    parts = []
    for xb, yb in data.eval_batches(split, batch_size, device, indices):
        with precision():
            logits = net(xb)
        parts.append((logits.argmax(-1) == yb).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


def correct_counts(model: nn.Module, posterior: Posterior, masks: Sequence[dict], x: Tensor, y: Tensor, *, tile: int,
                   batch_size: int) -> list[int]:
    """Number of correct predictions of each candidate on the tensors (x, y)."""
    from pgnas.data.tensor_data import TensorBatches

    data = TensorBatches(x, y)
    return correct_matrix(model, posterior, masks, data, tile=tile, batch_size=batch_size, device=x.device).sum(1).tolist()


# ---------------------------------------------------------------------------------- BN re-estimation
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
VAR_FLOOR = 1e-3  # re-estimated BN variance, at least this fraction of the super-network's (see recalibrate_bn)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, posterior: Posterior, masks: dict, data, batches: int, batch_size: int, device) -> None:
    """Re-estimate BN running statistics of one candidate (``masks``; None: the mean network) on
    ``batches`` un-augmented training batches of a fixed order (cumulative average), the rest of the
    model in eval mode. The BN layers' momentum is left as it was; the statistics are the
    candidate's (see :func:`candidate_bn` to have them restored afterwards).

    A channel the candidate leaves (nearly) constant would get a variance near 0, and BN would then
    scale float rounding noise by up to 1/sqrt(eps) (~300): two exact implementations of the same
    network (the masked super-network, its slim export) would disagree. Each channel's variance is
    therefore kept at least ``VAR_FLOOR`` x the variance it had before (the super-network's)."""
    from pgnas.data.augment import AugmentSpec

    model.eval()
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    floors = [VAR_FLOOR * m.running_var.detach().clone() for m in bns]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    if masks is not None:
        posterior.set_candidate(masks)
    g = torch.Generator().manual_seed(0)
    try:
        for i, (x, _) in enumerate(data.train_batches(batch_size, g, device, AugmentSpec())):
            if i >= batches:
                break
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(device):
                model(x)
    finally:
        posterior.clear_candidate()
        for m, momentum, floor in zip(bns, momenta, floors):
            m.momentum = momentum
            m.eval()
            torch.maximum(m.running_var, floor, out=m.running_var)


@contextlib.contextmanager
def candidate_bn(model: nn.Module, posterior: Posterior, masks: dict, data, batches: int, batch_size: int, device):
    """Inside the block the model's BN statistics are the candidate's (re-estimated on
    ``batches`` training batches; nothing changes when ``batches`` is 0); afterwards the
    super-network's are back."""
    if not batches:
        yield
        return
    saved = {k: v.clone() for k, v in model.state_dict().items() if _is_bn_buffer(model, k)}
    try:
        recalibrate_bn(model, posterior, masks, data, batches, batch_size, device)
        yield
    finally:
        model.load_state_dict(saved, strict=False)


def _is_bn_buffer(model: nn.Module, key: str) -> bool:
    owner, _, name = key.rpartition(".")
    return name in ("running_mean", "running_var", "num_batches_tracked") and isinstance(model.get_submodule(owner), _BN)


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


SLIM_BELOW = 0.8  # "auto" scores a candidate through its slim network below this share of the super-network's MACs

# ---------------------------------------------------------------------------------- records
def candidate_sizes(model: nn.Module, posterior: Posterior, masks: dict, input_shape: Sequence[int],
                    costs: Callable[[], dict] | None = None) -> dict:
    """What a candidate costs: the slim network's ``params`` and ``macs`` (exactly what export
    writes), ``params_kept_slices`` (the paper's count: the super-network less the kernel slices of
    dropped input channels), the kept channel fraction and layer by layer, the removed layers.

    A network the slimmer cannot follow must not lose a search: its ``params`` and ``macs`` are then
    the kept-slice counts (upper bounds of the slim network's) and ``size_error`` says why.
    ``costs``: the posterior's ``layer_costs`` (computed when first needed)."""
    from pgnas.export.slim import slim_sizes

    st = posterior.candidate_stats(masks)
    out = {"params_kept_slices": st["params"], "kept_fraction": st["kept_fraction"], "layers": st["layers"]}
    try:
        slim = slim_sizes(model, masks, input_shape)
    except Exception as exc:  # noqa: BLE001 (a slimmer that cannot follow the network must not lose the run)
        text = " ".join(str(exc).split()) or type(exc).__name__
        why = text if isinstance(exc, PgnasError) else f"{type(exc).__name__}: {text} (a pgnas bug, please report it)"
        c = costs() if costs is not None else posterior.layer_costs(input_shape)
        macs = c["macs"] - sum(c["layers"][name]["macs"] * (1.0 - kept) for name, kept in st["layers"].items())
        return {**out, "params": st["params"], "macs": int(round(macs)), "removed_layers": len(st["removed_ops"]),
                "removed_layer_names": list(st["removed_ops"]), "size_error": why}
    return {**out, "params": slim["params"], "macs": slim["macs"], "removed_layers": slim["removed_layers"],
            "removed_layer_names": slim["removed_layer_names"]}


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
        batch_size: int = 128,
        tile: int = 1,
        bn_recalibrate: int = 0,
        train_batch_size: int = 128,
        dist: Dist = Dist(),
        shift: float = 0.0,
        path: str = "auto",
    ) -> None:
        self.model, self.posterior, self.data = model, posterior, data
        self.shift = shift  # candidates from the tempered posterior sigmoid(logit p + shift)
        self.seed, self.device, self.batch_size = seed, device, batch_size
        self.tile = 1 if bn_recalibrate else max(1, tile)  # per-candidate BN statistics cannot share a pass
        self.bn_recalibrate = bn_recalibrate
        self.train_batch_size = train_batch_size
        self.dist = dist
        self.n = int(data.sizes()["val"])
        self.input_shape = (int(data.in_channels), *(int(v) for v in data.image_size))
        self.path = path  # "auto", "masked" (tiled super-network) or "slim" (each candidate's slim network)
        self._supernet_macs: int | None = None
        self._masks: dict[int, dict] = {}
        self._stats: dict[int, dict] = {}
        self._costs: dict | None = None

    def masks(self, index: int) -> dict:
        if index not in self._masks:
            self._masks[index] = self.posterior.sample_candidate(index, self.seed, self.shift)
        return self._masks[index]

    def stats(self, index: int) -> dict:
        """Sizes of candidate ``index``: ``params`` and ``macs`` of the slim network export would
        write, ``params_kept_slices`` (the paper's count), kept channel fraction, removed layers
        (and, until it is scored, the slim network itself)."""
        if index not in self._stats:
            with self._candidate_bn(index):  # sizes depend on BN's constants: those the candidate is scored with
                self._sizes(index)
        return self._stats[index]

    def _sizes(self, index: int) -> None:
        self._stats[index] = candidate_sizes(self.model, self.posterior, self.masks(index), self.input_shape, self.costs)

    def _candidate_bn(self, index: int):
        """The candidate's BN statistics (re-estimated with ``bn_recalibrate``) inside the block."""
        return candidate_bn(self.model, self.posterior, self.masks(index), self.data, self.bn_recalibrate,
                            self.train_batch_size, self.device)

    def costs(self) -> dict:
        """The posterior's per-layer costs (``Posterior.layer_costs``), computed once."""
        if self._costs is None:
            self._costs = self.posterior.layer_costs(self.input_shape)
        return self._costs

    @property
    def _may_slim(self) -> bool:
        """Can any candidate be scored through its slim network here? Not with BN re-estimation
        (it works on the masked super-network), and with ``auto`` only on a CPU."""
        if self.path == "masked" or self.bn_recalibrate:
            return False
        return self.path == "slim" or self.device.type == "cpu"

    def _slim_net(self, index: int) -> nn.Module:
        """The candidate's slim network, used once (it is not kept)."""
        from pgnas.export.slim import slim_sizes

        return slim_sizes(self.model, self.masks(index), self.input_shape, build=True)["model"]

    def use_slim(self, index: int) -> bool:
        """Score this candidate through its slim network? ``slim``: always; ``auto``: on a CPU when
        its slim network needs at most SLIM_BELOW of the super-network's MACs (on a GPU, tiles of
        the masked super-network use the device's width better); never with BN re-estimation."""
        if not self._may_slim:
            return False
        if self.path == "slim":
            return "size_error" not in self.stats(index)
        if self._supernet_macs is None:
            from pgnas.profile import count_macs

            self._supernet_macs = count_macs(self.model, self.input_shape, device=self.device)
        st = self.stats(index)
        return "size_error" not in st and st["macs"] <= SLIM_BELOW * self._supernet_macs

    def record(self, index: int, correct: int, seen: int) -> dict:
        st = self.stats(index)
        return {
            "index": index,
            "val_acc": correct / seen,
            "val_seen": seen,
            "params": st["params"],
            "macs": st["macs"],
            "params_kept_slices": st["params_kept_slices"],
            "kept_fraction": round(st["kept_fraction"], 6),
            "removed_layers": st["removed_layers"],
            **({"size_error": st["size_error"]} if "size_error" in st else {}),
        }

    def correct(self, indices: Sequence[int], examples: Tensor | None = None, fp32: bool = False) -> dict[int, Tensor]:
        """Per candidate, its correctness on each validation image at ``examples`` (all by
        default): this rank scores its share of the candidates, the results are gathered."""
        mine = list(indices)[self.dist.rank :: self.dist.world_size]
        kw = dict(batch_size=self.batch_size, device=self.device, indices=examples, fp32=fp32)
        out: dict[int, Tensor] = {}
        if self.bn_recalibrate:
            for i in mine:
                with self._candidate_bn(i):  # one re-estimation for the candidate's sizes and its score
                    if i not in self._stats:
                        self._sizes(i)
                    out[i] = correct_matrix(self.model, self.posterior, [self.masks(i)], self.data, tile=1, **kw)[0]
        else:
            slim = [i for i in mine if self.use_slim(i)]
            masked = [i for i in mine if i not in set(slim)]
            if masked:
                mat = correct_matrix(self.model, self.posterior, [self.masks(i) for i in masked], self.data, tile=self.tile, **kw)
                out.update({i: mat[j] for j, i in enumerate(masked)})
            for i in slim:
                out[i] = slim_correct(self._slim_net(i), self.data, **kw)
        merged: dict[int, Tensor] = {}
        for part in gather_objects(out, self.dist):
            merged.update(part)
        return merged

    def exhaustive(self, indices: Sequence[int], on_result: Callable[[dict], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> list[dict]:
        """Every candidate on the whole validation split, in rounds of ``tile`` per rank.
        ``should_stop`` is asked after every round (all ranks agree): True ends scoring early with
        the records so far."""
        per_round = self.tile * self.dist.world_size
        records = []
        indices = list(indices)
        for r in range(0, len(indices), per_round):
            chunk = indices[r : r + per_round]
            rows = self.correct(chunk)
            for i in chunk:
                rec = self.record(i, int(rows[i].sum()), self.n)
                self._masks.pop(i, None)
                records.append(rec)
                if on_result is not None:
                    on_result(rec)
            if should_stop is not None and any(gather_objects(bool(should_stop()), self.dist)):
                break
        return records

    def rank_fp32(self, ranked: list[dict], k: int) -> list[dict]:
        """``ranked`` (scored in bf16) with its head re-scored in fp32, so that bf16 rounding cannot
        decide the choice: the top ``k`` (at least 2) candidates scored on the whole split, then the
        next ones as long as one could still beat a re-scored candidate (its bf16 score plus the
        largest bf16-to-fp32 change seen is not below the lowest fp32 score). The re-scored
        candidates lead the result in their fp32 order; every other candidate is then known to be
        below all of them."""
        full = [dict(r) for r in ranked if r.get("val_seen", self.n) == self.n]
        head, rest = full[: max(k, 2)], full[max(k, 2):]
        self.rescore_fp32(head)
        while rest:
            margin = max(abs(r["val_acc"] - r["val_acc_bf16"]) for r in head)
            if rest[0]["val_acc"] + margin < min(r["val_acc"] for r in head):
                break
            nxt = rest.pop(0)
            self.rescore_fp32([nxt])
            head.append(nxt)
        chosen = {r["index"] for r in head}
        return rank(head) + [r for r in ranked if r["index"] not in chosen]

    def rescore_fp32(self, records: list[dict]) -> None:
        """Score ``records`` (finalists scored on the whole split in bf16) again without autocast,
        in place: ``val_acc`` becomes the fp32 score, the bf16 one is kept as ``val_acc_bf16``, so
        bf16 rounding cannot decide the final choice."""
        rows = self.correct([r["index"] for r in records], fp32=True)
        for r in records:
            r["val_acc_bf16"] = r["val_acc"]
            r["val_acc"] = int(rows[r["index"]].sum()) / self.n
        self._masks.clear()

    def race(self, indices: Sequence[int], *, delta: float = 0.05, first: int | None = None, keep_min: int = 1,
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
        n_all = self.n
        indices = list(indices)
        order = torch.randperm(n_all, generator=torch.Generator().manual_seed(self.seed + 7919))
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
            rows = self.correct(alive, order[seen:target])
            for i in alive:
                seen_rows[i].append(rows[i])
            seen = target
            if on_look is not None:
                on_look(look, len(alive), seen)
            if seen == n_all:
                break
            if should_stop is not None and any(gather_objects(bool(should_stop()), self.dist)):
                raise RaceStopped()  # the caller turns it into a stop: racing restarts on resume
            mat = torch.stack([torch.cat(seen_rows[i]) for i in alive]).float()  # (candidates, images seen), exact integers
            counts = mat.sum(1)
            wins = counts[:, None] - mat @ mat.T  # wins[i, j]: images i gets right and j wrong
            discordant = (wins + wins.T).long()
            beats = wins.long() >= critical[discordant]
            beats.fill_diagonal_(False)
            for key in costs:
                cost = torch.tensor([float(self.stats(i)[key]) for i in alive])
                beats &= cost[:, None] <= cost[None, :]
            dropped = beats.any(0).tolist()
            count = dict(zip(alive, counts.long().tolist()))
            protected = set(sorted((i for i in alive if i in protect_from),
                                   key=lambda i: (-count[i], self.stats(i)["params"], i))[:keep_min])
            keep = []
            for i, drop in zip(alive, dropped):
                if drop and i not in protected:
                    records[i] = self.record(i, count[i], seen)
                    self._masks.pop(i, None)
                    seen_rows.pop(i)
                else:
                    keep.append(i)
            alive = keep
        for i in alive:
            records[i] = self.record(i, int(torch.cat(seen_rows[i]).sum()), seen)
        self._masks.clear()
        return [records[i] for i in indices]
