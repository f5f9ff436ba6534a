"""GPU check: what the CUDA path of pgnas costs and delivers, on SupNet-M (shake-shake 26 2x96d)
with CIFAR-shaped synthetic data, in about 3 minutes of one H100/H200.

Every stage runs under its own time limit and try/except: an error is recorded (its text) and the
next stage runs; the JSON is written before the first stage (device, torch, CUDA) and after every
stage, so a timeout keeps what was measured. Stages:

* ``pgnas_step``: the pgnas trainer (hybrid representation + KL, bf16 autocast, channels_last,
  data resident on the GPU and augmented there): seconds per step, images/s, peak memory;
* ``same_loop_plain``: the same trainer loop on the same network without the hybrid
  representation or the KL term (``posterior=None``): ``pgnas_vs_same_loop`` = pgnas step time /
  plain step time is the true cost of the method (target <= 1.10);
* ``plain_fp32_dataloader``: a plain fp32 PyTorch loop with per-image DataLoader augmentation on
  the CPU, as the paper's code trained: ``pgnas_vs_plain`` = pgnas images/s / its images/s;
* ``candidates``: candidates/s on 5,000 validation images: exact (tiled, bf16), one by one, raced
  (paired racing), and how often tiled and one-by-one bf16 predictions agree, and
  bf16 with fp32; seconds per candidate against the paper's 40 s on a P40;
* ``compiled``: the pgnas step under torch.compile: compile seconds, images/s, graphs compiled;
* ``imagenet_loader``: images/s the streamed ImageNet reader alone delivers (a synthetic tree of
  JPEGs at ImageNet sizes, decoded and cropped by the default number of workers).

Projections use 45,000 training images per epoch (CIFAR-10 after the 5,000 validation split).

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out OUT/gpu_check.json
    PYTHONPATH=src python3 benchmarks/gpu_check.py --cpu-smoke --out /tmp/x.json   # the script itself, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import pgnas
from pgnas.config import SearchConfig
from pgnas.data.augment import AugmentSpec
from pgnas.data.tensor_data import TensorSplits
from pgnas.search.scorer import CandidateScorer
from pgnas.search.scoring import correct_matrix
from pgnas.search.train import PosteriorTrainer

TRAIN_IMAGES = 45_000


class StageTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise StageTimeout()


class Check:
    def __init__(self, out: Path, smoke: bool):
        self.out, self.smoke = out, smoke
        self.res: dict = {}
        self.dev = torch.device("cpu" if smoke else "cuda")

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.res, indent=2) + "\n")
        os.replace(tmp, self.out)

    def stage(self, name: str, fn, limit_s: int) -> None:
        t0 = time.perf_counter()
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(limit_s)
        try:
            self.res[name] = {**fn(), "stage_seconds": round(time.perf_counter() - t0, 2)}
        except StageTimeout:
            self.res[name] = {"error": f"stopped after its {limit_s} s limit", "stage_seconds": round(time.perf_counter() - t0, 2)}
        except Exception as exc:  # noqa: BLE001 - recorded, and the next stage runs
            self.res[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000], "where": traceback.format_exc()[-2000:],
                              "stage_seconds": round(time.perf_counter() - t0, 2)}
        finally:
            signal.alarm(0)
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()
        print(f"[gpu_check] {name}: {json.dumps(self.res[name])[:400]}", flush=True)
        self.save()


def synthetic_cifar(n_train: int, n_val: int, device) -> TensorSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_val, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n_train + n_val,), generator=g)
    return TensorSplits("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], x[n_train:], y[n_train:],
                        [str(i) for i in range(10)], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26),
                        AugmentSpec(crop_pad=4, flip=True, cutout=16)).to(device)


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(dev) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None


def train_loop(net: str, dev, steps: int, batch: int, *, hybrid: bool, compile_: bool = False) -> dict:
    """The pgnas trainer loop, timed over ``steps`` steps after a warm-up (compilation included
    in the warm-up, reported apart)."""
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = 3
    data = synthetic_cifar(batch * (steps + warm), 10, dev)
    torch.manual_seed(0)
    model = pgnas.get_supernet(net).build()
    post = pgnas.instrument(model) if hybrid else None
    model.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    cfg = SearchConfig(supernet=net, epochs=1, batch_size=batch, lr=0.01, compile=compile_)
    tr = PosteriorTrainer(model, post, data, cfg, device=dev, augment=data.augment, lambda_w=50.0, n_data=5e5)
    tr.net.train()
    batches = data.train_batches(batch, torch.Generator().manual_seed(0), dev, data.augment)
    t0 = time.perf_counter()
    for _ in range(warm):
        tr.train_step(*next(batches))
    sync(dev)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step(*next(batches))
    sync(dev)
    step_s = (time.perf_counter() - t0) / steps
    out = {"seconds_per_step": step_s, "images_per_s": batch / step_s, "warmup_seconds": warm_s, "peak_memory_gib": peak_gib(dev),
           "finite": bool(torch.isfinite(tr._sums).all())}
    if hybrid:
        out["projected_gpu_days_1800_epochs"] = 1800 * TRAIN_IMAGES / out["images_per_s"] / 86_400
    return out


class PerImageAug(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = self.x[i].float().div(255)
        img = F.pad(img, (4, 4, 4, 4))
        oy, ox = torch.randint(0, 9, (2,)).tolist()
        img = img[:, oy : oy + 32, ox : ox + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        cy, cx = torch.randint(0, 32, (2,)).tolist()
        img[:, max(0, cy - 8) : cy + 8, max(0, cx - 8) : cx + 8] = 0
        return img, self.y[i]


def plain_fp32(net: str, dev, steps: int, batch: int, workers: int) -> dict:
    data = synthetic_cifar(batch * (steps + 5), 10, "cpu")
    loader = torch.utils.data.DataLoader(PerImageAug(data.train_x, data.train_y), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True, pin_memory=dev.type == "cuda",
                                         persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = pgnas.get_supernet(net).build().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    it = iter(loader)
    for i in range(steps + 5):
        if i == 5:
            sync(dev)
            t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    sync(dev)
    return {"images_per_s": steps * batch / (time.perf_counter() - t0), "workers": workers}


def candidates(net: str, dev, n_val: int, n_cand: int, tile: int) -> dict:
    data = synthetic_cifar(64, n_val, dev)
    torch.manual_seed(0)
    model = pgnas.get_supernet(net).build()
    post = pgnas.instrument(model, init_p=0.3)
    model.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    model.eval()
    masks = [post.sample_candidate(i) for i in range(n_cand)]
    kw = dict(batch_size=2000 if dev.type == "cuda" else 200, device=dev)

    def timed(fn):
        fn()  # warm-up (cuDNN autotuning, allocator)
        sync(dev)
        t0 = time.perf_counter()
        out = fn()
        sync(dev)
        return out, time.perf_counter() - t0

    tiled, t_tiled = timed(lambda: correct_matrix(model, post, masks, data, tile=tile, **kw))
    one, t_one = timed(lambda: correct_matrix(model, post, masks, data, tile=1, **kw))
    fp32, t_fp32 = timed(lambda: correct_matrix(model, post, masks, data, tile=1, fp32=True, **kw))
    out = {
        "validation_images": n_val, "candidates": n_cand, "tile": tile,
        "exact_tiled_candidates_per_s": n_cand / t_tiled,
        "one_by_one_candidates_per_s": n_cand / t_one,
        "one_by_one_fp32_candidates_per_s": n_cand / t_fp32,
        "agreement_tiled_vs_one_by_one_bf16": float((tiled == one).float().mean()),
        "agreement_bf16_vs_fp32": float((one == fp32).float().mean()),
        "same_accuracy_order_bf16_fp32": one.sum(1).argsort().tolist() == fp32.sum(1).argsort().tolist(),
        "peak_memory_gib": peak_gib(dev),
    }
    scorer = CandidateScorer(model, post, data, seed=0, device=dev, batch_size=kw["batch_size"], tile=tile)
    many = 4 * n_cand
    _, t_race = timed(lambda: scorer.race(range(many)))
    out["raced_candidates_per_s"] = many / t_race
    best = max(v for k, v in out.items() if k.endswith("candidates_per_s"))
    out["seconds_per_candidate"] = 1 / best
    out["paper_seconds_per_candidate_p40"] = 40.0
    out["projected_gpu_days_1500_candidates"] = 1500 / best / 86_400
    return out


def compiled(net: str, dev, steps: int, batch: int, smoke: bool) -> dict:
    import torch._dynamo

    torch._dynamo.reset()
    graphs = []
    original = torch.compile

    def counting(model, **kw):  # count the graphs dynamo hands to the backend (recompilations show here)
        def backend(gm, example_inputs):
            graphs.append(len(gm.graph.nodes))
            if smoke:
                return gm.forward
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)

        return original(model, backend=backend, **kw)

    torch.compile = counting
    try:
        out = train_loop(net, dev, steps, batch, hybrid=True, compile_=True)
    finally:
        torch.compile = original
    out["compile_seconds"] = out.pop("warmup_seconds")
    out["graphs_compiled"] = len(graphs)
    return out


def imagenet_loader(smoke: bool) -> dict:
    """Images/s of the streamed reader alone: a tree of JPEGs at ImageNet-like sizes (random
    content), decoded, random-resized-cropped to 224 and batched by the default workers."""
    import numpy as np
    from PIL import Image

    from pgnas.data import load_dataset

    import io

    n_class, per_class = (4, 12) if smoke else (10, 400)
    root = Path(tempfile.mkdtemp(prefix="pgnas-imagenet-"))
    rng = np.random.default_rng(0)
    files = []
    for k in range(8):  # 8 distinct JPEGs of ImageNet's typical 500x375, written many times over
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        files.append(buf.getvalue())
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(n_class):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for k in range(n):
                (d / f"{k}.JPEG").write_bytes(files[(k + c) % 8])
    data = load_dataset("imagenet", data_dir=str(root), val_size=n_class)
    bs = 8 if smoke else 256
    it = data.train_batches(bs, torch.Generator().manual_seed(0), "cpu")
    next(it)  # workers up
    t0 = time.perf_counter()
    n = 0
    for x, _ in it:
        n += len(x)
    secs = time.perf_counter() - t0
    return {"images_per_s": n / secs if secs > 0 else None, "images": n, "workers": data.workers, "cores": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/gpu_check.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="run every stage on the CPU at toy sizes (numbers meaningless)")
    args = ap.parse_args()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here (use --cpu-smoke to test the script)")
    chk = Check(Path(args.out), smoke)
    dev = chk.dev
    net = "shake-shake-8-2x16d" if smoke else "supnet-m"
    steps, batch = (2, 16) if smoke else (30, 128)
    chk.res["env"] = {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (smoke test)",
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "capability": list(torch.cuda.get_device_capability(0)) if dev.type == "cuda" else None,
        "python": platform.python_version(), "cpu_cores": os.cpu_count(), "supernet": net, "batch": batch, "steps": steps,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": smoke,
    }
    chk.save()
    chk.stage("pgnas_step", lambda: train_loop(net, dev, steps, batch, hybrid=True), 60)
    chk.stage("same_loop_plain", lambda: train_loop(net, dev, steps, batch, hybrid=False), 45)
    chk.stage("plain_fp32_dataloader", lambda: plain_fp32(net, dev, steps, batch, 0 if smoke else 8), 45)
    r = chk.res
    if "seconds_per_step" in r["pgnas_step"] and "seconds_per_step" in r["same_loop_plain"]:
        r["pgnas_vs_same_loop"] = r["pgnas_step"]["seconds_per_step"] / r["same_loop_plain"]["seconds_per_step"]
    if "images_per_s" in r["pgnas_step"] and "images_per_s" in r["plain_fp32_dataloader"]:
        r["pgnas_vs_plain"] = r["pgnas_step"]["images_per_s"] / r["plain_fp32_dataloader"]["images_per_s"]
    chk.save()
    chk.stage("candidates", lambda: candidates(net, dev, 200 if smoke else 5000, 4 if smoke else 16, 2 if smoke else 8), 60)
    chk.stage("imagenet_loader", lambda: imagenet_loader(smoke), 40)
    chk.stage("compiled", lambda: compiled(net, dev, steps, batch, smoke), 110)  # last: the least predictable
    print(json.dumps(chk.res, indent=2))


if __name__ == "__main__":
    sys.exit(main())
