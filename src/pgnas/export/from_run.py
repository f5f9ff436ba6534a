"""Export a candidate of a search run (``pgnas export``): rebuild the trained super-network from
the results folder, slim the candidate, and write the model file plus its JSON description."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from pgnas.config import SearchConfig
from pgnas.errors import PgnasError
from pgnas.export.ensemble import ensemble_graph
from pgnas.export.formats import FORMATS, SUFFIX, graph_spec, model_bytes
from pgnas.slim import SlimResult, slim_model
from pgnas.posterior import Posterior
from pgnas.search.checkpoint import atomic_write_bytes, load_checkpoint
from pgnas.search.ranking import _fmt_count, cached_latency, fully_scored, rank, read_candidates, within_budget
from pgnas.search.run import instrument_run, load_run_data
from pgnas.search.scoring import candidate_bn
from pgnas.supernets import get_supernet

DESCRIPTION_FORMAT = "pgnas-slim-description"


def default_paths(run_dir: Path, candidate: str | int, fmt: str, selected: bool) -> tuple[Path, Path]:
    stem = "model" if selected else f"model-candidate{int(candidate)}"
    path = run_dir / f"{stem}{SUFFIX[fmt]}"
    return path, description_path(path)


def description_path(model_path: Path) -> Path:
    """The JSON description beside a model file, named after the whole file name: a final ``.pt``
    becomes ``.json`` (model.pt -> model.json, m.torchscript.pt -> m.torchscript.json), any other
    name gets ``.json`` appended (m.onnx -> m.onnx.json), so no two formats share one."""
    name = model_path.name
    if name.endswith(".pt"):
        return model_path.with_name(name[:-3] + ".json")
    return model_path.with_name(name + ".json")


def weights_run(run_dir: Path) -> Path:
    """The folder whose checkpoint holds the weights: the run itself, or for a ``pgnas sample``
    folder the run it sampled from."""
    src = run_dir / "source.json"
    if (run_dir / "checkpoint.pt").is_file() or not src.is_file():
        return run_dir
    try:
        return Path(json.loads(src.read_text())["source_run"])
    except (ValueError, KeyError, TypeError):
        raise PgnasError(f"{src} is corrupt (no source_run)") from None


def _scored_in(run_dir: Path, cfg: SearchConfig, index: int) -> list[tuple[Path, SearchConfig]]:
    """The folders that scored candidate ``index`` of ``cfg.seed``: ``run_dir`` itself and its
    ``pgnas sample`` folders of the same seed, each with its configuration (its tempering and BN
    re-estimation decide which network the index is)."""
    found = [(run_dir, cfg)] if index in read_candidates(run_dir / "candidates.jsonl") else []
    for sub in sorted(run_dir.glob("*/candidates.jsonl")):
        try:
            sub_cfg = SearchConfig.from_toml(sub.parent / "config.toml")
        except PgnasError:
            continue
        if sub_cfg.seed == cfg.seed and index in read_candidates(sub):
            found.append((sub.parent, sub_cfg))
    return found


def _scoring_of(cfg: SearchConfig) -> tuple:
    """What, besides the index and seed, decides a scored candidate's network."""
    return (cfg.logit_shift, cfg.bn_recalibrate or 0, cfg.batch_size if cfg.bn_recalibrate else None)


