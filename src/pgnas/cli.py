"""The ``pgnas`` command line: a thin layer over the Python API.

Every problem a user can fix ends as one line on stderr and exit status 2; nothing is
overwritten unless ``--force`` says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Sequence

from pgnas.config import SearchConfig
from pgnas.errors import PgnasError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, with the closest flag or command for a typo
        from pgnas.errors import closest, did_you_mean

        if message.startswith("unrecognized arguments:"):
            commands = {name: p for a in self._actions if isinstance(a, argparse._SubParsersAction) for name, p in a.choices.items()}
            owners: dict[str, list[str]] = {}  # flag -> the commands that have it
            for name, p in commands.items():
                for a in p._actions:
                    for o in a.option_strings:
                        owners.setdefault(o, []).append(name)
            typos, elsewhere = [], []
            for word in message.split(":", 1)[1].split():
                flag = word.split("=")[0]
                if not flag.startswith("--"):
                    continue
                if flag in owners:  # a real flag, of another command
                    elsewhere.append(f"{flag} is a flag of pgnas {' / pgnas '.join(owners[flag])}")
                elif (match := closest(flag, owners)):
                    typos.append(f"{word} -> {match}?")
            hints = (["did you mean " + ", ".join(typos)] if typos else []) + elsewhere
            if hints:
                message += " (" + "; ".join(hints) + ")"
        elif "invalid choice" in message:
            import re

            m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
            if m:
                options = [o.strip(" '") for o in m.group(2).split(",")]
                message += did_you_mean(m.group(1), options)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _field_type(f: dataclasses.Field):
    from pgnas.config import COUNT_FIELDS, parse_count

    if f.name in COUNT_FIELDS:
        def count(v: str) -> float:
            try:
                return parse_count(v, "--" + f.name.replace("_", "-"))
            except PgnasError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        count.__name__ = "count"
        return count
    t = str(f.type)
    if t.startswith("bool"):
        return "bool"
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


def _flag_help(f: dataclasses.Field) -> str:
    """A setting's meaning (config.FIELD_HELP) and its default."""
    from pgnas.config import FIELD_HELP

    text = FIELD_HELP.get(f.name, "")
    if "(default" in text:
        return text
    default = f.default
    shown = "none" if default is None else ("on" if default is True else "off" if default is False else default)
    return f"{text} (default: {shown})"


SAMPLE_KEYS = ("top_k", "eval_tile", "eval_path", "eval_batch_size", "race", "race_delta", "bn_recalibrate", "device", "threads",
               "max_params", "max_macs", "max_latency_ms")
TRAIN_KEYS = (
    "supernet", "dataset", "data_dir", "download", "epochs", "batch_size", "lr", "lr_schedule", "momentum", "grad_clip",
    "weight_decay", "val_size", "split_seed", "train_subset", "crop_pad", "flip", "cutout", "autoaugment", "data_cache",
    "skip_bad", "image_size", "eval_batch_size", "seed", "device", "compile", "checkpoint_minutes", "threads", "out",
)


