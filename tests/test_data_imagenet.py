"""The streamed ImageNet reader on a small ILSVRC-layout tree of JPEGs of mixed sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pgnas.data import load_dataset
from pgnas.data.imagenet import center_crop_box, random_resized_crop_box
from pgnas.errors import PgnasError

WNIDS = ("n01440764", "n01443537", "n01484850")


def make_ilsvrc(root, per_class=(6, 2)):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c, wnid in enumerate(WNIDS):
            d = root / split / wnid
            d.mkdir(parents=True)
            for k in range(n):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                a = np.full((h, w, 3), 60 * (c + 1), np.uint8)
                Image.fromarray(a).save(d / f"{wnid}_{k}.JPEG", quality=95)
    return root


def test_streamed_batches(tmp_path):
    root = make_ilsvrc(tmp_path / "ilsvrc")
    d = load_dataset("imagenet", data_dir=str(root), val_size=3, image_size=16, workers=2)
    assert d.classes == list(WNIDS) and d.num_classes == 3 and d.in_channels == 3 and d.image_size == (16, 16)
    assert d.sizes() == {"train": 15, "val": 3, "test": 6}
    assert d.steps_per_epoch(4) == 3
    g = torch.Generator().manual_seed(0)
    batches = list(d.train_batches(4, g))
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
        # each image is one flat colour of its class: the crop keeps it
        raw = x * torch.tensor(d.std).view(1, 3, 1, 1) + torch.tensor(d.mean).view(1, 3, 1, 1)
        level = (raw * 255).mean((1, 2, 3))
        assert torch.allclose(level, 60.0 * (y + 1).float(), atol=3)
    again = list(d.train_batches(4, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))  # reproducible with workers
    # data parallel: rank r decodes its half of every global batch; the halves make up the batch
    shares = [list(d.train_batches(4, torch.Generator().manual_seed(0), rank=r, world_size=2)) for r in (0, 1)]
    for (x, y), a, b in zip(batches, *shares):
        assert a[0].shape == (2, 3, 16, 16) and torch.equal(torch.cat([a[1], b[1]]), y)
    xs, ys = zip(*d.eval_batches("test", 4))
    assert [len(y) for y in ys] == [4, 2] and torch.cat(ys).tolist() == [0, 0, 1, 1, 2, 2]
    assert len(d.describe_split()["val_indices"]) == 3


def test_transforms_geometry():
    import random

    rng = random.Random(0)
    for _ in range(50):
        l, t, r, b = random_resized_crop_box(50, 30, rng)
        assert 0 <= l < r <= 50 and 0 <= t < b <= 30
    assert center_crop_box(400, 300, 256, 224) == ((341, 256), (58, 16, 282, 240))


def test_flat_val_folder_refused(tmp_path):
    root = make_ilsvrc(tmp_path / "ilsvrc")
    Image.new("RGB", (8, 8)).save(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(PgnasError, match=r"val holds its images directly.*valprep"):
        load_dataset("imagenet", data_dir=str(root))


def test_missing_and_not_imagefolder(tmp_path):
    with pytest.raises(PgnasError, match="does not exist"):
        load_dataset("imagenet", data_dir=str(tmp_path / "none"))
    (tmp_path / "x").mkdir()
    with pytest.raises(PgnasError, match="not an ImageFolder layout"):
        load_dataset("imagenet", data_dir=str(tmp_path / "x"))


def test_corrupt_file_named_or_skipped(tmp_path):
    root = make_ilsvrc(tmp_path / "ilsvrc", per_class=(4, 2))
    bad = root / "val" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG"
    bad.write_bytes(b"not a jpeg")
    d = load_dataset("imagenet", data_dir=str(root), val_size=3, image_size=16, workers=0)
    with pytest.raises(PgnasError, match=rf"cannot read image {bad}"):
        list(d.eval_batches("test", 4))
    d = load_dataset("imagenet", data_dir=str(root), val_size=3, image_size=16, workers=0, skip_bad=True)
    ys = torch.cat([y for _, y in d.eval_batches("test", 4)])
    assert ys.tolist() == [0, 0, 1, 2, 2] and d.skipped == 1 and d.describe_split()["skipped"] == 1


# ---------------------------------------------------------------- searching on a streamed data set
def _run(*args: str, procs: int = 1):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    head = [sys.executable, "-m", "pgnas"] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m", "pgnas"]
    proc = subprocess.run([*head, *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _scores(run):
    import json

    return [(r["index"], r["val_acc"]) for r in map(json.loads, (run / "candidates.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("procs", [1, 2])
def test_imagenet_search_and_sample_end_to_end(tmp_path, procs):
    import json

    root = make_ilsvrc(tmp_path / "ilsvrc", per_class=(8, 2))
    run = tmp_path / "run"
    common = ["--dataset", "imagenet", "--data-dir", str(root), "--image-size", "16", "--val-size", "6"]
    _run("search", *common, "--supernet", "shake-shake-8-2x16d", "--epochs", "1", "--candidates", "3", "--batch-size", "4",
         "--eval-batch-size", "4", "--top-k", "2", "--quiet", "--out", str(run), procs=procs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["splits"] == {"train": 18, "val": 6, "test": 6} and summary["world_size"] == procs
    assert len(_scores(run)) == 3 and (run / "model.pt").is_file()
    _run("sample", str(run), "--candidates", "5", "--quiet", "--out", str(tmp_path / "s"), procs=procs)
    _run("sample", str(run), "--candidates", "5", "--race", "--quiet", "--out", str(tmp_path / "r"), procs=procs)
    # candidate i of the sample is the search's candidate i, scored on the same images
    assert _scores(tmp_path / "s")[:3] == _scores(run)
    assert len(_scores(tmp_path / "r")) == 5


def test_scoring_streamed_and_decoded_once_agree(tmp_path):
    import pgnas
    from pgnas.search.scorer import CandidateScorer

    root = make_ilsvrc(tmp_path / "ilsvrc", per_class=(8, 4))
    d = load_dataset("imagenet", data_dir=str(root), val_size=9, image_size=16, workers=0)
    torch.manual_seed(0)
    model = pgnas.get_supernet("shake-shake-8-2x16d").build(3, 3)
    post = pgnas.instrument(model, init_p=0.4)
    model.eval()
    scores = []
    for cache in (1 << 30, 0):  # decoded once and kept / read from the files every time
        d.eval_cache_bytes = cache
        d._decoded.clear()
        scorer = CandidateScorer(model, post, d, seed=1, device=torch.device("cpu"), batch_size=8, tile=3)
        scores.append(([r["val_acc"] for r in scorer.exhaustive(range(7))], [r["val_acc"] for r in scorer.race(range(7), first=3)]))
        assert ("val" in d._decoded) == bool(cache)
    assert scores[0] == scores[1]
