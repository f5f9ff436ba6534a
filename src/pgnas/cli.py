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
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _field_type(f: dataclasses.Field):
    t = str(f.type)
    if t.startswith("bool"):
        return "bool"
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


_HELP = {
    "supernet": "super-network name (see `pgnas supernets`) or module:function",
    "dataset": "data set name (digits, ...)",
    "data_dir": "folder holding the data set's files",
    "epochs": "posterior training epochs",
    "candidates": "number of candidates to sample and rank",
    "posterior": "'learned' (PGNAS) or 'fixed:P' (random baseline with drop rate P)",
    "lambda_w": "weight prior l^2 (default: the super-network's, paper section 3)",
    "n_data": "N of the KL term (default: 10 x training-set size)",
    "val_size": "held-out validation split: a fraction (<1) or a count",
    "out": "results folder (default: runs/<supernet>-<dataset>-<time>)",
    "device": "auto, cpu or cuda[:N]",
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(SearchConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = _field_type(f)
        if typ == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=_HELP.get(f.name))
        else:
            p.add_argument(flag, dest=f.name, type=typ, default=None, metavar=f.name.upper(), help=_HELP.get(f.name))


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

    n = sub.add_parser("supernets", help="list the built-in super-networks")
    n.add_argument("--json", action="store_true", help="machine-readable output")

    pr = sub.add_parser("presets", help="list the named training recipes of the paper (--preset NAME)")
    pr.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _version() -> str:
    from pgnas import __version__

    return __version__


def cmd_search(args: argparse.Namespace) -> int:
    import pgnas
    from pgnas.report import format_summary
    from pgnas.search.pipeline import resume_config

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
        cfg = SearchConfig.from_dict(base)
    result = pgnas.search(cfg, resume=args.resume, force=args.force, progress=not args.quiet)
    print(format_summary(result.summary, str(result.run_dir)))
    return 0


def _config_file_settings(path: str) -> dict[str, Any]:
    """The settings a TOML file names (checked and coerced), and only those."""
    import tomllib
    from pathlib import Path

    cfg = SearchConfig.from_toml(path)
    names = tomllib.loads(Path(path).read_text())
    return {k: getattr(cfg, k) for k in names}


def supernet_rows() -> list[dict[str, Any]]:
    """Every listed built-in super-network: params, MACs at its native input size (3 channels;
    1000 classes at 224, 10 at 32), instrumented layers and p groups."""
    from pgnas.posterior import count_parameters, instrument
    from pgnas.profile import count_macs
    from pgnas.supernets import list_supernets

    rows = []
    for spec in list_supernets():
        model = spec.build(num_classes=1000 if spec.input_size >= 224 else 10, in_channels=3)
        params = count_parameters(model)
        macs = count_macs(model, (3, spec.input_size, spec.input_size))
        post = instrument(
            model,
            groups=spec.groups(model) if spec.groups else None,
            exclude=spec.exclude(model) if spec.exclude else (),
        )
        rows.append({
            "name": spec.name, "params": params, "macs": macs, "layers": len(post), "groups": post.num_groups(),
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


def cmd_presets(args: argparse.Namespace) -> int:
    from pgnas.presets import HARDWARE, PRESETS

    if args.json:
        print(json.dumps({name: {**s, "needs": HARDWARE.get(name)} for name, s in PRESETS.items()}, indent=2))
        return 0
    for name, s in PRESETS.items():
        print(f"{name}: {s['supernet']} on {s['dataset']}, {s['epochs']} epochs, batch {s['batch_size']}, lr {s['lr']:g} "
              f"({s['lr_schedule']}), lambda_w {s['lambda_w']:g}, N {s['n_data']:g}, {s['candidates']} candidates - needs {HARDWARE.get(name)}")
    return 0


COMMANDS = {"search": cmd_search, "supernets": cmd_supernets, "presets": cmd_presets}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except PgnasError as exc:
        print(f"pgnas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pgnas {args.command}: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
