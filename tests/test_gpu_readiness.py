"""What a GPU needs from a training step, checked on the CPU: no host-device synchronisation in a
step or a candidate-mode pass, and one compilation for a whole run."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pgnas
from pgnas.data import load_dataset
from pgnas.search.train import PosteriorTrainer


class NoHostSync(TorchDispatchMode):
    """Fails on what `.item()`, `bool(tensor)`, `float(tensor)` and `.tolist()` call: on a GPU each
    waits for the device to finish."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("a host-device synchronisation (aten._local_scalar_dense)")
        return func(*args, **(kwargs or {}))


def small_enas(num_classes: int = 10, in_channels: int = 3):
    """The ENAS structure (cells, reductions, aux head, drop-path) at its smallest, for speed."""
    from pgnas.supernets.enas import EnasNet

    return EnasNet(out_filters=4, num_layers=3, num_classes=num_classes, in_channels=in_channels)


SMALL_ENAS = f"{__file__}:small_enas"


def _trainer(name: str, tmp_path, **cfg):
    from pgnas.search.run import build_run

    run = build_run(pgnas.SearchConfig(supernet=name, epochs=3, batch_size=16, out=str(tmp_path / "r"), **cfg))
    t = PosteriorTrainer(run.model, run.posterior, run.data, run.cfg, device=run.device, augment=run.augment,
                         lambda_w=run.cfg.lambda_w, n_data=run.cfg.n_data, aux_weight=run.spec.aux_weight)
    return run, t


@pytest.mark.parametrize("name", ["shake-shake-8-2x16d", SMALL_ENAS])
def test_a_training_step_and_its_batch_never_wait_on_the_device(name, tmp_path):
    run, t = _trainer(name, tmp_path, cutout=4, crop_pad=2, flip=True)
    if hasattr(run.model, "set_progress"):
        run.model.set_progress(0.5)  # drop-path on
    batches = run.data.train_batches(16, torch.Generator().manual_seed(0), run.device, run.augment)
    t.net.train()
    with NoHostSync():
        for _ in range(2):
            x, y = next(batches)
            t.train_step(x, y)
    assert t.step == 2
    # the check the loop does every few steps is where the host looks (and it does look)
    with pytest.raises(AssertionError, match="synchronisation"), NoHostSync():
        bool(t._bad)


@pytest.mark.parametrize("name", ["shake-shake-8-2x16d", "enas-micro-f8", "densenet121-g8", "inflated-resnet50-w8"])
def test_a_candidate_pass_never_waits_on_the_device(name):
    spec = pgnas.get_supernet(name)
    model = spec.build(10, 3)
    post = pgnas.instrument(model, groups=spec.groups(model) if spec.groups else None,
                            exclude=spec.exclude(model) if spec.exclude else (), init_p=0.5)
    model.eval()
    masks = [post.sample_candidate(i) for i in range(3)]
    x = torch.randn(6, 3, 32, 32)
    post.set_candidates(masks)  # host-side decisions happen here, before the pass
    with torch.no_grad(), NoHostSync():
        model(x)
    post.clear_candidate()


def test_three_epochs_compile_once(tmp_path):
    """Drop-path's schedule lives in tensors, so a new epoch does not make torch.compile trace
    again (with Python floats it recompiled every epoch and fell back to eager after 8)."""
    import torch._dynamo

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    original = torch.compile
    try:
        torch.compile = lambda model, **kw: original(model, backend=counting_backend)
        run, t = _trainer(SMALL_ENAS, tmp_path, compile=True, train_subset=64)
    finally:
        torch.compile = original
    for _ in range(3):
        t.train_epoch()
    assert t.epoch == 3
    assert len(graphs) == 1, f"{len(graphs)} graphs compiled"
    torch._dynamo.reset()


def test_finalists_are_rescored_in_fp32_when_scoring_ran_in_bf16(tmp_path, monkeypatch):
    """The GPU path (bf16 scoring) re-scores the top-k without autocast before choosing; on the
    CPU the path runs with equal scores, so only the bookkeeping differs."""
    import pgnas.search.select as pipeline

    real = pipeline.scoring_setup
    monkeypatch.setattr(pipeline, "scoring_setup", lambda cfg, dev: {**real(cfg, dev), "precision": "bf16"})
    res = pgnas.search(pgnas.SearchConfig(supernet="shake-shake-8-2x16d", epochs=1, candidates=5, top_k=3,
                                          out=str(tmp_path / "r")), progress=False)
    top = res.summary["top_k"]
    assert all(r["val_acc_bf16"] == r["val_acc"] for r in top)
    assert [r["val_acc"] for r in top] == sorted((r["val_acc"] for r in top), reverse=True)


def test_gpu_all_runs_every_stage_on_the_cpu(tmp_path):
    """The device's one command, smoke-tested here: every stage of the check and the evidence
    script runs and writes its JSON (numbers meaningless on a CPU)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PY": sys.executable, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(["bash", "benchmarks/gpu_all.sh", str(tmp_path), "--cpu-smoke"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check = json.loads((tmp_path / "gpu_check.json").read_text())
    for stage in ("pgnas_step", "same_loop_plain", "plain_fp32_dataloader", "candidates", "imagenet_loader", "compiled"):
        assert "error" not in check[stage], (stage, check[stage])
    assert {"pgnas_vs_same_loop", "pgnas_vs_plain"} <= set(check) and check["env"]["torch"]
    assert check["compiled"]["graphs_compiled"] == 1
    evidence = json.loads((tmp_path / "gpu_evidence.json").read_text())
    assert "error" not in evidence and evidence["pgnas"]["test_error"] >= 0 and evidence["random"]["p"] > 0
