"""The one exception type pgnas raises for problems a user can fix.

The CLI turns a :class:`PgnasError` into a one-line message on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""


class PgnasError(Exception):
    """A user-facing error: bad input, a missing file, a run that cannot continue."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
