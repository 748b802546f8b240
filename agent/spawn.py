"""Start a task's process: in its folder, in a session of its own, with the given stdin, stdout and stderr,
and no other file descriptor of the pilot.

Inline starts (one slot, and CPython 3.9) use ``os.posix_spawn`` where the C library does it right
(glibc 2.26 and later: a new session, and exec errors such as "not found" reported to the caller), else
``subprocess.Popen``: posix_spawn costs what Popen costs on CPython 3.10 and later (both vfork), and half
of Popen's 1.2 ms on 3.9, whose Popen forks the whole pilot. From two slots, spawner threads start tasks
with ``Popen`` (``background``, below), which lets go of Python's lock while the child execs.

Python's posix_spawn has no "change directory" action, so it steps into the folder for the call and back
out. The pilot names every file by its absolute path, so a spawner thread at work meanwhile (while the
guard process starts, say) is not misled, and Popen takes its folder as ``cwd``, in the child.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, Callable, Optional, Protocol

from agent.binding import Routes

# What Popen's restore_signals puts back to the default in the child: CPython ignores both.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
_CLOSEFROM = getattr(os, "POSIX_SPAWN_CLOSEFROM", None)  # CPython 3.13 with glibc 2.34


class Process(Protocol):
    """What the runner needs of a started process; ``subprocess.Popen`` is one."""

    pid: int
    usage: Optional[Any]  # os.wait4's account once reaped, where the process type keeps one

    def poll(self) -> Optional[int]: ...

    def wait(self) -> int: ...


class Spawned:
    """A started process, reaped as Popen reaps (returncode is -N when killed by N) but with ``wait4``,
    which also gives the kernel's account of what it used (``usage``: CPU times, peak RSS) at no cost.
    A process Popen started is reaped here too, and its Popen told the return code."""

    def __init__(self, pid: int, popen: Optional[subprocess.Popen[bytes]] = None) -> None:
        self.pid = pid
        self.popen = popen
        self.returncode: Optional[int] = None
        self.usage: Optional[Any] = None  # os.wait4's resource.struct_rusage, once reaped
        # Two threads may reap one process (the loop's poll, a wait for its pid elsewhere): without the
        # lock, one of two racing wait4 calls meets ChildProcessError and would take the status as lost
        # (0): a task killed by TERM reported as done. Popen has the same lock.
        self._reaping = threading.Lock()

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            self._reap(0)
        return self.returncode

    def _reap(self, flags: int) -> None:
        with self._reaping:
            if self.returncode is None:
                self._wait4(flags)

    def _wait4(self, flags: int) -> None:
        try:
            pid, status, usage = os.wait4(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): its status is lost; Popen says 0
            self.returncode = 0
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            self.usage = usage
            if self.popen is not None:
                self.popen.returncode = self.returncode


def exited(pid: int) -> bool:
    """Whether the child ``pid`` has exited, left unreaped: the loop reaps it, and finds it by this same
    look (reaping.py), which a process reaped here would escape."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already
        return True


class Starting:
    """A process that a spawner thread is starting (see ``background``). Its start may still fail:
    ``error`` then says why, and it reads as exited with code 127, as a shell's "not found" does."""

    FAILED = 127

    def __init__(self) -> None:
        self.process: Optional[Process] = None
        self.error: Optional[OSError] = None
        # Held until the spawner thread is done with the start: a latch, cheaper than an Event to make.
        self._unsettled = threading.Lock()
        self._unsettled.acquire()

    def start(self, start: Callable[[], Process]) -> None:
        """In the spawner thread. A task that ended, or a start that failed, before the loop could see
        it settled wakes the loop with a SIGCHLD of our own: the kernel's came too early to count."""
        try:
            self.process = start()
        except OSError as error:
            self.error = error
        except Exception as error:  # noqa: BLE001 - unsettled, the loop would wait for this task forever
            self.error = OSError(f"{type(error).__name__}: {error}")
        finally:
            self._unsettled.release()
        if self.process is None or exited(self.process.pid):
            os.kill(os.getpid(), signal.SIGCHLD)

    @property
    def usage(self) -> Optional[Any]:
        return None if self.process is None else self.process.usage

    @property
    def pid(self) -> int:
        self._settle()
        return 0 if self.process is None else self.process.pid  # 0: nothing to signal (runner checks)

    def settled(self) -> bool:
        """True once the start is done, whichever way."""
        return not self._unsettled.locked()

    def poll(self) -> Optional[int]:
        if self._unsettled.locked():
            return None
        return self.FAILED if self.process is None else self.process.poll()

    def wait(self) -> int:
        self._settle()
        return self.FAILED if self.process is None else self.process.wait()

    def _settle(self) -> None:
        """Until the start is done, whichever way."""
        with self._unsettled:
            pass


