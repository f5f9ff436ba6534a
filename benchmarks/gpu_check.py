"""GPU check (issue 6): SupNet-M (2x96d) on one GPU, CIFAR-sized synthetic data.

Measures, each for a fixed number of timed steps after warm-up:
* posterior training throughput (images/s) with the pgnas trainer path: hybrid representation,
  KL term, bf16 autocast, channels_last, tensor-resident data augmented on the GPU;
* a plain PyTorch loop of the same network without the hybrid representation: fp32, per-image
  augmentation on the CPU in a DataLoader (pad-crop, flip, cutout, as the paper's code did);
* candidate evaluation throughput (candidates/s on 5,000 validation images), one by one and tiled;
* the projected GPU-days of the paper's 1800-epoch SupNet-M search (50k images per epoch).

    python benchmarks/gpu_check.py [--steps 30] [--compile] --out results/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import pgnas
from pgnas.config import SearchConfig
from pgnas.data.augment import AugmentSpec
from pgnas.data.tensor_data import TensorSplits
from pgnas.search.select import correct_counts
from pgnas.search.train import PosteriorTrainer


def synthetic_cifar(n_train: int, n_val: int, device) -> TensorSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_val, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n_train + n_val,), generator=g)
    return TensorSplits("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], x[n_train:], y[n_train:],
                        [str(i) for i in range(10)], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26),
                        AugmentSpec(crop_pad=4, flip=True, cutout=16)).to(device)


NET = "supnet-m"
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pgnas_training(steps: int, batch: int, compile_: bool) -> float:
    dev = DEV
    data = synthetic_cifar(batch * (steps + 10), 5000, dev)
    torch.manual_seed(0)
    model = pgnas.get_supernet(NET).build()
    post = pgnas.instrument(model)
    model.to(dev).to(memory_format=torch.channels_last)
    cfg = SearchConfig(supernet=NET, epochs=1, batch_size=batch, lr=0.01, compile=compile_)
    tr = PosteriorTrainer(model, post, data, cfg, device=dev, augment=data.augment, lambda_w=50.0, n_data=5e5)
    # warm-up epoch on a small slice, then time a full pass of `steps` steps
    tr.steps_per_epoch = 10
    data_small = synthetic_cifar(batch * 10, 10, dev)
    tr.data = data_small
    tr.train_epoch()
    tr.data = data
    tr.steps_per_epoch = data.steps_per_epoch(batch)
    sync()
    t0 = time.perf_counter()
    tr.train_epoch()
    sync()
    return tr.steps_per_epoch * batch / (time.perf_counter() - t0)


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


def plain_training(steps: int, batch: int) -> float:
    dev = DEV
    data = synthetic_cifar(batch * (steps + 5), 10, "cpu")
    loader = torch.utils.data.DataLoader(PerImageAug(data.train_x, data.train_y), batch_size=batch, shuffle=True,
                                         num_workers=8 if DEV.type == "cuda" else 0, drop_last=True, pin_memory=DEV.type == "cuda",
                                         persistent_workers=DEV.type == "cuda")
    torch.manual_seed(0)
    model = pgnas.get_supernet(NET).build().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    it = iter(loader)
    for i in range(steps + 5):
        if i == 5:
            sync()
            t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    sync()
    return steps * batch / (time.perf_counter() - t0)


def candidate_eval(n_cand: int, tile: int) -> float:
    dev = DEV
    data = synthetic_cifar(10, 5000, dev)
    model = pgnas.get_supernet(NET).build()
    post = pgnas.instrument(model)
    model.to(dev).to(memory_format=torch.channels_last).eval()
    x, y = data.eval_tensors("val", dev)
    masks = [post.sample_candidate(i) for i in range(n_cand)]
    correct_counts(model, post, masks[:tile], x, y, tile=tile, batch_size=1000)  # warm-up
    sync()
    t0 = time.perf_counter()
    correct_counts(model, post, masks, x, y, tile=tile, batch_size=1000 if tile == 1 else 2000)
    sync()
    return n_cand / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/gpu_check.json")
    ap.add_argument("--supernet", default="supnet-m", help="(a small one for a CPU smoke test of this script)")
    ap.add_argument("--cpu-smoke", action="store_true", help="run on the CPU (numbers meaningless)")
    args = ap.parse_args()
    global NET, DEV
    NET = args.supernet
    if args.cpu_smoke:
        DEV = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here (use --cpu-smoke to test the script)")
    res = {"device": torch.cuda.get_device_name(0) if DEV.type == "cuda" else "cpu", "supernet": NET, "torch": torch.__version__, "batch": args.batch, "steps": args.steps}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every measurement: a timeout keeps what was measured
        out.write_text(json.dumps(res, indent=2) + "\n")

    res["pgnas_images_per_s"] = pgnas_training(args.steps, args.batch, False)
    res["projected_gpu_days_1800_epochs"] = 1800 * 50_000 / res["pgnas_images_per_s"] / 86_400
    save()
    res["plain_fp32_images_per_s"] = plain_training(args.steps, args.batch)
    res["pgnas_vs_plain"] = res["pgnas_images_per_s"] / res["plain_fp32_images_per_s"]
    save()
    res["candidates_per_s_one_by_one"] = candidate_eval(8, 1)
    res["candidates_per_s_tiled8"] = candidate_eval(16, 8)
    res["projected_gpu_days_1500_candidates"] = 1500 / max(res["candidates_per_s_one_by_one"], res["candidates_per_s_tiled8"]) / 86_400
    save()
    if args.compile:  # last: compilation time is the least predictable part
        res["pgnas_compiled_images_per_s"] = pgnas_training(args.steps, args.batch, True)
        best = max(res["pgnas_images_per_s"], res["pgnas_compiled_images_per_s"])
        res["projected_gpu_days_1800_epochs"] = 1800 * 50_000 / best / 86_400
        save()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