def _resolve_candidate(run_dir: Path, candidate: str | int, cfg: SearchConfig,
                       selected: bool | None = None) -> tuple[int, bool, SearchConfig]:
    """The candidate index to export, whether it is the folder's selected one, and the configuration
    it was scored under (a tempered sample's shift and BN re-estimation rebuild that network, not the
    untempered one of the same index)."""
    if selected and isinstance(candidate, int):
        return candidate, True, cfg
    summary_path = run_dir / "summary.json"
    best = None
    if summary_path.is_file():
        try:
            best = int(json.loads(summary_path.read_text())["selected"]["index"])
        except (ValueError, KeyError, TypeError):
            raise PgnasError(f"{summary_path} is corrupt (no selected candidate)") from None
    if candidate in (None, "best"):
        if best is None:
            raise PgnasError(f"{run_dir} has no summary.json (the search did not finish); pass --candidate INDEX")
        return best, True, cfg
    try:
        index = int(candidate)
    except (TypeError, ValueError):
        raise PgnasError(f"--candidate must be 'best' or a candidate index, got {candidate!r}") from None
    if index < 0:
        raise PgnasError(f"--candidate must be 'best' or a candidate index >= 0, got {index}")
    where = _scored_in(run_dir, cfg, index)
    if not where:
        known = set(read_candidates(run_dir / "candidates.jsonl"))
        span = f"0..{max(known)}" if known else "none"
        raise PgnasError(f"candidate {index} was not scored in {run_dir} (scored: {span}); score it first with "
                         f"pgnas sample {run_dir} --candidates {index + 1}, then export it from there")
    if where[0][0] != run_dir and len({_scoring_of(c) for _, c in where}) > 1:
        folders = ", ".join(f"{d} (logit shift {c.logit_shift:.3g})" for d, c in where)
        raise PgnasError(f"candidate {index} is a different network in each folder that scored it ({folders}); "
                         f"export it from the one you mean: pgnas export FOLDER --candidate {index}")
    return index, index == best and where[0][0] == run_dir, where[0][1]


def run_config(run_dir: Path, state: dict | None = None) -> SearchConfig:
    """The saved configuration of a results folder."""
    if (Path(run_dir) / "config.toml").is_file():
        return SearchConfig.from_toml(Path(run_dir) / "config.toml")
    if state is None:
        raise PgnasError(f"{run_dir} is not a pgnas results folder (no config.toml)")
    return SearchConfig.from_dict(dict(state.get("config") or {}))


def _existing_export(run_dir: Path, index: int, fmt: str) -> dict[str, Any] | None:
    """The search's own export of the selected candidate, if it is already in the folder."""
    out_path, desc_path = default_paths(run_dir, index, fmt, True)
    if not (out_path.is_file() and desc_path.is_file()):
        return None
    try:
        desc = json.loads(desc_path.read_text())
    except ValueError:
        return None
    if desc.get("candidate") != index or desc.get("model_format", "pt") != fmt:
        return None
    return {"model": str(out_path), "description": str(desc_path), "candidate": index, "already": True,
            **{k: desc.get(k) for k in ("params", "macs", "supernet_params", "supernet_macs", "removed_layers")},
            "candidate_params_kept_slices": desc.get("candidate_params_kept_slices")}


