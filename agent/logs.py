"""Logging for the pilot: one line per event to stderr, naming the time, the pilot and the token.

Configured only by the CLI (``setup``); modules just call ``logging.getLogger(__name__)`` and pass
``extra={"token": token_id}`` when a line is about a token.
"""

from __future__ import annotations

import logging
import sys
import time


class _Context(logging.Filter):
    def __init__(self, pilot_id: str) -> None:
        super().__init__()
        self.pilot_id = pilot_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.pilot = self.pilot_id
        if not hasattr(record, "token"):
            record.token = "-"
        return True


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return (
            time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"
        )


def setup(pilot_id: str, verbosity: int) -> None:
    """verbosity: -1 quiet (warnings and errors), 0 normal (events), 1 verbose (debug)."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Context(pilot_id))
    handler.setFormatter(_UTCFormatter("%(asctime)s %(pilot)s token=%(token)s %(levelname)s %(message)s"))
    root = logging.getLogger("agent")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
