"""ImageNet (ILSVRC-2012) in its standard ImageFolder layout, streamed: never loaded whole.

``--data-dir`` holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the validation images
sorted into class folders, as the usual ``valprep.sh`` does). The held-out validation split used
to select networks is carved from train/ (stratified, seeded); ILSVRC's val/ is the test split,
used only to report. DataLoader worker processes decode every image on the fly with the standard
transforms, written with Pillow: training, a random resized crop (scale 0.08-1, aspect 3/4-4/3)
to 224; evaluation, the shorter side resized to 256 and a centre crop of 224. The flip, optional
AutoAugment and cutout, and the normalisation then act on whole batches as for the tensor sets.
Per-image randomness comes from seeds drawn from the run's generator, so epochs are reproducible
with any number of workers.

An unreadable image is found when a worker first reads it: a one-line error naming the file, or
with ``skip_bad`` a skip, counted in ``skipped``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from pgnas.data.augment import AugmentSpec, EpochDraws
from pgnas.data.imagefolder import default_workers, find_tree_root, parse_layout, scan_tree
from pgnas.data.splits import stratified_split
from pgnas.errors import PgnasError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP = 224
DEFAULT_AUGMENT = AugmentSpec(crop_pad=0, flip=True, cutout=0)
EVAL_CACHE_BYTES = 8 << 30  # decode an evaluation split once and keep it when it is at most this big


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of the standard Inception-style random crop."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w)
            top = rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height  # fallback: the centre crop of the clamped aspect ratio
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int, resize: int, crop: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Size after resizing the shorter side to ``resize``, and the centre ``crop`` box in it."""
    if width <= height:
        nw, nh = resize, int(resize * height / width)
    else:
        nw, nh = int(resize * width / height), resize
    left, top = int(round((nw - crop) / 2)), int(round((nh - crop) / 2))
    return (nw, nh), (left, top, left + crop, top + crop)


class ImageFiles(Dataset):
    """Files decoded by DataLoader workers; an item key is (index, seed)."""

    def __init__(self, paths: list[str], labels: list[int], train: bool, crop: int, resize: int):
        self.paths, self.labels, self.train, self.crop, self.resize = paths, labels, train, crop, resize

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int, seed: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
            if self.train:
                box = random_resized_crop_box(im.width, im.height, random.Random(seed))
                im = im.resize((self.crop, self.crop), Image.BILINEAR, box=box)
            else:
                size, box = center_crop_box(im.width, im.height, self.resize, self.crop)
                im = im.resize(size, Image.BILINEAR).crop(box)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        try:
            return torch.from_numpy(self.load(i, seed)), self.labels[i], i, ""
        except Exception as exc:  # noqa: BLE001 - reported, with the file, in the main process
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return torch.zeros(3, self.crop, self.crop, dtype=torch.uint8), -1, i, f"{self.paths[i]} ({msg})"