def rebuild_supernet(run_dir: Path, data=None) -> tuple[SearchConfig, nn.Module, Posterior, dict[str, Any]]:
    """The trained, instrumented super-network of a results folder (on the CPU), with the
    metadata of its data set (class names, normalisation, input shape). ``data``: the run's data
    set if the caller has it loaded already."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PgnasError(f"no results folder at {run_dir}")
    state = load_checkpoint(run_dir / "checkpoint.pt")
    cfg = run_config(run_dir, state)
    if data is None:
        data = load_run_data(cfg)
    meta = data_meta(cfg, data)
    spec = get_supernet(cfg.supernet)
    model = spec.build(num_classes=len(meta["classes"]), in_channels=meta["input_shape"][0])
    posterior = instrument_run(cfg, spec, model)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise PgnasError(f"checkpoint weights do not fit super-network {cfg.supernet!r} ({str(exc).splitlines()[0]})") from None
    return cfg, model.eval(), posterior, meta


def data_meta(cfg: SearchConfig, data) -> dict[str, Any]:
    """Class names, normalisation and input shape of the run's data set, and where it came from
    (so ``pgnas evaluate`` and ``pgnas train MODEL`` find it without being told)."""
    return {
        "dataset": cfg.dataset,
        "data_dir": str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None,
        "image_size": cfg.image_size,
        "classes": list(data.classes),
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
        "input_shape": [data.in_channels, *data.image_size],
    }


def _check_writable(paths: list[Path], force: bool) -> None:
    for p in paths:
        if p.exists() and not force:
            raise PgnasError(f"{p} already exists; pass --force to overwrite it")
        if p.exists() and p.is_dir():
            raise PgnasError(f"{p} is a folder")
        parent = p.parent
        if not parent.is_dir():
            raise PgnasError(f"cannot write {p}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise PgnasError(f"cannot write {p}: folder {parent} is not writable")


def _outputs(out: Path, description_out: Path | None, fmt: str, force: bool) -> tuple[Path, Path]:
    """The model file and its description, checked writable before anything is computed."""
    if fmt not in FORMATS:
        raise PgnasError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    desc_out = Path(description_out) if description_out else description_path(out)
    _check_writable([out, desc_out], force)
    return out, desc_out


def _slim(model: nn.Module, masks: Mapping[str, torch.Tensor], meta: dict[str, Any], bn_statistics) -> SlimResult:
    """The slim network of ``masks``; ``bn_statistics`` (data, batches, batch size): with the
    candidate's BN statistics re-estimated first, as the search did when it scored it."""
    data, batches, batch_size = bn_statistics or (None, 0, 0)
    device = next(model.parameters()).device
    with candidate_bn(model, Posterior(model), masks, data, batches, batch_size, device):
        return slim_model(model, masks, tuple(meta["input_shape"]))


def _description_head(meta: dict[str, Any], out: Path, fmt: str) -> dict[str, Any]:
    return {"format": DESCRIPTION_FORMAT, "version": 1, **meta, "model_file": out.name, "model_format": fmt,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__}


def _write(out: Path, desc_out: Path, content: bytes, description: dict[str, Any]) -> None:
    try:
        atomic_write_bytes(out, lambda f: f.write(content))
        atomic_write_bytes(desc_out, lambda f: f.write((json.dumps(description, indent=1) + "\n").encode()))
    except OSError as exc:
        raise PgnasError(f"cannot write {out}: {exc.strerror or exc}") from None


def _example(meta: dict[str, Any]) -> torch.Tensor:
    return torch.randn((2, *meta["input_shape"]), generator=torch.Generator().manual_seed(0))


def export_candidate(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    meta: dict[str, Any],
    out: Path,
    *,
    fmt: str = "pt",
    description_out: Path | None = None,
    force: bool = False,
    bn_statistics=None,
) -> tuple[SlimResult, dict[str, Any]]:
    """Slim ``masks`` of ``model`` and write the model file ``out`` plus its JSON description.
    ``bn_statistics`` (data, batches, batch size): re-estimate the candidate's BN statistics first,
    as the search did when it scored it with ``bn_recalibrate``."""
    out, desc_out = _outputs(out, description_out, fmt, force)
    result = _slim(model, masks, meta, bn_statistics)
    description = {**_description_head(meta, out, fmt), **result.describe()}
    content = model_bytes(result.model, fmt, {k: v for k, v in description.items() if k != "layers"}, _example(meta))
    if fmt == "pt":
        description["graph"] = graph_spec(result.model)
    _write(out, desc_out, content, description)
    return result, description


def export_ensemble(
    model: nn.Module,
    members: list[tuple[int, Mapping[str, torch.Tensor]]],
    meta: dict[str, Any],
    out: Path,
    *,
    fmt: str = "pt",
    description_out: Path | None = None,
    force: bool = False,
    bn_statistics=None,
) -> dict[str, Any]:
    """Slim every member (index, masks) and write one model averaging their softmax outputs (its
    output is the log of the averaged probabilities) plus its JSON description."""
    out, desc_out = _outputs(out, description_out, fmt, force)
    slims = [_slim(model, masks, meta, bn_statistics) for _, masks in members]
    gm = ensemble_graph([r.model for r in slims])
    description = {
        **_description_head(meta, out, fmt),
        "input_shape": list(meta["input_shape"]),
        "ensemble": [{"candidate": i, "params": r.params, "macs": r.macs} for (i, _), r in zip(members, slims)],
        "params": sum(r.params for r in slims), "macs": sum(r.macs for r in slims),
        "supernet_params": slims[0].supernet_params, "supernet_macs": slims[0].supernet_macs,
        "output": "log of the members' averaged softmax probabilities",
    }
    content = model_bytes(gm, fmt, {k: v for k, v in description.items() if k != "graph"}, _example(meta))
    _write(out, desc_out, content, description)
    return description


