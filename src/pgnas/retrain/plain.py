"""After export: train a network plainly (``pgnas train``), the search -> export -> retrain path.

* ``train(cfg, model_file=MODEL.pt)`` fine-tunes an exported network (``reinit=True``: the same
  architecture from scratch);
* ``train(cfg)`` with ``cfg.supernet`` trains any built-in or bring-your-own network as it is
  (no hybrid representation, no KL term: cross-entropy and ordinary ``weight_decay``).

It is the search's training loop without a posterior (``PosteriorTrainer(posterior=None)``): the
same data pipeline and augmentation, learning-rate schedules, checkpoints every
``checkpoint_minutes``, ``--resume``, SIGTERM handling. The result is again an exported model file
(``model.pt`` + ``model.json`` in the results folder) that ``pgnas evaluate``, ``pgnas predict``,
``pgnas.load_model`` and a further ``pgnas train`` take.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgnas.config import SearchConfig
from pgnas.errors import PgnasError
from pgnas.export.formats import graph_spec, load_model, model_bytes
from pgnas.export.from_run import DESCRIPTION_FORMAT, data_meta
from pgnas.profile import count_macs
from pgnas.search.checkpoint import atomic_write_bytes, atomic_write_text, load_resume_checkpoint, previous_path
from pgnas.search.console import log
from pgnas.search.distributed import barrier
from pgnas.search.epochs import run_training, truncate_metrics
from pgnas.search.run import augment_for, check_resumable, place, prepare_run_dir, probe_network
from pgnas.search.scoring import accuracy
from pgnas.search.signals import StopRequests
from pgnas.search.train import PosteriorTrainer
from pgnas.supernets import get_supernet

TRAIN_FILES = ("config.toml", "checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl", "summary.json", "split.json",
               "model.pt", "model.json")


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]
    model: nn.Module  # the trained network (takes normalised input)


def _reinit(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()


def _network(cfg: SearchConfig, data, model_file: str | Path | None, reinit: bool) -> tuple[nn.Module, str, float, Any]:
    """The network to train, a name for it, its aux-head weight and its spec (None for a file)."""
    if model_file is not None:
        exported = load_model(model_file)
        if exported.format != "pt":
            raise PgnasError(f"{model_file} is a {exported.format} file; pgnas train takes a .pt export (TorchScript and ONNX are for serving)")
        want = (data.in_channels, *data.image_size)
        if tuple(exported.input_shape) != want:
            raise PgnasError(f"{model_file} reads images of shape {tuple(exported.input_shape)}, data set {cfg.dataset!r} has {want}")
        if len(exported.classes) != data.num_classes:
            raise PgnasError(f"{model_file} predicts {len(exported.classes)} classes, data set {cfg.dataset!r} has {data.num_classes}")
        net = exported.net
        if reinit:
            _reinit(net)
        return net, Path(model_file).name, 0.0, None
    spec = get_supernet(cfg.supernet)
    torch.manual_seed(cfg.seed)
    net = spec.build(num_classes=data.num_classes, in_channels=data.in_channels)
    return net, cfg.supernet, spec.aux_weight, spec


def model_data(model_file: str | Path) -> dict[str, Any]:
    """The data set an exported model was trained on, as settings (``dataset``, and ``data_dir`` and
    ``image_size`` where it records them): what ``pgnas train MODEL`` trains on unless told."""
    meta = load_model(model_file).meta
    return {k: meta[k] for k in ("dataset", "data_dir", "image_size") if meta.get(k) is not None}


def train(
    config: SearchConfig | dict,
    *,
    model_file: str | Path | None = None,
    reinit: bool = False,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a network plainly and export it (see the module's description)."""
    t_start = time.perf_counter()
    cfg, run_dir, model_file, reinit = _configure(config, model_file, reinit, resume, force)
    prepared = _prepare(cfg, run_dir, model_file, reinit, resume, force)
    cfg, net, data, dist, device = prepared.cfg, prepared.net, prepared.data, prepared.dist, prepared.device
    progress = progress and dist.is_main
    with StopRequests() as stop:
        t_train = time.perf_counter()
        train_seconds = run_training(prepared.trainer, cfg, run_dir, state=prepared.state, stop=stop, progress=progress,
                                     dist=dist, command="train", what=prepared.what)
        train_wall = time.perf_counter() - t_train
    t_test = time.perf_counter()
    val_acc = accuracy(net, data, "val", cfg.eval_batch(device.type), device)
    test_acc = accuracy(net, data, "test", cfg.eval_batch(device.type), device)
    test_seconds = time.perf_counter() - t_test
    t_export = time.perf_counter()
    summary: dict[str, Any] = {
        "command": "train", "network": prepared.what, "model_file": str(model_file) if model_file else None,
        "supernet": cfg.supernet, "dataset": cfg.dataset, "epochs": cfg.epochs, "weight_decay": cfg.weight_decay,
        "val_acc": val_acc, "test_acc": test_acc, "params": sum(p.numel() for p in net.parameters()), "splits": data.sizes(),
        "training_seconds": train_seconds, "device": str(device), "world_size": dist.world_size, "torch": torch.__version__,
    }
    if dist.is_main:
        summary["export"] = _export(net, cfg, data, run_dir, summary)
    seconds = {"data": prepared.data_seconds, "train": train_wall, "test": test_seconds, "export": time.perf_counter() - t_export}
    total = time.perf_counter() - t_start
    summary["seconds"] = {**{k: round(v, 3) for k, v in seconds.items()}, "other": round(max(0.0, total - sum(seconds.values())), 3),
                          "total": round(total, 3)}
    if dist.is_main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if progress:
            log(f"trained {prepared.what}: val {val_acc:.4f}, test {test_acc:.4f}; model: {run_dir / 'model.pt'}")
    barrier(dist)
    return TrainResult(run_dir, summary, net)


