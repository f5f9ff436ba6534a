"""Small data sets the data tests build themselves (imported by tests/test_data_*.py)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR_JPEG = (REPO / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz").resolve()

COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), "cat": (30, 30, 200)}


def class_image(cls: str, k: int, size=(8, 8), rng=None) -> np.ndarray:
    """A recognisable image: the class colour, with pixel (0, 0) carrying the index k."""
    a = np.empty((*size, 3), dtype=np.uint8)
    a[:] = COLOURS[cls]
    a[0, 0] = (k, k, k)
    return a


def make_imagefolder(root: Path, per_class=(4, 2), size=(8, 8), classes=tuple(COLOURS), test_name="test") -> Path:
    """train/<cls>/ and test/<cls>/ with PNG (even k) and JPEG (odd k) files."""
    for split, n in (("train", per_class[0]), (test_name, per_class[1])):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                img = Image.fromarray(class_image(cls, k, size))
                if k % 2 == 0:
                    img.save(d / f"{k:03d}.png")
                else:
                    img.save(d / f"{k:03d}.jpg", quality=95)
    return root


def tar_gz(src: Path, dest: Path, arcname: str | None = None) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=arcname or src.name)
    return dest


def _pickle_bytes(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def cifar_batch(n: int, num_classes: int, label_key: bytes, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return {b"data": data, label_key: labels.tolist(), b"batch_label": b"fake"}, data, labels


def make_cifar_archive(dest_dir: Path, kind: str = "cifar10", per_batch: int = 20, extract: bool = False) -> dict:
    """A CIFAR-format "python version" archive (or extracted folder) with random images."""
    if kind == "cifar10":
        folder, fname = "cifar-10-batches-py", "cifar-10-python.tar.gz"
        train_files, test_files, meta_file = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"
        key, names_key, nc = b"labels", b"label_names", 10
    else:
        folder, fname = "cifar-100-python", "cifar-100-python.tar.gz"
        train_files, test_files, meta_file = ["train"], ["test"], "meta"
        key, names_key, nc = b"fine_labels", b"fine_label_names", 100
    members, xs, ys = {}, {"train": [], "test": []}, {"train": [], "test": []}
    for i, f in enumerate(train_files + test_files):
        n = per_batch * (5 if kind == "cifar100" and f == "train" else 1)
        batch, data, labels = cifar_batch(max(n, nc), nc, key, seed=i)
        members[f] = _pickle_bytes(batch)
        split = "train" if f in train_files else "test"
        xs[split].append(data)
        ys[split].append(labels)
    names = [f"class{i:02d}".encode() for i in range(nc)]
    members[meta_file] = _pickle_bytes({names_key: names})
    dest_dir.mkdir(parents=True, exist_ok=True)
    if extract:
        (dest_dir / folder).mkdir()
        for name, b in members.items():
            (dest_dir / folder / name).write_bytes(b)
        path = dest_dir / folder
    else:
        path = dest_dir / fname
        with tarfile.open(path, "w:gz") as tf:
            for name, b in members.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(b)
                tf.addfile(info, io.BytesIO(b))
    return {
        "path": path,
        "train_x": np.concatenate(xs["train"]).reshape(-1, 3, 32, 32),
        "train_y": np.concatenate(ys["train"]),
        "test_x": np.concatenate(xs["test"]).reshape(-1, 3, 32, 32),
        "test_y": np.concatenate(ys["test"]),
        "classes": [n.decode() for n in names],
    }
