"""Checkpoints: everything needed to resume a posterior training run bit for bit, written
atomically (temp file, fsync, rename) and read with ``torch.load(weights_only=True)``.

The previous checkpoint is kept as ``<name>.prev.pt`` until the new one is complete, so a
checkpoint damaged after it was written (a full disk, a bad copy) costs one checkpoint interval,
not the run: :func:`load_resume_checkpoint` falls back to it with a warning.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from pgnas.errors import PgnasError

FORMAT = "pgnas-checkpoint"
VERSION = 2  # 2: mid-epoch checkpoints (batch, epoch sums), randomness derived per step
READABLE = (1, 2)


def atomic_write_bytes(path: Path, write, *, keep_previous: Path | None = None) -> None:
    """Write through ``write(file_object)`` to a temporary file, then rename it over ``path``
    (the old ``path``, if any, first renamed to ``keep_previous`` when given)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def previous_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    data = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write_bytes(path, lambda f: torch.save(data, f), keep_previous=previous_path(path))


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PgnasError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated/foreign files
        msg = " ".join(str(exc).split())[:120]
        raise PgnasError(f"checkpoint {path} is damaged or not a pgnas checkpoint ({type(exc).__name__}: {msg})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PgnasError(f"{path} is not a pgnas checkpoint")
    if data.get("version") not in READABLE:
        raise PgnasError(f"checkpoint {path} has format version {data.get('version')}, this pgnas reads {', '.join(map(str, READABLE))}")
    for key in ("model", "epoch", "step"):
        if key not in data:
            raise PgnasError(f"checkpoint {path} is damaged: it has no {key!r}")
    return data


def load_resume_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint to resume from: ``path``, or when it is damaged the previous one (with a
    warning on stderr); a one-line error naming the file when neither can be read."""
    path = Path(path)
    try:
        return load_checkpoint(path)
    except PgnasError as exc:
        prev = previous_path(path)
        if not prev.is_file():
            raise
        try:
            data = load_checkpoint(prev)
        except PgnasError:
            raise exc from None
        print(f"pgnas: warning: {exc}; resuming from the previous checkpoint {prev} "
              f"(epoch {data['epoch']}, batch {data.get('batch', 0)})", file=sys.stderr)
        return data
