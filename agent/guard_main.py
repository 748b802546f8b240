"""The guard process's own program (guard.py starts it): wait for the pilot to end, and if it ended without
stopping its tasks, kill them.

It runs as ``python -I -S -c ...`` with its standard input the lifeline pipe. Until the pilot is gone it
imports nothing but os and sys: most guards never do anything, and each costs a pilot little more than an
interpreter's bare start-up. The modules that find and kill the tasks are imported only when needed.
"""

from __future__ import annotations

import os

ENDED_BY_ITSELF = b"."  # what a pilot writes when it has stopped and swept its tasks itself
LIFELINE = 0  # the guard's standard input


def watch(cookie_prefix: str, pilot_id: str) -> None:
    """Block until the pilot closes the lifeline; kill its tasks unless it said it had stopped them."""
    if _read_to_end(LIFELINE) == ENDED_BY_ITSELF:
        return
    from agent.sweep import sweep_orphans  # light: the tasks die before the log is even set up

    killed = sweep_orphans(cookie_prefix)
    if killed:
        import logging

        from agent import logs

        logs.setup(pilot_id, 0)
        logging.getLogger("agent.guard").warning(
            "the pilot died without stopping its tasks: killed %d process(es) of them: %s",
            sum(killed.values()),
            ", ".join(f"{token} ({count})" for token, count in killed.items()),
        )


def _read_to_end(fd: int) -> bytes:
    data = b""
    while True:
        chunk = os.read(fd, 64)
        if not chunk:
            return data
        data += chunk
