"""AutoAugment's CIFAR-10 policy (Cubuk et al., CVPR 2019) on whole uint8 batches.

The policy is the 25 sub-policies found on reduced CIFAR-10, the one the paper's released
trainer used: each image draws one sub-policy, whose two operations apply in turn, each with its
probability. Magnitudes follow the common PyTorch port (10 bins per operation; shear up to 0.3,
translation up to 150/331 of the side, rotation up to 30 degrees, colour/contrast/brightness/
sharpness factors 1 +- up to 0.9, posterize to 8..4 bits, solarize thresholds 256..0, geometric
fill grey 128, nearest-neighbour sampling), with the signs of signed magnitudes drawn per image.

Every operation is a tensor operation on all the images that drew it: no per-image Python. The
pixel operations match Pillow's ``ImageOps``/``ImageEnhance`` definitions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

BINS = 10
FILL = 128

CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.4, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)


def _lin(lo: float, hi: float) -> Tensor:
    return torch.linspace(lo, hi, BINS, dtype=torch.float64)


MAGNITUDES = {
    "ShearX": _lin(0.0, 0.3),
    "ShearY": _lin(0.0, 0.3),
    "TranslateX": _lin(0.0, 150 / 331),  # fraction of the width
    "TranslateY": _lin(0.0, 150 / 331),
    "Rotate": _lin(0.0, 30.0),
    "Color": _lin(0.0, 0.9),
    "Posterize": _lin(8, 4).round(),
    "Solarize": _lin(256.0, 0.0),
    "Contrast": _lin(0.0, 0.9),
    "Sharpness": _lin(0.0, 0.9),
    "Brightness": _lin(0.0, 0.9),
}


# ---------------------------------------------------------------------------- pixel operations
def _to_u8(x: Tensor) -> Tensor:
    """Clip to 0..255 and truncate, as Pillow's blend does."""
    return x.clamp_(0, 255).floor_().to(torch.uint8)


def _gray(xf: Tensor) -> Tensor:
    """Pillow's L conversion (ITU-R 601-2 luma, rounded), (B, 1, H, W) float."""
    if xf.shape[1] == 1:
        return xf
    return (xf[:, 0:1] * 19595 + xf[:, 1:2] * 38470 + xf[:, 2:3] * 7471 + 0x8000).div_(65536).floor_()


def _blend(img: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """Pillow's ``Image.blend(degenerate, img, factor)`` with a factor per image."""
    xf = img.float()
    f = factor.to(xf).view(-1, 1, 1, 1)
    return _to_u8(degenerate + f * (xf - degenerate))


def invert(x: Tensor) -> Tensor:
    return 255 - x


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert the pixels at or above ``threshold`` (per image)."""
    thr = threshold.to(x.device).view(-1, 1, 1, 1)
    return torch.where(x.to(torch.int16) >= thr, 255 - x, x)


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the ``bits`` (per image) most significant bits of every value."""
    shift = (8 - bits.to(x.device).long()).clamp(0, 8)
    mask = (((255 >> shift) << shift) & 255).to(torch.uint8).view(-1, 1, 1, 1)
    return x & mask


def autocontrast(x: Tensor) -> Tensor:
    """Stretch every channel of every image to 0..255 (a channel of one value is kept)."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    lo = flat.amin(2, keepdim=True).double()  # double, as Pillow computes its table
    hi = flat.amax(2, keepdim=True).double()
    scale = torch.where(hi > lo, torch.full_like(hi, 255.0).div((hi - lo).clamp_min(1)), torch.ones_like(hi))  # IEEE division, as Pillow
    offset = torch.where(hi > lo, -lo * scale, torch.zeros_like(lo))
    out = (flat.double() * scale + offset).clamp_(0, 255).floor_().to(torch.uint8)
    return out.reshape(x.shape)


def equalize(x: Tensor) -> Tensor:
    """Pillow's histogram equalisation, per channel of every image."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    nonzero = hist > 0
    last_bin = 255 - nonzero.flip(1).long().argmax(1)
    last = hist.gather(1, last_bin[:, None])[:, 0]
    step = (h * w - last) // 255
    csum = torch.cumsum(hist, 1) - hist  # counts below each bin
    safe = step.clamp_min(1)[:, None]
    lut = ((step[:, None] // 2 + csum) // safe).clamp_(0, 255)
    identity = torch.arange(256, device=x.device).expand(b * c, 256)
    lut = torch.where((step > 0)[:, None], lut, identity)
    return lut.gather(1, flat).to(torch.uint8).reshape(x.shape)


def brightness(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, torch.zeros((), device=x.device), factor)


def color(x: Tensor, factor: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return _blend(x, _gray(x.float()), factor)


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = _gray(x.float()).mean((1, 2, 3), keepdim=True).add_(0.5).floor_()
    return _blend(x, mean, factor)


def sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with Pillow's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13; border pixels kept)."""
    b, c, h, w = x.shape
    xf = x.float()
    k = torch.ones(3, 3, device=x.device)
    k[1, 1] = 5
    k = (k / 13).expand(c, 1, 3, 3)
    smooth = F.conv2d(xf, k, groups=c).add_(0.5).floor_()
    degenerate = xf.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(x, degenerate, factor)


# ---------------------------------------------------------------------------- geometric operations
def affine(x: Tensor, matrix: Tensor, fill: int = FILL) -> Tensor:
    """Nearest-neighbour affine warp: ``matrix`` (B, 2, 3) maps each output pixel centre to the
    input point it takes its value from (Pillow's ``Image.transform(AFFINE)`` convention)."""
    b, c, h, w = x.shape
    m = matrix.to(device=x.device, dtype=torch.float32)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32) + 0.5,
                            torch.arange(w, device=x.device, dtype=torch.float32) + 0.5, indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w, device=x.device)])  # 3, HW
    src = m @ pts  # B, 2, HW
    sx = src[:, 0].floor().long()
    sy = src[:, 1].floor().long()
    valid = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    idx = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1))[:, None].expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, idx)
    out = torch.where(valid[:, None], out, torch.full_like(out, fill))
    return out.reshape(x.shape)


