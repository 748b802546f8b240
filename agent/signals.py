"""Signals from the batch system, turned into state the loop reads. Handlers record and return.

TERM and INT ask for a stop (a second one for an immediate stop); USR1 and USR2 ask for a drain.
CHLD only wakes the loop so that a finished task is reported at once. ``set_wakeup_fd`` makes every
signal write a byte to a pipe, so ``wait`` can sleep in ``select`` without missing one that arrives
just before it sleeps.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any, Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DRAIN_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class Signals:
    def __init__(self) -> None:
        self.stop_signal: Optional[signal.Signals] = None  # the first TERM or INT
        self.stops = 0  # how many TERM or INT arrived
        self.drain_signal: Optional[signal.Signals] = None
        self._previous: dict[signal.Signals, Any] = {}
        self._previous_fd = -1
        self._read_fd = self._write_fd = -1

    def __enter__(self) -> Signals:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_stop)
        for sig in DRAIN_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_drain)
        self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)

    @contextlib.contextmanager
    def drain_requests(self) -> Iterator[Signals]:
        """Record USR1 and USR2 before the loop starts (walltime query, cache download), so that the
        batch system's early warning does not kill a pilot that is still starting up. TERM and INT keep
        their default actions until then: nothing is claimed yet, and a download resumes next time."""
        previous = {sig: signal.signal(sig, self._on_drain) for sig in DRAIN_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_stop(self, signum: int, frame: Optional[FrameType]) -> None:
        self.stops += 1
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum)

    def _on_drain(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.drain_signal is None:
            self.drain_signal = signal.Signals(signum)

    def _on_child(self, signum: int, frame: Optional[FrameType]) -> None:
        pass  # the wakeup byte is the message: a task may have finished

    def wait(self, timeout: float) -> None:
        """Sleep until a signal arrives or ``timeout`` seconds pass."""
        readable, _, _ = select.select([self._read_fd], [], [], max(0.0, timeout))
        if readable:
            try:
                while os.read(self._read_fd, 512):
                    pass
            except BlockingIOError:
                pass
