"""The whole search: data -> super-network -> posterior training -> sampling -> selection ->
results folder. ``pgnas.search(config)`` and ``pgnas search`` land in :func:`search`;
``pgnas sample`` (more candidates from a trained posterior) in :func:`sample`.

Under ``torchrun`` every rank runs this code; rank 0 alone writes files.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pgnas.config import SearchConfig
from pgnas.data import load_dataset
from pgnas.errors import PgnasError
from pgnas.posterior import Posterior, count_parameters, instrument
from pgnas.search.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    load_resume_checkpoint,
    previous_path,
    save_checkpoint,
)
from pgnas.search.distributed import Dist, barrier, broadcast_module, gather_objects, init_from_env
from pgnas.search.calibration import average_probs, calibration_metrics
from pgnas.search.select import (
    CandidateScorer, RaceStopped, accuracy, candidate_bn, fully_scored, pareto_front, predict_probs, rank, read_candidates, within_budget,
)
from pgnas.search.signals import StopRequests
from pgnas.search.train import PosteriorTrainer, Stopped, TrainControl
from pgnas.supernets import get_supernet

# Files a search owns in its results folder (--force removes these and nothing else).
RUN_FILES = (
    "config.toml", "checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl", "candidates.jsonl", "scoring.json",
    "summary.json", "split.json", "model.pt", "model.json", "latency.json",
)
# What selection writes: it belongs to one trained posterior, so training more makes it stale.
SELECTION_FILES = ("candidates.jsonl", "scoring.json", "summary.json", "model.pt", "model.json")
# Settings that may change when a run is resumed; every other one must match the saved run.
RESUME_MUTABLE = frozenset(
    {"candidates", "top_k", "eval_batch_size", "eval_tile", "race", "race_delta", "bn_recalibrate", "device", "out",
     "data_cache", "checkpoint_minutes", "threads", "max_params", "max_macs", "max_latency_ms", "eval_path", "logit_shift"}
)
ENSEMBLE_K = 5  # the summary's ensemble of the top candidates (Bayesian model averaging)
# The paper's N (the KL term's data-set size) for the named data sets it used (method section 3).
PAPER_N_DATA = {"cifar10": 5e5, "cifar100": 5e5, "imagenet": 1.2e6}


def default_n_data(dataset: str, train_images: int, train_subset: int | None = None) -> float:
    """N of the KL term when the configuration leaves it open: the paper's value for CIFAR-10/100
    (5e5) and ImageNet (1.2e6) trained on their whole training split; otherwise 10 x the number of
    training images (the paper's CIFAR rule, 10 x 50k, "because of data augmentation")."""
    if dataset in PAPER_N_DATA and not train_subset:
        return PAPER_N_DATA[dataset]
    return 10.0 * train_images


@dataclass
class SearchResult:
    """What a search returns: its folder, the summary (as in summary.json), and the trained
    super-network with the selected candidate's masks."""

    run_dir: Path
    summary: dict[str, Any]
    model: nn.Module
    posterior: Posterior
    selected_masks: dict[str, torch.Tensor]
    candidates: list[dict]

    @property
    def selected(self) -> dict[str, Any]:
        return self.summary["selected"]


@dataclass
class Run:
    """A super-network with its posterior, its data, and the resolved configuration."""

    cfg: SearchConfig
    spec: Any
    data: Any
    model: nn.Module
    posterior: Posterior
    augment: Any
    device: torch.device
    dist: Dist
    data_seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise PgnasError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PgnasError(f"device {name!r} asked for, but no CUDA GPU is available")
    return dev


def default_run_dir(cfg: SearchConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.supernet.replace(":", "-").replace("/", "-")
    return Path("runs") / f"{name}-{cfg.dataset}-{stamp}"


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """The saved configuration of ``run_dir`` with ``overrides`` applied; overrides of settings
    that shape training must equal the saved values."""
    run_dir = Path(run_dir)
    path = run_dir / "config.toml"
    if not path.is_file():
        raise PgnasError(f"nothing to resume in {run_dir}: it has no config.toml")
    saved = SearchConfig.from_toml(path)
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if key not in RESUME_MUTABLE and value is not None and getattr(saved, key) != value:
            raise PgnasError(
                f"--resume: {key} = {value!r} differs from the run's saved {getattr(saved, key)!r}; "
                f"only {', '.join(sorted(RESUME_MUTABLE))} may change on resume"
            )
    merged = {k: v for k, v in overrides.items() if k in RESUME_MUTABLE and v is not None}
    merged["out"] = str(run_dir)
    return saved.replace(**merged)


def check_resumable(run_dir: Path, cfg: SearchConfig) -> None:
    """A resumed run must be configured as it was saved, but for the settings that may change."""
    saved = SearchConfig.from_toml(run_dir / "config.toml")
    for f in dataclasses.fields(SearchConfig):
        if f.name not in RESUME_MUTABLE and getattr(saved, f.name) != getattr(cfg, f.name):
            raise PgnasError(f"--resume: {f.name} = {getattr(cfg, f.name)!r} differs from the run's saved {getattr(saved, f.name)!r}")


def _prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    if resume and force:
        raise PgnasError("--resume and --force exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise PgnasError(f"results path {run_dir} exists and is not a folder")
    has_files = run_dir.is_dir() and any(run_dir.iterdir())
    if resume:
        if not (run_dir / "config.toml").is_file():
            raise PgnasError(f"nothing to resume in {run_dir}: it has no config.toml")
        return
    if has_files and not force:
        raise PgnasError(f"results folder {run_dir} already exists; pass --resume to continue it or --force to start over")


def _progress(enabled: bool, **kw):
    """A progress bar on stderr when it is a terminal (a log file gets the one-line summaries)."""
    from tqdm.auto import tqdm

    return tqdm(disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, file=sys.stderr, **kw)


def set_threads(cfg: SearchConfig) -> int:
    """Torch's CPU threads: ``cfg.threads`` when given; otherwise what torch has (e.g.
    $OMP_NUM_THREADS, which torchrun sets to 1 per process), but never more than the cores this
    process may use (its affinity: SLURM, taskset). Oversubscribed threads can make a CPU epoch a
    hundred times slower."""
    from pgnas.data.imagefolder import usable_cpus

    n = cfg.threads or min(torch.get_num_threads(), usable_cpus())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def build_run(cfg: SearchConfig) -> Run:
    """Load the data and build the instrumented super-network (no files written). Every input the
    network cannot take is found here: the network is built and runs one batch of two examples."""
    spec = get_supernet(cfg.supernet)
    set_threads(cfg)
    device = resolve_device(cfg.device)
    d = init_from_env(device.type)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    t0 = time.perf_counter()
    data = load_run_data(cfg)
    data_seconds = time.perf_counter() - t0
    augment = augment_for(cfg, data)
    cfg = cfg.replace(
        lambda_w=spec.lambda_w if cfg.lambda_w is None else cfg.lambda_w,
        n_data=default_n_data(cfg.dataset, data.sizes()["train"], cfg.train_subset) if cfg.n_data is None else cfg.n_data,
    )
    torch.manual_seed(cfg.seed)
    shape = f"{data.in_channels}x{data.image_size[0]}x{data.image_size[1]}"
    model = spec.build(num_classes=data.num_classes, in_channels=data.in_channels)
    posterior = instrument_run(cfg, spec, model)
    probe_network(model, (data.in_channels, *data.image_size), f"super-network {cfg.supernet!r}", f"{data.num_classes} classes of {shape} images")
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        data.to(device)
    return Run(cfg, spec, data, model, posterior, augment, device, d, data_seconds)


def instrument_run(cfg: SearchConfig, spec, model: nn.Module) -> Posterior:
    """Instrument a freshly built ``model`` of super-network ``spec`` as ``cfg`` says: the spec's p
    groups, its plain layers and ``cfg.plain_layers`` without a p, initial or fixed p, temperature."""
    return instrument(
        model,
        groups=spec.groups(model) if spec.groups else None,
        exclude=[*(spec.exclude(model) if spec.exclude else ()), *cfg.plain_layer_names],
        init_p=cfg.init_p, tau=cfg.tau, fixed_p=cfg.fixed_p,
    )


def augment_for(cfg: SearchConfig, data):
    """The data set's augmentation with the configuration's overrides."""
    return dataclasses.replace(
        data.augment,
        **{k: getattr(cfg, k) for k in ("crop_pad", "flip", "cutout", "autoaugment") if getattr(cfg, k) is not None},
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def probe_network(model: nn.Module, input_shape: tuple[int, ...], what: str, data_what: str) -> None:
    """Run two examples through a copy of ``model`` in training and in evaluation mode: a network
    that cannot take the data set's images fails here, with one line, before anything is written."""
    import copy

    probe = copy.deepcopy(model).cpu()
    x = torch.zeros((2, *input_shape))
    try:
        with torch.no_grad():
            probe.train()
            probe(x)
            probe.eval()
            probe(x)
    except Exception as exc:  # noqa: BLE001
        raise PgnasError(f"{what} cannot take the data set's inputs ({data_what}): {type(exc).__name__}: {_first_line(exc)}") from None


def load_run_data(cfg: SearchConfig):
    """The data set of a run as its search used it (splits, and the training subset if any)."""
    data = load_dataset(
        cfg.dataset, data_dir=cfg.data_dir, val_size=cfg.val_size, split_seed=cfg.split_seed, download=cfg.download,
        data_cache=cfg.data_cache, skip_bad=cfg.skip_bad, image_size=cfg.image_size,
    )
    if cfg.train_subset:
        data = _train_subset(data, cfg.train_subset, cfg.split_seed)
    return data


def _train_subset(data, size: int, seed: int):
    """The same splits with training data cut to a stratified subset of ``size`` images."""
    from pgnas.data.splits import stratified_split

    if not hasattr(data, "train_x"):
        raise PgnasError(f"train_subset works with data sets held as tensors, not {data.name}")
    n = len(data.train_y)
    if size >= n:
        return data
    _, idx = stratified_split(data.train_y, size, seed)
    return dataclasses.replace(data, train_x=data.train_x[idx], train_y=data.train_y[idx], _eval_cache={})


def search(
    config: SearchConfig | dict | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> SearchResult:
    """Run a posterior-guided search and return its :class:`SearchResult`.

    ``resume=True`` continues the run in ``config.out`` from its last checkpoint (written every
    ``checkpoint_minutes`` and at every epoch end, so a kill loses at most that much training) and
    its already scored candidates. ``force=True`` replaces the pgnas files of an existing results
    folder. SIGTERM or Ctrl-C stops it after the current step with a checkpoint written
    (:class:`~pgnas.search.train.Stopped`).
    """
    t_start = time.perf_counter()
    if isinstance(config, dict):
        config = SearchConfig.from_dict(config)
    cfg = (config or SearchConfig()).replace()
    cfg.validate()
    if cfg.weight_decay:
        raise PgnasError("a search takes no weight decay: the KL term's (1-p)||W||^2 replaces it (weight_decay is for pgnas train)")
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    _prepare_run_dir(run_dir, resume, force)
    run = build_run(cfg.replace(out=str(run_dir)))  # all input errors surface before anything is written
    cfg, main = run.cfg, run.dist.is_main
    progress = progress and main
    ckpt_path = run_dir / "checkpoint.pt"
    has_ckpt = ckpt_path.exists() or previous_path(ckpt_path).exists()
    if resume:
        check_resumable(run_dir, cfg)
    state = load_resume_checkpoint(ckpt_path) if (resume and has_ckpt) else None
    trainer = PosteriorTrainer(
        run.model, run.posterior, run.data, cfg, device=run.device, augment=run.augment,
        lambda_w=cfg.lambda_w, n_data=cfg.n_data, aux_weight=run.spec.aux_weight, dist=run.dist,
    )
    if state is not None:
        if state.get("supernet") != cfg.supernet:
            raise PgnasError(f"checkpoint {ckpt_path} is of super-network {state.get('supernet')!r}, not {cfg.supernet!r}")
        trainer.load_state_dict(state)
    to_train = trainer.epoch < cfg.epochs

    # ---- the results folder
    metrics_path = run_dir / "metrics.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if force:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
        if resume and to_train:  # scores of other weights than the ones training will end with
            for name in SELECTION_FILES:
                (run_dir / name).unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.toml", cfg.to_toml())
        atomic_write_text(run_dir / "split.json", json.dumps({"dataset": cfg.dataset, **run.data.describe_split()}) + "\n")
        _truncate_metrics(metrics_path, trainer.epoch)
    barrier(run.dist)

    # ---- posterior training
    with StopRequests() as stop:
        t_train = time.perf_counter()
        train_seconds = run_training(trainer, cfg, run_dir, state=state, stop=stop, progress=progress, dist=run.dist,
                                     on_epoch_end=on_epoch_end, command="search")
        timings = {"data": run.data_seconds, "train": time.perf_counter() - t_train if to_train else 0.0}
        temper(run, progress)  # a budget below the posterior's candidates: the tempered posterior
        if run.cfg != cfg and main:
            atomic_write_text(run_dir / "config.toml", run.cfg.to_toml())
        return _select_and_report(run, run_dir, resume=resume, progress=progress, train_seconds=train_seconds, stop=stop,
                                  t_start=t_start, timings=timings, command="search")


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
        _log(f"training {what or cfg.supernet} on {cfg.dataset} for {cfg.epochs} epochs ({trainer.steps_per_epoch} steps each) "
             f"on {trainer.device}" + (f", resuming at epoch {trainer.epoch + 1} batch {trainer.batch}" if state is not None else ""))
    def project(step_s: float) -> None:
        if not progress:
            return
        left = (cfg.epochs - trainer.epoch) * trainer.steps_per_epoch - trainer.batch
        line = f"projected: training {_duration(left * step_s)} more ({_duration(trainer.steps_per_epoch * step_s)} an epoch)"
        if command == "search":
            # scoring: a forward pass is about a third of a training step, per image
            val = trainer.data.sizes()["val"]
            line += f", then scoring {cfg.candidates} candidates about {_duration(cfg.candidates * val * step_s / cfg.batch_size / 3)}"
        _log(line)

    control = _Control(stop, cfg.checkpoint_minutes, write_checkpoint, project)
    for _ in range(trainer.epoch, cfg.epochs):
        bar = _progress(progress, total=trainer.steps_per_epoch, initial=trainer.batch,
                        desc=f"epoch {trainer.epoch + 1}/{cfg.epochs}", leave=False, unit="step")
        try:
            metrics = trainer.train_epoch(bar, control)
        except Stopped as exc:
            raise _stopped(exc, f"training: {exc}; checkpoint written to {ckpt_path}", run_dir, command) from None
        except PgnasError as exc:
            raise PgnasError(f"{exc} ({ckpt_path})") from None
        finally:
            bar.close()
        train_seconds += metrics["seconds"]
        if main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        write_checkpoint(trainer.state_dict())
        control.saved()
        barrier(dist)
        if progress:
            p = f"  mean p {metrics['mean_p']:.4f}" if metrics.get("mean_p") is not None else ""
            _log(
                f"epoch {metrics['epoch']:>3}/{cfg.epochs}  loss {metrics['loss']:.4f}  ce {metrics['ce']:.4f}  "
                f"kl {metrics['kl']:.4f}  train acc {metrics['train_acc']:.4f}{p}  {metrics['seconds']:.1f}s"
            )
        if on_epoch_end is not None:
            on_epoch_end(metrics)
        if trainer.stop_after_epoch:
            exc = Stopped(f"stopped after epoch {trainer.epoch}", stop.signum)
            raise _stopped(exc, f"training: {exc}; checkpoint written to {ckpt_path}", run_dir, command)
    return train_seconds


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


def _stopped(exc: Stopped, what: str, run_dir: Path, command: str) -> Stopped:
    import signal as _signal

    name = _signal.Signals(exc.signum).name if exc.signum else "request"
    how = f"pgnas {command} --out {run_dir} --resume" if command in ("search", "train") else f"the same pgnas {command} command with --resume"
    return Stopped(f"stopped by {name} during {what}; continue with: {how}", exc.signum)


def sample(
    run_dir: str | Path,
    *,
    candidates: int,
    out: str | Path | None = None,
    seed: int | None = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> SearchResult:
    """Draw and rank ``candidates`` candidates from the trained posterior of ``run_dir``.

    Results go to ``out`` (default ``RUN_DIR/sample-<C>``); ``seed`` picks another set of
    candidates than the search's (default: the search's seed, so candidate i is the same).
    ``resume=True`` continues an interrupted sample in ``out`` from its scored candidates.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if not (run_dir / "config.toml").is_file():
        raise PgnasError(f"{run_dir} is not a pgnas results folder (no config.toml)")
    if not ckpt_path.is_file():
        raise PgnasError(f"{run_dir} has no checkpoint.pt: train the posterior first (pgnas search)")
    if resume and force:
        raise PgnasError("--resume and --force exclude each other")
    saved = SearchConfig.from_toml(run_dir / "config.toml")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - (RESUME_MUTABLE - {"out"})
    if unknown:
        raise PgnasError(f"pgnas sample cannot change {', '.join(sorted(unknown))}")
    out_dir = Path(out) if out else run_dir / f"sample-{candidates}"
    # BN re-estimation is the sample's own choice (given, or decided by its tempering), not the search's
    cfg = saved.replace(candidates=candidates, out=str(out_dir), seed=saved.seed if seed is None else seed,
                        **{"bn_recalibrate": None, **changes})
    cfg.validate()
    if out_dir.exists() and any(out_dir.iterdir()) and not (force or resume):
        raise PgnasError(f"results folder {out_dir} already exists; pass --resume to continue it or --force to replace it")
    if resume and (out_dir / "config.toml").is_file():
        prev = SearchConfig.from_toml(out_dir / "config.toml")
        if prev.seed != cfg.seed:
            raise PgnasError(f"--resume: {out_dir} was sampled with seed {prev.seed}, not {cfg.seed}")
    state = load_checkpoint(ckpt_path)
    if state.get("epoch") != saved.epochs:
        raise PgnasError(f"{run_dir}: training stopped after epoch {state.get('epoch')} of {saved.epochs}; finish it with pgnas search --resume")
    run = build_run(cfg)
    try:
        run.model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise PgnasError(f"checkpoint {ckpt_path} does not fit its configuration: {str(exc).splitlines()[0]}") from None
    if resume and (out_dir / "config.toml").is_file():
        # the sample's own tempering and BN re-estimation, as it was started (unless told otherwise)
        prev = SearchConfig.from_toml(out_dir / "config.toml")
        run.cfg = run.cfg.replace(logit_shift=prev.logit_shift,
                                  bn_recalibrate=changes.get("bn_recalibrate", prev.bn_recalibrate))
    else:
        temper(run, progress and run.dist.is_main)
    if run.dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            for name in SELECTION_FILES:
                (out_dir / name).unlink(missing_ok=True)
        atomic_write_text(out_dir / "config.toml", run.cfg.to_toml())
        atomic_write_text(out_dir / "source.json", json.dumps({"source_run": str(run_dir.resolve())}) + "\n")
    barrier(run.dist)
    with StopRequests() as stop:
        return _select_and_report(run, out_dir, resume=resume, progress=progress and run.dist.is_main,
                                  train_seconds=float(state.get("train_seconds", 0.0)), stop=stop, t_start=t_start,
                                  timings={"data": run.data_seconds, "train": 0.0}, command="sample", source=run_dir)


def temper(run: Run, say: bool) -> None:
    """Budget-aware sampling: when the candidates' mean slim cost exceeds ``max_params`` or
    ``max_macs``, draw from the tempered posterior whose mean slim cost is 90 % of the budget
    (``logit_shift``, :mod:`pgnas.search.tempering`). Tempered candidates keep fewer channels than
    the super-network's BN statistics were estimated with, so unless ``bn_recalibrate`` was given
    they get theirs re-estimated (digits, 25 % below the posterior's MACs: 19 % validation accuracy
    without, 94 % with)."""
    from pgnas.search.tempering import BN_BATCHES, SlimCosts, describe, tempered_shift

    cfg = run.cfg
    budgets = {"params": cfg.max_params, "macs": cfg.max_macs}
    if any(budgets.values()):
        costs = SlimCosts(run.model, run.posterior, (run.data.in_channels, *run.data.image_size), cfg.seed)
        shift, after, over = tempered_shift(costs, budgets, cfg.logit_shift)
        if over:
            if say:
                _log(describe(budgets, over, costs.mean(cfg.logit_shift), after, shift))
            run.cfg = cfg = cfg.replace(logit_shift=shift)
    if cfg.bn_recalibrate is None:  # resolved: the paper's none, or re-estimation for a tempered posterior
        run.cfg = cfg.replace(bn_recalibrate=BN_BATCHES if cfg.logit_shift else 0)
        if cfg.logit_shift and say:
            _log(f"tempered candidates get their BN statistics re-estimated from {BN_BATCHES} training batches "
                 f"(--bn-recalibrate 0 turns it off)")


def _within_size_budget(stats: dict, cfg: SearchConfig) -> bool:
    return (cfg.max_params is None or stats["params"] <= cfg.max_params) and (cfg.max_macs is None or stats["macs"] <= cfg.max_macs)


def scoring_setup(cfg: SearchConfig, device: torch.device) -> dict[str, Any]:
    """What decides a candidate's score beyond its masks: scores computed under another setup
    are not comparable, so a resumed selection re-scores them."""
    return {
        "records": 3,  # 2: params/macs of the slim network, params_kept_slices, removed_layers; 3: sizes under the candidate's BN
        "bn_recalibrate": cfg.bn_recalibrate or 0,
        "bn_batch_size": cfg.batch_size if cfg.bn_recalibrate else None,
        "precision": "bf16" if device.type == "cuda" else "fp32",
        "seed": cfg.seed,
        "logit_shift": cfg.logit_shift,
    }


def _select_and_report(run: Run, run_dir: Path, *, resume: bool, progress: bool, train_seconds: float, stop: StopRequests,
                       t_start: float, timings: dict[str, float], command: str, source: Path | None = None) -> SearchResult:
    """Score the candidates on the validation split, rank them, report the best on test."""
    cfg, model, posterior, data, device, main = run.cfg, run.model, run.posterior, run.data, run.device, run.dist.is_main
    t_score = time.perf_counter()
    # every rank scores with the network rank 0 checkpointed (under torchrun the ranks' BN statistics differ)
    broadcast_module(model, run.dist)
    scorer = CandidateScorer(
        model, posterior, data, seed=cfg.seed, device=device, batch_size=cfg.eval_batch(device.type),
        tile=cfg.tile(device.type), bn_recalibrate=cfg.bn_recalibrate, train_batch_size=cfg.batch_size, dist=run.dist,
        shift=cfg.logit_shift, path=cfg.eval_path,
    )
    cand_path = run_dir / "candidates.jsonl"
    setup = scoring_setup(cfg, device)
    setup_path = run_dir / "scoring.json"
    done = read_candidates(cand_path) if resume else {}
    if done and setup_path.is_file() and json.loads(setup_path.read_text()) != setup:
        if progress:
            _log(f"scoring changed since these candidates were scored ({setup_path.read_text().strip()} -> {json.dumps(setup)}): "
                 f"re-scoring all of them")
        done = {}
    if main:
        atomic_write_text(setup_path, json.dumps(setup) + "\n")
    latency_of = None
    if cfg.max_latency_ms:
        from pgnas.export.latency import cached_latency

        latency_of = cached_latency(run_dir if main else None, model, scorer.masks, scorer.input_shape, device)
    if cfg.race:
        # budgets: sizes are known before scoring, so the race keeps the best candidate within them
        # (and the accuracy-size front): a candidate is dropped only for a cheaper better one
        budgeted = bool(cfg.max_params or cfg.max_macs or cfg.max_latency_ms)
        racing, excluded = list(range(cfg.candidates)), []
        if cfg.max_latency_ms:  # a latency budget is measured before racing, and the slower ones sit out
            racing = [i for i in racing if latency_of(i) <= cfg.max_latency_ms]
            excluded = [i for i in range(cfg.candidates) if i not in set(racing)]
        eligible = [i for i in racing if _within_size_budget(scorer.stats(i), cfg)]
        bar = _progress(progress, total=scorer.n, desc="racing candidates", unit="image")
        try:
            raced = scorer.race(
                racing, delta=cfg.race_delta, keep_min=max(cfg.top_k, ENSEMBLE_K),
                costs=("params", "macs") if budgeted else (), eligible=eligible,
                on_look=lambda r, n, seen: (bar.set_postfix(candidates=n, refresh=False), bar.update(seen - bar.n)),
                should_stop=lambda: stop.requested,
            ) if racing else []
        except RaceStopped:
            exc = Stopped("racing restarts on resume", max(gather_objects(stop.signum, run.dist)) or 2)
            raise _stopped(exc, "candidate racing", run_dir, command) from None
        finally:
            bar.close()
        scored = {r["index"]: r for r in raced}
        if latency_of is not None:
            for r in raced:
                r["latency_ms"] = latency_of(r["index"])
        for i in excluded:  # over the latency budget: not raced (no score, like a candidate raced out at once)
            scored[i] = {**scorer.record(i, 0, 1), "val_acc": 0.0, "val_seen": 0, "latency_ms": latency_of(i)}
        records = [scored[i] for i in range(cfg.candidates)]
        if main:
            atomic_write_text(cand_path, "".join(json.dumps(r) + "\n" for r in records))
    else:
        n_val = scorer.n
        done = {i: r for i, r in done.items() if i < cfg.candidates and r.get("val_seen", n_val) == n_val}
        if main:  # rewrite without torn lines, raced-out partial scores or candidates beyond a lowered count
            atomic_write_text(cand_path, "".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
        todo = [i for i in range(cfg.candidates) if i not in done]
        bar = _progress(progress, total=cfg.candidates, initial=len(done), desc="candidates", unit="cand")
        best = [max((r["val_acc"] for r in done.values()), default=0.0)]
        f = open(cand_path, "a") if main else None
        last_line = [time.monotonic()]

        def _tick(rec: dict) -> None:
            if f is not None:
                f.write(json.dumps(rec) + "\n")
                f.flush()
            best[0] = max(best[0], rec["val_acc"])
            bar.set_postfix(best_val=f"{best[0]:.4f}", refresh=False)
            bar.update(1)
            if progress and bar.disable and time.monotonic() - last_line[0] > 60:
                last_line[0] = time.monotonic()
                _log(f"candidates {bar.n}/{cfg.candidates}  best val {best[0]:.4f}")

        try:
            new = scorer.exhaustive(todo, on_result=_tick, should_stop=lambda: stop.requested)
        finally:
            bar.close()
            if f is not None:
                f.close()
        allrec = {**done, **{r["index"]: r for r in new}}
        if len(allrec) < cfg.candidates:
            exc = Stopped(f"{len(allrec)} of {cfg.candidates} candidates scored", max(gather_objects(stop.signum, run.dist)))
            raise _stopped(exc, f"candidate scoring ({exc}, kept in {cand_path})", run_dir, command)
        records = [allrec[i] for i in range(cfg.candidates)]
    ranked = rank(records)
    timings["score"] = time.perf_counter() - t_score
    if progress:
        _log(f"scored {cfg.candidates} candidates in {timings['score']:.1f}s: best val {ranked[0]['val_acc']:.4f} "
             f"(candidate {ranked[0]['index']})")
    unsized = [r for r in records if "size_error" in r]
    if unsized and main:
        _warn(f"{len(unsized)} of {len(records)} candidates could not be slimmed (candidates "
              f"{_index_list([r['index'] for r in unsized])}): {unsized[0]['size_error']}; their params and MACs are the "
              f"kept-slice counts (upper bounds), and they cannot be exported")

    # ---- budgets: the best candidates within every budget given (slim params/MACs, latency here)
    full = fully_scored(ranked, scorer.n)
    try:
        eligible = within_budget(full, max_params=cfg.max_params, max_macs=cfg.max_macs, max_latency_ms=cfg.max_latency_ms,
                                 latency_of=latency_of, need=max(cfg.top_k, ENSEMBLE_K))
        budget_met = True
    except PgnasError as exc:  # the scores must not be lost: the best candidate, and what to do
        eligible, budget_met = full, False
        if main:
            _warn(f"{exc}; selected the best candidate regardless. Sample a tempered posterior with more candidates "
                  f"(pgnas sample {run_dir if source is None else source} --candidates N --max-...) or loosen the budget")
    if setup["precision"] != "fp32":  # the finalists again in fp32: bf16 rounding must not pick the winner
        eligible = scorer.rank_fp32(eligible, cfg.top_k)

    # ---- report the selected candidates on the test split (reporting only, never selecting),
    # each with exactly the network that was scored (its BN statistics when they were re-estimated)
    t_test = time.perf_counter()
    top, member_probs = [], []
    for rec in eligible[: max(cfg.top_k, ENSEMBLE_K)]:
        masks = scorer.masks(rec["index"])
        with candidate_bn(model, posterior, masks, data, cfg.bn_recalibrate, cfg.batch_size, device):
            posterior.set_candidate(masks)
            probs, labels = predict_probs(model, data, "test", cfg.eval_batch(device.type), device)
            posterior.clear_candidate()
        member_probs.append(probs)
        if len(top) < cfg.top_k:
            stats = scorer.stats(rec["index"])
            test_acc = float((probs.argmax(1) == labels).double().mean())
            top.append({**rec, "test_acc": test_acc, "layers": {k: round(v, 4) for k, v in stats["layers"].items()},
                        "removed_layer_names": stats["removed_layer_names"]})
    best_masks = scorer.masks(eligible[0]["index"])
    # the mean network (inputs x (1 - p)) of the posterior the candidates came from (tempered: p'),
    # with its own BN statistics when the candidates' were re-estimated
    with posterior.shifted(cfg.logit_shift), candidate_bn(model, posterior, None, data, cfg.bn_recalibrate, cfg.batch_size, device):
        supernet_val = accuracy(model, data, "val", cfg.eval_batch(device.type), device)
        mean_probs, _ = predict_probs(model, data, "test", cfg.eval_batch(device.type), device)
    supernet_test = float((mean_probs.argmax(1) == labels).double().mean())
    calibration = {
        "selected": calibration_metrics(member_probs[0], labels),
        "mean_network": calibration_metrics(mean_probs, labels),
        f"ensemble_top{len(member_probs)}": calibration_metrics(average_probs(member_probs), labels),
    }
    timings["test"] = time.perf_counter() - t_test
    # the spread of the candidates scored on the whole split (raced-out partial scores are not comparable)
    vals = [r["val_acc"] for r in fully_scored(records, scorer.n)]
    mean_val = sum(vals) / len(vals)
    summary = {
        "selected": top[0],
        "top_k": top,
        "supernet": cfg.supernet,
        "dataset": cfg.dataset,
        "supernet_params": count_parameters(model),
        "supernet_val_acc": supernet_val,
        "supernet_test_acc": supernet_test,
        "num_candidates": cfg.candidates,
        "selection": "race" if cfg.race else "exhaustive",
        "scoring": setup,
        "budget": {k: getattr(cfg, k) for k in ("max_params", "max_macs", "max_latency_ms") if getattr(cfg, k)},
        "within_budget": (len(eligible) if not cfg.max_latency_ms else None) if budget_met else 0,
        "budget_met": budget_met,
        "pareto": [{k: r.get(k) for k in ("index", "val_acc", "params", "macs", "latency_ms") if k in r}
                   for r in pareto_front(full)],
        "calibration": {k: {m: v[m] for m in ("accuracy", "nll", "ece", "reliability")} for k, v in calibration.items()},
        "candidate_val_acc": {
            "candidates": len(vals),
            "mean": mean_val,
            "std": (sum((v - mean_val) ** 2 for v in vals) / len(vals)) ** 0.5,
            "min": min(vals),
            "max": max(vals),
        },
        "posterior": {
            "mode": "learned" if cfg.fixed_p is None else f"fixed:{cfg.fixed_p}",
            "mean_p": posterior.mean_p(),
            "layers": len(posterior),
            "groups": posterior.num_groups(),
            "p": posterior.probs(),
        },
        "splits": data.sizes(),
        "epochs": cfg.epochs,
        "command": command,
        "training_seconds": train_seconds,
        "device": str(device),
        "world_size": run.dist.world_size,
        "torch": torch.__version__,
    }
    if unsized:
        summary["unsized_candidates"] = [{"index": r["index"], "why": r["size_error"]} for r in unsized]
    if source is not None:
        summary["source_run"] = str(source)
    t_export = time.perf_counter()
    if main:
        # the one later stage a search calls: the selected network as a slim model (model.pt + model.json)
        from pgnas.export.from_run import export_run

        info = export_run(run_dir, top[0]["index"], model=model, posterior=posterior, config=cfg, data=data, force=True,
                          on_error="warn", selected=True)
        if info is not None:
            summary["export"] = {k: info[k] for k in ("model", "params", "macs", "supernet_macs", "removed_layers")}
            summary["supernet_macs"] = info["supernet_macs"]
    timings["export"] = time.perf_counter() - t_export
    total = time.perf_counter() - t_start
    summary["seconds"] = {**{k: round(v, 3) for k, v in timings.items()},
                          "other": round(max(0.0, total - sum(timings.values())), 3), "total": round(total, 3)}
    if main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    barrier(run.dist)
    return SearchResult(run_dir, summary, model, posterior, best_masks, records)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _index_list(indices: list[int], most: int = 8) -> str:
    shown = ", ".join(str(i) for i in indices[:most])
    return shown + (f" and {len(indices) - most} more" if len(indices) > most else "")


def _warn(msg: str) -> None:
    """A warning on stderr, shown with --quiet too (it changes what the run's results mean)."""
    print(f"pgnas: warning: {msg}", file=sys.stderr)


def _log(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)


def _truncate_metrics(path: Path, epochs_done: int) -> None:
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
