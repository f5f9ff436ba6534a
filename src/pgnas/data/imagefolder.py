"""ImageFolder data sets: ``train/<class>/*`` and ``test/<class>/*`` (or ``val/<class>/*``) of
JPEG/PNG files, as a folder tree or a ``.tar.gz`` of one, decoded once (in parallel worker
processes) into uint8 tensors and cached.

Classes are the sorted class-folder names; images are taken in sorted path order (folders
below a class folder included). Grayscale, palette and RGBA images are converted: the data set
is 1-channel when every image is grayscale, RGB otherwise. Images must share one size unless the
caller gives ``image_size`` (then every image is resized to it). Files other than .jpg/.jpeg/.png
are ignored and counted.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pgnas.data import cache as dcache
from pgnas.data.augment import AugmentSpec
from pgnas.data.tensor_data import TensorSplits, split_train_val
from pgnas.errors import PgnasError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
EVAL_SPLITS = ("test", "val")
PARALLEL_MIN = 2048  # fewer images than this are decoded in-process (no worker start-up)
CHUNK = 512
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


# ---------------------------------------------------------------------------- layout
@dataclass
class Layout:
    """What an ImageFolder tree holds: classes and, per split, (relative path, label) pairs."""

    where: str  # the tree's root as shown in messages
    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]
    eval_split: str
    ignored: int = 0
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False)  # archive members' bytes


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX")


def find_tree_root(path: Path, train: str = "train") -> Path:
    """``path`` when it holds ``train/``, or its only sub-folder when that one does."""
    if (path / train).is_dir():
        return path
    subs = [d for d in path.iterdir() if d.is_dir() and not _hidden(d.name)]
    if len(subs) == 1 and (subs[0] / train).is_dir():
        return subs[0]
    raise PgnasError(
        f"{path} is not an ImageFolder layout: it has no {train}/ folder "
        f"(expected {train}/<class>/*.jpg|png and test/<class>/*.jpg|png)"
    )


def scan_tree(root: Path, splits: tuple[str, ...]) -> tuple[list[str], set[str]]:
    """Files and folders (posix paths relative to ``root``) below the given split folders."""
    files, dirs = [], set()
    for split in splits:
        top = root / split
        if not top.is_dir():
            continue
        dirs.add(split)
        for cur, dnames, fnames in os.walk(top):
            dnames[:] = sorted(d for d in dnames if not _hidden(d))
            rel = Path(cur).relative_to(root).as_posix()
            dirs.update(f"{rel}/{d}" for d in dnames)
            files.extend(f"{rel}/{f}" for f in fnames if not _hidden(f))
    return files, dirs


def scan_archive(path: Path, splits: tuple[str, ...]) -> tuple[list[str], set[str], dict[str, bytes], str]:
    """Read a tar archive once: its image members' bytes under ``[prefix/]<split>/``."""
    files, dirs, blobs = [], set(), {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                name = m.name.strip("/")
                while name.startswith("./"):
                    name = name[2:]
                parts = name.split("/")
                if any(_hidden(p) for p in parts) or not (set(parts) & set(splits)):
                    continue
                if m.isdir():
                    dirs.add(name)
                elif m.isfile():
                    files.append(name)
                    if name.lower().endswith(IMAGE_EXTS):
                        blobs[name] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PgnasError(f"cannot read archive {path}: {exc}") from None
    # the tree's root inside the archive: '' or one top folder
    prefix = ""
    if not any(f.split("/", 1)[0] in splits for f in files):
        tops = {f.split("/", 1)[0] for f in files if "/" in f}
        tops = {t for t in tops if any(f.startswith(f"{t}/{s}/") for s in splits for f in files)}
        if len(tops) != 1:
            raise PgnasError(
                f"archive {path} is not an ImageFolder layout: no train/ folder at its top or in a single top folder "
                f"(expected [top/]train/<class>/*.jpg|png and [top/]test/<class>/*.jpg|png)"
            )
        prefix = tops.pop() + "/"
    n = len(prefix)
    files = [f[n:] for f in files if f.startswith(prefix)]
    dirs = {d[n:] for d in dirs if d.startswith(prefix) and len(d) > n}
    blobs = {k[n:]: v for k, v in blobs.items() if k.startswith(prefix)}
    return files, dirs, blobs, prefix


def parse_layout(files: list[str], dirs: set[str], where: str, train: str = "train", evals: tuple[str, ...] = EVAL_SPLITS) -> Layout:
    """Classes and labelled files of a scanned tree, or a one-line error naming what is wrong."""

    def present(split: str) -> bool:
        return split in dirs or any(f.startswith(split + "/") for f in files)

    if not present(train):
        raise PgnasError(f"{where} is not an ImageFolder layout: it has no {train}/ folder")
    eval_split = next((s for s in evals if present(s)), None)
    if eval_split is None:
        raise PgnasError(f"{where} has no {' or '.join(f'{s}/' for s in evals)} folder beside {train}/ (expected {evals[0]}/<class>/*.jpg|png)")
    per_split: dict[str, dict[str, list[str]]] = {}
    ignored = 0
    for split in (train, eval_split):
        classes: dict[str, list[str]] = {}
        for d in dirs:
            parts = d.split("/")
            if len(parts) >= 2 and parts[0] == split:
                classes.setdefault(parts[1], [])
        for f in files:
            parts = f.split("/")
            if parts[0] != split:
                continue
            if len(parts) == 2:
                if f.lower().endswith(IMAGE_EXTS):
                    raise PgnasError(f"{where}/{f} lies directly in {split}/: ImageFolder images go in {split}/<class>/")
                ignored += 1
                continue
            if f.lower().endswith(IMAGE_EXTS):
                classes.setdefault(parts[1], []).append(f)
            else:
                classes.setdefault(parts[1], [])
                ignored += 1
        if not classes:
            raise PgnasError(f"{where}/{split} has no class folders (expected {split}/<class>/*.jpg|png)")
        for c, imgs in classes.items():
            if not imgs:
                raise PgnasError(f"empty class folder {where}/{split}/{c}: it holds no .jpg, .jpeg or .png images")
        per_split[split] = classes
    a, b = set(per_split[train]), set(per_split[eval_split])
    if a != b:
        only_a = ", ".join(sorted(a - b)) or "-"
        only_b = ", ".join(sorted(b - a)) or "-"
        raise PgnasError(
            f"class folders differ between {where}/{train} and {where}/{eval_split}: only in {train}/: {only_a}; only in {eval_split}/: {only_b}"
        )
    names = sorted(a)
    label = {c: i for i, c in enumerate(names)}
    splits = {
        s: [(f, label[c]) for c in names for f in sorted(per_split[s][c])] for s in (train, eval_split)
    }
    return Layout(where=where, classes=names, splits=splits, eval_split=eval_split, ignored=ignored)


def read_layout(path: Path, train: str = "train", evals: tuple[str, ...] = EVAL_SPLITS) -> tuple[Layout, Path]:
    """Scan a folder tree or an archive; returns the layout and the tree root (the archive for one)."""
    if not path.exists():
        raise PgnasError(f"data folder {path} does not exist")
    if path.is_file():
        if not is_archive(path):
            raise PgnasError(f"{path} is neither a folder nor a .tar.gz/.tgz/.tar archive of an ImageFolder tree")
        files, dirs, blobs, prefix = scan_archive(path, (train, *evals))
        layout = parse_layout(files, dirs, f"{path}:{prefix.rstrip('/')}" if prefix else str(path), train, evals)
        layout.blobs = blobs
        return layout, path
    root = find_tree_root(path, train)
    files, dirs = scan_tree(root, (train, *evals))
    return parse_layout(files, dirs, str(root), train, evals), root


# ---------------------------------------------------------------------------- decoding
def decode_image(src: bytes | str, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image as uint8 (H, W) for grayscale or (H, W, 3), resized to ``size`` (H, W) if given."""
    from PIL import Image

    with Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src) as im:
        im.load()
        gray = im.mode in GRAY_MODES
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit/float gray: scale to 8 bits
            a = np.asarray(im, dtype=np.float64)
            hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
            im = Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).round().astype(np.uint8), "L")
        im = im.convert("L" if gray else "RGB")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _decode_chunk(args: tuple[list, tuple[int, int] | None]) -> list:
    items, size = args
    out = []
    for src in items:
        try:
            out.append(decode_image(src, size))
        except Exception as exc:  # noqa: BLE001 - any decoder failure names the file
            out.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
    return out


def _pool_context():
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")  # workers use only Pillow and numpy
    return multiprocessing.get_context("spawn")


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under SLURM or taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_workers(cap: int = 8) -> int:
    return max(1, min(cap, usable_cpus()))


def decode_all(
    names: list[str],
    sources: list,
    size: tuple[int, int] | None,
    skip_bad: bool,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode ``sources`` (bytes or file paths) into uint8 (N, C, H, W).

    Returns the images, the positions kept, and the names skipped (only with ``skip_bad``;
    otherwise the first unreadable image or one of another size is a one-line error)."""
    workers = default_workers() if workers is None else max(1, workers)
    chunks = [(sources[i : i + CHUNK], size) for i in range(0, len(sources), CHUNK)]
    if workers > 1 and len(sources) >= PARALLEL_MIN:
        with _pool_context().Pool(min(workers, len(chunks))) as pool:
            results = [r for chunk in pool.imap(_decode_chunk, chunks) for r in chunk]
    else:
        results = [r for chunk in map(_decode_chunk, chunks) for r in chunk]

    skipped: list[str] = []
    bad = [i for i, r in enumerate(results) if isinstance(r, str)]
    if bad and not skip_bad:
        i = bad[0]
        raise PgnasError(f"cannot read image {names[i]}: {results[i]} (pass skip_bad / --skip-bad to skip unreadable images)")
    skipped += [names[i] for i in bad]
    ok = [i for i, r in enumerate(results) if not isinstance(r, str)]
    if not ok:
        raise PgnasError(f"no readable image among {len(names)} files (first: {names[0]})")
    shapes = Counter(results[i].shape[:2] for i in ok)
    ref = shapes.most_common(1)[0][0]
    odd = [i for i in ok if results[i].shape[:2] != ref]
    if odd and not skip_bad:
        i = odd[0]
        h, w = results[i].shape[:2]
        raise PgnasError(
            f"image {names[i]} is {w}x{h} but the other images are {ref[1]}x{ref[0]}; "
            f"give an image size to resize them all (image_size / --image-size) or pass --skip-bad to skip such images"
        )
    if odd:
        skipped += [names[i] for i in odd]
        odd_set = set(odd)
        ok = [i for i in ok if i not in odd_set]
    channels = 3 if any(results[i].ndim == 3 for i in ok) else 1
    out = np.empty((len(ok), channels, ref[0], ref[1]), dtype=np.uint8)
    for j, i in enumerate(ok):
        a = results[i]
        if a.ndim == 2:
            out[j] = a[None]  # broadcast grayscale into every channel
        else:
            out[j] = a.transpose(2, 0, 1)
    return out, np.asarray(ok, dtype=np.int64), sorted(skipped)


def decode_layout(
    layout: Layout,
    root: Path,
    size: tuple[int, int] | None,
    skip_bad: bool,
    workers: int | None = None,
) -> dict:
    """Decode both splits of ``layout`` into a cache entry (tensors, classes, what was skipped)."""
    train, evs = "train", layout.eval_split
    order = layout.splits[train] + layout.splits[evs]
    names = [f"{layout.where}/{rel}" for rel, _ in order]
    if layout.blobs:
        sources = [layout.blobs[rel] for rel, _ in order]
    else:
        sources = [str(root / rel) for rel, _ in order]
    x, kept, skipped = decode_all(names, sources, size, skip_bad, workers)
    labels = torch.tensor([lab for _, lab in order], dtype=torch.long)[torch.from_numpy(kept)]
    n_train = len(layout.splits[train])
    is_train = torch.from_numpy(kept < n_train)
    xt = torch.from_numpy(x)
    for split, mask in (("train", is_train), ("test", ~is_train)):
        present = set(labels[mask].tolist())
        missing = [c for i, c in enumerate(layout.classes) if i not in present]
        if missing:
            folder = train if split == "train" else evs
            raise PgnasError(f"class folder {layout.where}/{folder}/{missing[0]} has no readable image left after skipping")
    return {
        "train_x": xt[is_train].contiguous(),
        "train_y": labels[is_train].contiguous(),
        "test_x": xt[~is_train].contiguous(),
        "test_y": labels[~is_train].contiguous(),
        "classes": list(layout.classes),
        "skipped": len(skipped),
        "skipped_files": skipped[:20],
        "ignored": layout.ignored,
        "eval_folder": evs,
    }


# ---------------------------------------------------------------------------- the data set
def load_imagefolder_arrays(
    path: str | os.PathLike,
    *,
    dataset: str,
    image_size: tuple[int, int] | None,
    skip_bad: bool,
    cache_dir: str | os.PathLike | None,
    workers: int | None = None,
) -> tuple[dict, dict]:
    """The decoded arrays of an ImageFolder tree or archive, from the cache when it holds them.

    Returns (entry, info) with info = cache path, whether it was a hit, the source checksum."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PgnasError(f"data folder {path} does not exist")
    layout = root = None
    if path.is_file():
        if not is_archive(path):
            raise PgnasError(f"{path} is neither a folder nor a .tar.gz/.tgz/.tar archive of an ImageFolder tree")
        digest = "sha256:" + dcache.file_digest(path)
    else:
        layout, root = read_layout(path)
        files = [root / rel for s in ("train", layout.eval_split) for rel, _ in layout.splits[s]]
        digest = "tree:" + dcache.tree_fingerprint(files, root)
    key = dcache.cache_key(dataset, digest, image_size, bool(skip_bad))
    croot = dcache.cache_root(cache_dir)
    cpath = dcache.cache_path(croot, dataset, key)
    entry = dcache.load_entry(cpath)
    hit = entry is not None
    if entry is None:
        if layout is None:
            layout, root = read_layout(path)
        entry = decode_layout(layout, root, image_size, skip_bad, workers)
        entry["source"] = str(path)
        entry["source_checksum"] = digest
        dcache.save_entry(cpath, entry)
    if entry.get("skipped"):
        first = entry["skipped_files"][0] if entry["skipped_files"] else "?"
        warnings.warn(f"skipped {entry['skipped']} unreadable or odd-sized image(s) in {path} (first: {first})", stacklevel=2)
    info = {"cache": str(cpath), "cache_hit": hit, "source_checksum": digest, "skipped": int(entry.get("skipped", 0)),
            "skipped_files": list(entry.get("skipped_files", [])), "ignored_files": int(entry.get("ignored", 0))}
    return entry, info


def default_augment(size: tuple[int, int]) -> AugmentSpec:
    """Pad-and-crop by an eighth of the side (4 px at 32) and mirror: the CIFAR recipe, scaled."""
    return AugmentSpec(crop_pad=max(1, round(min(size) / 8)), flip=True, cutout=0)


def load_imagefolder(
    data_dir: str | os.PathLike | None,
    *,
    val_size: float | int | None = None,
    split_seed: int = 0,
    augment: AugmentSpec | None = None,
    image_size: int | tuple[int, int] | None = None,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> TensorSplits:
    if not data_dir:
        raise PgnasError("dataset imagefolder needs --data-dir PATH: a folder with train/<class>/ and test/<class>/ image folders, or a .tar.gz of one")
    size = _size_pair(image_size)
    entry, info = load_imagefolder_arrays(data_dir, dataset="imagefolder", image_size=size, skip_bad=skip_bad, cache_dir=cache_dir, workers=workers)
    x, y = entry["train_x"], entry["train_y"]
    return split_train_val(
        "imagefolder",
        x,
        y,
        entry["test_x"],
        entry["test_y"],
        classes=entry["classes"],
        val_size=0.1 if val_size is None else val_size,
        split_seed=split_seed,
        augment=augment or default_augment(tuple(x.shape[2:])),
        source=str(data_dir),
        info=info,
    )


def _size_pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise PgnasError(f"image_size must be a positive side or (height, width), got {size!r}")
    return size
