"""Posterior training: one ordinary end-to-end run of the super-network with the hybrid
representation, cross-entropy plus the KL term, one SGD optimizer for weights and p together."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pgnas.config import SearchConfig, parse_lr_schedule
from pgnas.data.augment import AugmentSpec
from pgnas.errors import PgnasError
from pgnas.posterior import Posterior
from pgnas.search.distributed import Dist


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay without restart, per step, from ``base`` to 0."""
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def scheduled_lr(schedule: str, base: float, step: int, steps_per_epoch: int, total: int) -> float:
    """The learning rate at ``step`` under ``schedule`` (see ``SearchConfig.lr_schedule``)."""
    kind, args = parse_lr_schedule(schedule)
    if kind == "cosine":
        return cosine_lr(base, step, total)
    epoch = step / max(steps_per_epoch, 1)
    if kind == "step":
        return base * 0.1 ** sum(epoch >= m for m in args)
    t0, tmul, lr_min = args  # sgdr: find the current cycle
    start, length = 0.0, t0
    while epoch >= start + length:
        start, length = start + length, length * tmul
    return lr_min + 0.5 * (base - lr_min) * (1.0 + math.cos(math.pi * (epoch - start) / length))


def autocast_for(device: torch.device):
    """bf16 autocast on GPUs; CPU runs stay float32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def split_output(out: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


class PosteriorTrainer:
    """Trains weights and drop-logits jointly: SGD (Nesterov), cosine schedule, clipping."""

    def __init__(
        self,
        model: nn.Module,
        posterior: Posterior,
        data,
        config: SearchConfig,
        *,
        device: torch.device,
        augment: AugmentSpec,
        lambda_w: float,
        n_data: float,
        aux_weight: float = 0.0,
        dist: Dist = Dist(),
    ) -> None:
        self.model = model
        self.posterior = posterior
        self.data = data
        self.cfg = config
        self.device = device
        self.augment = augment
        self.lambda_w = lambda_w
        self.n_data = n_data
        self.aux_weight = aux_weight
        self.steps_per_epoch = data.steps_per_epoch(config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        params = [p for p in model.parameters() if p.requires_grad]
        # No weight decay anywhere: the KL term's (1-p)||W||^2 replaces it (method section 1.8).
        self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0, weight_decay=0.0)
        self.params = params
        self.step = 0
        self.epoch = 0  # epochs completed
        self.generator = torch.Generator().manual_seed(config.seed + 1)  # data order and augmentation
        self.dist = dist
        self.net = model
        if dist.enabled:
            if config.batch_size % dist.world_size:
                raise PgnasError(f"batch_size {config.batch_size} is not divisible by the {dist.world_size} ranks")
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            self.net = torch.compile(self.net)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        from pgnas.search.checkpoint import rng_state

        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "rng": rng_state(self.generator),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from pgnas.search.checkpoint import set_rng_state

        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PgnasError(f"checkpoint does not fit this super-network/configuration: {first}") from None
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        set_rng_state(state["rng"], self.generator)

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, progress=None) -> dict[str, Any]:
        """Train one epoch and return its metrics; raises PgnasError if the loss turns non-finite."""
        model, cfg, dev = self.net, self.cfg, self.device
        model.train()
        # Masks and shake-shake coefficients: seeded per (run seed, epoch, rank), so a resumed run,
        # on any number of ranks, draws what it would have drawn; ranks draw independently.
        torch.manual_seed(_derive_seed(cfg.seed, self.epoch, self.dist.rank))
        if hasattr(self.model, "set_progress"):
            self.model.set_progress(self.epoch / cfg.epochs)
        sums = torch.zeros(5, device=dev, dtype=torch.float64)  # ce, kl_w, kl_ent, correct, seen
        bad = torch.zeros((), device=dev, dtype=torch.bool)
        check_every = 1 if dev.type == "cpu" else 50
        t0 = time.perf_counter()
        lr = cfg.lr
        shard = {"rank": self.dist.rank, "world_size": self.dist.world_size} if self.dist.enabled else {}
        batches = self.data.train_batches(cfg.batch_size, self.generator, dev, self.augment, **shard)
        for i, (x, y) in enumerate(batches):
            lr = scheduled_lr(cfg.lr_schedule, cfg.lr, self.step, self.steps_per_epoch, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(dev):
                logits, aux = split_output(model(x))
                ce = F.cross_entropy(logits.float(), y)
                loss_ce = ce if aux is None else ce + self.aux_weight * F.cross_entropy(aux.float(), y)
            kl_w, kl_e = self.posterior.kl_terms(self.n_data)
            loss = loss_ce + self.lambda_w * kl_w + cfg.lambda_p * kl_e
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            with torch.no_grad():
                bad |= ~torch.isfinite(loss.detach())
                sums += torch.stack(
                    [
                        ce.detach().double() * len(y),
                        (self.lambda_w * kl_w).detach().double() * len(y),
                        (cfg.lambda_p * kl_e).detach().double() * len(y),
                        (logits.argmax(1) == y).sum().double(),
                        torch.tensor(float(len(y)), device=dev, dtype=torch.float64),
                    ]
                )
            if (i + 1) % check_every == 0 and self._any(bad):
                self._nan(i + 1)
            if progress is not None:
                progress.update(1)
        if self._any(bad):
            self._nan(self.steps_per_epoch)
        if self.dist.enabled:
            import torch.distributed as tdist

            tdist.all_reduce(sums)
        self.epoch += 1
        ce, kw, ke, correct, seen = sums.tolist()
        return {
            "epoch": self.epoch,
            "step": self.step,
            "lr": lr,
            "loss": (ce + kw + ke) / seen,
            "ce": ce / seen,
            "kl": (kw + ke) / seen,
            "kl_weight": kw / seen,
            "kl_entropy": ke / seen,
            "train_acc": correct / seen,
            "mean_p": self.posterior.mean_p(),
            "p": {name: _p_summary(ps) for name, ps in self.posterior.probs().items()},
            "seconds": time.perf_counter() - t0,
            "world_size": self.dist.world_size,
        }

    def _any(self, flag: torch.Tensor) -> bool:
        """A flag raised on any rank (a collective under torchrun, so every rank stops together)."""
        if self.dist.enabled:
            import torch.distributed as tdist

            f = flag.to(torch.int32)
            tdist.all_reduce(f, op=tdist.ReduceOp.MAX)
            return bool(f)
        return bool(flag)

    def _nan(self, step: int) -> None:
        raise PgnasError(
            f"the loss became NaN/inf in epoch {self.epoch + 1} (step {step}); stopped, the last good "
            f"checkpoint (end of epoch {self.epoch}) is kept - try a lower --lr"
        )


def _derive_seed(seed: int, epoch: int, rank: int) -> int:
    import hashlib

    digest = hashlib.sha256(f"pgnas-train:{seed}:{epoch}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _p_summary(ps: list[float]) -> float | dict[str, float]:
    if len(ps) == 1:
        return round(ps[0], 6)
    return {"mean": round(sum(ps) / len(ps), 6), "min": round(min(ps), 6), "max": round(max(ps), 6), "groups": len(ps)}