def _configure(config, model_file, reinit: bool, resume: bool, force: bool) -> tuple[SearchConfig, Path, Any, bool]:
    """The resolved configuration (a model file's own data set unless another is named; on resume the
    saved one), the results folder (checked), and on resume the saved model file and reinit."""
    if model_file is not None and not Path(model_file).is_file():
        raise PgnasError(f"no model file at {model_file}")
    if isinstance(config, dict):
        if model_file is not None and not resume and "dataset" not in config:  # the model's own data set
            config = {**model_data(model_file), **config}
        config = SearchConfig.from_dict(config)
    cfg = config.replace()
    cfg.validate()
    if not cfg.out:
        raise PgnasError("pgnas train needs --out DIR (the results folder)")
    run_dir = Path(cfg.out)
    prepare_run_dir(run_dir, resume, force)
    if resume:
        saved = SearchConfig.from_toml(run_dir / "config.toml")
        meta_path = run_dir / "train.json"
        origin = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        model_file = origin.get("model_file", model_file)
        reinit = origin.get("reinit", reinit)
        cfg = saved.replace(**{k: getattr(cfg, k) for k in ("device", "checkpoint_minutes", "data_cache")}, out=str(run_dir))
    return cfg, run_dir, model_file, reinit


@dataclass
class _Prepared:
    cfg: SearchConfig
    net: nn.Module
    data: Any
    trainer: PosteriorTrainer
    state: dict | None
    dist: Any
    device: torch.device
    what: str
    data_seconds: float


def _prepare(cfg: SearchConfig, run_dir: Path, model_file, reinit: bool, resume: bool, force: bool) -> _Prepared:
    """Data, the network (checked on two examples), the trainer (resumed from its checkpoint), and
    the folder's files; rank 0 writes."""
    device, dist, data, data_seconds = place(cfg)
    net, name, aux_weight, _ = _network(cfg, data, model_file, reinit)
    probe_network(net, (data.in_channels, *data.image_size), name, f"{data.num_classes} classes of {data.in_channels}x"
                  f"{data.image_size[0]}x{data.image_size[1]} images")
    cfg = cfg.replace(supernet=cfg.supernet if model_file is None else f"file:{name}", lambda_w=0.0)
    net.to(device)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
        data.to(device)
    if resume:
        check_resumable(run_dir, cfg)
    ckpt_path = run_dir / "checkpoint.pt"
    state = load_resume_checkpoint(ckpt_path) if resume and (ckpt_path.exists() or previous_path(ckpt_path).exists()) else None
    trainer = PosteriorTrainer(net, None, data, cfg, device=device, augment=augment_for(cfg, data), lambda_w=0.0, n_data=1.0,
                               aux_weight=aux_weight, dist=dist, weight_decay=cfg.weight_decay)
    if state is not None:
        trainer.load_state_dict(state)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if force:
            for f in TRAIN_FILES + ("train.json",):
                (run_dir / f).unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.toml", cfg.to_toml())
        atomic_write_text(run_dir / "train.json", json.dumps({"model_file": str(model_file) if model_file else None, "reinit": reinit}) + "\n")
        atomic_write_text(run_dir / "split.json", json.dumps({"dataset": cfg.dataset, **data.describe_split()}) + "\n")
        truncate_metrics(run_dir / "metrics.jsonl", trainer.epoch)
    barrier(dist)
    return _Prepared(cfg, net, data, trainer, state, dist, device, f"{name}" + (" (re-initialised)" if reinit else ""), data_seconds)


def _export(net: nn.Module, cfg: SearchConfig, data, run_dir: Path, summary: dict) -> dict:
    """The trained network as an exported model file (the pt format: graph + weights)."""
    import torch.fx as fx


    net = net.cpu().eval()
    shape = [data.in_channels, *data.image_size]
    if isinstance(net, fx.GraphModule):
        gm = net
    else:
        try:
            gm = fx.symbolic_trace(net)
        except Exception as exc:  # noqa: BLE001
            raise PgnasError(f"the trained network cannot be saved as a pgnas model file: torch.fx cannot trace it ({exc})") from None
    meta = {**data_meta(cfg, data), "trained_by": "pgnas train", "network": summary["network"]}
    example = torch.zeros((2, *shape))
    content = model_bytes(gm, "pt", meta, example)
    macs = count_macs(gm, tuple(shape))
    description = {"format": DESCRIPTION_FORMAT, "version": 1, **meta, "model_file": "model.pt", "model_format": "pt",
                   "params": summary["params"], "macs": macs, "val_acc": summary["val_acc"], "test_acc": summary["test_acc"],
                   "graph": graph_spec(gm)}
    atomic_write_bytes(run_dir / "model.pt", lambda f: f.write(content))
    atomic_write_bytes(run_dir / "model.json", lambda f: f.write((json.dumps(description, indent=1) + "\n").encode()))
    return {"model": str(run_dir / "model.pt"), "params": summary["params"], "macs": macs}
