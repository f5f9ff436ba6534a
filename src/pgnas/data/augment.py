"""Batch augmentation on whole uint8 tensors, on the training device, with no per-image Python.

Every function takes a batch (B, C, H, W) and a ``torch.Generator`` (on the CPU, so that runs are
reproducible and resumable on any device) and returns a batch of the same shape.
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


def random_crop(x: Tensor, pad: int, g: torch.Generator) -> Tensor:
    """Zero-pad by ``pad`` and crop back to the original size at a random offset per image."""
    if pad <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = _rand_int(2 * pad + 1, b, g, x.device)
    ox = _rand_int(2 * pad + 1, b, g, x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # B,1,H,1
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # B,1,1,W
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bidx, cidx, rows, cols]


def random_flip(x: Tensor, g: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: Tensor, size: int, g: torch.Generator) -> Tensor:
    """Zero a size x size square centred at a random pixel (clipped at the border) per image."""
    if size <= 0:
        return x
    b, _, h, w = x.shape
    cy = _rand_int(h, b, g, x.device)[:, None, None]
    cx = _rand_int(w, b, g, x.device)[:, None, None]
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    lo = size // 2
    inside = (ys >= cy - lo) & (ys < cy - lo + size) & (xs >= cx - lo) & (xs < cx - lo + size)
    return x.masked_fill(inside[:, None], 0)


def augment(x: Tensor, spec: AugmentSpec, g: torch.Generator) -> Tensor:
    x = random_crop(x, spec.crop_pad, g)
    if spec.flip:
        x = random_flip(x, g)
    if spec.autoaugment:
        from pgnas.data.autoaugment import autoaugment

        x = autoaugment(x, g)
    return cutout(x, spec.cutout, g)
