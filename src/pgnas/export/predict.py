"""Using an exported model: top-k classes for image files (``pgnas predict``) and test accuracy
on a data set (``pgnas evaluate``). Works on every export format through :func:`load_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from pgnas.errors import PgnasError
from pgnas.export.formats import ExportedModel, load_model


def load_image(path: str | Path, input_shape: Sequence[int]) -> Tensor:
    """An image file as a uint8 tensor (C, H, W) of the model's channels and size (Pillow)."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = (int(v) for v in input_shape)
    path = Path(path)
    if not path.is_file():
        raise PgnasError(f"no image file at {path}")
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise PgnasError(f"cannot read image {path} ({type(exc).__name__})") from None
    if c not in (1, 3):
        raise PgnasError(f"the model reads {c}-channel inputs; image files give 1 or 3")
    return data.view(h, w, c).permute(2, 0, 1).contiguous()


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named, a folder standing for the .jpg/.jpeg/.png files in it (and below it,
    sorted); none at all is an error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PgnasError(f"folder {p} holds no .jpg, .jpeg or .png images")
            out += found
        else:
            out.append(p)
    if not out:
        raise PgnasError("no image files given")
    return out


def predict(model: ExportedModel | str | Path, images: Sequence[str | Path], top: int = 5) -> list[dict]:
    """Top-``top`` classes with probabilities for each image file (a folder: its images)."""
    if not isinstance(model, ExportedModel):
        model = load_model(model)
    images = image_files(images)
    batch = torch.stack([load_image(p, model.input_shape) for p in images])
    with torch.no_grad():
        probs = torch.softmax(model(batch).float(), dim=1)
    k = min(top, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    classes = model.classes
    return [
        {"image": str(path), "top": [{"class": classes[i], "index": int(i), "prob": float(v)} for v, i in zip(vs.tolist(), ix.tolist())]}
        for path, vs, ix in zip(images, values, indices)
    ]


def evaluate(model: ExportedModel | str | Path, dataset: str | None = None, *, data_dir: str | None = None,
             batch_size: int = 500) -> dict:
    """Accuracy of an exported model on the test split of ``dataset`` (default: the data set the
    model file records), normalised with the model's own stored mean/std, as it was trained."""
    from pgnas.data import load_dataset

    if not isinstance(model, ExportedModel):
        model = load_model(model)
    own = dataset in (None, model.meta.get("dataset"))
    dataset = dataset or model.meta.get("dataset")
    if not dataset:
        raise PgnasError("the model file does not record its data set: pass --dataset")
    if own:  # where the model's data came from, as its file records it
        data_dir = data_dir or model.meta.get("data_dir")
    size = tuple(model.input_shape[1:])
    data = load_dataset(dataset, data_dir=data_dir, image_size=size)
    x_all, y_all = data.test_x, data.test_y
    if tuple(x_all.shape[1:]) != model.input_shape:
        raise PgnasError(f"data set {dataset!r} has images of shape {tuple(x_all.shape[1:])}, the model reads {model.input_shape}")
    if data.num_classes != len(model.classes):
        raise PgnasError(f"data set {dataset!r} has {data.num_classes} classes, the model {len(model.classes)}")
    from pgnas.search.calibration import calibration_metrics

    probs = []
    with torch.no_grad():
        for s in range(0, len(y_all), batch_size):
            probs.append(torch.softmax(model(x_all[s : s + batch_size]).float(), 1))
    m = calibration_metrics(torch.cat(probs), y_all)
    n = len(y_all)
    correct = round(m["accuracy"] * n)
    return {"dataset": dataset, "split": "test", "images": n, "correct": correct, "accuracy": m["accuracy"], "nll": m["nll"],
            "ece": m["ece"], "reliability": m["reliability"]}
