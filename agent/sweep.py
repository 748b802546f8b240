"""Task cookies, and the /proc sweeps that find and KILL processes by the cookie in their environment.

Every process a task starts inherits ``PILOT_TASK_COOKIE`` (runner.py sets it: the pilot's random prefix,
a dash, a number), so a sweep catches what left the task's process group with setsid or double forks.
Only Linux has /proc; elsewhere the process-group kill is all there is.

The guard imports this module only once its pilot is gone, and then kills at once: so it imports little
(os, signal, collections) and names files with plain strings, not pathlib.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Collection

COOKIE_VARIABLE = "PILOT_TASK_COOKIE"
PROC = "/proc"
_COOKIE_ENTRY = f"\0{COOKIE_VARIABLE}=".encode()
_TOKEN_ID_ENTRY = b"\0PILOT_TOKEN_ID="  # set by template.task_environment


def sweep(cookie: str, proc: str = PROC) -> int:
    """KILL every process of ours whose environment carries this task's cookie; returns how many."""
    return len(_kill_carriers(lambda carried: carried == cookie, proc))


def sweep_leftovers(cookie_prefix: str, running: Collection[str] = (), proc: str = PROC) -> Counter[str]:
    """KILL what tasks of the pilot with ``cookie_prefix`` left running, except processes of the
    ``running`` tasks' cookies; returns how many were killed per cookie. A task that exits normally gets no
    sweep of its own (a /proc scan per task would cost more than short tasks do), so processes it detached
    from its session live until the pilot's next sweep of leftovers."""
    ours = f"{cookie_prefix}-"
    killed = _kill_carriers(lambda carried: carried.startswith(ours) and carried not in running, proc)
    return Counter(cookie for cookie, _ in killed.values())


def sweep_orphans(cookie_prefix: str, proc: str = PROC) -> Counter[str]:
    """KILL every process of every task of the pilot with ``cookie_prefix``, running or not, once that
    pilot is gone (its guard calls this); returns how many were killed per token id."""
    ours = f"{cookie_prefix}-"
    killed = _kill_carriers(lambda carried: carried.startswith(ours), proc)
    return Counter(_entry(environ, _TOKEN_ID_ENTRY) or "?" for _, environ in killed.values())


def _entry(environ: bytes, entry: bytes) -> str | None:
    """The value of one variable (``entry`` is NUL, name, '=') in NUL-separated environment entries."""
    environ = b"\0" + environ  # every entry, the first too, follows a NUL
    start = environ.find(entry)
    if start < 0:
        return None
    return environ[start + len(entry) :].split(b"\0", 1)[0].decode("utf-8", "replace")


def _kill_carriers(wanted: Callable[[str], bool], proc: str) -> dict[int, tuple[str, bytes]]:
    """KILL every process of ours (not this one) whose environment carries a cookie ``wanted`` accepts;
    returns the cookie and the environment of each pid killed. A second pass catches what forked while we
    scanned; a process killed in the first may still be listed there, dying, and is not counted twice."""
    me = os.getpid()
    killed: dict[int, tuple[str, bytes]] = {}
    for _ in range(2):
        found = 0
        for pid in _pids(proc):
            if pid == me or pid in killed:
                continue
            environ = _environ(proc, pid)
            cookie = None if environ is None else _entry(environ, _COOKIE_ENTRY)
            if environ is None or cookie is None or not wanted(cookie):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed[pid] = (cookie, environ)
            found += 1
        if not found:
            break
    return killed


def _pids(proc: str) -> list[int]:
    try:
        return [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []


def _environ(proc: str, pid: int) -> bytes | None:
    try:
        with open(f"{proc}/{pid}/environ", "rb") as file:
            return file.read()
    except OSError:
        return None  # gone, or another user's
