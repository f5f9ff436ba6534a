"""The candidate scorer: candidates of one trained posterior (rebuilt from their indices), their
sizes, and their correctness on the validation split, exhaustively (``exhaustive``), by paired racing
(``race``), sharded over ranks under torchrun (candidates split, scores gathered, giving the
single-process scores), re-scored in fp32 where bf16 could decide the choice (``rank_fp32``)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from pgnas.posterior import Posterior
from pgnas.profile import count_macs
from pgnas.search.distributed import Dist, gather_objects
from pgnas.search.racing import race
from pgnas.search.ranking import rank
from pgnas.search.scoring import candidate_bn, candidate_sizes, correct_matrix, slim_correct
from pgnas.slim import slim_sizes

SLIM_BELOW = 0.8  # "auto" scores a candidate through its slim network below this share of the super-network's MACs



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

    def race(self, indices: Sequence[int], **kw) -> list[dict]:
        """Paired racing over the validation split (:func:`pgnas.search.racing.race`)."""
        return race(self, indices, **kw)