def _add_config_flags(p: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    for f in dataclasses.fields(SearchConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = _field_type(f)
        if typ == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=_flag_help(f))
        else:
            p.add_argument(flag, dest=f.name, type=typ, default=None, metavar=f.name.upper(), help=_flag_help(f))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pgnas", description="Posterior-guided neural architecture search (PGNAS).")
    parser.add_argument("--version", action="version", version=f"pgnas {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("search", help="train the posterior, sample candidates, select the best")
    s.add_argument("--preset", help="a named paper recipe (see `pgnas presets`); --config and flags override it")
    s.add_argument("--config", help="TOML file of settings (overrides --preset; flags override it)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--force", action="store_true", help="replace the pgnas files of an existing results folder")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(s)

    sm = sub.add_parser("sample", help="draw and rank (more) candidates from a trained posterior")
    sm.add_argument("run_dir", metavar="RUN_DIR", help="results folder of a finished search")
    sm.add_argument("--candidates", type=int, required=True, help="number of candidates to draw and rank (required; no default)")
    sm.add_argument("--out", help="results folder (default: RUN_DIR/sample-<C>)")
    sm.add_argument("--seed", type=int, default=None, help="candidate seed (default: the search's, so candidate i is the same)")
    _add_config_flags(sm, SAMPLE_KEYS)
    sm.add_argument("--force", action="store_true", help="replace an existing output folder")
    sm.add_argument("--resume", action="store_true", help="continue an interrupted sample in --out from its scored candidates")
    sm.add_argument("--quiet", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="train an exported model further (or from scratch), or any super-network plainly")
    t.add_argument("model_file", metavar="MODEL_FILE", nargs="?", help="an exported model (.pt); without it --supernet is trained")
    t.add_argument("--reinit", action="store_true", help="train MODEL_FILE's architecture from scratch")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--force", action="store_true", help="replace the pgnas files of an existing results folder")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    _add_config_flags(t, TRAIN_KEYS)

    rp = sub.add_parser("report", help="plots and a Markdown/HTML summary of finished runs")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="results folders (e.g. a guided and a random run)")
    rp.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report for one run, ./report otherwise)")
    rp.add_argument("--force", action="store_true", help="replace an existing report")

    n = sub.add_parser("supernets", help="list the built-in super-networks")
    n.add_argument("--json", action="store_true", help="machine-readable output")

    e = sub.add_parser("export", help="write a candidate of a run as a slim, standalone model")
    e.add_argument("run_dir", metavar="RUN_DIR", help="results folder of a search")
    e.add_argument("--candidate", default="best", help="'best' (the selected candidate) or a candidate index")
    e.add_argument("--format", dest="fmt", choices=("pt", "torchscript", "onnx"), default="pt", help="model file format (default: pt)")
    e.add_argument("--out", help="model file (default: RUN_DIR/model.pt, or model-candidateN.pt); the JSON description goes beside it")
    e.add_argument("--force", action="store_true", help="overwrite existing output files")
    e.add_argument("--allow-unfinished", action="store_true", help="export from a run whose training has not finished")
    _add_config_flags(e, ("max_params", "max_macs", "max_latency_ms"))
    e.add_argument("--ensemble", type=int, default=0, metavar="K", help="one model averaging K members' softmax outputs (default: 0, a single network)")
    e.add_argument("--ensemble-from", choices=("top", "posterior"), default="top",
                   help="ensemble members: the top K candidates on validation, or K fresh posterior draws (default: top)")
    e.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("predict", help="top-5 classes of image files with an exported model")
    p.add_argument("model_file", metavar="MODEL_FILE")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top", type=int, default=5, help="classes to show per image (default: 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    v = sub.add_parser("evaluate", help="test accuracy of an exported model")
    v.add_argument("model_file", metavar="MODEL_FILE")
    v.add_argument("--dataset", default=None, help="data set name (default: the one the model file records)")
    v.add_argument("--data-dir", help="folder holding the data set's files")
    v.add_argument("--json", action="store_true", help="machine-readable output")

    d = sub.add_parser("data", help="load a data set (decoding and caching it) and say what it holds")
    d.add_argument("name", metavar="NAME", help="digits, cifar10, cifar100, imagefolder or imagenet")
    d.add_argument("--data-dir", help="folder (or .tar.gz for imagefolder) holding the data set's files")
    d.add_argument("--data-cache", help="decoded-data cache folder (default: $PGNAS_CACHE or ~/.cache/pgnas)")
    d.add_argument("--download", action="store_true", help="download a missing cifar10/cifar100 archive (md5-checked)")
    d.add_argument("--val-size", type=float, help="held-out validation split: a fraction (<1) or a count")
    d.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")
    d.add_argument("--image-size", type=int, help="resize ImageFolder images to this side (imagenet: crop size)")
    d.add_argument("--skip-bad", action="store_true", help="skip and count unreadable or odd-sized images")
    d.add_argument("--json", action="store_true", help="machine-readable output")

    pr = sub.add_parser("presets", help="list the named training recipes of the paper (--preset NAME)")
    pr.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _version() -> str:
    from pgnas import __version__

    return __version__


def cmd_search(args: argparse.Namespace) -> int:
    import pgnas
    from pgnas.report import format_summary
    from pgnas.search.run import resume_config

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig) if getattr(args, f.name) is not None}
    if args.resume:
        if not args.out:
            raise PgnasError("--resume needs --out RUN_DIR (the results folder to continue)")
        if args.config or args.preset:
            raise PgnasError("--resume uses the run's saved config.toml; do not pass --config or --preset")
        cfg = resume_config(args.out, flags)
    else:
        # precedence: defaults < preset < config file (only the settings it names) < flags
        base = {}
        if args.preset:
            from pgnas.presets import preset_settings

            base.update(preset_settings(args.preset))
        if args.config:
            base.update(_config_file_settings(args.config))
        base.update(flags)
        cfg = SearchConfig.from_dict({**base, **_threads_for(args)})
        _warn_gpu_preset(args.preset, cfg)
    result = pgnas.search(cfg, resume=args.resume, force=args.force, progress=not args.quiet)
    if _rank() == 0:
        print(format_summary(result.summary, str(result.run_dir)))
    return 0


