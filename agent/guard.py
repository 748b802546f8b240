"""The guard: a small process that kills the pilot's tasks when the pilot dies without stopping them.

Tasks run in sessions of their own (see spawn.py), and posix_spawn cannot give them PR_SET_PDEATHSIG, so
nothing ends them with a pilot that is SIGKILLed alone (the OOM killer, a user's `kill -9`). Such a task
would run on, unseen, while its lease runs out and another pilot runs the same token: twice at once, both
writing the same outputs.

The guard starts with the pilot's first task: a fresh interpreter (guard_main.py) in a session of its own,
so a kill of the pilot's process group does not take it along, with the signals a batch system or a
terminal sends blocked. It blocks reading a pipe whose only write end the pilot holds; the kernel closes
that end however the pilot ends, so the guard wakes at once. A pilot that ends by itself has stopped its
tasks already and writes one byte first: the guard then exits without a look at /proc. Otherwise it kills
every process that carries this pilot's task cookie prefix, running tasks and what they left, and exits.
A guard that dies first (someone killed it) is replaced, RESTARTS times at most.
A fresh interpreter rather than a fork: a forked copy of the pilot would make the pilot copy every page
it writes afterwards, and hold the pilot's descriptors (the pool, sockets) until it closed them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

from agent import runner
from agent.guard_main import ENDED_BY_ITSELF
from agent.spawn import Process, spawn

log = logging.getLogger(__name__)

DEAF = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)  # blocked in it
REAP_WAIT = 5.0  # seconds the pilot waits for its guard to exit at the end
RESTARTS = 3  # guards started after the first died; something that keeps killing them wins after that
UNGUARDED = "tasks of this pilot would outlive a kill -9 of it"
# The guard's program: -I ignores PYTHON* variables and the user's site, -S the site module (start-up).
_CODE = "import sys; sys.path[:0] = sys.argv[1:2]; from agent.guard_main import watch; watch(*sys.argv[2:])"


class Guard:
    """``with Guard(pilot_id) as guard:`` around the part of the pilot's life in which it may have tasks
    running; ``guard.start()`` before each task starts (only the first call does anything), and
    ``guard.check()`` as the loop goes round. A pilot that finds nothing to do never starts one."""

    def __init__(self, pilot_id: str) -> None:
        root = str(Path(__file__).resolve().parent.parent)  # where the agent package is
        self.argv = [sys.executable, "-I", "-S", "-c", _CODE, root, runner.COOKIE_PREFIX, pilot_id]
        self.process: Optional[Process] = None
        self._tried = False
        self._restarts = 0
        self._lifeline = -1  # the pipe's write end: the pilot's only one

    def __enter__(self) -> Guard:
        return self

    def start(self) -> None:
        if not self._tried:
            self._tried = True
            self._launch()

    def check(self) -> None:
        """Start another guard if this one died before the pilot (someone killed it): else the pilot's
        tasks would outlive a kill -9 of the pilot after all. At most RESTARTS times."""
        if self.process is None or self.process.poll() is None:
            return
        died = _how_it_ended(self.process)
        os.close(self._lifeline)
        self.process, self._lifeline = None, -1
        if self._restarts >= RESTARTS:
            log.warning(
                "guard process %s, the %d guards before it too; no more are started: %s",
                died,
                RESTARTS,
                UNGUARDED,
            )
            return
        self._restarts += 1
        log.warning("guard process %s, before the pilot: starting another", died)
        self._launch()

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        try:
            os.write(self._lifeline, ENDED_BY_ITSELF)
        except OSError as err:  # the guard is gone already
            log.debug("guard process %d: %s", self.process.pid, err)
        finally:
            os.close(self._lifeline)
        _reap(self.process)

    def _launch(self) -> None:
        try:
            self._start()
        except OSError as err:
            log.warning("no guard process (%s): %s", err, UNGUARDED)

    def _start(self) -> None:
        if not sys.executable:
            raise OSError("the Python interpreter's path is unknown")
        read_end, write_end = os.pipe()  # close-on-exec: no task inherits an end
        try:
            null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            try:
                err = os.dup(2)  # above 2, as spawn wants; close-on-exec
                try:
                    self.process = spawn(self.argv, os.environ, "/", (read_end, null, err), blocked=DEAF)
                finally:
                    os.close(err)
            finally:
                os.close(null)
        except OSError:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._lifeline = write_end
        log.debug("guard process %d kills the tasks if this pilot is killed", self.process.pid)


def _how_it_ended(process: Process) -> str:
    code = process.poll()
    if code is not None and code < 0:
        return f"{process.pid} was killed by {runner.signal_name(-code)}"
    return f"{process.pid} exited with code {code}"


def _reap(process: Process) -> None:
    """Wait for the guard to exit (it does as soon as it reads), but never hang the pilot's end on it."""
    deadline = time.monotonic() + REAP_WAIT
    while process.poll() is None:
        if time.monotonic() > deadline:
            log.warning("guard process %d did not exit; left running", process.pid)
            return
        time.sleep(0.001)