def _matrix(b: int, a=1.0, bb=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> Tensor:
    def col(v):
        return v.double() if isinstance(v, Tensor) else torch.full((b,), float(v), dtype=torch.float64)

    return torch.stack([torch.stack([col(a), col(bb), col(c)], 1), torch.stack([col(d), col(e), col(f)], 1)], 1)


def shear_x(x: Tensor, s: Tensor) -> Tensor:
    return affine(x, _matrix(x.shape[0], bb=s))


def shear_y(x: Tensor, s: Tensor) -> Tensor:
    return affine(x, _matrix(x.shape[0], d=s))


def translate_x(x: Tensor, pixels: Tensor) -> Tensor:
    """Content moves left by ``pixels`` (Pillow: output (x, y) <- input (x + t, y))."""
    return affine(x, _matrix(x.shape[0], c=pixels))


def translate_y(x: Tensor, pixels: Tensor) -> Tensor:
    return affine(x, _matrix(x.shape[0], f=pixels))


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Counter-clockwise rotation about the image centre (Pillow's ``Image.rotate``)."""
    h, w = x.shape[2:]
    a = -degrees.double() * (math.pi / 180)  # Pillow: the reverse matrix of the rotation
    cos, sin = a.cos(), a.sin()
    cx, cy = w / 2, h / 2
    return affine(x, _matrix(x.shape[0], a=cos, bb=sin, c=cx - cos * cx - sin * cy, d=-sin, e=cos, f=cy + sin * cx - cos * cy))


# ---------------------------------------------------------------------------- the policy
def _apply(name: str, x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Operation ``name`` on images ``x`` with magnitude bins ``level`` and signs (+-1) per image."""
    h, w = x.shape[2:]
    if name in ("Invert", "AutoContrast", "Equalize"):
        return {"Invert": invert, "AutoContrast": autocontrast, "Equalize": equalize}[name](x)
    mag = MAGNITUDES[name][level.long()]
    if name == "Posterize":
        return posterize(x, mag)
    if name == "Solarize":
        return solarize(x, mag)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        fn = {"Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness}[name]
        return fn(x, 1.0 + mag * sign)
    if name == "ShearX":
        return shear_x(x, mag * sign)
    if name == "ShearY":
        return shear_y(x, mag * sign)
    if name == "TranslateX":
        return translate_x(x, mag * w * sign)
    if name == "TranslateY":
        return translate_y(x, mag * h * sign)
    if name == "Rotate":
        return rotate(x, mag * sign)
    raise KeyError(name)


OP_NAMES = sorted({op[0] for sub in CIFAR10_POLICY for op in sub})
_OP_ID = torch.tensor([[OP_NAMES.index(op[0]) for op in sub] for sub in CIFAR10_POLICY])
_PROB = torch.tensor([[op[1] for op in sub] for sub in CIFAR10_POLICY], dtype=torch.float64)
_LEVEL = torch.tensor([[op[2] or 0 for op in sub] for sub in CIFAR10_POLICY])


def autoaugment(x: Tensor, g: torch.Generator, policy_index: Tensor | None = None) -> Tensor:
    """Apply the CIFAR-10 policy to a uint8 batch (B, C, H, W): one sub-policy per image (drawn
    from ``g``, or given by ``policy_index``), each of its operations with its probability."""
    if x.dtype != torch.uint8:
        raise TypeError(f"autoaugment works on uint8 images, got {x.dtype}")
    b = x.shape[0]
    sub = torch.randint(0, len(CIFAR10_POLICY), (b,), generator=g) if policy_index is None else policy_index.cpu().long()
    u = torch.rand(b, 2, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(b, 2, generator=g) < 0.5, -1.0, 1.0).double()
    out = x.clone()
    for stage in (0, 1):
        op = _OP_ID[sub, stage]
        on = u[:, stage] < _PROB[sub, stage]
        for k in torch.unique(op[on]).tolist():
            sel = torch.nonzero(on & (op == k)).reshape(-1)
            idx = sel.to(x.device)
            out[idx] = _apply(OP_NAMES[k], out[idx], _LEVEL[sub[sel], stage], sign[sel, stage])
    return out
