"""CPU inference time of an exported slim model against its super-network in candidate mode.

The super-network runs the candidate as pgnas evaluates it (every layer at full width, inputs
multiplied by the 0/1 masks, removed branches skipped); the slim model is what `pgnas export`
writes. Reported per image, for batch 1 and batch 128, with the MACs ratio beside the time ratio
(target: time ratio within 1.3x of the MACs ratio).

    .venv/bin/python benchmarks/export_speed.py [--supernet shake-shake-26-2x32d] [--p 0.4]
        [--threads 1] [--repeats 5] [--run RUN_DIR] [--out benchmarks/results/export_speed.json]

Without --run the posterior is fixed at p (every input channel dropped with probability p) and
candidate 0 of it is used; with --run, the selected candidate of a search's results folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import pgnas  # noqa: E402
from pgnas.slim import slim_model  # noqa: E402
from pgnas.slim.latency import cpu_name  # noqa: E402
from pgnas.supernets import get_supernet  # noqa: E402


def _time_all(fns, x: torch.Tensor, repeats: int) -> list[float]:
    """Median seconds of one call of each fn(x), measured in turn (so a shared CPU's changing
    load hits all alike), after warm-up calls."""
    times = [[] for _ in fns]
    with torch.no_grad():
        for fn in fns:
            fn(x)
            fn(x)
        for _ in range(repeats):
            for fn, ts in zip(fns, times):
                t = time.perf_counter()
                fn(x)
                ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", default="shake-shake-26-2x32d")
    ap.add_argument("--p", type=float, default=0.4, help="fixed drop probability of the posterior (without --run)")
    ap.add_argument("--candidate", type=int, default=0)
    ap.add_argument("--run", help="use the selected candidate of this results folder instead")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export_speed.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.run:
        from pgnas.export import rebuild_supernet

        cfg, model, post, meta = rebuild_supernet(Path(args.run))
        index = json.loads((Path(args.run) / "summary.json").read_text())["selected"]["index"]
        masks = post.sample_candidate(index, cfg.seed)
        shape = tuple(meta["input_shape"])
        source = {"run": args.run, "supernet": cfg.supernet, "candidate": index}
    else:
        spec = get_supernet(args.supernet)
        model = spec.build(num_classes=10, in_channels=3)
        post = pgnas.instrument(model, fixed_p=args.p)
        masks = post.sample_candidate(args.candidate, seed=0)
        shape = (3, spec.input_size, spec.input_size)
        source = {"supernet": args.supernet, "posterior": f"fixed p={args.p}", "candidate": args.candidate}
    model.eval()
    t0 = time.perf_counter()
    res = slim_model(model, masks, shape)
    slim_seconds = time.perf_counter() - t0
    post.set_candidate(masks)
    slim = res.model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.freeze(torch.jit.script(slim))  # what --format torchscript gives, frozen

    rows = []
    load_before = os.getloadavg()
    for b in (int(v) for v in args.batches.split(",")):
        x = torch.randn((b,) + shape)
        t_super, t_slim, t_script = _time_all([model, slim, scripted], x, args.repeats * (10 if b == 1 else 1))
        time_ratio = t_slim / t_super
        macs_ratio = res.macs / res.candidate_mode_macs
        rows.append({
            "batch": b,
            "supernet_candidate_mode_ms_per_image": 1e3 * t_super / b,
            "slim_ms_per_image": 1e3 * t_slim / b,
            "slim_torchscript_ms_per_image": 1e3 * t_script / b,
            "torchscript_time_ratio": t_script / t_super,
            "time_ratio": time_ratio,
            "macs_ratio": macs_ratio,
            "time_ratio_over_macs_ratio": time_ratio / macs_ratio,
            "within_1_3x": time_ratio <= 1.3 * macs_ratio,
        })
        print(f"batch {b:>4}: super {1e3 * t_super / b:8.3f} ms/img  slim {1e3 * t_slim / b:8.3f} ms/img  "
              f"time ratio {time_ratio:.3f}  MACs ratio {macs_ratio:.3f}  ({time_ratio / macs_ratio:.2f}x)  "
              f"torchscript slim {1e3 * t_script / b:8.3f} ms/img (ratio {t_script / t_super:.3f})")
    load_after = os.getloadavg()
    out = {
        "benchmark": "export_speed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "torch": torch.__version__,
        **source,
        "input_shape": list(shape),
        "slim_build_seconds": slim_seconds,
        "params": {"supernet": res.supernet_params, "candidate_kept_slices": res.candidate_params, "slim": res.params},
        "macs": {"supernet": res.supernet_macs, "supernet_candidate_mode": res.candidate_mode_macs, "slim": res.macs},
        "repeats": {"batch 1": args.repeats * 10, "other batches": args.repeats},
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"params {res.params:,} / {res.supernet_params:,}; MACs {res.macs:,} / candidate mode {res.candidate_mode_macs:,}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
