"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the official "python version" archives.

``--data-dir`` holds ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` or their extracted
folders (``cifar-10-batches-py/``, ``cifar-100-python/``); ``--download`` fetches a missing
archive from the official address and checks the official md5. For CIFAR-10 the folder may
instead hold the ImageFolder JPEG copy ``cifar10-jpeg.tar.gz`` (or ``cifar10-jpeg/``), read with
the ImageFolder reader at the data set's fixed 32x32 RGB.

The batches are pickles of numpy arrays; they are read with an unpickler that accepts nothing
but numpy arrays and plain containers. Decoded arrays are cached like every small data set.
CIFAR-100 uses its 100 fine labels.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgnas.data import cache as dcache
from pgnas.data.augment import AugmentSpec
from pgnas.data.download import check_md5, download
from pgnas.data.tensor_data import TensorSplits, split_train_val
from pgnas.errors import PgnasError

DEFAULT_DATA_DIR = "data"
DEFAULT_VAL = 5000  # of the 50,000 training images, stratified (the paper's 45k/5k)
CIFAR_AUGMENT = AugmentSpec(crop_pad=4, flip=True, cutout=16)


@dataclass(frozen=True)
class CifarSource:
    name: str
    url: str
    filename: str
    md5: str
    folder: str  # the archive's top folder
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    jpeg_names: tuple[str, ...] = ()


CIFAR10 = CifarSource(
    name="cifar10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    filename="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    jpeg_names=("cifar10-jpeg.tar.gz", "cifar10-jpeg.tgz", "cifar10-jpeg"),
)
CIFAR100 = CifarSource(
    name="cifar100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    filename="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
)
SOURCES = {"cifar10": CIFAR10, "cifar100": CIFAR100}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, bytes, lists and dicts; refuses any other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001
        raise PgnasError(f"{where} is not a CIFAR python batch: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise PgnasError(f"{where} is not a CIFAR python batch: it holds a {type(obj).__name__}, not a dict")
    return obj


def _batch_arrays(batch: dict, src: CifarSource, where: str) -> tuple[np.ndarray, np.ndarray]:
    data = batch.get(b"data")
    labels = batch.get(src.label_key)
    if data is None or labels is None:
        raise PgnasError(f"{where} is not a {src.name} batch: it lacks the b'data' or {src.label_key!r} entry")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise PgnasError(f"{where}: expected uint8 images of 3x32x32 = 3072 values per row, got {data.dtype} {data.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise PgnasError(f"{where}: {labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32), labels


def _read_members(src: CifarSource, path: Path) -> dict[str, bytes]:
    """The batch and meta files, from the extracted folder or the archive."""
    wanted = (*src.train_files, *src.test_files, src.meta_file)
    if path.is_dir():
        out = {}
        for name in wanted:
            f = path / name
            if not f.is_file():
                raise PgnasError(f"{path} lacks {name}: not a complete {src.folder} folder (extract {src.filename} again)")
            out[name] = f.read_bytes()
        return out
    out = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in wanted and m.name.strip("./").startswith(src.folder + "/"):
                    out[base] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PgnasError(f"cannot read archive {path}: {exc} (delete it and download again)") from None
    missing = [n for n in wanted if n not in out]
    if missing:
        raise PgnasError(f"archive {path} lacks {src.folder}/{missing[0]}: not the {src.filename} archive")
    return out


def decode_cifar(src: CifarSource, path: Path) -> dict:
    members = _read_members(src, path)
    meta = _unpickle(members[src.meta_file], f"{path}/{src.meta_file}")
    names = meta.get(src.names_key)
    if not names:
        raise PgnasError(f"{path}/{src.meta_file} lacks the class names ({src.names_key!r})")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    def load(files):
        xs, ys = zip(*(_batch_arrays(_unpickle(members[f], f"{path}/{f}"), src, f"{path}/{f}") for f in files))
        x, y = np.concatenate(xs), np.concatenate(ys)
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise PgnasError(f"{path}: labels outside 0..{len(classes) - 1}")
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    train_x, train_y = load(src.train_files)
    test_x, test_y = load(src.test_files)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "classes": classes,
            "skipped": 0, "skipped_files": []}


def locate(src: CifarSource, data_dir: Path, download_ok: bool) -> Path:
    """The extracted folder, the archive, or (CIFAR-10) the JPEG copy in ``data_dir``."""
    if data_dir.is_dir() and (data_dir / src.meta_file).is_file() and data_dir.name == src.folder:
        return data_dir
    folder = data_dir / src.folder
    if folder.is_dir():
        return folder
    archive = data_dir / src.filename
    if archive.is_file():
        if download_ok:  # asked to fetch: make sure what is there is the official file
            check_md5(archive, src.md5)
        return archive
    for jpeg in src.jpeg_names:
        if (data_dir / jpeg).exists():
            return data_dir / jpeg
    if download_ok:
        return download(src.url, archive, src.md5)
    raise PgnasError(
        f"{src.name} not found: put {src.filename} (from {src.url}) or its extracted {src.folder}/ into {data_dir}, "
        f"or pass --download"
    )


def load_cifar(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    val_size: float | int | None = None,
    split_seed: int = 0,
    augment: AugmentSpec | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> TensorSplits:
    """CIFAR-10/100 with a validation split carved from training. ``image_size`` (e.g. 16) resizes
    the 32x32 images (area averaging when smaller): a quarter of the compute for quick studies."""
    src = SOURCES[name]
    root = Path(data_dir or DEFAULT_DATA_DIR).expanduser()
    if root.exists() and not root.is_dir():
        raise PgnasError(f"--data-dir {root} is not a folder")
    path = locate(src, root, download)
    if path.name in src.jpeg_names:
        from pgnas.data.imagefolder import load_imagefolder_arrays

        entry, info = load_imagefolder_arrays(path, dataset=name + "-jpeg", image_size=(32, 32), skip_bad=skip_bad, cache_dir=cache_dir, workers=workers)
        if entry["train_x"].shape[1] != 3:
            entry = {**entry, "train_x": entry["train_x"].expand(-1, 3, -1, -1).contiguous(), "test_x": entry["test_x"].expand(-1, 3, -1, -1).contiguous()}
        if len(entry["classes"]) != 10:
            raise PgnasError(f"{path} holds {len(entry['classes'])} class folders, CIFAR-10 has 10")
        info["format"] = "jpeg"
    else:
        if path.is_dir():
            files = [path / f for f in (*src.train_files, *src.test_files, src.meta_file)]
            digest = "tree:" + dcache.tree_fingerprint([f for f in files if f.exists()], path)
        else:
            digest = "sha256:" + dcache.file_digest(path)
        croot = dcache.cache_root(cache_dir)
        cpath = dcache.cache_path(croot, name, dcache.cache_key(name, digest))
        entry = dcache.load_entry(cpath)
        hit = entry is not None
        if entry is None:
            entry = decode_cifar(src, path)
            entry["source"] = str(path)
            dcache.save_entry(cpath, entry)
        info = {"cache": str(cpath), "cache_hit": hit, "source_checksum": digest, "skipped": 0, "skipped_files": [], "format": "python"}
    if image_size is not None:
        from pgnas.data.tensor_data import resize_uint8

        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        entry = {**entry, "train_x": resize_uint8(entry["train_x"], size), "test_x": resize_uint8(entry["test_x"], size)}
        info["image_size"] = list(size)
    return split_train_val(
        name,
        entry["train_x"],
        entry["train_y"],
        entry["test_x"],
        entry["test_y"],
        classes=entry["classes"],
        val_size=DEFAULT_VAL if val_size is None else val_size,
        split_seed=split_seed,
        augment=augment or CIFAR_AUGMENT,
        source=str(path),
        info=info,
    )