# With several slots the loop, one thread, spent most of its time blocked in the kernel's clone and exec
# of posix_spawn, which holds the GIL: 0.3 ms per start on an idle machine, 4 to 10 ms on a busy one, so
# starts did not overlap and 64 slots ran a fifth of what 64 threads of subprocess.run do. Popen releases
# the GIL while its child execs: from a few spawner threads, starts overlap and the loop goes on reaping
# and reporting meanwhile. Measured on a busy machine: 64 slots 0.21 -> 0.65 of the bare loop, 2 slots
# 1.8 times the rate of inline starts. One slot has nothing to overlap. Not on 3.9, whose Popen forks.
BACKGROUND_SLOTS = 2  # from this many slots a pilot starts its tasks from spawner threads
SPAWNERS = 8
SWITCH_INTERVAL = 0.0005  # seconds; CPython's default is 0.005
_BACKGROUND: list[Spawners] = []
Stdio = tuple[int, int, int]


class Spawners:
    """A few threads that run start jobs, each from a queue of its own: a task's start goes to the thread
    already bound to its CPUs (binding.Routes), which saves a rebinding per start. Lighter than a
    ThreadPoolExecutor, whose Future, work item and thread accounting cost the loop more per task than the
    put of a job does."""

    def __init__(self, count: int) -> None:
        self.routes = Routes(count)
        self.queues: list[queue.SimpleQueue[Optional[Callable[[], None]]]] = [
            queue.SimpleQueue() for _ in range(count)
        ]
        self.threads = [
            threading.Thread(target=self._work, args=(n,), name=f"spawner_{n}", daemon=True)
            for n in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, job: Callable[[], None], cpus: Optional[frozenset[int]] = None) -> None:
        """Queue ``job``, a start of a task bound to ``cpus`` (None: not bound)."""
        self.queues[self.routes.route(cpus)].put(job)

    def shutdown(self) -> None:
        """Let the threads finish the jobs queued, then end them."""
        for jobs in self.queues:
            jobs.put(None)
        for thread in self.threads:
            thread.join()

    def _work(self, thread: int) -> None:
        jobs, finished = self.queues[thread], self.routes.finished
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                job()  # Starting.start: it catches what the start raises
            finally:
                finished(thread)


@contextlib.contextmanager
def background(slots: int) -> Iterator[None]:
    """While inside, tasks start from spawner threads if ``slots`` is at least BACKGROUND_SLOTS."""
    if slots < BACKGROUND_SLOTS or sys.version_info < (3, 10):
        yield
        return
    threads = Spawners(min(slots, SPAWNERS))
    _BACKGROUND.append(threads)
    # The loop waits for the GIL after each of its system calls while a spawner runs Popen's Python
    # code: a shorter switch interval gets it back sooner.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        _BACKGROUND.remove(threads)
        threads.shutdown()


def spawn_task(
    argv: Sequence[str],
    env: Mapping[str, str],
    folder: str,
    stdio: Stdio | Callable[[], Stdio],
    cpus: Optional[Collection[int]] = None,
) -> Process:
    """``spawn`` for a task, whose descriptors stay open until it is reaped, bound to ``cpus`` if given.
    ``stdio`` may be a function that readies the folder and opens the descriptors: it is called where
    the process starts, so that inside ``background`` a spawner thread does that file-system work, not
    the loop. Inside ``background``, it returns at once a ``Starting``, whose ``error`` says why if the
    start fails (the function's OSError included); the binding is then the spawner thread's."""
    if not _BACKGROUND:
        opened = stdio() if callable(stdio) else stdio
        with pinned(cpus):
            return spawn(argv, env, folder, opened)
    starting = Starting()
    wanted = None if cpus is None else frozenset(cpus)
    start = functools.partial(_bound_popen, argv, env, folder, stdio, wanted)
    _BACKGROUND[0].submit(functools.partial(starting.start, start), wanted)
    return starting


def _bound_popen(
    argv: Sequence[str],
    env: Mapping[str, str],
    folder: str,
    stdio: Stdio | Callable[[], Stdio],
    cpus: Optional[Collection[int]],
) -> Process:
    opened = stdio() if callable(stdio) else stdio
    bind_thread(cpus)
    return _popen(argv, env, folder, opened)


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    folder: str,
    stdio: tuple[int, int, int],
    blocked: Collection[signal.Signals] = (),
) -> Process:
    """Start ``argv`` in ``folder``, with the ``blocked`` signals blocked (none for a task); raises OSError
    when it cannot (its filename says what is missing)."""
    # The dup2 actions run in order: a source among 0, 1 and 2 could be overwritten before it is copied.
    if _posix_spawn_usable() and min(stdio) > 2:
        return _posix_spawn(argv, env, folder, stdio, blocked)
    return _popen(argv, env, folder, stdio, blocked)