def _threads_for(args: argparse.Namespace) -> dict[str, int]:
    """``threads`` for a command started without ``--threads`` (and without $OMP_NUM_THREADS, which
    torchrun sets): the cores other processes leave free now, said in one line when that is fewer
    than the usable cores. Recorded in config.toml, so ``--resume`` continues with the same."""
    import os

    from pgnas.search.run import auto_threads

    if getattr(args, "threads", None) is not None or os.environ.get("OMP_NUM_THREADS"):
        return {}
    threads, usable, load = auto_threads()
    if threads < usable and _rank() == 0:  # said when the command ends: an input error stays one line
        _NOTES.append(f"pgnas: the machine was busy when this started (other processes kept {min(load, usable):.1f} of {usable} cores busy): it used {threads} "
                      f"thread{'s' if threads > 1 else ''} (--threads N sets it)")
    return {"threads": threads}


_NOTES: list[str] = []  # lines for stderr once a command has finished


def _warn_gpu_preset(preset: str | None, cfg: SearchConfig) -> None:
    """A preset sized for GPUs started on a CPU says so before it starts (the projection after 20
    steps then says how long it would take)."""
    from pgnas.presets import HARDWARE
    from pgnas.search.run import resolve_device

    if preset and "GPU" in HARDWARE.get(preset, "") and resolve_device(cfg.device).type == "cpu":
        print(f"pgnas search: warning: preset {preset} needs {HARDWARE[preset]}; this machine has no GPU, so it will take "
              f"very long (the projected time follows after 20 steps; Ctrl-C stops with a checkpoint)", file=sys.stderr)


