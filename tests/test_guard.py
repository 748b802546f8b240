"""The guard process: a pilot killed alone takes its tasks with it (end to end through pilot.pyz), and a
guard killed before its pilot is replaced, a few times at most."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Site, alive, local_config, wait_for

from agent.guard import RESTARTS, Guard

TASKS = REPO / "tests" / "tasks"
GUARD_STARTED = re.compile(r"DEBUG guard process (\d+) kills the tasks if this pilot is killed")

# A task that leaves a process in its group and one that left the group with setsid and ignores TERM,
# writes the three pids to files in its folder, and runs for five minutes.
STAYS = (
    "sleep 300 & echo $! > grandchild; "
    "setsid sh -c 'trap \"\" TERM; exec sleep 301' & echo $! > detached; "
    "echo $$ > task; wait"
)


def started_task_pids(site: Site, count: int) -> list[int]:
    """The pids that ``count`` STAYS tasks wrote, once all of them have."""

    def written() -> list[int]:
        names = ("task", "grandchild", "detached")
        files = [path for name in names for path in site.folder.glob(f"work/*/*/{name}")]
        pids = [int(text) for text in (path.read_text().strip() for path in files) if text]
        return pids if len(pids) == 3 * count else []

    return wait_for(written, 30, what="the tasks to start")


def guard_pid(log: Path) -> int:
    found = wait_for(lambda: GUARD_STARTED.search(log.read_text()), 30, what="the guard to start")
    return int(found.group(1))


def start_pilot(site: Site, reaper: list, tasks: int) -> tuple[subprocess.Popen[bytes], Path]:
    """A pilot with ``tasks`` slots running as many STAYS tasks, logging to pilot.log."""
    site.write(local_config(site.folder, ["sh", "-c", STAYS], pilot={"slots": tasks}))
    assert site.run("tokens", "add", "--range", str(tasks)).returncode == 0
    pilot = site.start("run", "--verbose", log_name="pilot.log")
    reaper.append(pilot)
    return pilot, site.folder / "pilot.log"


def kill_alone(pilot: subprocess.Popen[bytes], tasks: list[int], guard: int) -> None:
    """SIGKILL the pilot alone (its tasks lead sessions of their own); its guard must kill them and exit."""
    os.kill(pilot.pid, signal.SIGKILL)
    assert pilot.wait(timeout=10) == -signal.SIGKILL
    wait_for(lambda: not any(alive(pid) for pid in tasks), 10, what="the tasks to die with their pilot")
    wait_for(lambda: not alive(guard), 10, what="the guard to exit")


def test_a_pilot_killed_alone_takes_its_tasks_with_it_even_detached_ones(site: Site, reaper: list) -> None:
    # A process carrying another pilot's cookie is not this guard's to kill.
    env = {**os.environ, "PILOT_TASK_COOKIE": "0123456789abcdef-0"}
    other = subprocess.Popen(["sleep", "302"], env=env, start_new_session=True)  # the reaper kills its group
    reaper.append(other)
    pilot, log = start_pilot(site, reaper, 2)
    guard = guard_pid(log)
    tasks = started_task_pids(site, 2)
    try:
        kill_alone(pilot, tasks, guard)
        assert re.search(
            r"WARNING the pilot died without stopping its tasks: killed 6 process\(es\) of them: "
            r"range-[01] \(3\), range-[01] \(3\)",
            log.read_text(),
        ), log.read_text()
        assert other.poll() is None
    finally:  # after a failure, stop what the tasks left
        for pid in tasks:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_guard_killed_first_is_replaced_and_the_new_one_does_its_job(site: Site, reaper: list) -> None:
    pilot, log = start_pilot(site, reaper, 1)
    first = guard_pid(log)
    tasks = started_task_pids(site, 1)
    try:
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(GUARD_STARTED.findall(log.read_text())) == 2, 10, what="a second guard")
        warning = f"WARNING guard process {first} was killed by SIGKILL, before the pilot: starting another"
        assert warning in log.read_text()
        second = int(GUARD_STARTED.findall(log.read_text())[1])
        assert second != first and alive(second)
        kill_alone(pilot, tasks, second)
        assert "killed 3 process(es) of them: range-0 (3)" in log.read_text(), log.read_text()
    finally:  # after a failure, stop what the tasks left
        for pid in tasks:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_guards_that_keep_dying_are_replaced_only_so_often(caplog: pytest.LogCaptureFixture) -> None:
    killed = []
    with caplog.at_level("WARNING", logger="agent.guard"), Guard("pilot-under-test") as guard:
        guard.start()
        while guard.process is not None:
            killed.append(guard.process.pid)
            os.kill(guard.process.pid, signal.SIGKILL)
            guard.process.wait()
            guard.check()
        guard.check()  # nothing left to watch: a no-op
    assert len(killed) == RESTARTS + 1 and len(set(killed)) == len(killed)
    assert f"guard process {killed[-1]} was killed by SIGKILL, the {RESTARTS} guards before it too" in (
        caplog.text
    )


def test_a_task_of_a_pilot_killed_alone_never_finishes_and_its_token_runs_once_more(
    site: Site, reaper: list
) -> None:
    ran = site.folder / "ran.log"
    site.write(
        local_config(
            site.folder,
            [sys.executable, str(TASKS / "record.py"), str(ran), "{id}", "{input}"],
            server={"lease": "2s"},
            pilot={"slots": 1, "idle_timeout": "60s"},
        )
    )
    site.add_tokens([{"id": "slow", "input": "4"}])
    first = site.start(log_name="first.log")
    reaper.append(first)
    pid_file = wait_for(lambda: next(site.folder.glob("work/*/slow.1/pid"), None), 30, what="task start")
    task = int(wait_for(pid_file.read_text, 5, what="task pid"))
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    # Killed by the guard well before its 4 s are up: without it the task would finish and log its run.
    wait_for(lambda: not alive(task), 2, what="the task to die with its pilot")
    assert site.status()["locked"] == 1  # nobody gave the token back: its lease runs out
    second = site.start(log_name="second.log")
    reaper.append(second)
    assert second.wait(timeout=60) == 0, (site.folder / "second.log").read_text()[-2000:]
    assert ran.read_text().split() == ["slow"]  # one finished run: the second pilot's
    token = site.token("slow")
    assert [a["outcome"] for a in token["attempts"]] == ["lease-expired", "done"]


def test_a_pilot_that_ends_by_itself_leaves_no_guard_and_its_guard_kills_nothing(site: Site) -> None:
    site.write(local_config(site.folder, ["/bin/true"]))
    assert site.run("tokens", "add", "--range", "3").returncode == 0
    result = site.run("run", "--verbose")
    assert result.returncode == 0, result.stderr
    found = GUARD_STARTED.search(result.stderr)
    assert found is not None, result.stderr
    assert not alive(int(found.group(1)))  # exited and reaped before the pilot exited
    assert "died without stopping its tasks" not in result.stderr
    # A pilot that finds nothing to do starts no guard at all.
    idle = site.run("run", "--verbose")
    assert idle.returncode == 0, idle.stderr
    assert "pool empty" in idle.stderr and GUARD_STARTED.search(idle.stderr) is None
