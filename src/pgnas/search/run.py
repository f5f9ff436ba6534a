"""A run of the search stage: its resolved configuration, results folder, data and instrumented
super-network (``build_run``), before anything trains; and reopening a trained run's folder
(``open_search``, ``open_sample``). Every input error surfaces here, as one line, before any file
is written.

Under ``torchrun`` every rank runs this code; rank 0 alone writes files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgnas.config import SearchConfig
from pgnas.data import load_dataset
from pgnas.errors import PgnasError
from pgnas.posterior import Posterior, instrument
from pgnas.search.checkpoint import atomic_write_text, load_checkpoint, load_resume_checkpoint, previous_path
from pgnas.search.distributed import Dist, barrier, init_from_env
from pgnas.search.epochs import truncate_metrics
from pgnas.search.train import PosteriorTrainer
from pgnas.supernets import get_supernet

RUN_FILES = (
    "config.toml", "checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl", "candidates.jsonl", "scoring.json",
    "summary.json", "split.json", "model.pt", "model.json", "latency.json",
)

SELECTION_FILES = ("candidates.jsonl", "scoring.json", "summary.json", "model.pt", "model.json")

RESUME_MUTABLE = frozenset(
    {"candidates", "top_k", "eval_batch_size", "eval_tile", "race", "race_delta", "bn_recalibrate", "device", "out",
     "data_cache", "checkpoint_minutes", "threads", "max_params", "max_macs", "max_latency_ms", "eval_path", "logit_shift"}
)

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


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
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


def free_cores(usable: int, load: float) -> int:
    """CPU threads for a run started on ``usable`` cores while other processes keep about ``load``
    of them busy: the cores left, at least one. Oversubscribed threads (two runs of two threads on
    two cores) make a CPU epoch many times slower (measured: the quick start 701 s against 26 s);
    one thread too few costs far less."""
    return max(1, usable - int(round(max(0.0, load))))


def _cpu_times(cpus: set[int], stat: Path) -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies of each CPU in ``cpus`` from a /proc/stat-format file."""
    times = {}
    for line in stat.read_text().splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        cpu = int(name[3:])
        if cpu in cpus:
            fields = [int(x) for x in rest.split()]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
            total = sum(fields[:8])  # guest time is already inside user and nice
            times[cpu] = (total - idle, total)
    return times


def busy_cores(cpus: set[int], window: float = 0.3, stat: Path = Path("/proc/stat")) -> float | None:
    """How many of ``cpus`` other processes keep busy now: their busy share over ``window`` seconds
    (this process sleeps meanwhile), summed. None where /proc/stat is not there (not Linux).

    Unlike the 1-minute load average this sees the present: the pip install or the run that has
    just ended no longer counts."""
    try:
        before = _cpu_times(cpus, stat)
        time.sleep(window)
        after = _cpu_times(cpus, stat)
    except (OSError, ValueError, IndexError):
        return None
    busy = 0.0
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        if t1 > t0:
            busy += min(1.0, max(0.0, (b1 - b0) / (t1 - t0)))
    return busy if after else None


def auto_threads() -> tuple[int, int, float]:
    """(threads, usable cores, load): the threads :func:`free_cores` gives this process now, where
    load is the cores other processes keep busy (:func:`busy_cores`; the 1-minute load average
    where /proc/stat is missing)."""
    from pgnas.data.imagefolder import usable_cpus

    usable = usable_cpus()
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        cpus = set()
    load = busy_cores(cpus) if cpus else None
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # not on Unix
            load = 0.0
    return free_cores(usable, load), usable, load


