"""Stage 0 of the pipeline: data sets by name, as tensors with train/validation/test splits."""

from __future__ import annotations

from pgnas.data.augment import AugmentSpec
from pgnas.data.tensor_data import TensorSplits
from pgnas.errors import PgnasError

DATASETS = ("digits",)


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    val_size: float | int | None = None,
    split_seed: int = 0,
    augment: AugmentSpec | None = None,
    download: bool = False,
) -> TensorSplits:
    """Load a data set by name with its held-out validation split carved from training data."""
    if name == "digits":
        from pgnas.data.digits import load_digits

        return load_digits(val_size=val_size, split_seed=split_seed, augment=augment)
    raise PgnasError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


__all__ = ["AugmentSpec", "DATASETS", "TensorSplits", "load_dataset"]
