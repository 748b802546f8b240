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


def sleepers(folder: Path, reaper: list, *environs: str) -> list[subprocess.Popen]:
    """One real sleeper per environment (entries separated by ';'), listed in a fake /proc at ``folder``."""
    processes = []
    for environ in environs:
        process = subprocess.Popen(["sleep", "300"], start_new_session=True)  # the reaper kills its group
        reaper.append(process)
        (folder / str(process.pid)).mkdir()
        (folder / str(process.pid) / "environ").write_bytes(environ.encode().replace(b";", b"\0"))
        processes.append(process)
    (folder / "self").mkdir(exist_ok=True)  # not a pid: skipped
    return processes


def test_leftovers_of_every_task_of_this_pilot_are_killed_and_counted_once(
    tmp_path: Path, reaper: list
) -> None:
    first, second, elsewhere, lookalike = sleepers(
        tmp_path,
        reaper,
        f"A=1;{OURS}-0;",
        f"{OURS}-17;B=2;",  # the cookie first: no separator before it
        f"{OTHER_PILOTS}-0;",
        f"X{OURS}-0;",  # a variable named XPILOT_TASK_COOKIE: not the cookie
    )
    killed = sweep.sweep_leftovers(PREFIX, proc=str(tmp_path))  # both passes list them, KILLed or not
    assert killed == {f"{PREFIX}-0": 1, f"{PREFIX}-17": 1}
    assert [first.wait(timeout=10), second.wait(timeout=10)] == [-9, -9]
    assert elsewhere.poll() is None and lookalike.poll() is None


def test_a_sweep_of_leftovers_spares_the_running_tasks(tmp_path: Path, reaper: list) -> None:
    ended, ended_too, running = sleepers(tmp_path, reaper, f"{OURS}-1;", f"{OURS}-1;", f"A=1;{OURS}-2;B=2;")
    killed = sweep.sweep_leftovers(PREFIX, {f"{PREFIX}-2"}, str(tmp_path))
    assert killed == {f"{PREFIX}-1": 2}
    assert [ended.wait(timeout=10), ended_too.wait(timeout=10)] == [-9, -9]
    assert running.poll() is None


def test_a_task_sweep_kills_that_task_only(tmp_path: Path, reaper: list) -> None:
    task, next_task, lookalike = sleepers(
        tmp_path,
        reaper,
        f"{OURS}-1;",
        f"{OURS}-10;",  # the same digits and one more
        f"X{OURS}-1;",  # a variable named XPILOT_TASK_COOKIE: not the cookie
    )
    assert sweep.sweep(f"{PREFIX}-1", str(tmp_path)) == 1
    assert task.wait(timeout=10) == -9
    assert next_task.poll() is None and lookalike.poll() is None


def test_the_guards_sweep_kills_every_process_of_the_pilots_tasks_and_counts_them_by_token(
    tmp_path: Path, reaper: list
) -> None:
    running, leftover, of_other_task, elsewhere = sleepers(
        tmp_path,
        reaper,
        f"PILOT_TOKEN_ID=range-1;{OURS}-1;",
        f"{OURS}-1;PILOT_TOKEN_ID=range-1;",
        f"{OURS}-2;PILOT_TOKEN_ID=x y;",
        f"PILOT_TOKEN_ID=range-1;{OTHER_PILOTS}-1;",
    )
    assert sweep.sweep_orphans(PREFIX, str(tmp_path)) == {"range-1": 2, "x y": 1}
    assert [p.wait(timeout=10) for p in (running, leftover, of_other_task)] == [-9, -9, -9]
    assert elsewhere.poll() is None