def set_threads(cfg: SearchConfig) -> int:
    """Torch's CPU threads: ``cfg.threads`` when given; otherwise what torch has (e.g.
    $OMP_NUM_THREADS, which torchrun sets to 1 per process where it is unset), but never more than
    this process's share of the cores it may use (its affinity: SLURM, taskset), shared among
    torchrun's processes on this machine ($LOCAL_WORLD_SIZE). Oversubscribed threads can make a CPU
    epoch a hundred times slower: 2 ranks sampling 30 digits candidates on 2 cores took 56-81 s at 2
    threads each ($OMP_NUM_THREADS=2 left in the shell), 14-15 s at 1 thread each."""
    from pgnas.data.imagefolder import usable_cpus

    try:
        local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        local_ranks = 1
    n = cfg.threads or min(torch.get_num_threads(), max(1, usable_cpus() // local_ranks))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def place(cfg: SearchConfig) -> tuple[torch.device, Dist, Any, float]:
    """Where a run computes and what it reads: torch's CPU threads set, the device (under torchrun
    this rank's GPU), the process group, the data set with its splits, and the seconds loading took."""
    set_threads(cfg)
    device = resolve_device(cfg.device)
    dist = init_from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    t0 = time.perf_counter()
    data = load_run_data(cfg)
    return device, dist, data, time.perf_counter() - t0


def build_run(cfg: SearchConfig) -> Run:
    """Load the data and build the instrumented super-network (no files written). Every input the
    network cannot take is found here: the network is built and runs one batch of two examples."""
    spec = get_supernet(cfg.supernet)
    device, d, data, data_seconds = place(cfg)
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


@dataclass
class Opened:
    """A run ready to train (or trained): the run, its folder, its trainer, the checkpoint it resumes
    from (None: from scratch) and whether epochs are left."""

    run: Run
    run_dir: Path
    trainer: PosteriorTrainer
    state: dict | None
    to_train: bool


def open_search(cfg: SearchConfig, *, resume: bool, force: bool) -> Opened:
    """The results folder of a search, prepared: the configuration validated, the network built and,
    on ``resume``, its checkpoint loaded; ``config.toml`` and ``split.json`` written; with
    ``force`` the pgnas files of the folder removed first (nothing else)."""
    cfg = cfg.replace()
    cfg.validate()
    if cfg.weight_decay:
        raise PgnasError("a search takes no weight decay: the KL term's (1-p)||W||^2 replaces it (weight_decay is for pgnas train)")
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    prepare_run_dir(run_dir, resume, force)
    run = build_run(cfg.replace(out=str(run_dir)))  # all input errors surface before anything is written
    cfg = run.cfg
    ckpt_path = run_dir / "checkpoint.pt"
    if resume:
        check_resumable(run_dir, cfg)
    has_ckpt = ckpt_path.exists() or previous_path(ckpt_path).exists()
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
    if run.dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if force:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
        if resume and to_train:  # scores of other weights than the ones training will end with
            for name in SELECTION_FILES:
                (run_dir / name).unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.toml", cfg.to_toml())
        atomic_write_text(run_dir / "split.json", json.dumps({"dataset": cfg.dataset, **run.data.describe_split()}) + "\n")
        truncate_metrics(run_dir / "metrics.jsonl", trainer.epoch)
    barrier(run.dist)
    return Opened(run, run_dir, trainer, state, to_train)


def open_sample(run_dir: Path, *, candidates: int, out: str | Path | None, seed: int | None, force: bool, resume: bool,
                overrides: dict[str, Any]) -> tuple[Run, Path, dict, bool]:
    """A trained run's network and data, for more candidates in ``out`` (default ``RUN_DIR/sample-<C>``):
    the run's configuration with the settings a sample may change; BN re-estimation is the sample's own
    choice (given, or decided by its tempering), not the search's. Returns the run, the sample's
    folder, the run's checkpoint, and whether a resumed sample's own settings were restored (its
    tempering is then not decided again)."""
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
    cfg = saved.replace(candidates=candidates, out=str(out_dir), seed=saved.seed if seed is None else seed,
                        **{"bn_recalibrate": None, **changes})
    cfg.validate()
    if out_dir.exists() and any(out_dir.iterdir()) and not (force or resume):
        raise PgnasError(f"results folder {out_dir} already exists; pass --resume to continue it or --force to replace it")
    restored = resume and (out_dir / "config.toml").is_file()
    if restored:
        prev = SearchConfig.from_toml(out_dir / "config.toml")
        if prev.seed != cfg.seed:
            raise PgnasError(f"--resume: {out_dir} was sampled with seed {prev.seed}, not {cfg.seed}")
        # the sample's own tempering and BN re-estimation, as it was started (unless told otherwise)
        cfg = cfg.replace(logit_shift=prev.logit_shift, bn_recalibrate=changes.get("bn_recalibrate", prev.bn_recalibrate))
    state = load_checkpoint(ckpt_path)
    if state.get("epoch") != saved.epochs:
        raise PgnasError(f"{run_dir}: training stopped after epoch {state.get('epoch')} of {saved.epochs}; finish it with pgnas search --resume")
    run = build_run(cfg)
    try:
        run.model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise PgnasError(f"checkpoint {ckpt_path} does not fit its configuration: {str(exc).splitlines()[0]}") from None
    return run, out_dir, state, restored


def write_sample_folder(run: Run, run_dir: Path, out_dir: Path, *, resume: bool) -> None:
    """A sample's folder: its configuration and where its weights come from (rank 0)."""
    if run.dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            for name in SELECTION_FILES:
                (out_dir / name).unlink(missing_ok=True)
        atomic_write_text(out_dir / "config.toml", run.cfg.to_toml())
        atomic_write_text(out_dir / "source.json", json.dumps({"source_run": str(run_dir.resolve())}) + "\n")
    barrier(run.dist)