def _popen(
    argv: Sequence[str],
    env: Mapping[str, str],
    folder: str,
    stdio: tuple[int, int, int],
    blocked: Collection[signal.Signals] = (),
) -> Process:
    # Looked up once per program and PATH (``executable``), not by Popen at every start; raises as Popen
    # would for a program that is not there.
    program = executable(argv[0], env)
    # Popen's child keeps the signal mask of the thread that starts it.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if blocked else None
    try:
        popen = subprocess.Popen(
            list(argv),
            executable=program,
            cwd=folder,
            env=env,
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            start_new_session=True,
            close_fds=True,
        )
        return Spawned(popen.pid, popen)
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _posix_spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    folder: str,
    stdio: tuple[int, int, int],
    blocked: Collection[signal.Signals] = (),
) -> Spawned:
    program = executable(argv[0], env)
    actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)]
    if _CLOSEFROM is not None:
        actions.append((_CLOSEFROM, 3))
    home = _home()
    os.chdir(folder)  # raises with the folder as filename: the runner says the folder is the problem
    try:
        pid = os.posix_spawn(
            program,
            list(argv),
            env,
            file_actions=actions,
            setsid=True,
            setsigmask=blocked,
            setsigdef=_RESET_SIGNALS,
        )
    finally:
        os.fchdir(home)
    return Spawned(pid)


_FOUND: dict[tuple[str, str], str] = {}


_OWN_CPUS: list[set[int]] = []  # the pilot's own CPU affinity, read once


@contextlib.contextmanager
def pinned(cpus: Optional[Collection[int]]) -> Iterator[None]:
    """The pilot's thread bound to ``cpus`` while it starts a process, which inherits the binding (and
    passes it on to its children): posix_spawn has no affinity attribute, and Popen's preexec_fn would
    cost a fork. Two system calls; the pilot's own binding comes back after."""
    if cpus is None or _own_cpus() == set(cpus):  # one slot on a node of its own CPUs: nothing to bind
        yield
        return
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, _OWN_CPUS[0])


_BOUND = threading.local()  # a spawner thread's binding: what it last set, None for the pilot's own


def bind_thread(cpus: Optional[Collection[int]]) -> None:
    """Bind the calling spawner thread to ``cpus`` (None: the pilot's own CPUs) for the processes it starts,
    which inherit the binding. It is left as it is after: a spawner thread only starts tasks, and a call
    is saved whenever the next task has the same CPUs, as every task has without binding."""
    wanted = None if cpus is None else frozenset(cpus)
    if getattr(_BOUND, "cpus", None) == wanted:
        return
    os.sched_setaffinity(0, _own_cpus() if wanted is None else wanted)
    _BOUND.cpus = wanted


def _own_cpus() -> set[int]:
    if not _OWN_CPUS:
        _OWN_CPUS.append(os.sched_getaffinity(0))
    return _OWN_CPUS[0]


def executable(program: str, env: Mapping[str, str]) -> str:
    """The file to execute for ``program``, looked up on the task's PATH as Popen does (not the pilot's,
    which posix_spawnp would use). A name with a slash is taken as it is; a relative one is relative to
    the task folder."""
    if "/" in program:
        return program
    path = env.get("PATH", os.defpath)
    found = _FOUND.get((program, path))
    if found is None:
        found = shutil.which(program, path=path)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        _FOUND[(program, path)] = found  # a file that goes away later fails at exec: "not found" again
    return found


_STATE: dict[str, int] = {}


def _posix_spawn_usable() -> bool:
    usable = _STATE.get("usable")
    if usable is None:
        usable = int(hasattr(os, "posix_spawn") and _glibc() >= (2, 26))
        if usable and _CLOSEFROM is None:
            _seal_inherited()
        _STATE["usable"] = usable
    return bool(usable)


def _glibc() -> tuple[int, ...]:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # type: ignore[union-attr]
        return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else ()
    except (AttributeError, OSError, ValueError):
        return ()


def _seal_inherited() -> None:
    """Make descriptors the pilot inherited from its own parent (a batch system's, say) close at exec, as
    Popen's close_fds would close them in the child. Everything CPython opens is close-on-exec already."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                with contextlib.suppress(OSError):
                    if os.get_inheritable(fd):
                        os.set_inheritable(fd, False)


def _home() -> int:
    """A descriptor of the pilot's own working folder, opened once, to step back into after a spawn."""
    fd = _STATE.get("home")
    if fd is None:
        try:
            fd = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # a working folder we may not read: come back to / instead
            fd = os.open("/", os.O_RDONLY | os.O_CLOEXEC)
        _STATE["home"] = fd
    return fd
