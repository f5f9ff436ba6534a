"""The training run of a search (or of ``pgnas train``): epochs of the trainer, a ``metrics.jsonl``
line per epoch, checkpoints at every epoch end and every ``checkpoint_minutes`` inside one,
SIGTERM/SIGINT as a stop with a checkpoint, and the projected time once the speed is known."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Callable

from pgnas.config import SearchConfig
from pgnas.errors import PgnasError
from pgnas.search.checkpoint import atomic_write_text, save_checkpoint
from pgnas.search.console import duration, log, plural, progress_bar, warn
from pgnas.search.distributed import Dist, barrier
from pgnas.search.signals import StopRequests
from pgnas.search.train import PosteriorTrainer, Stopped, TrainControl


def run_training(trainer: PosteriorTrainer, cfg: SearchConfig, run_dir: Path, *, state: dict | None, stop: StopRequests,
                 progress: bool, dist: Dist, on_epoch_end: Callable[[dict], None] | None = None, command: str = "search",
                 what: str | None = None) -> float:
    """Train the epochs left: metrics.jsonl a line per epoch, checkpoint.pt at every epoch end and
    every ``checkpoint_minutes`` inside one (rank 0 writes), stop on SIGTERM/SIGINT with a checkpoint.
    Returns the run's training seconds so far."""
    main = dist.is_main
    ckpt_path = run_dir / "checkpoint.pt"
    metrics_path = run_dir / "metrics.jsonl"
    train_seconds = float(state.get("train_seconds", 0.0)) if state else 0.0

    def write_checkpoint(st: dict) -> None:
        if main:
            save_checkpoint(ckpt_path, {"supernet": cfg.supernet, "config": _plain(cfg.to_dict()), "train_seconds": train_seconds, **st})

    if trainer.epoch < cfg.epochs and progress:
        log(f"training {what or cfg.supernet} on {cfg.dataset} for {plural(cfg.epochs, 'epoch')} "
            f"({plural(trainer.steps_per_epoch, 'step')} each) "
            f"on {trainer.device}" + (f", resuming at epoch {trainer.epoch + 1} batch {trainer.batch}" if state is not None else ""))

    def project(step_s: float) -> None:
        if not progress:
            return
        left = (cfg.epochs - trainer.epoch) * trainer.steps_per_epoch - trainer.batch
        line = f"projected: training {duration(left * step_s)} more ({duration(trainer.steps_per_epoch * step_s)} an epoch)"
        if command == "search":
            # scoring: a forward pass is about a third of a training step, per image
            val = trainer.data.sizes()["val"]
            line += f", then scoring {cfg.candidates} candidates about {duration(cfg.candidates * val * step_s / cfg.batch_size / 3)}"
        log(line)

    control = _Control(stop, cfg.checkpoint_minutes, write_checkpoint, project)
    swings = SwingWatch()
    for _ in range(trainer.epoch, cfg.epochs):
        bar = progress_bar(progress, total=trainer.steps_per_epoch, initial=trainer.batch,
                           desc=f"epoch {trainer.epoch + 1}/{cfg.epochs}", leave=False, unit="step")
        try:
            metrics = trainer.train_epoch(bar, control)
        except Stopped as exc:
            raise stopped(exc, f"training: {exc}; checkpoint written to {ckpt_path}", run_dir, command) from None
        except PgnasError as exc:
            raise PgnasError(f"{exc} ({ckpt_path})") from None
        finally:
            bar.close()
        train_seconds += metrics["seconds"]
        if main and swings.add(metrics["seconds"]):
            warn(swings.advice())
        if main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        write_checkpoint(trainer.state_dict())
        control.saved()
        barrier(dist)
        if progress:
            p = f"  mean p {metrics['mean_p']:.4f}" if metrics.get("mean_p") is not None else ""
            log(
                f"epoch {metrics['epoch']:>3}/{cfg.epochs}  loss {metrics['loss']:.4f}  ce {metrics['ce']:.4f}  "
                f"kl {metrics['kl']:.4f}  train acc {metrics['train_acc']:.4f}{p}  {metrics['seconds']:.1f}s"
            )
        if on_epoch_end is not None:
            on_epoch_end(metrics)
        if trainer.stop_after_epoch:
            exc = Stopped(f"stopped after epoch {trainer.epoch}", stop.signum)
            raise stopped(exc, f"training: {exc}; checkpoint written to {ckpt_path}", run_dir, command)
    return train_seconds



class SwingWatch:
    """Epoch times that swing (one over 3x the median of the ones before, or under a third of it) mean
    another process competes for the CPU; said once, with what to do. A process's first epoch is not
    compared: it carries torch.compile's compiling and the warm-up (83 s against 8.7 s for the next
    ones in a `--compile` run of the cifar10-small preset), not a busy machine."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.warming_up = True
        self.said = False

    def add(self, seconds: float) -> bool:
        """Record an epoch's seconds; True the first time they swing."""
        if self.warming_up:
            self.warming_up = False
            return False
        before = sorted(self.seconds)
        self.seconds.append(seconds)
        if self.said or len(before) < 2:
            return False
        median = before[len(before) // 2]
        if seconds > 3 * median or seconds < median / 3:
            self.said = True
            return True
        return False

    def advice(self) -> str:
        return (f"epoch times swing ({min(self.seconds):.1f} s to {max(self.seconds):.1f} s): another process is "
                f"competing for the CPU. Give each run its own cores (--threads 1 for each of two runs on two cores; "
                f"torch's threads spin while they wait for a busy core)")


class _Control(TrainControl):
    """Mid-epoch checkpoints every ``minutes`` (0: epoch ends only), stop requests, and the
    projected time once the speed is known."""

    def __init__(self, stop: StopRequests, minutes: float, write: Callable[[dict], None], project: Callable[[float], None] | None = None):
        self.stop, self.interval, self.write = stop, 60.0 * float(minutes), write
        self.project = project
        self.last = time.monotonic()

    def on_speed(self, seconds_per_step: float) -> None:
        if self.project is not None:
            self.project(seconds_per_step)

    @property
    def signum(self) -> int:
        return self.stop.signum

    @property
    def stop_requested(self) -> bool:
        return self.stop.requested

    def poll(self) -> tuple[bool, bool]:
        due = self.interval > 0 and time.monotonic() - self.last >= self.interval
        return due, self.stop.requested

    def save(self, state: dict) -> None:
        self.write(state)
        self.saved()

    def saved(self) -> None:
        self.last = time.monotonic()



def stopped(exc: Stopped, what: str, run_dir: Path, command: str) -> Stopped:
    name = signal.Signals(exc.signum).name if exc.signum else "request"
    how = f"pgnas {command} --out {run_dir} --resume" if command in ("search", "train") else f"the same pgnas {command} command with --resume"
    return Stopped(f"stopped by {name} during {what}; continue with: {how}", exc.signum)



def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep the metric lines of checkpointed epochs only (a killed epoch may have logged)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epochs_done:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(keep))



def _plain(d: dict) -> dict:
    """A config dict with only str/int/float/bool/None values (loadable with weights_only)."""
    return {k: v for k, v in d.items() if v is None or isinstance(v, (str, int, float, bool))}
