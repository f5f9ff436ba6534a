"""Downloads of official archives, checked against the official checksums."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from pgnas.errors import PgnasError


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_md5(path: Path, md5: str) -> None:
    """A one-line error when ``path``'s md5 is not ``md5``."""
    got = md5_file(path)
    if got != md5:
        raise PgnasError(
            f"checksum mismatch: {path} has md5 {got}, expected {md5} (a corrupt or partial file; delete it and download again)"
        )


def download(url: str, dest: Path, md5: str, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` (through ``dest.part``, replaced only once the md5 matches)."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PgnasError(f"cannot create the data folder {dest.parent}: {exc.strerror or exc}") from None
    part = dest.with_name(dest.name + ".part")
    h = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            while block := resp.read(1 << 20):
                h.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise PgnasError(f"cannot download {url} ({reason}); put {dest.name} into {dest.parent} by hand") from None
    if h.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise PgnasError(f"checksum mismatch: {url} downloaded with md5 {h.hexdigest()}, expected {md5}; nothing was kept in {dest.parent}")
    os.replace(part, dest)
    return dest
