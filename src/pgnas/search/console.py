"""What a run prints: progress bars on a terminal, one-line logs and warnings on stderr."""

from __future__ import annotations

import sys


def progress_bar(enabled: bool, **kw):
    """A progress bar on stderr when it is a terminal (a log file gets the one-line summaries)."""
    from tqdm.auto import tqdm

    return tqdm(disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, file=sys.stderr, **kw)


def log(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)


def warn(msg: str) -> None:
    """A warning on stderr, shown with --quiet too (it changes what the run's results mean)."""
    print(f"pgnas: warning: {msg}", file=sys.stderr)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def index_list(indices: list[int], most: int = 8) -> str:
    shown = ", ".join(str(i) for i in indices[:most])
    return shown + (f" and {len(indices) - most} more" if len(indices) > most else "")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