# long: the public signature (18 settings) and its docstring take half of it; the body is 45 lines
def export_run(
    run_dir: str | Path,
    candidate: str | int = "best",
    *,
    fmt: str = "pt",
    out: str | Path | None = None,
    force: bool = False,
    model: nn.Module | None = None,
    posterior: Posterior | None = None,
    config: SearchConfig | None = None,
    data=None,
    on_error: str = "raise",
    selected: bool | None = None,
    allow_unfinished: bool = False,
    max_params: float | None = None,
    max_macs: float | None = None,
    max_latency_ms: float | None = None,
    ensemble: int = 0,
    ensemble_from: str = "top",
) -> dict[str, Any] | None:
    """Export a candidate of the run (or ``pgnas sample`` folder) in ``run_dir`` (``best``: the
    selected one; an index: any candidate scored there or in a sample of it with the same seed).

    Budgets (``max_params``, ``max_macs``, ``max_latency_ms``) re-select from the scored
    candidates without re-scoring: the best on validation within every budget. ``ensemble=K``
    writes one model averaging K members: the top K on validation (within the budgets), or with
    ``ensemble_from="posterior"`` K fresh draws of the posterior (the Monte-Carlo predictive).

    The search passes its in-memory ``model``/``posterior``/``config``/``data`` to skip reloading;
    with ``on_error="warn"`` a model that cannot be slimmed is reported on stderr, not raised. A
    run whose training did not finish is refused unless ``allow_unfinished``. Exporting the
    selected candidate to the folder's own ``model.pt`` when the search already wrote it is not an
    error: the result says ``already`` and nothing is written. Returns the paths written and the
    slim model's numbers.
    """
    budgets = {"max_params": max_params, "max_macs": max_macs, "max_latency_ms": max_latency_ms}
    budgeted = any(v is not None for v in budgets.values())
    try:
        run_dir = Path(run_dir)
        _check_request(candidate, budgeted, ensemble, ensemble_from)
        index, scored_cfg = None, None
        if model is None or config is None:
            if not run_dir.is_dir():
                raise PgnasError(f"no results folder at {run_dir}")
            config = run_config(run_dir)
            source = _trained(run_dir, allow_unfinished)
            if not budgeted and not ensemble:
                index, selected, scored_cfg = _resolve_candidate(run_dir, candidate, config, selected)
                if out is None and selected and not force and (done := _existing_export(run_dir, index, fmt)) is not None:
                    return done
            data = data if data is not None else load_run_data(config)
            _, model, posterior, dmeta = rebuild_supernet(source, data)
        else:
            dmeta = data_meta(config, data)
        posterior = posterior or Posterior(model)
        if index is None and not budgeted and not ensemble:
            index, selected, scored_cfg = _resolve_candidate(run_dir, candidate, config, selected)
        scored_cfg = scored_cfg or config  # a candidate scored in a sample folder: that folder's tempering and BN
        draw = lambda i: posterior.sample_candidate(i, scored_cfg.seed, scored_cfg.logit_shift)  # noqa: E731
        bn = (data, scored_cfg.bn_recalibrate, scored_cfg.batch_size) if scored_cfg.bn_recalibrate else None
        ranked = None
        if ensemble and budgeted and ensemble_from != "top":
            raise PgnasError("budgets choose among scored candidates: use --ensemble-from top with a budget (or sample a "
                             "tempered posterior first: pgnas sample RUN --max-... --candidates N)")
        if ensemble:
            ranked = _ensemble_members(run_dir, budgets, ensemble, model, draw, dmeta["input_shape"]) if ensemble_from == "top" else None
            return _export_ensemble(run_dir, config, ranked, ensemble, ensemble_from, model, draw, dmeta, out, fmt, force, bn)
        if budgeted:
            ranked = _within_budgets(run_dir, budgets, 1, model, draw, dmeta["input_shape"])
            index, selected = ranked[0]["index"], False
        meta = {"supernet": config.supernet, "run": str(run_dir), "candidate": index, "selected": selected,
                **({"logit_shift": scored_cfg.logit_shift} if scored_cfg.logit_shift else {}),
                **({"bn_recalibrate": scored_cfg.bn_recalibrate} if scored_cfg.bn_recalibrate else {}), **dmeta}
        if budgeted:
            meta["budget"] = {k: v for k, v in budgets.items() if v is not None}
        out_path = Path(out) if out is not None else default_paths(run_dir, index, fmt, selected)[0]
        result, _ = export_candidate(model, draw(index), meta, out_path, fmt=fmt, description_out=description_path(out_path),
                                     force=force, bn_statistics=bn)
    except Exception as exc:  # noqa: BLE001  (a finished search must not be lost to an export problem)
        if on_error != "warn":
            raise
        what = str(exc) if isinstance(exc, PgnasError) else f"{type(exc).__name__}: {exc} (a pgnas bug, please report it)"
        print(f"pgnas: warning: the selected model was not exported: {' '.join(what.split())}", file=sys.stderr)
        return None
    record = (ranked[0] if ranked else _scored_record(run_dir, config, index)) or {}
    return {"model": str(out_path), "description": str(description_path(out_path)), "candidate": index,
            **({"val_acc": record["val_acc"]} if "val_acc" in record else {}), "params": result.params,
            "macs": result.macs, "supernet_params": result.supernet_params, "supernet_macs": result.supernet_macs,
            "candidate_params_kept_slices": result.candidate_params, "removed_layers": result.removed_layers}


