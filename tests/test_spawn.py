"""Starting a task's process, both ways the pilot knows: posix_spawn (glibc 2.26+) and Popen (elsewhere).
Each test runs both, in this process, and checks what the task itself sees from /proc and its shell."""

from __future__ import annotations

import errno
import functools
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import spawn
from agent.spawn import Spawned

REPORT = (
    'echo "$(pwd) $$ $(ps -o sid= -p $$ | tr -d " ") $MARK"; ls -l /proc/$$/fd; grep SigIgn /proc/$$/status'
)


@pytest.fixture(params=["posix_spawn", "popen"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Which way processes start. posix_spawn must be what this machine (glibc >= 2.26) uses; its first
    use is decided afresh, as in a new pilot."""
    if request.param == "posix_spawn":
        assert spawn._glibc() >= (2, 26), "the posix_spawn path needs glibc 2.26 or later"
        monkeypatch.delitem(spawn._STATE, "usable", raising=False)
    else:
        monkeypatch.setitem(spawn._STATE, "usable", 0)
    yield request.param


def run(argv: list[str], folder: Path, env: dict[str, str]) -> tuple[int, str]:
    out = os.open(folder / "stdout", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        process = spawn.spawn(argv, env, str(folder), (null, out, out))
        code = process.wait()
    finally:
        os.close(out)
        os.close(null)
    return code, (folder / "stdout").read_text()


def test_the_task_runs_in_its_folder_as_a_session_leader_with_its_env_and_nothing_inherited(
    way: str, tmp_path: Path
) -> None:
    # A descriptor the pilot inherited without close-on-exec, as a batch system might hand one down.
    leaked = os.open(tmp_path / "leaked-descriptor", os.O_WRONLY | os.O_CREAT)
    os.set_inheritable(leaked, True)
    (tmp_path / "task").mkdir()
    try:
        code, out = run(
            ["sh", "-c", REPORT], tmp_path / "task", {"PATH": os.environ["PATH"], "MARK": "m; $(x)"}
        )
    finally:
        os.close(leaked)
    lines = out.splitlines()
    cwd, pid, sid, mark = lines[0].split(" ", 3)
    assert code == 0
    assert cwd == str(tmp_path / "task")
    assert pid == sid  # its own session, so its own process group
    assert mark == "m; $(x)"
    assert "leaked-descriptor" not in out
    assert all(f" {fd} -> " in out for fd in (0, 1, 2))
    sigpipe = 1 << (signal.SIGPIPE - 1)
    assert int(lines[-1].split()[1], 16) & sigpipe == 0  # SIGPIPE back to default, as Popen restores it


def test_the_pilot_stays_where_it_was(way: str, tmp_path: Path) -> None:
    here = Path.cwd()
    (tmp_path / "task").mkdir()
    assert run(["true"], tmp_path / "task", {"PATH": os.environ["PATH"]})[0] == 0
    assert Path.cwd() == here


def test_a_program_is_looked_up_on_the_tasks_path_not_the_pilots(way: str, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    tool = tools / "only-here"
    tool.write_text("#!/bin/sh\necho found\n")
    tool.chmod(0o755)
    assert run(["only-here"], tmp_path, {"PATH": str(tools)}) == (0, "found\n")
    with pytest.raises(FileNotFoundError):
        run(["only-here"], tmp_path, {"PATH": "/usr/bin:/bin"})


def test_a_relative_program_is_relative_to_the_task_folder(way: str, tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho relative\n")
    (tmp_path / "run.sh").chmod(0o755)
    assert run(["./run.sh"], tmp_path, {"PATH": "/usr/bin:/bin"}) == (0, "relative\n")


CANNOT_START = {  # name: (mode and content of the file, or None for no file; the errno expected)
    "missing": (None, errno.ENOENT),
    "not-executable": ((0o644, "#!/bin/sh\n"), errno.EACCES),
    "no-shebang": ((0o755, "\x00\x01binary junk"), errno.ENOEXEC),
}


@pytest.mark.parametrize("name", sorted(CANNOT_START))
def test_programs_that_cannot_start_raise_with_their_errno(way: str, tmp_path: Path, name: str) -> None:
    made, expected = CANNOT_START[name]
    program = tmp_path / name
    if made is not None:
        program.write_text(made[1])
        program.chmod(made[0])
    with pytest.raises(OSError) as caught:
        run([str(program)], tmp_path, {"PATH": "/usr/bin:/bin"})
    assert caught.value.errno == expected


def test_a_missing_folder_is_named_in_the_error(way: str, tmp_path: Path) -> None:
    # Descriptors above 2, as the runner's are: with 0, 1 and 2 spawn() would take Popen either way.
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError) as caught:
            spawn.spawn(["true"], {"PATH": "/usr/bin:/bin"}, str(tmp_path / "gone"), (null, null, null))
    finally:
        os.close(null)
    assert caught.value.errno == errno.ENOENT
    if way == "posix_spawn":
        assert caught.value.filename == str(tmp_path / "gone")


def test_spawned_reports_exit_codes_and_signals_as_popen_does(tmp_path: Path) -> None:
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        env = {"PATH": "/usr/bin:/bin"}
        codes = []
        for script in ("exit 3", "kill -KILL $$"):
            process = spawn._posix_spawn(["sh", "-c", script], env, str(tmp_path), (null, null, null))
            assert isinstance(process, Spawned)
            codes.append(process.wait())
            assert process.poll() == codes[-1]
    finally:
        os.close(null)
    assert codes == [3, -signal.SIGKILL]


def test_blocked_signals_stay_blocked_in_the_child_and_the_pilots_mask_is_untouched(
    way: str, tmp_path: Path
) -> None:
    out = os.open(tmp_path / "stdout", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        argv = ["grep", "SigBlk", "/proc/self/status"]  # grep leaves its mask alone; dash clears it
        blocked = (signal.SIGTERM, signal.SIGUSR1)
        process = spawn.spawn(argv, {"PATH": "/usr/bin:/bin"}, str(tmp_path), (null, out, out), blocked)
        assert process.wait() == 0
    finally:
        os.close(out)
        os.close(null)
    mask = int((tmp_path / "stdout").read_text().split()[1], 16)
    assert mask == (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGUSR1 - 1))
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


# -- a fat node: tasks started from spawner threads ------------------------------------------------


def test_with_many_slots_tasks_start_from_spawner_threads_as_they_would_inline(tmp_path: Path) -> None:
    (tmp_path / "task").mkdir()
    out = os.open(tmp_path / "stdout", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with spawn.background(spawn.BACKGROUND_SLOTS):
            process = spawn.spawn_task(
                ["sh", "-c", REPORT],
                {"PATH": "/usr/bin:/bin", "MARK": "m"},
                str(tmp_path / "task"),
                (null, out, out),
            )
            assert isinstance(process, spawn.Starting)
            assert process.wait() == 0
    finally:
        os.close(out)
        os.close(null)
    cwd, pid, sid, mark = (tmp_path / "stdout").read_text().splitlines()[0].split(" ", 3)
    assert (cwd, sid, mark) == (str(tmp_path / "task"), pid, "m")  # its folder, its own session, its env
    assert process.pid == int(pid)


def test_with_few_slots_tasks_start_inline(tmp_path: Path) -> None:
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        with spawn.background(spawn.BACKGROUND_SLOTS - 1):
            process = spawn.spawn_task(["true"], {"PATH": "/usr/bin:/bin"}, str(tmp_path), (null, null, null))
            assert not isinstance(process, spawn.Starting)
            assert process.wait() == 0
    finally:
        os.close(null)


@pytest.mark.parametrize("name", sorted(CANNOT_START))
def test_a_start_that_fails_in_a_spawner_thread_is_reported_as_not_started(tmp_path: Path, name: str) -> None:
    from agent import runner
    from agent.token import Outcome

    made, _ = CANNOT_START[name]
    program = tmp_path / name
    if made is not None:
        program.write_text(made[1])
        program.chmod(made[0])
    token = "t"
    with spawn.background(spawn.BACKGROUND_SLOTS):
        payload = runner.start(
            token_id=token,
            argv=[str(program)],
            env={"PATH": "/usr/bin:/bin"},
            folder=str(tmp_path / "t.1"),
            timeout=None,
            kill_grace=1.0,
        )
        assert isinstance(payload, runner.Payload)
        payload.process.wait()
        assert payload.poll()
        result = payload.finish(100, lambda: 0.0)
    assert result.outcome is Outcome.NOT_STARTED
    expected = {
        "missing": "command not found",
        "not-executable": "permission denied",
        "no-shebang": "not a program",
    }
    assert expected[name] in result.reason and str(program) in result.reason


def test_a_start_that_raises_anything_still_settles_as_failed() -> None:
    """Else the loop would wait forever for the pid of a task that never started."""
    starting = spawn.Starting()

    def broken() -> spawn.Process:
        raise ValueError("embedded null byte")

    starting.start(broken)
    assert starting.poll() == spawn.Starting.FAILED and starting.wait() == spawn.Starting.FAILED
    assert starting.pid == 0 and "ValueError: embedded null byte" in str(starting.error)


def test_a_task_folder_that_cannot_be_made_in_a_spawner_thread_is_reported_as_not_started(
    tmp_path: Path,
) -> None:
    """The folder and the output files are readied in the spawner thread: its failure reads as the
    inline start's would, naming the folder."""
    from agent import runner
    from agent.token import Outcome

    (tmp_path / "file").write_text("not a folder")
    folder, token = tmp_path / "file" / "t.1", "t"
    with spawn.background(spawn.BACKGROUND_SLOTS):
        payload = runner.start(
            token_id=token,
            argv=["true"],
            env={"PATH": "/usr/bin:/bin"},
            folder=str(folder),
            timeout=None,
            kill_grace=1.0,
        )
        assert isinstance(payload, runner.Payload)
        assert isinstance(payload.process, spawn.Starting)
        payload.process.wait()
        assert payload.poll()
        result = payload.finish(100, lambda: 0.0)
    assert result.outcome is Outcome.NOT_STARTED
    assert result.reason == f"cannot use task folder {folder}: Not a directory"
    assert payload.outputs == []  # nothing left open


def test_a_spare_folder_is_emptied_and_renamed_where_the_next_task_starts(tmp_path: Path) -> None:
    from agent import runner

    spare = tmp_path / "a.1"
    spare.mkdir()
    (spare / "stdout").write_text("old")
    (spare / "stderr").write_text("old")
    token = "b"
    with spawn.background(spawn.BACKGROUND_SLOTS):
        payload = runner.start(
            token_id=token,
            argv=["sh", "-c", "ls; echo new"],
            env={"PATH": "/usr/bin:/bin"},
            folder=str(tmp_path / "b.1"),
            timeout=None,
            kill_grace=1.0,
            spare=str(spare),
        )
        assert isinstance(payload, runner.Payload)
        payload.process.wait()
        assert payload.poll()
        result = payload.finish(100, lambda: 0.0)
    assert not spare.exists()
    assert result.stdout_tail == b"stderr\nstdout\nnew\n"  # fresh files, nothing of the last task's


def cpus_allowed(status: str) -> set[int]:
    """The CPUs of a ``Cpus_allowed_list:`` line of /proc/PID/status, such as ``0-2,5``."""
    listed = status.split(":", 1)[1].strip()
    cpus: set[int] = set()
    for part in listed.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def started_bound(tmp_path: Path, sets: list[frozenset[int]]) -> list[set[int]]:
    """Start one task per CPU set from spawner threads, all queued before any is waited for, each reading
    its own affinity from /proc; what each read."""
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    outs = [
        os.open(tmp_path / f"out.{n}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644) for n in range(len(sets))
    ]
    try:
        with spawn.background(4):
            processes = [
                spawn.spawn_task(
                    ["grep", "^Cpus_allowed_list:", "/proc/self/status"],
                    {"PATH": "/usr/bin:/bin"},
                    str(tmp_path),
                    (null, out, out),
                    cpus,
                )
                for cpus, out in zip(sets, outs)
            ]
            assert all(process.wait() == 0 for process in processes)
    finally:
        for fd in (null, *outs):
            os.close(fd)
    return [cpus_allowed((tmp_path / f"out.{n}").read_text()) for n in range(len(sets))]


@pytest.fixture
def three_sets() -> list[frozenset[int]]:
    own = sorted(os.sched_getaffinity(0))
    if len(own) < 2:
        pytest.skip("needs 2 CPUs to bind tasks to different ones")
    return [frozenset({own[0]}), frozenset({own[1]}), frozenset(own[:2])]


def test_tasks_with_alternating_cpus_each_run_on_exactly_their_own(
    tmp_path: Path, three_sets: list[frozenset[int]]
) -> None:
    """Whichever spawner thread starts it, and whatever that thread was bound to before."""
    sets = [three_sets[n % 3] for n in range(24)] + [frozenset(os.sched_getaffinity(0))]
    assert started_bound(tmp_path, sets) == [set(cpus) for cpus in sets]


def test_spawner_threads_keep_their_binding_for_the_next_task_on_the_same_cpus(
    tmp_path: Path, three_sets: list[frozenset[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One binding per CPU set, not one per start: each set's tasks go to the thread bound to it."""
    bindings: list[frozenset[int]] = []
    real = os.sched_setaffinity

    def counted(pid: int, cpus: frozenset[int]) -> None:
        bindings.append(frozenset(cpus))
        real(pid, cpus)

    monkeypatch.setattr(os, "sched_setaffinity", counted)
    sets = [three_sets[n % 3] for n in range(24)]
    assert started_bound(tmp_path, sets) == [set(cpus) for cpus in sets]
    assert sorted(bindings, key=sorted) == sorted(three_sets, key=sorted)


def test_shutdown_finishes_every_job_queued_on_every_spawner_thread() -> None:
    gate, ran = threading.Event(), []
    threads = spawn.Spawners(2)
    threads.submit(gate.wait, frozenset({0}))  # holds its thread while the rest are queued
    for n in range(6):
        threads.submit(functools.partial(ran.append, n), frozenset({n % 2}))
    threads.submit(functools.partial(ran.append, "unbound"))
    gate.set()
    threads.shutdown()
    assert sorted(ran, key=str) == [0, 1, 2, 3, 4, 5, "unbound"]
    assert not any(thread.is_alive() for thread in threads.threads)
    assert [threads.routes.busy(n) for n in range(2)] == [0, 0]
