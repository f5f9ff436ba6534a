"""Batch augmentation on whole uint8 tensors, on the training device, with no per-image Python.

Every function takes a batch (B, C, H, W) and returns a batch of the same shape. The random
numbers come from a ``torch.Generator`` on the CPU (so that runs are reproducible and resumable on
any device): the training loop draws a whole epoch's at once (:class:`EpochDraws`) and moves them
to the device in one copy, so no batch waits on a host-to-device transfer; ``random_crop`` and
friends draw per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentSpec:
    crop_pad: int = 0  # pad-and-random-crop by up to this many pixels
    flip: bool = False  # random horizontal flip
    cutout: int = 0  # side of the zeroed square (DeVries & Taylor), 0 for none
    autoaugment: bool = False  # AutoAugment's CIFAR-10 policy (Cubuk et al. 2019), after crop and flip

    @property
    def active(self) -> bool:
        return bool(self.crop_pad or self.flip or self.cutout or self.autoaugment)


def _rand_int(high: int, n: int, g: torch.Generator, device) -> Tensor:
    return torch.randint(0, high, (n,), generator=g).to(device)


def crop_at(x: Tensor, pad: int, oy: Tensor, ox: Tensor) -> Tensor:
    """Zero-pad by ``pad`` and crop back to the original size at offsets (oy, ox) per image
    (each in 0 .. 2 * pad)."""
    if pad <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # B,1,H,1
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # B,1,1,W
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bidx, cidx, rows, cols]


def flip_where(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror left-right the images where ``flip`` (B,) is true."""
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout_at(x: Tensor, size: int, cy: Tensor, cx: Tensor) -> Tensor:
    """Zero a size x size square centred at (cy, cx) per image (clipped at the border)."""
    if size <= 0:
        return x
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    lo = size // 2
    cy, cx = cy[:, None, None], cx[:, None, None]
    inside = (ys >= cy - lo) & (ys < cy - lo + size) & (xs >= cx - lo) & (xs < cx - lo + size)
    return x.masked_fill(inside[:, None], 0)


def random_crop(x: Tensor, pad: int, g: torch.Generator) -> Tensor:
    """Zero-pad by ``pad`` and crop back to the original size at a random offset per image."""
    if pad <= 0:
        return x
    b = x.shape[0]
    oy = _rand_int(2 * pad + 1, b, g, x.device)
    ox = _rand_int(2 * pad + 1, b, g, x.device)
    return crop_at(x, pad, oy, ox)


def random_flip(x: Tensor, g: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    return flip_where(x, (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device))


def cutout(x: Tensor, size: int, g: torch.Generator) -> Tensor:
    """Zero a size x size square centred at a random pixel (clipped at the border) per image."""
    if size <= 0:
        return x
    b, _, h, w = x.shape
    return cutout_at(x, size, _rand_int(h, b, g, x.device), _rand_int(w, b, g, x.device))


def augment(x: Tensor, spec: AugmentSpec, g: torch.Generator) -> Tensor:
    x = random_crop(x, spec.crop_pad, g)
    if spec.flip:
        x = random_flip(x, g)
    if spec.autoaugment:
        from pgnas.data.autoaugment import autoaugment

        x = autoaugment(x, g)
    return cutout(x, spec.cutout, g)


@dataclass
class EpochDraws:
    """The random numbers of one epoch's augmentation, drawn at once (one host-to-device copy an
    epoch, none per batch): per example position crop offsets, flips and cutout centres, per
    batch an AutoAugment seed. Position i belongs to the i-th example of the epoch's order."""

    crop: Tensor | None  # (N, 2) offsets in 0 .. 2 * pad
    flip: Tensor | None  # (N,) bool
    cut: Tensor | None  # (N, 2) centres
    aa_seeds: list[int] | None  # one per batch

    @classmethod
    def draw(cls, spec: AugmentSpec, n: int, steps: int, image_size: tuple[int, int], g: torch.Generator,
             device) -> "EpochDraws":
        h, w = image_size
        crop = torch.randint(0, 2 * spec.crop_pad + 1, (n, 2), generator=g) if spec.crop_pad > 0 else None
        flip = torch.rand(n, generator=g) < 0.5 if spec.flip else None
        cut = None
        if spec.cutout > 0:
            cut = torch.stack([torch.randint(0, h, (n,), generator=g), torch.randint(0, w, (n,), generator=g)], 1)
        seeds = torch.randint(0, 2**62, (steps,), generator=g).tolist() if spec.autoaugment else None
        parts = [t for t in (crop, flip, cut) if t is not None]
        if parts and torch.device(device).type != "cpu":  # one copy for all of them
            packed = torch.cat([t.reshape(n, -1).long() for t in parts], 1).to(device, non_blocking=True)
            cols = iter(packed.split([t.reshape(n, -1).shape[1] for t in parts], 1))
            crop = next(cols) if crop is not None else None
            flip = next(cols).reshape(n).bool() if flip is not None else None
            cut = next(cols) if cut is not None else None
        return cls(crop, flip, cut, seeds)

    def apply_uint8(self, x: Tensor, spec: AugmentSpec, lo: int, step: int) -> Tensor:
        """Crop, flip and AutoAugment of the uint8 batch at positions lo .. lo + len(x)."""
        hi = lo + x.shape[0]
        if self.crop is not None:
            x = crop_at(x, spec.crop_pad, self.crop[lo:hi, 0], self.crop[lo:hi, 1])
        if self.flip is not None:
            x = flip_where(x, self.flip[lo:hi])
        if self.aa_seeds is not None:
            from pgnas.data.autoaugment import autoaugment

            x = autoaugment(x, torch.Generator().manual_seed(self.aa_seeds[step]))
        return x

    def apply_cutout(self, x: Tensor, spec: AugmentSpec, lo: int) -> Tensor:
        if self.cut is None:
            return x
        hi = lo + x.shape[0]
        return cutout_at(x, spec.cutout, self.cut[lo:hi, 0], self.cut[lo:hi, 1])
