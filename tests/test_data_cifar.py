"""CIFAR-10/100 readers on fake python-version archives; downloads; the shared CIFAR-10 JPEGs."""

from __future__ import annotations

import dataclasses
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from data_fixtures import SHARED_CIFAR_JPEG, make_cifar_archive
from pgnas.data import cifar, load_dataset
from pgnas.data.cache import cache_root
from pgnas.data.download import md5_file
from pgnas.errors import PgnasError


def _check_against(d, fake, n_val):
    full_x = torch.from_numpy(fake["train_x"])
    full_y = torch.from_numpy(fake["train_y"])
    val_idx = d.val_indices
    assert len(val_idx) == n_val and len(set(val_idx.tolist())) == n_val
    keep = torch.ones(len(full_y), dtype=torch.bool)
    keep[val_idx] = False
    assert torch.equal(d.val_x, full_x[val_idx]) and torch.equal(d.val_y, full_y[val_idx])
    assert torch.equal(d.train_x, full_x[keep]) and torch.equal(d.train_y, full_y[keep])
    assert torch.equal(d.test_x, torch.from_numpy(fake["test_x"]))
    assert torch.equal(d.test_y, torch.from_numpy(fake["test_y"]))
    assert d.classes == fake["classes"]


@pytest.mark.parametrize("extract", [False, True])
def test_cifar10_archive_and_folder(tmp_path, extract):
    fake = make_cifar_archive(tmp_path / "data", "cifar10", per_batch=20, extract=extract)
    d = load_dataset("cifar10", data_dir=str(tmp_path / "data"), data_cache=str(tmp_path / "c"), val_size=20)
    assert d.sizes() == {"train": 80, "val": 20, "test": 20}
    assert d.image_size == (32, 32) and d.in_channels == 3 and d.num_classes == 10
    assert torch.bincount(d.val_y, minlength=10).tolist() == [2] * 10  # stratified
    _check_against(d, fake, 20)
    assert (d.augment.crop_pad, d.augment.flip, d.augment.cutout) == (4, True, 16)
    again = load_dataset("cifar10", data_dir=str(tmp_path / "data"), data_cache=str(tmp_path / "c"), val_size=20)
    assert again.info["cache_hit"] and torch.equal(again.train_x, d.train_x)


def test_cifar100_fine_labels(tmp_path):
    fake = make_cifar_archive(tmp_path, "cifar100", per_batch=40)
    d = load_dataset("cifar100", data_dir=str(tmp_path), data_cache=str(tmp_path / "c"), val_size=100)
    assert d.num_classes == 100 and d.sizes() == {"train": 100, "val": 100, "test": 100}
    _check_against(d, fake, 100)


def test_split_seed_changes_split(tmp_path):
    make_cifar_archive(tmp_path, "cifar10")
    a = load_dataset("cifar10", data_dir=str(tmp_path), data_cache=str(tmp_path / "c"), val_size=10, split_seed=0)
    b = load_dataset("cifar10", data_dir=str(tmp_path), data_cache=str(tmp_path / "c"), val_size=10, split_seed=1)
    c = load_dataset("cifar10", data_dir=str(tmp_path), data_cache=str(tmp_path / "c"), val_size=10, split_seed=0)
    assert not torch.equal(a.val_indices, b.val_indices) and torch.equal(a.val_indices, c.val_indices)