def _check_request(candidate, budgeted: bool, ensemble: int, ensemble_from: str) -> None:
    if ensemble_from not in ("top", "posterior"):
        raise PgnasError(f"--ensemble-from must be top or posterior, got {ensemble_from!r}")
    if ensemble < 0 or (ensemble and ensemble_from == "top" and candidate not in (None, "best")):
        raise PgnasError("--ensemble K takes the top K candidates (or K posterior draws); do not also give --candidate")
    if budgeted and candidate not in (None, "best"):
        raise PgnasError("give either --candidate or a budget (--max-params, --max-macs, --max-latency-ms), not both")


def _trained(run_dir: Path, allow_unfinished: bool) -> Path:
    """The folder whose checkpoint holds the weights, refused if its training did not finish."""
    source = weights_run(run_dir)
    state = load_checkpoint(source / "checkpoint.pt")
    trained = run_config(source).epochs
    if state.get("epoch") != trained and not allow_unfinished:
        raise PgnasError(f"{source}: training stopped after epoch {state.get('epoch')} of {trained}; finish it with "
                         f"pgnas search --out {source} --resume, or pass --allow-unfinished to export these weights")
    return source


def _scored_record(run_dir: Path, config: SearchConfig, index: int) -> dict | None:
    """Candidate ``index``'s record where it was scored (the folder, or a sample of it)."""
    for folder, _ in _scored_in(run_dir, config, index)[:1]:
        return read_candidates(folder / "candidates.jsonl").get(index)
    return None


