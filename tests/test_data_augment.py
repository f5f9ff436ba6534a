"""Batch augmentations: crop, flip, cutout, AutoAugment (against Pillow), train_batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from pgnas.data import autoaugment as aa
from pgnas.data.augment import AugmentSpec, augment, cutout, random_crop, random_flip
from pgnas.data.tensor_data import split_train_val


def _batch(b=16, c=3, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, c, h, w), generator=g, dtype=torch.int64).to(torch.uint8)


def test_crop_is_a_shifted_original():
    x = _batch()
    pad = 3
    g = torch.Generator().manual_seed(5)
    out = random_crop(x, pad, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    g = torch.Generator().manual_seed(5)  # the same offsets
    oy = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for i in range(16):
        assert torch.equal(out[i], padded[i, :, oy[i] : oy[i] + 12, ox[i] : ox[i] + 10])
        # the visible part is the original moved by (oy - pad, ox - pad); the rest is zero padding
        dy, dx = int(oy[i]) - pad, int(ox[i]) - pad
        src = x[i, :, max(0, dy) : 12 + min(0, dy), max(0, dx) : 10 + min(0, dx)]
        dst = out[i, :, max(0, -dy) : 12 + min(0, -dy), max(0, -dx) : 10 + min(0, -dx)]
        assert torch.equal(src, dst)
        assert int((out[i] == 0).sum()) == 3 * (12 * 10 - src.shape[1] * src.shape[2])


def test_flip_preserves_content():
    x = _batch(b=64)
    out = random_flip(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 10 < sum(flipped) < 54  # about half
    assert torch.equal(out.sort(-1).values, x.sort(-1).values)  # rows keep their pixels


@pytest.mark.parametrize("size", [4, 5])
def test_cutout_zeroes_the_stated_area(size):
    x = _batch(b=32, h=16, w=16)  # values >= 1: every zero is cutout's
    out = cutout(x, size, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    cy = torch.randint(0, 16, (32,), generator=g)
    cx = torch.randint(0, 16, (32,), generator=g)
    for i in range(32):
        y0, x0 = int(cy[i]) - size // 2, int(cx[i]) - size // 2
        ys = range(max(0, y0), min(16, y0 + size))
        xs = range(max(0, x0), min(16, x0 + size))
        mask = torch.zeros(16, 16, dtype=torch.bool)
        mask[ys.start : ys.stop, xs.start : xs.stop] = True
        assert bool((out[i][:, mask] == 0).all())
        assert torch.equal(out[i][:, ~mask], x[i][:, ~mask])
        assert int((out[i] == 0).sum()) == 3 * len(ys) * len(xs)
    interior = [(size // 2 <= int(cy[i]) < 16 - size + size // 2) and (size // 2 <= int(cx[i]) < 16 - size + size // 2) for i in range(32)]
    assert any(interior)
    for i in np.nonzero(interior)[0]:
        assert int((out[i] == 0).sum()) == 3 * size * size


def _splits(x, y):
    return split_train_val("t", x, y, x[:4], y[:4], classes=["a", "b"], val_size=4, split_seed=0, augment=AugmentSpec())


def test_train_batches_shapes_ranges_and_labels():
    x = _batch(b=40, h=8, w=8)
    y = torch.arange(40) % 2
    d = _splits(x, y)
    spec = AugmentSpec(crop_pad=2, flip=True, cutout=3, autoaugment=True)
    batches = list(d.train_batches(8, torch.Generator().manual_seed(0), augment=spec))
    assert len(batches) == d.steps_per_epoch(8) == 4
    lo = min((0 - m) / s for m, s in zip(d.mean, d.std)) - 1e-4
    hi = max((1 - m) / s for m, s in zip(d.mean, d.std)) + 1e-4
    for xb, yb in batches:
        assert xb.shape == (8, 3, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert float(xb.min()) >= lo and float(xb.max()) <= hi
    # reproducible from the generator, and AutoAugment changes what is drawn
    again = list(d.train_batches(8, torch.Generator().manual_seed(0), augment=spec))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    plain = list(d.train_batches(8, torch.Generator().manual_seed(0), augment=AugmentSpec(crop_pad=2, flip=True, cutout=3)))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, plain))
    # without augmentation a batch is exactly the normalised images
    xb, yb = next(d.train_batches(32, torch.Generator().manual_seed(0), augment=AugmentSpec()))
    perm = torch.randperm(36, generator=torch.Generator().manual_seed(0))[:32]
    assert torch.allclose(xb, d.normalise(d.train_x[perm])) and torch.equal(yb, d.train_y[perm])


# ---------------------------------------------------------------------------- AutoAugment vs Pillow
def _pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def _t(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


def _photo(seed=0, n=4):
    """Smooth-ish images with a limited value range (so equalise and autocontrast do work)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(40, 180, (n, 3, 4, 4), generator=g).float()
    x = torch.nn.functional.interpolate(base, size=(16, 16), mode="bilinear", align_corners=False)
    return (x + torch.randint(0, 20, x.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def test_pixel_ops_match_pillow_exactly():
    x = _photo()
    for i in range(len(x)):
        im = _pil(x[i])
        assert torch.equal(aa.invert(x[i : i + 1])[0], _t(ImageOps.invert(im)))
        assert torch.equal(aa.autocontrast(x[i : i + 1])[0], _t(ImageOps.autocontrast(im)))
        assert torch.equal(aa.equalize(x[i : i + 1])[0], _t(ImageOps.equalize(im)))
        for bits in (4, 6, 8):
            assert torch.equal(aa.posterize(x[i : i + 1], torch.tensor([bits]))[0], _t(ImageOps.posterize(im, bits)))
        for thr in (0, 100, 256):
            assert torch.equal(aa.solarize(x[i : i + 1], torch.tensor([thr]))[0], _t(ImageOps.solarize(im, thr)))


@pytest.mark.parametrize(
    "name,fn,enh", [("Brightness", aa.brightness, ImageEnhance.Brightness), ("Color", aa.color, ImageEnhance.Color),
                    ("Contrast", aa.contrast, ImageEnhance.Contrast), ("Sharpness", aa.sharpness, ImageEnhance.Sharpness)]
)
def test_enhance_ops_match_pillow(name, fn, enh):
    x = _photo(1)
    for f in (0.1, 0.6, 1.7):
        ours = fn(x, torch.full((len(x),), f))
        for i in range(len(x)):
            ref = _t(enh(_pil(x[i])).enhance(f))
            diff = (ours[i].int() - ref.int()).abs()
            assert int(diff.max()) <= 1, (name, f)


def test_geometric_ops():
    x = _photo(2)
    # integer translation: content moves, the uncovered band is grey 128
    out = aa.translate_x(x, torch.full((4,), 3.0))
    assert torch.equal(out[..., :-3], x[..., 3:]) and bool((out[..., -3:] == 128).all())
    out = aa.translate_y(x, torch.full((4,), -2.0))
    assert torch.equal(out[..., 2:, :], x[..., :-2, :]) and bool((out[..., :2, :] == 128).all())
    assert torch.equal(aa.rotate(x, torch.zeros(4)), x)
    assert torch.equal(aa.shear_x(x, torch.zeros(4)), x)
    # against Pillow's own warps
    for i in range(4):
        im = _pil(x[i])
        s = 0.3
        ref = _t(im.transform(im.size, Image.AFFINE, (1, s, 0, 0, 1, 0), fillcolor=(128, 128, 128)))
        assert float((aa.shear_x(x[i : i + 1], torch.tensor([s]))[0] == ref).float().mean()) > 0.97
        ref = _t(im.rotate(20, fillcolor=(128, 128, 128)))
        assert float((aa.rotate(x[i : i + 1], torch.tensor([20.0]))[0] == ref).float().mean()) > 0.9
    # rotating by 90 degrees four times is the identity inside the image (square, even side)
    r = x
    for _ in range(4):
        r = aa.rotate(r, torch.full((4,), 90.0))
    assert torch.equal(r, x)


def test_policy_draws_and_grayscale():
    x = _photo(3, n=64)
    g = torch.Generator().manual_seed(0)
    out = aa.autoaugment(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert 0 < sum(not torch.equal(a, b) for a, b in zip(out, x)) < 64
    assert torch.equal(aa.autoaugment(x, torch.Generator().manual_seed(0)), out)
    # sub-policy 14 (Solarize 0.5 at bin 2, Invert 0.0): only solarised or untouched
    idx = torch.full((64,), 14)
    out = aa.autoaugment(x, torch.Generator().manual_seed(1), policy_index=idx)
    thr = int(aa.MAGNITUDES["Solarize"][2])
    sol = aa.solarize(x, torch.full((64,), thr))
    assert all(torch.equal(o, a) or torch.equal(o, s) for o, a, s in zip(out, x, sol))
    gray = x[:, :1].contiguous()
    assert aa.autoaugment(gray, torch.Generator().manual_seed(0)).shape == gray.shape
    with pytest.raises(TypeError):
        aa.autoaugment(x.float(), g)


def test_augment_spec_includes_autoaugment():
    x = _photo(4, n=32)
    assert AugmentSpec(autoaugment=True).active and not AugmentSpec().active
    a = augment(x, AugmentSpec(autoaugment=True), torch.Generator().manual_seed(0))
    assert a.shape == x.shape and not torch.equal(a, x)
