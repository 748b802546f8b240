"""Start a task's process: in its folder, in a session of its own, with the given stdin, stdout and stderr,
and no other file descriptor of the pilot.

``os.posix_spawn`` where the C library does it right (glibc 2.26 and later: a new session, and exec
errors such as "not found" reported to the caller), else ``subprocess.Popen``. For the pilot, whose loop
starts every task itself, posix_spawn costs what Popen costs on CPython 3.10 and later (both vfork), and
half of Popen's 1.2 ms on 3.9, whose Popen forks the whole pilot.

Python's posix_spawn has no "change directory" action, so the pilot steps into the task folder for the
call and back out: its loop is the only thread that runs while tasks are started, and it names every
file by its absolute path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, Optional, Protocol

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

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            self._reap(0)
        return self.returncode

    def _reap(self, flags: int) -> None:
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
    # Popen's child keeps the signal mask of the thread that starts it.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if blocked else None
    try:
        popen = subprocess.Popen(
            list(argv),
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
_OWN_CPUS: list[set[int]] = []  # the pilot's own CPU affinity, read once


@contextlib.contextmanager
def pinned(cpus: Optional[Collection[int]]) -> Iterator[None]:
    """The pilot's thread bound to ``cpus`` while it starts a process, which inherits the binding (and
    passes it on to its children): posix_spawn has no affinity attribute, and Popen's preexec_fn would
    cost a fork. Two system calls; the pilot's own binding comes back after."""
    if cpus is None:
        yield
        return
    if not _OWN_CPUS:
        _OWN_CPUS.append(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, _OWN_CPUS[0])


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
