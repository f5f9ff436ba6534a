"""Stage 0 of the pipeline: data sets by name, as tensors with train/validation/test splits.

``digits`` (embedded), ``cifar10`` / ``cifar100`` (official python archives, or the CIFAR-10
JPEG ImageFolder copy), ``imagefolder`` (any train/<class>/, test/<class>/ tree or .tar.gz) live
as uint8 tensors, decoded once and cached (``cache.py``); ``imagenet`` is streamed by DataLoader
workers (``imagenet.py``) behind the same interface.
"""

from __future__ import annotations

import os
import time

from pgnas.data.augment import AugmentSpec
from pgnas.data.tensor_data import TensorSplits
from pgnas.errors import PgnasError

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "imagenet")


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    val_size: float | int | None = None,
    split_seed: int = 0,
    augment: AugmentSpec | None = None,
    download: bool = False,
    data_cache: str | os.PathLike | None = None,
    skip_bad: bool = False,
    image_size: int | tuple[int, int] | None = None,
    workers: int | None = None,
):
    """Load a data set by name with its held-out validation split carved from training data.

    ``data_cache``: the decoded-data cache folder (default ``$PGNAS_CACHE`` or ``~/.cache/pgnas``);
    ``skip_bad``: skip (and count) unreadable or odd-sized images instead of stopping;
    ``image_size``: resize the images to this size (the crop size for imagenet);
    ``workers``: decoding processes (default: the CPU count, at most 8).
    Returns a :class:`TensorSplits` (an ``ImageNetStream`` for ``imagenet``, same interface)."""
    if val_size is not None and isinstance(val_size, float) and val_size >= 1 and val_size.is_integer():
        val_size = int(val_size)
    if name == "digits":
        from pgnas.data.digits import load_digits

        return load_digits(val_size=val_size, split_seed=split_seed, augment=augment, image_size=image_size)
    if name in ("cifar10", "cifar100"):
        from pgnas.data.cifar import load_cifar

        return load_cifar(name, data_dir, val_size=val_size, split_seed=split_seed, augment=augment, download=download,
                          cache_dir=data_cache, skip_bad=skip_bad, workers=workers, image_size=image_size)
    if download:
        raise PgnasError(f"dataset {name} cannot be downloaded: --download applies to cifar10 and cifar100")
    if name == "imagefolder":
        from pgnas.data.imagefolder import load_imagefolder

        return load_imagefolder(data_dir, val_size=val_size, split_seed=split_seed, augment=augment, image_size=image_size,
                                skip_bad=skip_bad, cache_dir=data_cache, workers=workers)
    if name == "imagenet":
        from pgnas.data.imagenet import load_imagenet

        return load_imagenet(data_dir, val_size=val_size, split_seed=split_seed, augment=augment, image_size=image_size,
                             skip_bad=skip_bad, workers=workers)
    from pgnas.errors import did_you_mean

    raise PgnasError(f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; known: {', '.join(DATASETS)}")


def describe_dataset(name: str, **kwargs) -> dict:
    """Load a data set and say what it holds (what ``pgnas data NAME --json`` prints)."""
    t0 = time.perf_counter()
    data = load_dataset(name, **kwargs)
    seconds = time.perf_counter() - t0
    info = getattr(data, "info", {}) or {}
    return {
        "dataset": name,
        **data.sizes(),
        "classes": list(data.classes),
        "num_classes": data.num_classes,
        "image_size": list(data.image_size),
        "channels": data.in_channels,
        "load_seconds": round(seconds, 3),
        "cache": info.get("cache"),
        "cache_hit": bool(info.get("cache_hit", False)),
        "source": getattr(data, "source", ""),
        "split_seed": kwargs.get("split_seed", 0),
        "skipped": int(info.get("skipped", 0)),
        "skipped_files": list(info.get("skipped_files", [])),
        "ignored_files": int(info.get("ignored_files", 0)),
        "augment": {k: getattr(data.augment, k) for k in ("crop_pad", "flip", "cutout", "autoaugment")},
        "streamed": bool(info.get("streamed", False)),
    }


__all__ = ["AugmentSpec", "DATASETS", "TensorSplits", "describe_dataset", "load_dataset"]
