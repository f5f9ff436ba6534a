"""Checkpoints: everything needed to resume a posterior training run bit for bit, written
atomically (temp file, fsync, rename) and read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pgnas.errors import PgnasError

FORMAT = "pgnas-checkpoint"
VERSION = 1


def atomic_write_bytes(path: Path, write) -> None:
    """Write through ``write(file_object)`` to a temporary file, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    data = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write_bytes(path, lambda f: torch.save(data, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PgnasError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated/foreign files
        raise PgnasError(f"checkpoint {path} is corrupt or not a pgnas checkpoint ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PgnasError(f"{path} is not a pgnas checkpoint")
    if data.get("version") != VERSION:
        raise PgnasError(f"checkpoint {path} has format version {data.get('version')}, this pgnas reads {VERSION}")
    return data


def rng_state(data_generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": data_generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], data_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
