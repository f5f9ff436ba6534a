"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): the embedded
default data set, real data that needs no download.

The set has no official test split: a fixed, stratified 20% (seed 0, independent of the run's
seeds) is the test split, so every run reports on the same images.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from pgnas.data.augment import AugmentSpec
from pgnas.data.splits import stratified_split
from pgnas.data.tensor_data import TensorSplits, resize_uint8, split_train_val

TEST_FRACTION = 0.2
DEFAULT_VAL = 0.2  # of the training part (287 images: enough to rank candidates)
DEFAULT_AUGMENT = AugmentSpec(crop_pad=1, flip=False, cutout=0)  # digits must not be mirrored


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (1797, 64), labels (1797,)): scikit-learn's digits, read from the file scikit-learn
    ships (``sklearn/datasets/data/digits.csv.gz``) without importing scikit-learn, which takes
    longer than reading the file (2.2 s of CPU against 0.03 s on the 2-core AMD EPYC VM); through
    ``sklearn.datasets.load_digits`` where that file is not found."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        try:
            data = np.loadtxt(path, delimiter=",", dtype=np.float64)
        except (OSError, ValueError):  # damaged: scikit-learn's loader says what is wrong
            data = None
        if data is not None and data.shape == (1797, 65):
            return data[:, :64], data[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    return bunch.data, bunch.target


def load_digits(val_size: float | int | None = None, split_seed: int = 0, augment: AugmentSpec | None = None,
                image_size: int | tuple[int, int] | None = None) -> TensorSplits:
    """The digits with their fixed test split; ``image_size`` resizes the 8x8 images (bilinear)."""
    pixels, target = digits_arrays()
    images = torch.from_numpy(pixels).float().reshape(-1, 8, 8)  # values 0..16
    x = (images * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)[:, None]
    if image_size is not None:
        x = resize_uint8(x, (image_size, image_size) if isinstance(image_size, int) else tuple(image_size))
    y = torch.from_numpy(target).long()
    rest, test = stratified_split(y, TEST_FRACTION, seed=0)
    return split_train_val(
        "digits",
        x[rest],
        y[rest],
        x[test],
        y[test],
        classes=[str(i) for i in range(10)],
        val_size=DEFAULT_VAL if val_size is None else val_size,
        split_seed=split_seed,
        augment=augment or DEFAULT_AUGMENT,
        source="sklearn.datasets.load_digits",
    )
