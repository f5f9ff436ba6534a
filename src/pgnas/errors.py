"""The one exception type pgnas raises for problems a user can fix.

The CLI turns a :class:`PgnasError` into a one-line message on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""


import difflib
from typing import Iterable


def closest(word: str, options: Iterable[str]) -> str | None:
    """The option a mistyped ``word`` most likely meant, if any is close."""
    match = difflib.get_close_matches(word, list(options), n=1)
    return match[0] if match else None


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest option, or nothing."""
    match = closest(word, options)
    return f" (did you mean {match}?)" if match else ""


class PgnasError(Exception):
    """A user-facing error: bad input, a missing file, a run that cannot continue."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