def cmd_sample(args: argparse.Namespace) -> int:
    from pgnas.report import format_summary
    from pgnas.workflow import sample

    keys = SAMPLE_KEYS
    threads = {} if args.resume else _threads_for(args)
    result = sample(
        args.run_dir, candidates=args.candidates, out=args.out, seed=args.seed, force=args.force, resume=args.resume,
        progress=not args.quiet, **{**{k: getattr(args, k) for k in keys}, **threads},
    )
    if result.summary.get("world_size", 1) == 1 or _rank() == 0:
        print(format_summary(result.summary, str(result.run_dir)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pgnas.retrain import train

    flags = {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k) is not None}
    if args.model_file and "supernet" in flags:
        raise PgnasError("give either MODEL_FILE or --supernet, not both")
    if args.resume:
        if not args.out:
            raise PgnasError("--resume needs --out RUN_DIR (the results folder to continue)")
        res = train(SearchConfig(out=args.out, **{k: v for k, v in flags.items() if k in ("device", "checkpoint_minutes", "data_cache")}),
                    resume=True, progress=not args.quiet)
    else:
        res = train({**flags, **_threads_for(args)}, model_file=args.model_file, reinit=args.reinit, force=args.force,
                    progress=not args.quiet)
    if _rank() == 0:
        s = res.summary
        print(f"pgnas train: {s['network']} on {s['dataset']}, {s['epochs']} epochs: val {100 * s['val_acc']:.2f}%, "
              f"test {100 * s['test_acc']:.2f}%, {s['params']:,} params")
        print(f"model: {s['export']['model']}")
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pgnas.report import write_report

    out = args.out or (str(Path(args.run_dirs[0]) / "report") if len(args.run_dirs) == 1 else "report")
    res = write_report(args.run_dirs, out, force=args.force)
    print(f"report: {Path(res['out']) / 'report.md'} and report.html, {len(res['figures'])} figures")
    return 0


def _config_file_settings(path: str) -> dict[str, Any]:
    """The settings a TOML file names (checked and coerced), and only those."""
    import tomllib
    from pathlib import Path

    cfg = SearchConfig.from_toml(path)  # first: a bad file gets its one-line error here (a named preset is applied)
    named = tomllib.loads(Path(path).read_text())
    if "preset" in named:  # the preset's settings count as named by the file
        from pgnas.presets import preset_settings

        named = {**preset_settings(str(named.pop("preset"))), **named}
    return {k: getattr(cfg, k) for k in named}


def supernet_sizes(spec) -> dict[str, int]:
    """A super-network's params, MACs at its native input size (3 channels; 1000 classes at 224,
    10 at 32), instrumented layers and p groups, measured by building it."""
    from pgnas.posterior import count_parameters, instrument
    from pgnas.profile import count_macs

    model = spec.build(num_classes=1000 if spec.input_size >= 224 else 10, in_channels=3)
    params = count_parameters(model)
    macs = count_macs(model, (3, spec.input_size, spec.input_size))
    post = instrument(model, groups=spec.groups(model) if spec.groups else None,
                      exclude=spec.exclude(model) if spec.exclude else ())
    return {"params": params, "macs": macs, "layers": len(post), "groups": post.num_groups()}


def supernet_rows(measure: bool = False) -> list[dict[str, Any]]:
    """Every listed super-network with its sizes (:func:`supernet_sizes`): the stored ones of the
    built-ins (``supernets.listed_sizes``) unless ``measure``; a user's registered one is measured."""
    from pgnas.supernets import list_supernets
    from pgnas.supernets.listed_sizes import LISTED_SIZES

    rows = []
    for spec in list_supernets():
        sizes = LISTED_SIZES.get(spec.name) if not measure else None
        rows.append({
            "name": spec.name, **(sizes or supernet_sizes(spec)),
            "input_size": spec.input_size, "lambda_w": spec.lambda_w, "paper_params": spec.paper_params,
            "description": spec.description,
        })
    return rows


def cmd_supernets(args: argparse.Namespace) -> int:
    rows = supernet_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        print(f"{'name':<{width}}  {'params':>9}  {'MACs':>9}  {'input':>5}  {'layers':>6}  {'groups':>6}  {'lambda_w':>8}  description")
        for r in rows:
            print(
                f"{r['name']:<{width}}  {r['params'] / 1e6:>8.2f}M  {r['macs'] / 1e9:>8.3f}G  {r['input_size']:>5}  "
                f"{r['layers']:>6}  {r['groups']:>6}  {r['lambda_w']:>8g}  {r['description']}"
            )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pgnas.export import export_run

    info = export_run(args.run_dir, args.candidate, fmt=args.fmt, out=args.out, force=args.force,
                      allow_unfinished=args.allow_unfinished, max_params=args.max_params, max_macs=args.max_macs,
                      max_latency_ms=args.max_latency_ms, ensemble=args.ensemble, ensemble_from=args.ensemble_from)
    if args.json:
        print(json.dumps(info, indent=2))
    elif info.get("ensemble"):
        print(f"ensemble of candidates {info['ensemble']}: {info['model']} (+ {info['description']})")
        if info.get("members_val_acc"):
            print("  members' validation accuracy: " + ", ".join(f"{100 * v:.2f}%" for v in info["members_val_acc"]))
        budget = " (a budget bounds these sums)" if any(getattr(args, k) for k in ("max_params", "max_macs", "max_latency_ms")) else ""
        print(f"  params {info['params']:,}, MACs {info['macs']:,} in all{budget} (super-network {info['supernet_params']:,} / "
              f"{info['supernet_macs']:,})")
    elif info.get("already"):
        print(f"{info['model']} is already the export of the selected candidate {info['candidate']} (the search wrote it, "
              f"with {info['description']}); for another file pass --out, --format or --candidate, or --force to write it again")
    else:
        val = f", validation accuracy {100 * info['val_acc']:.2f}%" if "val_acc" in info else ""
        print(f"candidate {info['candidate']}{val}: {info['model']} (+ {info['description']})")
        print(f"  params {info['params']:,} (super-network {info['supernet_params']:,}, {info['params'] / info['supernet_params']:.1%}; kept kernel slices {info['candidate_params_kept_slices']:,})")
        print(f"  MACs   {info['macs']:,} (super-network {info['supernet_macs']:,}, {info['macs'] / info['supernet_macs']:.1%})")
        print(f"  removed conv/linear layers: {info['removed_layers']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pgnas.export import predict

    if args.top < 1:
        raise PgnasError("--top must be at least 1")
    results = predict(args.model_file, args.images, top=args.top)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(r["image"] + ": " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pgnas.export import evaluate

    result = evaluate(args.model_file, args.dataset, data_dir=args.data_dir)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['dataset']} test accuracy: {result['accuracy']:.4f} ({result['correct']}/{result['images']}), "
              f"NLL {result['nll']:.4f}, ECE {result['ece']:.4f} (15 bins)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    import warnings

    from pgnas.data import describe_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = describe_dataset(
            args.name, data_dir=args.data_dir, data_cache=args.data_cache, download=args.download, val_size=args.val_size,
            split_seed=args.split_seed, image_size=args.image_size, skip_bad=args.skip_bad,
        )
    for w in caught:
        print(f"pgnas data: warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    classes = info["classes"]
    shown = ", ".join(classes[:10]) + (f", ... ({len(classes)} in all)" if len(classes) > 10 else "")
    h, w = info["image_size"]
    cache = info["cache"] or ("none (streamed from the files)" if info.get("streamed") else "none (held in memory, nothing to decode)")
    print(f"dataset      {info['dataset']}  ({info['source'] or 'embedded'})")
    print(f"splits       train {info['train']}  val {info['val']}  test {info['test']}  (split seed {info['split_seed']})")
    print(f"classes      {info['num_classes']}: {shown}")
    print(f"images       {info['channels']}x{h}x{w} uint8")
    print(f"cache        {cache}{'  (hit)' if info['cache_hit'] else ''}")
    if info["skipped"]:
        print(f"skipped      {info['skipped']} image(s), first: {info['skipped_files'][0] if info['skipped_files'] else '?'}")
    print(f"loaded in    {info['load_seconds']:.2f} s")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from pgnas.presets import HARDWARE, PRESETS

    if args.json:
        print(json.dumps({name: {**s, "needs": HARDWARE.get(name)} for name, s in PRESETS.items()}, indent=2))
        return 0
    for name, s in PRESETS.items():
        n = f"{s['n_data']:g}" if "n_data" in s else "default"
        extra = "".join(f", {k.replace('_', ' ')} {s[k]}" for k in ("image_size", "train_subset") if k in s)
        print(f"{name}: {s['supernet']} on {s['dataset']}{extra}, {s['epochs']} epochs, batch {s['batch_size']}, lr {s['lr']:g} "
              f"({s['lr_schedule']}), lambda_w {s['lambda_w']:g}, N {n}, {s['candidates']} candidates - needs {HARDWARE.get(name)}")
    return 0


COMMANDS = {
    "search": cmd_search,
    "train": cmd_train,
    "sample": cmd_sample,
    "export": cmd_export,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "supernets": cmd_supernets,
    "data": cmd_data,
    "presets": cmd_presets,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's shutdown
        return status
    except BrokenPipeError:
        # the reader went away (`pgnas ... | head`): end quietly, as a shell tool would
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _leave_process_group() -> None:
    """Under torchrun, ranks leave together: one exiting while another still talks to the store
    can fail the job after its work is done."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def _main(argv: Sequence[str] | None = None) -> int:
    from pgnas.search.signals import exit_status
    from pgnas.search.train import Stopped

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _NOTES.clear()
    try:
        status = COMMANDS[args.command](args)
        _leave_process_group()
        for note in _NOTES:
            print(note, file=sys.stderr)
        return status
    except Stopped as exc:
        print(f"pgnas {args.command}: {exc}", file=sys.stderr)
        return exit_status(exc.signum)
    except PgnasError as exc:
        print(f"pgnas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pgnas {args.command}: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