def _ensemble_members(run_dir: Path, budgets: dict, k: int, model: nn.Module, draw, input_shape) -> list[dict]:
    """The top ``k`` candidates that fit within the budgets together (the ensemble runs every member:
    its parameters, MACs and latency are the members' sums), taken best first."""
    ranked = _within_budgets(run_dir, {key: None for key in budgets}, 1, model, draw, input_shape)
    if len(ranked) < k:
        raise PgnasError(f"--ensemble {k}: only {len(ranked)} candidates were scored in {run_dir} (pgnas sample {run_dir} "
                         f"--candidates {k} scores more)")
    latency_of = None
    if budgets["max_latency_ms"] is not None:
        latency_of = cached_latency(run_dir, model, draw, input_shape, next(model.parameters()).device)
    limits = {"params": budgets["max_params"], "macs": budgets["max_macs"], "latency_ms": budgets["max_latency_ms"]}
    costs = {r["index"]: {"params": r["params"], "macs": r["macs"], "latency_ms": latency_of(r["index"]) if latency_of else 0.0}
             for r in ranked}
    members, total = [], {"params": 0.0, "macs": 0.0, "latency_ms": 0.0}
    for r in ranked:  # best first, a candidate taken when the members still missing can fit after it
        left = [c for c in ranked if c is not r and c not in members]
        cost = costs[r["index"]]

        def fits(key: str, lim) -> bool:
            if lim is None:
                return True
            cheapest = sorted(costs[c["index"]][key] for c in left)[: k - len(members) - 1]
            return total[key] + cost[key] + sum(cheapest) <= lim

        if all(fits(key, lim) for key, lim in limits.items()):
            members.append(r)
            total = {key: total[key] + cost.get(key, 0.0) for key in total}
            if len(members) == k:
                return members
    given = ", ".join(f"max {key.replace('_', ' ')} {_fmt_count(lim)}" for key, lim in limits.items() if lim is not None)
    raise PgnasError(f"--ensemble {k}: only {len(members)} of the best candidates fit within the budget ({given}) together; "
                     f"an ensemble's cost is its members' sum")


def _within_budgets(run_dir: Path, budgets: dict, need: int, model: nn.Module, draw, input_shape) -> list[dict]:
    """The candidates scored in ``run_dir`` within every budget, best first (no re-scoring)."""
    records = list(read_candidates(run_dir / "candidates.jsonl").values())
    if not records:
        raise PgnasError(f"{run_dir} has no scored candidates (candidates.jsonl)")
    if any("macs" not in r for r in records):
        raise PgnasError(f"{run_dir}'s candidates were scored by an older pgnas without slim sizes; re-score them with "
                         f"pgnas sample {run_dir} --candidates {len(records)}")
    latency_of = None
    if budgets["max_latency_ms"] is not None:
        latency_of = cached_latency(run_dir, model, draw, input_shape, next(model.parameters()).device)
    return within_budget(fully_scored(rank(records)), **budgets, latency_of=latency_of, need=need)


def _export_ensemble(run_dir: Path, config: SearchConfig, ranked, k: int, ensemble_from: str, model: nn.Module, draw,
                     dmeta: dict, out, fmt: str, force: bool, bn) -> dict[str, Any]:
    if ensemble_from == "top":
        members = [r["index"] for r in ranked]
    else:  # fresh draws: candidate indices no search of this seed has used
        members = list(range(config.candidates, config.candidates + k))
    out_path = Path(out) if out is not None else run_dir / f"model-ensemble{k}-{ensemble_from}{SUFFIX[fmt]}"
    meta = {"supernet": config.supernet, "run": str(run_dir), "candidates": members, "ensemble_from": ensemble_from, **dmeta}
    desc = export_ensemble(model, [(i, draw(i)) for i in members], meta, out_path, fmt=fmt, force=force, bn_statistics=bn)
    return {"model": str(out_path), "description": str(description_path(out_path)), "ensemble": members,
            **({"members_val_acc": [r["val_acc"] for r in ranked]} if ranked else {}), "params": desc["params"],
            "macs": desc["macs"], "supernet_params": desc["supernet_params"], "supernet_macs": desc["supernet_macs"]}
