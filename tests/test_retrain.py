"""pgnas train: the search -> export -> retrain path. Fine-tune an exported network, train its
architecture from scratch, or train any super-network plainly; the result is an exported model
again, and the run resumes after SIGTERM exactly like a search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import pgnas
from pgnas.data import load_dataset
from pgnas.export import evaluate, load_model
from pgnas.retrain import train
from pgnas.search.checkpoint import load_checkpoint

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("rt") / "run"
    pgnas.search({"supernet": "shake-shake-8-2x16d", "epochs": 2, "candidates": 3, "out": str(out)}, progress=False)
    return out / "model.pt"


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_fine_tuning_an_exported_model_trains_it_and_exports_it_again(exported, tmp_path):
    res = train(pgnas.SearchConfig(dataset="digits", epochs=2, lr=0.01, out=str(tmp_path / "ft")), model_file=exported,
                progress=False)
    before, after = _weights(exported), _weights(res.run_dir / "model.pt")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    assert all(before[k].shape == after[k].shape for k in before)  # the same architecture
    # the result loads, evaluates to what the run reported, and is trainable again
    assert evaluate(res.run_dir / "model.pt", "digits")["accuracy"] == pytest.approx(res.summary["test_acc"])
    desc = json.loads((res.run_dir / "model.json").read_text())
    assert desc["params"] == res.summary["params"] == sum(p.numel() for p in load_model(res.run_dir / "model.pt").net.parameters())


def test_reinit_trains_the_architecture_from_scratch(exported, tmp_path):
    torch.manual_seed(0)
    res = train(pgnas.SearchConfig(dataset="digits", epochs=1, lr=0.01, out=str(tmp_path / "re")), model_file=exported,
                reinit=True, progress=False)
    m = load_model(exported)
    x = load_dataset("digits").test_x[:64]
    with torch.no_grad():
        trained_from_search = (m(x).argmax(1) == load_dataset("digits").test_y[:64]).float().mean()
    assert res.summary["test_acc"] < float(trained_from_search)  # one epoch from scratch is far behind


def test_train_a_supernet_plainly_with_weight_decay(tmp_path):
    res = train(pgnas.SearchConfig(supernet="shake-shake-8-2x16d", dataset="digits", epochs=2, weight_decay=5e-4,
                                   out=str(tmp_path / "plain")), progress=False)
    metrics = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["kl"] for m in metrics] == [0.0, 0.0] and all(m["mean_p"] is None for m in metrics)
    model = load_model(res.run_dir / "model.pt")
    assert not any("pgnas_dropout" in k for k in model.state_dict())  # a plain network
    assert res.summary["params"] == pgnas.posterior.count_parameters(pgnas.get_supernet("shake-shake-8-2x16d").build(10, 1))


def test_bad_inputs_are_one_line_errors(exported, tmp_path):
    from PIL import Image

    for split in ("train", "test"):  # 8x8 grayscale like digits, but 2 classes
        for c in ("a", "b"):
            (tmp_path / "two" / split / c).mkdir(parents=True)
            for k in range(6):
                Image.new("L", (8, 8), 40 * k).save(tmp_path / "two" / split / c / f"{k}.png")
    with pytest.raises(pgnas.PgnasError, match="predicts 10 classes"):
        train(pgnas.SearchConfig(dataset="imagefolder", data_dir=str(tmp_path / "two"), out=str(tmp_path / "x"),
                                 data_cache=str(tmp_path / "cache")), model_file=exported)
    with pytest.raises(pgnas.PgnasError, match="no model file"):
        train(pgnas.SearchConfig(out=str(tmp_path / "y")), model_file=tmp_path / "none.pt")
    with pytest.raises(pgnas.PgnasError, match="no weight decay"):
        pgnas.search(pgnas.SearchConfig(weight_decay=1e-4, out=str(tmp_path / "z")))


def test_sigterm_then_resume_equals_the_uninterrupted_run(exported, tmp_path):
    args = [str(exported), "--dataset", "digits", "--epochs", "3", "--batch-size", "16", "--lr", "0.01", "--quiet"]
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "pgnas", "train", *args, "--out", str(ref)], check=True, env=ENV, capture_output=True)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pgnas", "train", *args, "--out", str(run), "--checkpoint-minutes", "0"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if load_checkpoint(run / "checkpoint.pt")["epoch"] >= 1:
                break
        except Exception:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert f"pgnas train --out {run} --resume" in err
    subprocess.run([sys.executable, "-m", "pgnas", "train", "--out", str(run), "--resume", "--quiet"], check=True, env=ENV,
                   capture_output=True)
    a, b = _weights(ref / "model.pt"), _weights(run / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_and_evaluate_use_the_model_files_own_data_set(tmp_path, monkeypatch):
    """Issue 20.9: `pgnas train MODEL` trained on digits whatever the model's data set, and
    `pgnas evaluate` of an ImageFolder model needed --data-dir although the file could record it."""
    monkeypatch.setenv("PGNAS_CACHE", str(tmp_path / "cache"))  # evaluate() caches too: not in the user's cache
    from data_fixtures import make_imagefolder

    from pgnas.cli import main

    tree = make_imagefolder(tmp_path / "imgs", per_class=(24, 6), size=(8, 8))
    pgnas.search({"supernet": "shake-shake-8-2x16d", "dataset": "imagefolder", "data_dir": str(tree), "val_size": 0.25,
                  "epochs": 1, "candidates": 2, "out": str(tmp_path / "run"), "data_cache": str(tmp_path / "cache")},
                 progress=False)
    model_file = tmp_path / "run" / "model.pt"
    assert load_model(model_file).meta["data_dir"] == str(tree.resolve())
    monkeypatch.chdir(tmp_path / "run")  # the data set's relative location no longer works from here
    ev = evaluate(model_file)
    assert ev["dataset"] == "imagefolder" and ev["images"] == 3 * 6
    assert main(["train", str(model_file), "--epochs", "1", "--out", str(tmp_path / "ft"), "--quiet",
                 "--data-cache", str(tmp_path / "cache")]) == 0
    s = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert s["dataset"] == "imagefolder" and s["splits"]["test"] == 18


def test_digits_image_size_resizes_the_images():
    """Issue 20.9: --image-size was silently ignored for digits."""
    small, big = load_dataset("digits"), load_dataset("digits", image_size=16)
    assert big.image_size == (16, 16) and tuple(big.train_x.shape[1:]) == (1, 16, 16)
    assert len(big.train_y) == len(small.train_y) and torch.equal(big.test_y, small.test_y)
    # the same images, enlarged: 2x2 means of the 16x16 images follow the 8x8 ones closely
    back = torch.nn.functional.avg_pool2d(big.test_x.float(), 2).flatten()
    assert torch.corrcoef(torch.stack([back, small.test_x.float().flatten()]))[0, 1] > 0.9
