"""Data-pipeline benchmark: CIFAR-10 from the shared JPEG archive (first decode + cache, then a
cached load) and the cost of drawing and augmenting a CIFAR batch against one training step of
the 2x32d shake-shake super-network on the same CPU. Writes benchmarks/results/data_pipeline.json.

    .venv/bin/python benchmarks/data_pipeline.py [--data-dir ../shared/data] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(REPO / ".." / "shared" / "data"))
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    ap.add_argument("--draws", type=int, default=30, help="timed batch draws (median)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_pipeline.json"))
    args = ap.parse_args()
    archive = Path(args.data_dir).resolve() / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        print(f"skipped: the shared CIFAR-10 JPEG archive is absent ({archive})", file=sys.stderr)
        return 0

    from pgnas import get_supernet, instrument
    from pgnas.data import load_dataset
    from pgnas.data.augment import AugmentSpec

    cache = Path(tempfile.mkdtemp(prefix="pgnas-bench-cache-"))
    try:
        t = time.perf_counter()
        data = load_dataset("cifar10", data_dir=str(archive.parent), data_cache=str(cache))
        first = time.perf_counter() - t
        assert not data.info["cache_hit"]
        t = time.perf_counter()
        data = load_dataset("cifar10", data_dir=str(archive.parent), data_cache=str(cache))
        cached = time.perf_counter() - t
        assert data.info["cache_hit"]
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    torch.manual_seed(0)
    bs = 128
    g = torch.Generator().manual_seed(0)
    draw = {}
    for label, spec in (("crop4_flip_cutout16", AugmentSpec(crop_pad=4, flip=True, cutout=16)),
                        ("crop4_flip_autoaugment_cutout16", AugmentSpec(crop_pad=4, flip=True, cutout=16, autoaugment=True))):
        it = iter(data.train_batches(bs, g, "cpu", spec))
        next(it)  # warm-up
        draw[label] = _median_seconds(lambda: next(it), args.draws)

    model = get_supernet("shake-shake-26-2x32d").build()
    instrument(model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = next(data.train_batches(bs, g, "cpu"))

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()

    step()  # warm-up
    step_s = _median_seconds(step, args.steps)
    result = {
        "benchmark": "data_pipeline",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "dataset": {"source": str(archive), **data.sizes()},
        "first_decode_and_cache_seconds": round(first, 3),
        "cached_load_seconds": round(cached, 3),
        "targets": {"first_decode_and_cache_seconds": 60, "cached_load_seconds": 3, "draw_to_step_ratio": 0.05},
        "batch_size": bs,
        "draw_and_augment_seconds": {k: round(v, 5) for k, v in draw.items()},
        "train_step_seconds": round(step_s, 4),
        "train_step": "shake-shake-26-2x32d instrumented, forward+backward+SGD, batch 128, 3x32x32, CPU",
        "draw_to_step_ratio": {k: round(v / step_s, 5) for k, v in draw.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