class _Batches:
    """A batch sampler whose batches the stream replaces before each pass (persistent workers)."""

    def __init__(self) -> None:
        self.batches: list = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ImageNetStream:
    """The :class:`~pgnas.data.TensorSplits` interface over a streamed ImageFolder tree."""

    def __init__(self, data_dir, *, val_size=None, split_seed=0, augment=None, crop=CROP, skip_bad=False, workers=None, name="imagenet"):
        if not data_dir:
            raise PgnasError("dataset imagenet needs --data-dir PATH: the ILSVRC-2012 folder with train/<wnid>/ and val/<wnid>/")
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise PgnasError(f"data folder {path} does not exist or is not a folder")
        root = find_tree_root(path)
        files, dirs = scan_tree(root, ("train", "val"))
        if (root / "val").is_dir() and any(f.count("/") == 1 and f.lower().endswith((".jpeg", ".jpg", ".png")) for f in files):
            raise PgnasError(
                f"{root}/val holds its images directly, not in val/<wnid>/ class folders: sort them into class folders first (e.g. ILSVRC's valprep.sh)"
            )
        layout = parse_layout(files, dirs, str(root), "train", ("val",))
        self.name = name
        self.root = root
        self.classes = layout.classes
        train_paths = [str(root / f) for f, _ in layout.splits["train"]]
        train_labels = torch.tensor([c for _, c in layout.splits["train"]], dtype=torch.long)
        if val_size is None:
            val_size = 10_000 if len(train_paths) > 100_000 else 0.1
        keep, held = stratified_split(train_labels, val_size, split_seed)
        self.val_indices = held
        self.split_seed = split_seed
        self.crop = int(crop)
        self.resize = int(round(self.crop * 256 / 224))
        tl = train_labels.tolist()
        self._train = ImageFiles([train_paths[i] for i in keep.tolist()], [tl[i] for i in keep.tolist()], True, self.crop, self.resize)
        self._val = ImageFiles([train_paths[i] for i in held.tolist()], [tl[i] for i in held.tolist()], False, self.crop, self.resize)
        self._test = ImageFiles([str(root / f) for f, _ in layout.splits["val"]], [c for _, c in layout.splits["val"]], False, self.crop, self.resize)
        self.augment = augment or DEFAULT_AUGMENT
        self.mean, self.std = MEAN, STD
        self.skip_bad = bool(skip_bad)
        self.skipped = 0
        self.skipped_files: list[str] = []
        self.workers = default_workers(32) if workers is None else int(workers)
        self.source = str(root)
        self.info = {"cache": None, "cache_hit": False, "streamed": True, "ignored_files": layout.ignored}
        self.eval_cache_bytes = EVAL_CACHE_BYTES
        self._decoded: dict[str, tuple[Tensor, Tensor]] = {}
        self._norm: dict = {}
        self._loaders: dict = {}

    # ------------------------------------------------------------------ facts
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 3

    @property
    def image_size(self) -> tuple[int, int]:
        return self.crop, self.crop

    def sizes(self) -> dict[str, int]:
        return {"train": len(self._train), "val": len(self._val), "test": len(self._test)}

    def describe_split(self) -> dict:
        return {**self.sizes(), "split_seed": self.split_seed, "val_indices": self.val_indices.tolist(), "source": self.source,
                "skipped": self.skipped, "skipped_files": self.skipped_files[:20]}

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self._train) // batch_size)

    def to(self, device) -> "ImageNetStream":
        return self  # streamed: batches move to the device as they are drawn

    # ------------------------------------------------------------------ batches
    def _loader(self, ds: ImageFiles, keys: list[list[tuple[int, int]]]):
        """Batches of ``keys`` decoded by this split's DataLoader. One DataLoader per split, made
        once with persistent workers (``workers`` processes: the CPU count by default, at most 32),
        so an epoch does not start new processes; each call only hands it new batches of keys."""
        if self.workers == 0:
            for batch in keys:
                yield default_collate([ds[k] for k in batch])
            return
        name = id(ds)
        if name not in self._loaders:
            sampler = _Batches()
            loader = DataLoader(ds, batch_sampler=sampler, num_workers=self.workers, pin_memory=torch.cuda.is_available(),
                                persistent_workers=True, prefetch_factor=4,
                                multiprocessing_context="fork" if os.name == "posix" else None)
            self._loaders[name] = (sampler, loader)
        sampler, loader = self._loaders[name]
        sampler.batches = keys
        yield from loader

    def _checked(self, x: Tensor, y: Tensor, errors) -> tuple[Tensor, Tensor]:
        bad = [e for e in errors if e]
        if not bad:
            return x, y
        if not self.skip_bad:
            raise PgnasError(f"cannot read image {bad[0]} (pass skip_bad / --skip-bad to skip unreadable images)")
        self.skipped += len(bad)
        self.skipped_files += [e.split(" (")[0] for e in bad]
        keep = y >= 0
        return x[keep], y[keep]

    def normalise(self, x: Tensor) -> Tensor:
        key = x.device
        if key not in self._norm:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            self._norm[key] = (1.0 / (255.0 * std), -mean / std)
        scale, shift = self._norm[key]
        return x.float() * scale + shift

    def train_batches(self, batch_size: int, generator: torch.Generator, device="cpu", augment: AugmentSpec | None = None,
                      *, rank: int = 0, world_size: int = 1, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of batches decoded by the workers, from batch ``start`` on. The epoch's order,
        crops and augmentation come from ``generator``, drawn before the first batch. Under data
        parallelism every rank passes an identically seeded ``generator`` and decodes only its
        1/world_size share of each global batch (a distributed sampler over the same global order)."""
        spec = self.augment if augment is None else augment
        n = len(self._train)
        steps = self.steps_per_epoch(batch_size)
        perm = torch.randperm(n, generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (steps * batch_size,), generator=generator).tolist()
        draws = EpochDraws.draw(dataclasses.replace(spec, crop_pad=0), steps * batch_size, steps, self.image_size, generator, device)
        local = batch_size // world_size
        keys, starts = [], []
        for s in range(start, steps):
            lo = s * batch_size + rank * local
            keys.append(list(zip(perm[lo : lo + local], seeds[lo : lo + local])))
            starts.append((lo, s))
        for (x, y, _, err), (lo, s) in zip(self._loader(self._train, keys), starts):
            x, y = self._checked(x, y, err)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = draws.apply_uint8(x, spec, lo, s)
            x = draws.apply_cutout(self.normalise(x), spec, lo)
            yield x, y

    def _split(self, split: str) -> ImageFiles:
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        return self._val if split == "val" else self._test

    def _decoded_split(self, split: str) -> tuple[Tensor, Tensor] | None:
        """The whole evaluation split decoded once (uint8, CPU memory) when it fits in
        ``eval_cache_bytes``: candidate scoring reads the validation split once per round of
        candidates, so it is decoded once instead of every round. Unreadable images (with
        ``skip_bad``) have label -1 and are left out of the batches."""
        ds = self._split(split)
        if len(ds) * 3 * self.crop * self.crop > self.eval_cache_bytes:
            return None
        if split not in self._decoded:
            xs, ys = [], []
            keys = [[(i, 0) for i in range(s, min(s + 256, len(ds)))] for s in range(0, len(ds), 256)]
            for x, y, _, err in self._loader(ds, keys):
                if any(err):
                    self._checked(x, y, err)  # raises naming the file, or counts the skips
                xs.append(x)
                ys.append(y)
            self._decoded[split] = (torch.cat(xs), torch.cat(ys))
        return self._decoded[split]

    def eval_batches(self, split: str, batch_size: int, device="cpu", indices=None) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised batches of ``split`` in order, or of its images at ``indices`` in that order
        (the same images in the same order every call)."""
        ds = self._split(split)
        order = list(range(len(ds))) if indices is None else [int(i) for i in torch.as_tensor(indices).tolist()]
        cached = self._decoded_split(split)
        if cached is not None:
            x_all, y_all = cached
            idx = torch.tensor(order, dtype=torch.long)
            for s in range(0, len(idx), batch_size):
                part = idx[s : s + batch_size]
                x, y = x_all.index_select(0, part), y_all.index_select(0, part)
                ok = y >= 0
                if not bool(ok.all()):
                    x, y = x[ok], y[ok]
                yield self.normalise(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            return
        keys = [[(i, 0) for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
        for x, y, _, err in self._loader(ds, keys):
            x, y = self._checked(x, y, err)
            yield self.normalise(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)


def load_imagenet(data_dir, *, val_size=None, split_seed=0, augment=None, image_size=None, skip_bad=False, workers=None) -> ImageNetStream:
    crop = CROP if image_size is None else (image_size if isinstance(image_size, int) else image_size[0])
    return ImageNetStream(data_dir, val_size=val_size, split_seed=split_seed, augment=augment, crop=crop, skip_bad=skip_bad, workers=workers)
