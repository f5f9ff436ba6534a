"""ImageFolder reader: trees and archives, labels, modes, the cache, every bad input."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from data_fixtures import COLOURS, class_image, make_imagefolder, tar_gz
from pgnas.data import load_dataset
from pgnas.data import imagefolder as imf
from pgnas.errors import PgnasError


def _load(path, cache, **kw):
    return load_dataset("imagefolder", data_dir=str(path), data_cache=str(cache), **kw)


def _assert_labels_match_colours(x, y, classes):
    for img, label in zip(x, y):
        want = np.array(COLOURS[classes[label]])
        centre = img[:, 4, 4].numpy().astype(int)  # JPEG is lossy: close, not equal
        assert np.abs(centre - want).max() <= 12, (classes[label], centre)


def test_tree_png_and_jpeg(tmp_path):
    root = make_imagefolder(tmp_path / "set", per_class=(10, 2))
    d = _load(root, tmp_path / "cache", val_size=0.2, split_seed=3)
    assert d.classes == ["ant", "bee", "cat"]
    assert d.sizes() == {"train": 24, "val": 6, "test": 6}
    assert d.in_channels == 3 and d.image_size == (8, 8)
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape == (24, 3, 8, 8)
    for x, y in ((d.train_x, d.train_y), (d.val_x, d.val_y), (d.test_x, d.test_y)):
        _assert_labels_match_colours(x, y, d.classes)
    # stratified validation split: 2 of each class
    assert torch.bincount(d.val_y).tolist() == [2, 2, 2]
    # PNG is lossless: test image 000.png of 'bee' is exact
    assert torch.equal(d.test_x[2].permute(1, 2, 0), torch.from_numpy(class_image("bee", 0)))
    assert d.describe_split()["split_seed"] == 3


def test_archive_equals_tree_and_top_folder(tmp_path):
    root = make_imagefolder(tmp_path / "myset", per_class=(4, 2))
    arc = tar_gz(root, tmp_path / "myset.tar.gz")  # members under myset/train/...
    a = _load(root, tmp_path / "c1", val_size=3)
    b = _load(arc, tmp_path / "c2", val_size=3)
    for name in ("train_x", "train_y", "val_x", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # a folder whose only sub-folder holds the tree works too
    c = _load(tmp_path / "myset", tmp_path / "c3", val_size=3)
    assert c.sizes() == a.sizes()


def test_val_folder_as_test_split(tmp_path):
    root = make_imagefolder(tmp_path / "s", per_class=(4, 3), test_name="val")
    d = _load(root, tmp_path / "c", val_size=3)
    assert d.sizes()["test"] == 9


def test_cache_hit_and_invalidation(tmp_path):
    root = make_imagefolder(tmp_path / "s", per_class=(4, 2))
    a = _load(root, tmp_path / "c", val_size=3)
    assert a.info["cache_hit"] is False and os.path.isfile(a.info["cache"])
    b = _load(root, tmp_path / "c", val_size=3)
    assert b.info["cache_hit"] is True and b.info["cache"] == a.info["cache"]
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    # a changed file changes the key: decoded again, the new pixels seen
    img = class_image("ant", 0)
    img[:] = 7
    Image.fromarray(img).save(root / "test" / "ant" / "000.png")
    c = _load(root, tmp_path / "c", val_size=3)
    assert c.info["cache_hit"] is False and c.info["cache"] != a.info["cache"]
    assert int(c.test_x[0].max()) == 7
    # a torn cache file is ignored and rebuilt
    with open(c.info["cache"], "wb") as f:
        f.write(b"junk")
    with pytest.warns(UserWarning, match="unreadable data cache"):
        e = _load(root, tmp_path / "c", val_size=3)
    assert e.info["cache_hit"] is False and torch.equal(e.test_x, c.test_x)


def test_env_cache_location(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "s", per_class=(4, 2))
    monkeypatch.setenv("PGNAS_CACHE", str(tmp_path / "envcache"))
    d = load_dataset("imagefolder", data_dir=str(root), val_size=3)
    assert d.info["cache"].startswith(str(tmp_path / "envcache"))


def test_parallel_decode_equals_serial(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "s", per_class=(30, 10))
    serial = _load(root, tmp_path / "c1", val_size=9, workers=1)
    monkeypatch.setattr(imf, "PARALLEL_MIN", 1)
    monkeypatch.setattr(imf, "CHUNK", 16)
    par = _load(root, tmp_path / "c2", val_size=9, workers=2)
    assert torch.equal(serial.train_x, par.train_x) and torch.equal(serial.test_x, par.test_x)


def test_modes_converted(tmp_path):
    root = make_imagefolder(tmp_path / "s", per_class=(4, 2))
    # one RGBA, one grayscale, one palette image among RGB ones: all become RGB
    Image.fromarray(class_image("ant", 0)).convert("RGBA").save(root / "train" / "ant" / "000.png")
    Image.new("L", (8, 8), 90).save(root / "train" / "bee" / "000.png")
    Image.fromarray(class_image("cat", 0)).convert("P").save(root / "train" / "cat" / "000.png")
    d = _load(root, tmp_path / "c", val_size=3)
    assert d.in_channels == 3
    full = torch.cat([d.train_x, d.val_x])
    assert any(bool((img == 90).all()) for img in full)  # the gray image, in all 3 channels


def test_all_grayscale_is_one_channel(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for c, v in (("a", 10), ("b", 200)):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(n):
                Image.new("L", (6, 6), v + k).save(tmp_path / split / c / f"{k}.png")
    d = _load(tmp_path, tmp_path / "cache", val_size=2)
    assert d.in_channels == 1 and d.train_x.shape[1:] == (1, 6, 6)


def test_image_size_resizes(tmp_path):
    root = make_imagefolder(tmp_path / "s", per_class=(4, 2))
    Image.fromarray(class_image("ant", 0, size=(12, 10))).save(root / "train" / "ant" / "000.png")
    with pytest.raises(PgnasError, match=r"000.png is 10x12 but the other images are 8x8"):
        _load(root, tmp_path / "c", val_size=3)
    d = _load(root, tmp_path / "c", val_size=3, image_size=5)
    assert d.image_size == (5, 5)
    with pytest.warns(UserWarning, match="skipped 1 "):
        s = _load(root, tmp_path / "c", val_size=3, skip_bad=True)
    assert s.info["skipped"] == 1 and s.sizes()["train"] + s.sizes()["val"] == 11


# ---------------------------------------------------------------------------- bad input
def test_missing_folder(tmp_path):
    with pytest.raises(PgnasError, match="does not exist"):
        _load(tmp_path / "nope", tmp_path / "c")
    with pytest.raises(PgnasError, match="needs --data-dir"):
        load_dataset("imagefolder")


def test_not_imagefolder(tmp_path):
    (tmp_path / "x" / "a").mkdir(parents=True)
    (tmp_path / "x" / "b").mkdir(parents=True)
    with pytest.raises(PgnasError, match=r"not an ImageFolder layout: it has no train/"):
        _load(tmp_path / "x", tmp_path / "c")
    f = tmp_path / "file.txt"
    f.write_text("hi")
    with pytest.raises(PgnasError, match="neither a folder nor"):
        _load(f, tmp_path / "c")


def test_no_test_split(tmp_path):
    root = make_imagefolder(tmp_path / "s")
    shutil.rmtree(root / "test")
    with pytest.raises(PgnasError, match=r"has no test/ or val/ folder"):
        _load(root, tmp_path / "c")


def test_loose_image_in_train(tmp_path):
    root = make_imagefolder(tmp_path / "s")
    Image.new("RGB", (8, 8)).save(root / "train" / "loose.png")
    with pytest.raises(PgnasError, match=r"loose.png lies directly in train/"):
        _load(root, tmp_path / "c")


def test_empty_class(tmp_path):
    root = make_imagefolder(tmp_path / "s")
    (root / "train" / "dog").mkdir()
    (root / "test" / "dog").mkdir()
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(PgnasError, match=r"empty class folder .*train/dog"):
        _load(root, tmp_path / "c")


def test_class_sets_differ(tmp_path):
    root = make_imagefolder(tmp_path / "s")
    shutil.rmtree(root / "test" / "cat")
    with pytest.raises(PgnasError, match=r"only in train/: cat; only in test/: -"):
        _load(root, tmp_path / "c")


@pytest.mark.parametrize("archive", [False, True])
def test_corrupt_image_named_or_skipped(tmp_path, archive):
    root = make_imagefolder(tmp_path / "s", per_class=(5, 2))
    (root / "train" / "bee" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "train" / "cat" / "003.jpg").write_bytes(b"")
    src = tar_gz(root, tmp_path / "s.tar.gz") if archive else root
    with pytest.raises(PgnasError, match=r"cannot read image .*bee/002\.png"):
        _load(src, tmp_path / "c", val_size=3)
    with pytest.warns(UserWarning, match="skipped 2 "):
        d = _load(src, tmp_path / "c", val_size=3, skip_bad=True)
    assert d.info["skipped"] == 2
    assert [f.rsplit("/", 2)[-2:] for f in d.info["skipped_files"]] == [["bee", "002.png"], ["cat", "003.jpg"]]
    assert d.sizes()["train"] + d.sizes()["val"] == 13
    assert d.describe_split()["skipped"] == 2


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "s.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08 not really gzip")
    with pytest.raises(PgnasError, match=r"cannot read archive .*s\.tar\.gz"):
        _load(bad, tmp_path / "c")


def test_errors_are_one_line(tmp_path):
    root = make_imagefolder(tmp_path / "s")
    shutil.rmtree(root / "test" / "cat")
    with pytest.raises(PgnasError) as e:
        _load(root, tmp_path / "c")
    assert "\n" not in str(e.value)