def test_absent_offline_names_file_and_folder(tmp_path):
    with pytest.raises(PgnasError, match=rf"put cifar-10-python.tar.gz .* into {tmp_path}"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    with pytest.raises(PgnasError, match=rf"put cifar-100-python.tar.gz .* into {tmp_path}"):
        load_dataset("cifar100", data_dir=str(tmp_path))


def test_official_urls_and_checksums():
    assert cifar.CIFAR10.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert cifar.CIFAR10.md5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar.CIFAR100.url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert cifar.CIFAR100.md5 == "eb9058c3a382ffc7106e4002c42a8d85"


def _serve(monkeypatch, tmp_path, md5: str | None):
    """Point the cifar10 source at a local file:// copy of a fake archive."""
    fake = make_cifar_archive(tmp_path / "origin", "cifar10")
    src = dataclasses.replace(cifar.CIFAR10, url=fake["path"].as_uri(), md5=md5 or md5_file(fake["path"]))
    monkeypatch.setitem(cifar.SOURCES, "cifar10", src)
    return fake


def test_download_checked(tmp_path, monkeypatch):
    fake = _serve(monkeypatch, tmp_path, md5=None)
    dest = tmp_path / "dl"
    d = load_dataset("cifar10", data_dir=str(dest), download=True, data_cache=str(tmp_path / "c"), val_size=10)
    assert (dest / "cifar-10-python.tar.gz").is_file() and not (dest / "cifar-10-python.tar.gz.part").exists()
    assert torch.equal(d.test_x, torch.from_numpy(fake["test_x"]))


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    _serve(monkeypatch, tmp_path, md5="0" * 32)
    dest = tmp_path / "dl"
    with pytest.raises(PgnasError, match=r"checksum mismatch: .* expected 0{32}"):
        load_dataset("cifar10", data_dir=str(dest), download=True, data_cache=str(tmp_path / "c"))
    assert not any(dest.iterdir())  # nothing half-downloaded kept


def test_present_archive_checked_when_download_asked(tmp_path):
    make_cifar_archive(tmp_path, "cifar10")  # not the official bytes
    with pytest.raises(PgnasError, match=r"checksum mismatch: .*cifar-10-python.tar.gz has md5 .* expected c58f3010"):
        load_dataset("cifar10", data_dir=str(tmp_path), download=True, data_cache=str(tmp_path / "c"))


def test_download_offline_error(tmp_path, monkeypatch):
    src = dataclasses.replace(cifar.CIFAR10, url=(tmp_path / "missing.tar.gz").as_uri())
    monkeypatch.setitem(cifar.SOURCES, "cifar10", src)
    with pytest.raises(PgnasError, match=rf"cannot download .*put cifar-10-python.tar.gz into {tmp_path / 'dl'} by hand"):
        load_dataset("cifar10", data_dir=str(tmp_path / "dl"), download=True)


def test_corrupt_and_foreign_archives(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"garbage")
    with pytest.raises(PgnasError, match="cannot read archive"):
        load_dataset("cifar10", data_dir=str(tmp_path), data_cache=str(tmp_path / "c"))
    other = tmp_path / "o"
    other.mkdir()
    with tarfile.open(other / "cifar-10-python.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("something/else.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(PgnasError, match=r"lacks cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", data_dir=str(other), data_cache=str(tmp_path / "c"))


def test_unsafe_pickle_refused(tmp_path):
    make_cifar_archive(tmp_path, "cifar10", extract=True)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(PgnasError, match=r"data_batch_3 is not a CIFAR python batch: .*builtins.print is not allowed"):
        load_dataset("cifar10", data_dir=str(tmp_path), data_cache=str(tmp_path / "c"))


def test_wrong_batch_shape(tmp_path):
    make_cifar_archive(tmp_path, "cifar10", extract=True)
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(PgnasError, match=r"test_batch: expected uint8 images of 3x32x32"):
        load_dataset("cifar10", data_dir=str(tmp_path), data_cache=str(tmp_path / "c"))


def test_download_other_dataset_refused():
    with pytest.raises(PgnasError, match="--download applies to cifar10 and cifar100"):
        load_dataset("imagefolder", data_dir="x", download=True)


# ---------------------------------------------------------------------------- the real thing
@pytest.mark.skipif(not SHARED_CIFAR_JPEG.is_file(), reason=f"shared CIFAR-10 JPEG archive absent ({SHARED_CIFAR_JPEG})")
def test_shared_cifar10_jpeg():
    """Uses the user cache ($PGNAS_CACHE or ~/.cache/pgnas): about 15 s the first time, ~1 s after."""
    from pgnas.data.imagefolder import load_imagefolder_arrays

    d = load_dataset("cifar10", data_dir=str(SHARED_CIFAR_JPEG.parent))
    assert d.info["cache"].startswith(str(cache_root()))
    assert d.sizes() == {"train": 45_000, "val": 5_000, "test": 10_000}
    assert d.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert d.image_size == (32, 32) and d.in_channels == 3
    assert torch.bincount(torch.cat([d.train_y, d.val_y])).tolist() == [5_000] * 10
    assert torch.bincount(d.val_y).tolist() == [500] * 10
    assert torch.bincount(d.test_y).tolist() == [1_000] * 10
    # no overlap: the two splits are complementary positions of the decoded training set
    entry, _ = load_imagefolder_arrays(SHARED_CIFAR_JPEG, dataset="cifar10-jpeg", image_size=(32, 32), skip_bad=False, cache_dir=None)
    keep = torch.ones(50_000, dtype=torch.bool)
    keep[d.val_indices] = False
    assert len(set(d.val_indices.tolist())) == 5_000
    assert torch.equal(d.train_x, entry["train_x"][keep]) and torch.equal(d.val_x, entry["train_x"][d.val_indices])
    # channel means of the training images, as published for CIFAR-10 (JPEG: within 0.005)
    assert np.allclose(d.mean, (0.4914, 0.4822, 0.4465), atol=5e-3)


def test_resize_uint8_averages_pixel_blocks_when_halving():
    from pgnas.data.tensor_data import resize_uint8

    x = torch.randint(0, 256, (3, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.int64).to(torch.uint8)
    small = resize_uint8(x, (4, 4))
    blocks = x.double().reshape(3, 3, 4, 2, 4, 2).mean((3, 5))
    assert small.dtype == torch.uint8 and small.shape == (3, 3, 4, 4)
    assert (small.double() - blocks).abs().max() <= 0.5 + 1e-9  # rounded block means
    assert resize_uint8(x, (8, 8)) is x
    assert resize_uint8(x, (12, 12)).shape == (3, 3, 12, 12)
