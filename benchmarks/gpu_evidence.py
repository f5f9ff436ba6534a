"""Guided vs random on a GPU, in at most 6 minutes: all 45,000 CIFAR-10 training images at 32x32,
the largest shake-shake 26 that fits the time, one seed (issue: evidence, item 5).

1. Calibrate: a few bf16 training steps of shake-shake-26-2x{96,64,32}d; take the widest whose
   epochs for both arms fit the budget with at least MIN_EPOCHS epochs each.
2. ``pgnas``: the PGNAS search (learned p) for that many epochs, 100 candidates on the 5,000
   validation images, its winner without fine-tuning.
3. ``random``: the same search with p fixed at the rate whose expected kept-slice parameters equal
   the guided winner's, its winner without fine-tuning.

Writes the JSON after every stage (so a timeout keeps what was done). CIFAR-10 comes from
``--data-dir`` (the official python archive or the JPEG copy; on the lent GPU machine, a folder
carried along with the working tree).

    PYTHONPATH=src python3 benchmarks/gpu_evidence.py --data-dir .data --out OUT/gpu_evidence.json
    PYTHONPATH=src python3 benchmarks/gpu_evidence.py --cpu-smoke --out /tmp/e.json      # the script, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import pgnas

BUDGET_S = 360
MIN_EPOCHS = 15
WIDTHS = (96, 64, 32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=".data")
    ap.add_argument("--out", default="benchmarks/results/gpu_evidence.json")
    ap.add_argument("--work", default=None, help="results folders of the two searches (default: a temporary folder)")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for everything, data and compilation included")
    ap.add_argument("--cpu-smoke", action="store_true", help="digits and a tiny network on the CPU (checks the script)")
    args = ap.parse_args()
    t_start = time.time()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_evidence: no CUDA GPU here (use --cpu-smoke to test the script)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="pgnas-gpu-evidence-"))
    res: dict = {"device": torch.cuda.get_device_name(0) if not smoke else "cpu (smoke test)", "torch": torch.__version__,
                 "cuda": torch.version.cuda, "budget_seconds": args.budget, "date": time.strftime("%Y-%m-%d %H:%M:%S")}

    def save() -> None:
        res["elapsed_seconds"] = round(time.time() - t_start, 1)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        os.replace(tmp, out)

    save()
    if smoke:
        base = {"dataset": "digits", "batch_size": 64, "candidates": 6, "top_k": 2, "device": "cpu"}
        widths, min_epochs = (16,), 1
    else:
        base = {"dataset": "cifar10", "data_dir": args.data_dir, "batch_size": 128, "lr": 0.05, "candidates": 100, "top_k": 3,
                "val_size": 5000, "eval_batch_size": 2000, "checkpoint_minutes": 0}
        widths, min_epochs = WIDTHS, MIN_EPOCHS
    try:
        from pgnas.search.run import build_run
        from pgnas.search.train import PosteriorTrainer

        # ---- data and calibration
        t0 = time.time()
        probe = build_run(pgnas.SearchConfig.from_dict({**base, "supernet": "shake-shake-8-2x16d", "epochs": 1}))
        data = probe.data
        res["data"] = {"splits": data.sizes(), "seconds": round(time.time() - t0, 1)}
        steps = data.steps_per_epoch(base["batch_size"])
        calib = {}
        choice = None
        for w in widths:
            cfg = pgnas.SearchConfig.from_dict({**base, "supernet": f"shake-shake-26-2x{w}d" if not smoke else "shake-shake-8-2x16d", "epochs": 1})
            run = build_run(cfg)
            tr = PosteriorTrainer(run.model, run.posterior, run.data, run.cfg, device=run.device, augment=run.augment,
                                  lambda_w=50.0, n_data=float(10 * data.sizes()["train"]))
            tr.net.train()
            it = run.data.train_batches(cfg.batch_size, torch.Generator().manual_seed(0), run.device, run.augment)
            for _ in range(3):
                tr.train_step(*next(it))
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            n = 2 if smoke else 15
            for _ in range(n):
                tr.train_step(*next(it))
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            step_s = (time.perf_counter() - t0) / n
            left = args.budget - (time.time() - t_start)
            # both arms' training; ~20 % for scoring, testing, export and start-up
            epochs = int(0.8 * left / 2 / (steps * step_s * 1.08))
            calib[w] = {"seconds_per_step": step_s, "epochs_that_fit": epochs}
            del run, tr
            if epochs >= min_epochs:
                choice = (cfg.supernet, epochs if not smoke else 2)
                break
        res["calibration"] = calib
        if choice is None:
            raise RuntimeError(f"no width fits {min_epochs} epochs in the budget: {calib}")
        net, epochs = choice
        res["supernet"], res["epochs"] = net, epochs
        save()

        # ---- the two arms
        cfg = pgnas.SearchConfig.from_dict({**base, "supernet": net, "epochs": epochs, "seed": 0})
        g = pgnas.search(cfg.replace(out=str(work / "pgnas")), force=True, progress=False)
        total = g.summary["supernet_params"]
        res["pgnas"] = {"test_error": 1 - g.selected["test_acc"], "params": g.selected["params_kept_slices"], "params_slim": g.selected["params"],
                        "kept_param_fraction": g.selected["params_kept_slices"] / total,
                        "mean_p": g.summary["posterior"]["mean_p"], "supernet_test_error": 1 - g.summary["supernet_test_acc"],
                        "candidate_val_mean": g.summary["candidate_val_acc"]["mean"], "seconds": g.summary["seconds"]}
        save()
        sliced = sum(pl.layer.weight.numel() for pl in g.posterior)
        p = min(0.95, max(0.01, (1 - g.selected["params_kept_slices"] / total) * total / sliced))
        r = pgnas.search(cfg.replace(posterior=f"fixed:{p:.4f}", out=str(work / "random")), force=True, progress=False)
        res["random"] = {"test_error": 1 - r.selected["test_acc"], "params": r.selected["params_kept_slices"], "params_slim": r.selected["params"], "p": p,
                         "supernet_test_error": 1 - r.summary["supernet_test_acc"], "candidate_val_mean": r.summary["candidate_val_acc"]["mean"],
                         "seconds": r.summary["seconds"]}
        res["pgnas_vs_random_error_ratio"] = res["pgnas"]["test_error"] / res["random"]["test_error"]
    except Exception as exc:  # noqa: BLE001 - recorded; what was measured stays
        res["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        res["where"] = traceback.format_exc()[-2000:]
    save()
    print(json.dumps(res, indent=2))
    return 1 if "error" in res else 0


if __name__ == "__main__":
    sys.exit(main())
