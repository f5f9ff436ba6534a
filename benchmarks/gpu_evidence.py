"""The fair-evidence protocol (benchmarks/RESULTS.md, "Fair evidence") at one operating point on a
GPU, within its own time budget (default 300 s; its shell wrapper allows 330): all 45,000 CIFAR-10
training images at 32x32, 5,000 validation images, the 10,000 test images, one seed.

1. Calibrate: a few bf16 training steps of the super-network (shake-shake-26-2x32d, batch 512),
   giving the epochs each of the three trainings gets in the budget (scoring, testing and start-up
   take the rest).
2. ``pgnas``: the PGNAS search (learned p), 100 candidates; its winner without fine-tuning.
3. ``random``: a super-network trained with one fixed drop rate, matched (before its training) so
   its candidates' mean slim parameters equal the PGNAS winner's, the image's channels and the
   classifier's input never dropped; its best candidate within +-5 % of the PGNAS winner's size.
4. ``narrow``: shake-shake-26-2x<w>d of that size, trained plainly (weight decay 5e-4) for the
   same epochs.
Each arm reports its own health (its super-network's or its own test accuracy). Writes the JSON
after every stage (a timeout keeps what was done).

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
from pgnas.search.ranking import rank

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fair_evidence import MATCH, fixed_p_for, narrow_width, within  # noqa: E402

BUDGET_S = 300
SHARE_OTHER = 0.3  # of the budget: data, compilation, scoring 2 x 100 candidates, test, export


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=".data")
    ap.add_argument("--out", default="benchmarks/results/gpu_evidence.json")
    ap.add_argument("--work", default=None, help="results folders of the runs (default: a temporary folder)")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for everything, data and compilation included")
    ap.add_argument("--lambda-w", type=float, default=50.0)
    ap.add_argument("--cpu-smoke", action="store_true", help="digits and a tiny network on the CPU (checks the script)")
    args = ap.parse_args()
    t_start = time.time()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_evidence: no CUDA GPU here (use --cpu-smoke to test the script)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="pgnas-gpu-evidence-"))
    res: dict = {"protocol": "benchmarks/RESULTS.md, Fair evidence, one operating point", "lambda_w": args.lambda_w,
                 "device": torch.cuda.get_device_name(0) if not smoke else "cpu (smoke test)", "torch": torch.__version__,
                 "cuda": torch.version.cuda, "budget_seconds": args.budget, "date": time.strftime("%Y-%m-%d %H:%M:%S")}

    def save() -> None:
        res["elapsed_seconds"] = round(time.time() - t_start, 1)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        os.replace(tmp, out)

    save()
    if smoke:
        base = {"dataset": "digits", "supernet": "shake-shake-8-2x16d", "batch_size": 64, "candidates": 8, "top_k": 2, "device": "cpu"}
        family = "shake-shake-8-2x{}d"
    else:
        base = {"dataset": "cifar10", "data_dir": args.data_dir, "supernet": "shake-shake-26-2x32d", "batch_size": 512, "lr": 0.2,
                "candidates": 100, "top_k": 3, "val_size": 5000, "eval_batch_size": 2000, "checkpoint_minutes": 0}
        family = "shake-shake-26-2x{}d"
    base["lambda_w"] = args.lambda_w
    try:
        epochs = 1 if smoke else _calibrate(base, args.budget - (time.time() - t_start), res)
        res["epochs"] = epochs
        save()
        cfg = pgnas.SearchConfig.from_dict({**base, "epochs": epochs, "seed": 0})
        g = pgnas.search(cfg.replace(out=str(work / "pgnas")), force=True, progress=False)
        target = g.selected["params"]
        res["pgnas"] = {"test_error": 1 - g.selected["test_acc"], "params": target, "macs": g.selected["macs"],
                        "kept_fraction": target / g.summary["supernet_params"], "mean_p": g.summary["posterior"]["mean_p"],
                        "supernet_test_error": 1 - g.summary["supernet_test_acc"], "seconds": g.summary["seconds"]}
        save()
        rcfg = cfg.replace(plain_layers="stem,fc")
        p = fixed_p_for(rcfg, g_data(g), target)
        r = pgnas.search(rcfg.replace(posterior=f"fixed:{p:.6f}", out=str(work / "random")), force=True, progress=False)
        same = within(r.candidates, target)
        rec = rank(same)[0] if same else None
        res["random"] = {"p": p, "within_5pct": len(same), "supernet_test_error": 1 - r.summary["supernet_test_acc"],
                         "seconds": r.summary["seconds"]}
        if rec is not None:
            from pgnas.export import evaluate, export_run

            f = export_run(work / "random", rec["index"], out=work / "random.pt")["model"]
            res["random"].update(test_error=1 - evaluate(f)["accuracy"], params=rec["params"], macs=rec["macs"])
        save()
        w, n = narrow_width(target, g_data(g), family=family)
        nr = pgnas.train(cfg.replace(supernet=family.format(w), weight_decay=5e-4, out=str(work / "narrow")), force=True,
                         progress=False)
        res["narrow"] = {"width": w, "params": n, "matched": abs(n - target) <= MATCH * target,
                         "test_error": 1 - nr.summary["test_acc"], "seconds": nr.summary["seconds"]}
        if "test_error" in res["random"]:
            res["pgnas_vs_random_error_ratio"] = res["pgnas"]["test_error"] / res["random"]["test_error"]
    except Exception as exc:  # noqa: BLE001 - recorded; what was measured stays
        res["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        res["where"] = traceback.format_exc()[-2000:]
    save()
    print(json.dumps(res, indent=2))
    return 1 if "error" in res else 0


def g_data(result):
    from pgnas.search.run import load_run_data

    return load_run_data(pgnas.SearchConfig.from_toml(result.run_dir / "config.toml"))


def _calibrate(base: dict, left: float, res: dict) -> int:
    """Epochs per training that fit the budget, from the measured step time of the super-network."""
    from pgnas.search.run import build_run
    from pgnas.search.train import PosteriorTrainer

    run = build_run(pgnas.SearchConfig.from_dict({**base, "epochs": 1}))
    tr = PosteriorTrainer(run.model, run.posterior, run.data, run.cfg, device=run.device, augment=run.augment,
                          lambda_w=base["lambda_w"], n_data=run.cfg.n_data)
    tr.net.train()
    it = run.data.train_batches(run.cfg.batch_size, torch.Generator().manual_seed(0), run.device, run.augment)
    for _ in range(3):
        tr.train_step(*next(it))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        tr.train_step(*next(it))
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / 10
    steps = run.data.steps_per_epoch(run.cfg.batch_size)
    epochs = max(1, int((1 - SHARE_OTHER) * left / 3 / (steps * step_s)))  # pgnas, random, narrow
    res["calibration"] = {"seconds_per_step": step_s, "steps_per_epoch": steps, "epochs_each": epochs}
    return epochs


if __name__ == "__main__":
    sys.exit(main())
