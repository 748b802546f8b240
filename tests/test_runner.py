"""The /proc sweeps that KILL a task's processes by the cookie in their environment.

The /proc they read here is a fake, made of folders named by pid with an ``environ`` file each: it can
list a process again after its KILL, as a loaded machine's /proc does while the process is dying, which
the real one will not do on demand. The processes and the KILLs are real: sleeps this test started.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent import runner

OURS = f"{runner.COOKIE_VARIABLE}={runner.COOKIE_PREFIX}"
OTHER_PILOTS = f"{runner.COOKIE_VARIABLE}=0123456789abcdef"


def sleeper(reaper: list) -> subprocess.Popen:
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)  # the reaper kills its group
    reaper.append(process)
    return process


def fake_proc(folder: Path, environs: dict[int, str]) -> Path:
    for pid, environ in environs.items():
        (folder / str(pid)).mkdir()
        (folder / str(pid) / "environ").write_bytes(environ.encode().replace(b";", b"\0"))
    (folder / "self").mkdir()  # not a pid: skipped
    return folder


def test_leftovers_of_every_task_of_this_pilot_are_killed_and_counted_once(
    tmp_path: Path, reaper: list
) -> None:
    first, second, elsewhere, lookalike = (sleeper(reaper) for _ in range(4))
    proc = fake_proc(
        tmp_path,
        {
            first.pid: f"A=1;{OURS}-0;",
            second.pid: f"{OURS}-17;B=2;",  # the cookie first: no separator before it
            elsewhere.pid: f"{OTHER_PILOTS}-0;",
            lookalike.pid: f"X{OURS}-0;",  # a variable named XPILOT_TASK_COOKIE: not the cookie
        },
    )
    killed = runner.sweep_leftovers(proc=proc)  # both passes see them: still listed after the KILL
    assert killed == {f"{runner.COOKIE_PREFIX}-0": 1, f"{runner.COOKIE_PREFIX}-17": 1}
    assert [first.wait(timeout=10), second.wait(timeout=10)] == [-9, -9]
    assert elsewhere.poll() is None and lookalike.poll() is None


def test_a_sweep_of_leftovers_spares_the_running_tasks(tmp_path: Path, reaper: list) -> None:
    ended, ended_too, running = sleeper(reaper), sleeper(reaper), sleeper(reaper)
    proc = fake_proc(
        tmp_path,
        {ended.pid: f"{OURS}-1;", ended_too.pid: f"{OURS}-1;", running.pid: f"A=1;{OURS}-2;B=2;"},
    )
    killed = runner.sweep_leftovers({f"{runner.COOKIE_PREFIX}-2"}, proc)
    assert killed == {f"{runner.COOKIE_PREFIX}-1": 2}
    assert [ended.wait(timeout=10), ended_too.wait(timeout=10)] == [-9, -9]
    assert running.poll() is None


def test_a_task_sweep_kills_that_task_only(tmp_path: Path, reaper: list) -> None:
    task, next_task, lookalike = sleeper(reaper), sleeper(reaper), sleeper(reaper)
    proc = fake_proc(
        tmp_path,
        {
            task.pid: f"{OURS}-1;",
            next_task.pid: f"{OURS}-10;",  # the same digits and one more
            lookalike.pid: f"X{OURS}-1;",  # a variable named XPILOT_TASK_COOKIE: not the cookie
        },
    )
    assert runner.sweep(f"{runner.COOKIE_PREFIX}-1", proc) == 1
    assert task.wait(timeout=10) == -9
    assert next_task.poll() is None and lookalike.poll() is None
