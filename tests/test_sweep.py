"""The /proc sweeps that KILL a task's processes by the cookie in their environment.

The /proc they read here is a fake, made of folders named by pid with an ``environ`` file each: it can
list a process again after its KILL, as a loaded machine's /proc does while the process is dying, which
the real one will not do on demand. The processes and the KILLs are real: sleeps this test started.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent import sweep

PREFIX = "fedcba9876543210"  # a pilot's cookie prefix, like runner.COOKIE_PREFIX
OURS = f"{sweep.COOKIE_VARIABLE}={PREFIX}"
OTHER_PILOTS = f"{sweep.COOKIE_VARIABLE}=0123456789abcdef"


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
    killed = sweep.sweep_leftovers(PREFIX, proc=str(proc))  # both passes list them, KILLed or not
    assert killed == {f"{PREFIX}-0": 1, f"{PREFIX}-17": 1}
    assert [first.wait(timeout=10), second.wait(timeout=10)] == [-9, -9]
    assert elsewhere.poll() is None and lookalike.poll() is None


def test_a_sweep_of_leftovers_spares_the_running_tasks(tmp_path: Path, reaper: list) -> None:
    ended, ended_too, running = sleeper(reaper), sleeper(reaper), sleeper(reaper)
    proc = fake_proc(
        tmp_path,
        {ended.pid: f"{OURS}-1;", ended_too.pid: f"{OURS}-1;", running.pid: f"A=1;{OURS}-2;B=2;"},
    )
    killed = sweep.sweep_leftovers(PREFIX, {f"{PREFIX}-2"}, str(proc))
    assert killed == {f"{PREFIX}-1": 2}
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
    assert sweep.sweep(f"{PREFIX}-1", str(proc)) == 1
    assert task.wait(timeout=10) == -9
    assert next_task.poll() is None and lookalike.poll() is None


def test_the_guards_sweep_kills_every_process_of_the_pilots_tasks_and_counts_them_by_token(
    tmp_path: Path, reaper: list
) -> None:
    running, leftover, of_other_task, elsewhere = (sleeper(reaper) for _ in range(4))
    proc = fake_proc(
        tmp_path,
        {
            running.pid: f"PILOT_TOKEN_ID=range-1;{OURS}-1;",
            leftover.pid: f"{OURS}-1;PILOT_TOKEN_ID=range-1;",
            of_other_task.pid: f"{OURS}-2;PILOT_TOKEN_ID=x y;",
            elsewhere.pid: f"PILOT_TOKEN_ID=range-1;{OTHER_PILOTS}-1;",
        },
    )
    assert sweep.sweep_orphans(PREFIX, str(proc)) == {"range-1": 2, "x y": 1}
    assert [p.wait(timeout=10) for p in (running, leftover, of_other_task)] == [-9, -9, -9]
    assert elsewhere.poll() is None
