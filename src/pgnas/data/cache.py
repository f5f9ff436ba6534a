"""The decoded-data cache: uint8 arrays decoded once, stored keyed by a checksum of the source.

The cache folder is, in this order: the ``data_cache`` setting (``--data-cache``), the
``PGNAS_CACHE`` environment variable, ``~/.cache/pgnas``. Entries are single ``.pt`` files
(tensors, strings and numbers only, read back with ``torch.load(weights_only=True)``), written
atomically; an unreadable entry is decoded again and replaced.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "PGNAS_CACHE"
FORMAT = 1  # bump when the stored layout or a reader's decoding changes


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``explicit``, else ``$PGNAS_CACHE``, else ``~/.cache/pgnas``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "pgnas"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_fingerprint(files: list[Path], root: Path) -> str:
    """sha256 over (relative path, size, modification time) of every file of a folder tree: any
    added, removed, renamed, resized or rewritten file changes it, without reading every image."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(*parts: Any) -> str:
    """A short key from the source checksum and every option that changes the decoded arrays."""
    h = hashlib.sha256(repr((FORMAT,) + tuple(parts)).encode())
    return h.hexdigest()[:20]


def cache_path(root: Path, dataset: str, key: str) -> Path:
    return root / f"{dataset}-{key}.pt"


def load_entry(path: Path) -> dict | None:
    """The cached entry at ``path``, or None when absent or unreadable (then it is removed)."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            raise ValueError("not a pgnas data-cache entry of this version")
        return entry
    except Exception as exc:  # a torn or foreign file: decode again
        warnings.warn(f"ignoring unreadable data cache {path} ({type(exc).__name__}); decoding again", stacklevel=2)
        try:
            path.unlink()
        except OSError:
            pass
        return None


def save_entry(path: Path, entry: dict) -> bool:
    """Write ``entry`` atomically; a cache folder that cannot be written only costs speed."""
    entry = {**entry, "format": FORMAT}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(entry, tmp)
        os.replace(tmp, path)
        return True
    except OSError as exc:
        warnings.warn(f"cannot write the data cache {path} ({exc.strerror or exc}); continuing without it", stacklevel=2)
        try:
            tmp.unlink()
        except OSError:
            pass
        return False
