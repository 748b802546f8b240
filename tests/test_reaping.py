"""Finding the tasks that ended without polling each (agent/reaping.py), with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from agent import runner, spawn
from agent.reaping import Reaper


def start(folder: str, argv: list[str]) -> runner.Payload:
    token = folder.rsplit("/", 1)[-1]
    payload = runner.start(
        token_id=token, argv=argv, env={"PATH": "/usr/bin:/bin"}, folder=folder, timeout=None, kill_grace=1.0
    )
    assert isinstance(payload, runner.Payload)
    return payload


def ended_within(reaper: Reaper, running: list[runner.Payload], count: int) -> set[runner.Payload]:
    ended: set[runner.Payload] = set()
    deadline = time.monotonic() + 30
    while len(ended) < count:
        assert time.monotonic() < deadline, "the tasks did not end"
        ended |= reaper.ended([payload for payload in running if payload not in ended])
        time.sleep(0.01)
    return ended


def test_the_tasks_that_exited_are_found_and_reaped_and_the_others_left_running(tmp_path: Path) -> None:
    reaper = Reaper()
    quick = [start(str(tmp_path / f"q{n}"), ["sh", "-c", f"exit {n}"]) for n in range(3)]
    slow = start(str(tmp_path / "slow"), ["sleep", "30"])
    for payload in [*quick, slow]:
        reaper.add(payload)
    try:
        assert ended_within(reaper, [*quick, slow], 3) == set(quick)
        assert [payload.returncode for payload in quick] == [0, 1, 2]  # each its own status
        assert slow.returncode is None and not reaper.ended([slow])
    finally:
        runner.kill_group(slow.pid, signal.SIGKILL)
        slow.process.wait()


def test_a_child_that_is_no_tasks_sends_the_look_back_to_every_task(tmp_path: Path) -> None:
    reaper = Reaper()
    other = subprocess.Popen(["true"])  # a child of the pilot that is no task (the guard, say)
    try:
        os.waitid(os.P_PID, other.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: it comes first
        task = start(str(tmp_path / "t"), ["true"])
        reaper.add(task)
        assert ended_within(reaper, [task], 1) == {task}
        assert task.returncode == 0
    finally:
        other.wait()


def test_a_task_a_spawner_thread_started_is_found_however_soon_it_ended(tmp_path: Path) -> None:
    reaper = Reaper()
    with spawn.background(spawn.BACKGROUND_SLOTS):
        tasks = [start(str(tmp_path / f"t{n}"), ["sh", "-c", f"exit {n}"]) for n in range(8)]
        for payload in tasks:
            reaper.add(payload)
        assert ended_within(reaper, tasks, 8) == set(tasks)
    assert [payload.returncode for payload in tasks] == list(range(8))
