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


class Stopped(PgnasError):
    """Training or scoring stopped on request (SIGTERM, SIGINT) after saving what it had."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class TrainControl:
    """What the training loop asks its caller at each check: is a checkpoint due, has a stop been
    requested, and how to save one. The default never saves and never stops."""

    signum = 0  # the signal that asked to stop

    def poll(self) -> tuple[bool, bool]:
        """(checkpoint due, stop requested), host-side only."""
        return False, False

    @property
    def stop_requested(self) -> bool:
        return False

    def save(self, state: dict[str, Any]) -> None:
        """Write a mid-epoch checkpoint of ``state`` (called on every rank; rank 0 writes)."""

    def on_speed(self, seconds_per_step: float) -> None:
        """Told once, after the first 20 timed steps of this process (the first step, which may
        compile, excluded)."""


class PosteriorTrainer:
    """Trains weights and drop-logits jointly: SGD (Nesterov), one learning-rate schedule, clipping.

    Randomness is derived, not carried: batch s of epoch e draws its data order and augmentation
    from a generator seeded by (seed, e) and its masks and shake-shake coefficients from the global
    RNG seeded by (seed, e, s, rank). A run resumed at any batch therefore continues exactly as the
    uninterrupted run would have (bit for bit on the CPU), on any number of ranks for the data.
    """

    def __init__(
        self,
        model: nn.Module,
        posterior: Posterior | None,
        data,
        config: SearchConfig,
        *,
        device: torch.device,
        augment: AugmentSpec,
        lambda_w: float,
        n_data: float,
        aux_weight: float = 0.0,
        dist: Dist = Dist(),
        weight_decay: float = 0.0,
    ) -> None:
        """``posterior=None`` trains ``model`` plainly (cross-entropy, ``weight_decay``), in the same
        loop: the baseline a search is measured against, and ``pgnas train``."""
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
        # A search has no weight decay anywhere: the KL term's (1-p)||W||^2 replaces it (method section 1.8).
        if posterior is not None and weight_decay:
            raise PgnasError("a posterior search takes no weight decay: the KL term's (1-p)||W||^2 replaces it")
        self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
                                         weight_decay=weight_decay)
        self.params = params
        self.step = 0  # optimizer steps done
        self.epoch = 0  # epochs completed
        self.batch = 0  # batches done in the epoch in progress
        self.stop_after_epoch = False
        self._steps_here = 0  # steps this process has taken (for the speed report)
        self._t_first = 0.0
        self._speed_told = False
        self.dist = dist
        # the epoch in progress: ce, kl_w, kl_ent, correct (on the device), examples, seconds
        self._sums = torch.zeros(4, device=device, dtype=torch.float64)
        self._bad = torch.zeros((), device=device, dtype=torch.bool)
        self._seen = 0
        self._seconds = 0.0
        # how often the host looks at the device (NaN check, collective stop/checkpoint decision):
        # every step on the CPU, where looking costs nothing; every 25 steps on a GPU
        self.check_every = 1 if device.type == "cpu" else 25
        self.net = model
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        if dist.enabled:
            if config.batch_size % dist.world_size:
                raise PgnasError(f"batch_size {config.batch_size} is not divisible by the {dist.world_size} ranks")
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            self.net = torch.compile(self.net)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "epoch_sums": self._sums.detach().cpu(),
            "epoch_seen": self._seen,
            "epoch_seconds": self._seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PgnasError(f"checkpoint does not fit this super-network/configuration: {first}") from None
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch = int(state.get("batch", 0))
        if self.batch:
            sums = state["epoch_sums"].to(self.device, torch.float64)
            # under torchrun rank 0 saved the sums of all ranks: it alone carries them on
            self._sums = sums if self.dist.rank == 0 else torch.zeros_like(sums)
            self._seen = int(state["epoch_seen"]) if self.dist.rank == 0 else 0
            self._seconds = float(state["epoch_seconds"])

    def _global_sums(self) -> tuple[Tensor, int]:
        """The epoch-so-far sums and example count of all ranks."""
        sums = torch.cat([self._sums, torch.tensor([float(self._seen)], device=self.device, dtype=torch.float64)])
        if self.dist.enabled:
            import torch.distributed as tdist

            tdist.all_reduce(sums)
        return sums[:4], int(sums[4])

    # ------------------------------------------------------------------ one step
    def train_step(self, x: Tensor, y: Tensor) -> None:
        """One optimizer step on a batch. Nothing here waits for the device: the loss, the
        running sums and the non-finite flag stay on it until the loop looks at them."""
        cfg = self.cfg
        lr = scheduled_lr(cfg.lr_schedule, cfg.lr, self.step, self.steps_per_epoch, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device):
            logits, aux = split_output(self.net(x))
            ce = F.cross_entropy(logits.float(), y)
            loss_ce = ce if aux is None else ce + self.aux_weight * F.cross_entropy(aux.float(), y)
        if self.posterior is not None:
            kl_w, kl_e = self.posterior.kl_terms(self.n_data)
            kl_w, kl_e = self.lambda_w * kl_w, cfg.lambda_p * kl_e
            loss = loss_ce + kl_w + kl_e
        else:  # a plain network (pgnas train, baselines): the KL term's place is taken by weight decay
            kl_w = kl_e = torch.zeros((), device=ce.device)
            loss = loss_ce
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        self._seen += len(y)
        with torch.no_grad():
            self._bad |= ~torch.isfinite(loss)
            n = float(len(y))
            self._sums += torch.stack([ce * n, kl_w * n, kl_e * n, (logits.argmax(1) == y).sum()]).double()

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, progress=None, control: TrainControl | None = None) -> dict[str, Any]:
        """Train the rest of the current epoch and return its metrics. Raises PgnasError if the
        loss turns non-finite and :class:`Stopped` when ``control`` asks to stop (after saving)."""
        cfg, dev = self.cfg, self.device
        control = control or TrainControl()
        self.net.train()
        if hasattr(self.model, "set_progress"):
            self.model.set_progress(self.epoch / cfg.epochs)
        t0 = time.perf_counter() - self._seconds
        shard = {"rank": self.dist.rank, "world_size": self.dist.world_size} if self.dist.enabled else {}
        g = torch.Generator().manual_seed(derive_seed("data", cfg.seed, self.epoch))
        batches = self.data.train_batches(cfg.batch_size, g, dev, self.augment, start=self.batch, **shard)
        for x, y in batches:
            torch.manual_seed(derive_seed("masks", cfg.seed, self.epoch, self.batch, self.dist.rank))
            self.train_step(x, y)
            self.batch += 1
            self._steps_here += 1
            if self._steps_here == 1:
                self._t_first = time.perf_counter()
            if progress is not None:
                progress.update(1)
            if self.batch % self.check_every == 0 or (control.stop_requested and not self.dist.enabled):
                self._seconds = time.perf_counter() - t0
                self._check(control)
        self._seconds = time.perf_counter() - t0
        # at the epoch's end the caller writes the epoch checkpoint, then stops if asked to
        self.stop_after_epoch = self._check(control, end_of_epoch=True)
        sums, seen = self._global_sums()
        ce, kw, ke, correct = sums.tolist()
        metrics = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "lr": scheduled_lr(cfg.lr_schedule, cfg.lr, self.step - 1, self.steps_per_epoch, self.total_steps),
            "loss": (ce + kw + ke) / seen,
            "ce": ce / seen,
            "kl": (kw + ke) / seen,
            "kl_weight": kw / seen,
            "kl_entropy": ke / seen,
            "train_acc": correct / seen,
            "mean_p": self.posterior.mean_p() if self.posterior is not None else None,
            "p": {name: _p_summary(ps) for name, ps in self.posterior.probs().items()} if self.posterior is not None else {},
            "seconds": self._seconds,
            "world_size": self.dist.world_size,
        }
        self.epoch += 1
        self.batch = 0
        self._sums.zero_()
        self._seen = 0
        self._seconds = 0.0
        return metrics

    def _check(self, control: TrainControl, end_of_epoch: bool = False) -> bool:
        """Look at the device (non-finite loss) and ask the caller (checkpoint due, stop
        requested); under torchrun one collective, so every rank decides the same at the same step."""
        due, stop = control.poll()
        flags = torch.stack([self._bad, torch.tensor(due, device=self.device), torch.tensor(stop, device=self.device)])
        if self.dist.enabled:
            import torch.distributed as tdist

            f = flags.to(torch.int32)
            tdist.all_reduce(f, op=tdist.ReduceOp.MAX)
            flags = f.bool()
        bad, due, stop = flags.tolist()  # the host waits for the device here: step times are real
        if not self._speed_told and self._steps_here >= 21:
            self._speed_told = True
            control.on_speed((time.perf_counter() - self._t_first) / (self._steps_here - 1))
        if bad:
            raise PgnasError(
                f"the loss became NaN/inf in epoch {self.epoch + 1} (by step {self.batch}); stopped, the last good "
                f"checkpoint is kept - try a lower --lr"
            )
        if (due or stop) and not end_of_epoch:
            sums, seen = self._global_sums()
            state = self.state_dict()
            state["epoch_sums"], state["epoch_seen"] = sums.cpu(), seen
            control.save(state)
        if stop and not end_of_epoch:
            raise Stopped(f"stopped in epoch {self.epoch + 1} after batch {self.batch}", control.signum)
        return bool(stop)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from a tuple of names and numbers (sha256: unrelated streams for every tuple)."""
    import hashlib

    digest = hashlib.sha256(("pgnas-train:" + ":".join(str(p) for p in parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _p_summary(ps: list[float]) -> float | dict[str, float]:
    if len(ps) == 1:
        return round(ps[0], 6)
    return {"mean": round(sum(ps) / len(ps), 6), "min": round(min(ps), 6), "max": round(max(ps), 6), "groups": len(ps)}
