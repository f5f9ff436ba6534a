"""Data sets that live as tensors: uint8 images in memory (or on the GPU), batches drawn,
augmented and normalised as whole tensors.

:class:`TensorSplits` is the contract between the data stage and the search stage:
``train_batches`` (shuffled, augmented, an epoch at a time), ``eval_batches`` (the held-out
validation split or the test split, normalised), the class names, and how the splits were made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor

from pgnas.data.augment import AugmentSpec, EpochDraws
from pgnas.data.splits import stratified_split


@dataclass
class TensorSplits:
    name: str
    train_x: Tensor  # uint8 (N, C, H, W)
    train_y: Tensor  # int64 (N,)
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    val_indices: Tensor | None = None  # positions of the validation images in the source's training set
    split_seed: int = 0
    source: str = ""
    info: dict = field(default_factory=dict)  # where it came from: cache file, checksum, skipped files
    _eval_cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ facts
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}

    def describe_split(self) -> dict:
        return {
            **self.sizes(),
            "split_seed": self.split_seed,
            "val_indices": None if self.val_indices is None else self.val_indices.tolist(),
            "source": self.source,
            **{k: self.info[k] for k in ("source_checksum", "skipped", "skipped_files") if k in self.info},
        }

    def to(self, device: torch.device | str) -> "TensorSplits":
        """Move the uint8 images to ``device`` (data resident on the GPU for small sets)."""
        for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
            setattr(self, name, getattr(self, name).to(device))
        self._eval_cache.clear()
        return self

    # ------------------------------------------------------------------ batches
    def _normaliser(self, device) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return 1.0 / (255.0 * std), -mean / std

    def normalise(self, x: Tensor) -> Tensor:
        scale, shift = self._normaliser(x.device)
        return x.float() * scale + shift

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.train_y) // batch_size)

    def train_batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        augment: AugmentSpec | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled, augmented, normalised batches (the last partial batch dropped,
        unless the set is smaller than one batch), from batch ``start`` on.

        The epoch's order and augmentation come from ``generator``, all drawn before the first
        batch (one host-to-device copy an epoch), so an epoch started at batch ``start`` with an
        identically seeded generator continues exactly where an interrupted one stopped. Under data
        parallelism every rank passes an identically seeded ``generator``: all draw the same global
        order and rank r takes its 1/world_size share of each global batch."""
        spec = self.augment if augment is None else augment
        n = len(self.train_y)
        steps = self.steps_per_epoch(batch_size)
        perm = torch.randperm(n, generator=generator).to(self.train_x.device)
        draws = EpochDraws.draw(spec, max(n, steps * batch_size), steps, self.image_size, generator, device)
        scale, shift = self._normaliser(device)
        local = batch_size // world_size
        for s in range(start, steps):
            lo = s * batch_size + rank * local
            idx = perm[lo : lo + local]
            x = self.train_x.index_select(0, idx).to(device, non_blocking=True)
            y = self.train_y.index_select(0, idx).to(device, non_blocking=True)
            x = draws.apply_uint8(x, spec, lo, s)
            x = x.float() * scale + shift
            x = draws.apply_cutout(x, spec, lo)  # on normalised data: the square is the mean
            yield x, y

    def eval_tensors(self, split: str, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """The whole normalised ``val`` or ``test`` split on ``device`` (cached)."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        key = (split, str(device))
        if key not in self._eval_cache:
            x = getattr(self, f"{split}_x").to(device)
            y = getattr(self, f"{split}_y").to(device)
            self._eval_cache[key] = (self.normalise(x), y)
        return self._eval_cache[key]

    def eval_batches(
        self, split: str, batch_size: int, device: torch.device | str = "cpu", indices: Tensor | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised batches of ``split`` in order, or of its examples at ``indices`` in that order."""
        x, y = self.eval_tensors(split, device)
        if indices is None:
            for s in range(0, len(y), batch_size):
                yield x[s : s + batch_size], y[s : s + batch_size]
            return
        idx = torch.as_tensor(indices, dtype=torch.long).to(y.device)
        for s in range(0, len(idx), batch_size):
            part = idx[s : s + batch_size]
            yield x.index_select(0, part), y.index_select(0, part)


class TensorBatches:
    """Already normalised tensors (x, y) behind the ``eval_batches`` interface, as the "val" split
    (for scoring candidates on tensors a caller holds)."""

    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = x, y

    def sizes(self) -> dict[str, int]:
        return {"train": 0, "val": len(self.y), "test": 0}

    def eval_batches(self, split: str, batch_size: int, device=None, indices: Tensor | None = None):
        if split != "val":
            raise ValueError("TensorBatches holds one split, 'val'")
        x, y = self.x, self.y
        if indices is not None:
            idx = torch.as_tensor(indices, dtype=torch.long).to(y.device)
            x, y = x.index_select(0, idx), y.index_select(0, idx)
        for s in range(0, len(y), batch_size):
            yield x[s : s + batch_size], y[s : s + batch_size]


def resize_uint8(x: Tensor, size: tuple[int, int], chunk: int = 8192) -> Tensor:
    """uint8 images (N, C, H, W) resized to ``size``: area averaging when shrinking (exact means of
    pixel blocks for integer factors), bilinear when enlarging; rounded back to uint8."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    from torch.nn import functional as F

    mode = "area" if size[0] <= x.shape[2] and size[1] <= x.shape[3] else "bilinear"
    out = []
    for s in range(0, len(x), chunk):
        part = F.interpolate(x[s : s + chunk].float(), size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))
        out.append(part.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else x.new_zeros((0, x.shape[1], *size))


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units: exact, from each channel's
    histogram of the 256 values (no float copy of the whole set)."""
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1).cpu(), minlength=256).to(torch.float64)
        count = hist.sum()
        mean = (hist * values).sum() / count
        var = (hist * (values - mean).square()).sum() / (count - 1).clamp_min(1)
        means.append(float(mean / 255.0))
        stds.append(max(float(var.sqrt() / 255.0), 1e-3))
    return tuple(means), tuple(stds)


def split_train_val(
    name: str,
    x: Tensor,
    y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    classes: list[str],
    val_size: float | int,
    split_seed: int,
    augment: AugmentSpec,
    source: str = "",
    info: dict | None = None,
) -> TensorSplits:
    """Carve a stratified validation split from the training set and assemble the splits.

    Normalisation statistics come from the remaining training images only."""
    train_idx, val_idx = stratified_split(y, val_size, split_seed)
    train_x, train_y = x[train_idx], y[train_idx]
    mean, std = channel_stats(train_x)
    return TensorSplits(
        name=name,
        train_x=train_x,
        train_y=train_y,
        val_x=x[val_idx],
        val_y=y[val_idx],
        test_x=test_x,
        test_y=test_y,
        classes=list(classes),
        mean=mean,
        std=std,
        augment=augment,
        val_indices=val_idx,
        split_seed=split_seed,
        source=source,
        info=dict(info or {}),
    )
