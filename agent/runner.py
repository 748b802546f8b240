"""One payload process: started in its own session, output streamed to files, killed as a whole.

The task runs in a session of its own (see ``spawn.py``), so it leads a process group that can be
signalled at once. Every process it starts inherits ``PILOT_TASK_COOKIE``; on timeout and on stop we also
sweep /proc for that cookie (sweep.py), which catches descendants that left the group with setsid or
double forks.
Nothing here blocks: ``terminate`` sends TERM and notes when KILL is due, and the pilot's loop calls
``tick`` and ``poll``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from agent.identity import random_prefix, unique_ids
from agent.spawn import Process, spawn_task
from agent.sweep import COOKIE_VARIABLE, sweep
from agent.token import Outcome, Result
from agent.units import format_duration, format_size

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stop:
    """Why we are ending a running task: the outcome it will be reported with, and the reason."""

    outcome: Outcome
    reason: str


class Payload:
    """A running task. ``start`` returns one, or a Result when the process could not be started."""

    def __init__(
        self,
        *,
        token_id: str,
        process: Process,
        folder: str,
        outputs: Sequence[int],
        cookie: str,
        started: float,
        timeout: Optional[float],
        kill_grace: float,
        clock: Callable[[], float],
        cores: Optional[int] = None,
        memory: int = 0,
        program: str = "",
    ) -> None:
        self.token_id = token_id
        self.cores = cores  # given to it, for the record
        self.memory = memory  # bytes it asked for; 0: none
        self.program = program  # argv[0], for the reason of a start that failed in a spawner thread
        self.process = process
        self.folder = folder
        self.outputs = outputs  # open stdout and stderr files, closed by finish(); none if it did not start
        self.cookie = cookie
        self.started = started  # epoch seconds, for the record
        self.timeout = timeout
        self.deadline = None if timeout is None else clock() + timeout  # monotonic
        self.kill_grace = kill_grace
        self.clock = clock
        self.stop: Optional[Stop] = None  # set once we decided to end it
        self.kill_at: Optional[float] = None  # monotonic, when KILL follows the TERM
        self.returncode: Optional[int] = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def known_pid(self) -> Optional[int]:
        """The process id, or None while a spawner thread is still starting the process."""
        settled = getattr(self.process, "settled", None)
        return self.process.pid if settled is None or settled() else None

    def poll(self) -> bool:
        """True once the main process has exited (and was reaped)."""
        if self.returncode is None:
            self.returncode = self.process.poll()
        return self.returncode is not None

    def next_event(self) -> Optional[float]:
        """The next monotonic time this task needs attention: its deadline or its KILL."""
        return self.kill_at if self.kill_at is not None else self.deadline

    def tick(self, now: float) -> None:
        """Act on the deadline and the KILL that follows a TERM."""
        if (
            self.stop is None
            and self.deadline is not None
            and self.timeout is not None
            and now >= self.deadline
        ):
            took = format_duration(self.timeout)
            self.terminate(Stop(Outcome.TIMEOUT, f"timeout: still running after {took}, killed"))
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            kill_group(self.pid, signal.SIGKILL)
            sweep(self.cookie)

    def terminate(self, stop: Stop) -> None:
        """TERM the whole group now; KILL it (and sweep stragglers) after ``kill_grace``."""
        if self.stop is not None:
            return
        self.stop = stop
        kill_group(self.pid, signal.SIGTERM)
        self.kill_at = self.clock() + self.kill_grace

    def kill_now(self, stop: Stop) -> None:
        """KILL the whole group and its stragglers at once (second signal, or the pilot must go)."""
        if self.stop is None:
            self.stop = stop
        self.kill_at = None
        kill_group(self.pid, signal.SIGKILL)
        sweep(self.cookie)

    def finish(self, tail_bytes: int, wallclock: Callable[[], float]) -> Result:
        """The result, once ``poll`` said the main process exited. Leftovers of the task are killed."""
        assert self.returncode is not None
        error = getattr(self.process, "error", None)  # a start that failed in a spawner thread
        if error is not None:
            _close(self.outputs)
            reason = _start_failure(error, self.program, self.folder)
            return Result(Outcome.NOT_STARTED, reason, self.started, wallclock())
        if self.stop is not None:
            # We ended it: make sure nothing it started survives, in or out of its group.
            kill_group(self.pid, signal.SIGKILL)
            sweep(self.cookie)
        elif group_alive(self.pid):
            # It exited but left processes behind in its group: they belong to the task, not the node.
            kill_group(self.pid, signal.SIGKILL)
        ended = wallclock()
        outcome, reason, code, sig = self._classify()
        stdout_tail, stderr_tail = (read_tail(fd, tail_bytes) for fd in self.outputs)
        _close(self.outputs)
        usage = self.process.usage
        max_rss = None if usage is None else usage.ru_maxrss * 1024  # Linux counts KiB
        if self.memory and max_rss is not None and max_rss > self.memory and outcome is not Outcome.MEMORY:
            reason += f"; peak RSS {format_size(max_rss)}, over its memory request {format_size(self.memory)}"
        return Result(
            outcome=outcome,
            reason=reason,
            started=self.started,
            ended=ended,
            exit_code=code,
            signal=sig,
            stdout_tail=stdout_tail,
            stderr_tail=stderr_tail,
            cores=self.cores,
            cpu_user=None if usage is None else round(usage.ru_utime, 3),
            cpu_system=None if usage is None else round(usage.ru_stime, 3),
            max_rss=max_rss,
        )

    def _classify(self) -> tuple[Outcome, str, Optional[int], Optional[int]]:
        code = self.returncode
        assert code is not None
        exit_code, sig = (code, None) if code >= 0 else (None, -code)
        if self.stop is not None:
            return self.stop.outcome, self.stop.reason, exit_code, sig
        if code == 0:
            return Outcome.DONE, "exit code 0", 0, None
        if sig is not None:
            return Outcome.FAILED, f"killed by signal {sig} ({signal_name(sig)})", None, sig
        return Outcome.FAILED, f"exit code {code}", code, None


def start(
    *,
    token_id: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    folder: str,
    timeout: Optional[float],
    kill_grace: float,
    clock: Callable[[], float] = time.monotonic,
    wallclock: Callable[[], float] = time.time,
    spare: Optional[str] = None,
    cpus: Optional[Sequence[int]] = None,
    cores: Optional[int] = None,
    memory: int = 0,
) -> Payload | Result:
    """Start the task in ``folder`` (the finished task's folder ``spare`` renamed, else made anew) with
    stdout and stderr streamed to files there, bound to ``cpus`` when given. With spawner threads (see
    spawn.background), the folder and the files are readied there too, off the loop.

    Returns a Payload, or a NOT_STARTED Result saying why the process could not start.
    """
    cookie = next(_COOKIES)
    started = wallclock()
    outputs: list[int] = []  # filled where the process starts; the Payload reads them once it ended
    stdin = _devnull()  # opened here, once: two spawner threads could each open one

    def ready() -> tuple[int, int, int]:
        try:
            _ready_folder(folder, spare, token_id)
            for name in ("stdout", "stderr"):
                outputs.append(os.open(f"{folder}/{name}", _OUTPUT_FLAGS, 0o644))
        except OSError:
            _close(outputs)
            outputs.clear()
            raise
        return (stdin, outputs[0], outputs[1])

    try:
        process = spawn_task(argv, {**env, COOKIE_VARIABLE: cookie}, folder, ready, cpus)
    except OSError as error:
        _close(outputs)
        return Result(Outcome.NOT_STARTED, _start_failure(error, argv[0], folder), started, wallclock())
    return Payload(
        token_id=token_id,
        process=process,
        folder=folder,
        outputs=outputs,
        cookie=cookie,
        started=started,
        timeout=timeout,
        kill_grace=kill_grace,
        clock=clock,
        cores=cores,
        memory=memory,
        program=argv[0],
    )


def _ready_folder(folder: str, spare: Optional[str], token_id: str) -> None:
    """The task's folder: the finished task's ``spare`` emptied and renamed where that works, else made.
    Plain os calls: this runs once per task, and /bin/true-sized tasks make every syscall count."""
    if spare is not None:
        if not emptied(spare):
            remove_folder(spare)  # the task left more than its output: all of it goes, nothing carries over
        elif take_over(spare, folder):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("task folder: the emptied %s, renamed", spare, extra={"token": token_id})
            return
    try:
        os.mkdir(folder)
    except FileNotFoundError:  # the pilot's own folder is not there yet (first task)
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:  # a folder left from an earlier attempt of the same token
        pass


COOKIE_PREFIX = random_prefix()  # of every cookie this pilot hands out: see sweep_leftovers
_COOKIES = unique_ids(COOKIE_PREFIX)
_OUTPUT_FLAGS = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_DEVNULL: list[int] = []


def _devnull() -> int:
    """One read-only /dev/null for every task's stdin, opened once (close-on-exec in the pilot)."""
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _DEVNULL[0]


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _start_failure(error: OSError, program: str, folder: str) -> str:
    if error.filename is not None and str(error.filename) == str(folder):
        return f"cannot use task folder {folder}: {error.strerror}"
    if error.errno == errno.ENOENT:
        return f"command not found: {program}"
    if error.errno == errno.EACCES:
        return f"permission denied: {program} is not executable"
    if error.errno == errno.ENOEXEC:
        return f"cannot execute {program}: not a program (missing #! line?)"
    return f"cannot start {program}: {error.strerror or error}"


def kill_group(pgid: int, sig: signal.Signals) -> None:
    if pgid <= 0:
        return  # no process (a start that failed): 0 would be the pilot's own group
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is already empty
    except PermissionError:
        # Group id reused by a process of another user: not ours to touch.
        log.warning("not allowed to signal process group %d", pgid)


def group_alive(pgid: int) -> bool:
    if pgid <= 0:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def task_folder(pilot_folder: Path, token_id: str, attempt: int) -> str:
    """The task's folder, as a plain string: pathlib objects cost more than they help once per task."""
    return os.path.join(pilot_folder, task_folder_name(token_id, attempt))


def task_folder_name(token_id: str, attempt: int) -> str:
    """A folder name for any token id: safe characters only, a hash when the id had to change."""
    safe = _UNSAFE_NAME.sub("_", token_id)[:80]
    if safe != token_id:
        import hashlib  # only here: loading OpenSSL costs start-up time that most pilots never need

        safe += "-" + hashlib.sha256(token_id.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{safe}.{attempt}"


def remove_folder(folder: str) -> None:
    """Remove a finished task's folder. Most hold just the two output files: three syscalls rather than
    rmtree's walk, which matters when tasks take milliseconds."""
    try:
        os.unlink(os.path.join(folder, "stdout"))
        os.unlink(os.path.join(folder, "stderr"))
        os.rmdir(folder)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)


def emptied(folder: str) -> bool:
    """Remove a finished task's output files; True when that left its folder empty, to be used again."""
    try:
        os.unlink(os.path.join(folder, "stdout"))
        os.unlink(os.path.join(folder, "stderr"))
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def take_over(spare: str, folder: str) -> bool:
    """Rename an emptied folder to be the next task's: on ext4 a rename costs a fraction of rmdir and
    mkdir. The output files are made anew, so a straggler of the last task that kept them open writes
    into files nobody reads. False when ``folder`` is still to be made."""
    try:
        os.rename(spare, folder)
    except OSError:  # a folder of that name holds an earlier attempt: start() makes do with it
        with contextlib.suppress(OSError):
            os.rmdir(spare)
        return False
    return True


def read_tail(fd: int, limit: int) -> bytes:
    """The last ``limit`` bytes of an open file, read from its end: gigabytes of output cost nothing."""
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, limit, max(0, size - limit)) if size else b""
    except OSError:
        return b""


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
