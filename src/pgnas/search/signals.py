"""Stopping on request: SIGTERM (what SLURM and Kubernetes send before killing a job) and SIGINT
(Ctrl-C) ask a search to finish its current step, write a checkpoint and exit; a second Ctrl-C
interrupts at once.

``with StopRequests() as stop:`` installs the handlers for the duration of the block (in the
main thread only; elsewhere it is inert) and ``stop.requested`` / ``stop.signum`` say whether and
how a stop was asked for. Under torchrun every rank receives the signal; the training loop makes
the ranks agree (a collective) so all stop at the same step.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum != 0

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def exit_status(signum: int) -> int:
    """The shell's convention: 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + int(signum) if signum else 1
