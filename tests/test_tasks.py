"""The running tasks' bookkeeping (agent/tasks.py) with real processes and an injected clock: what a look
at them after a long pause finds (a pilot stopped by SIGSTOP wakes past the tasks' deadlines)."""

from __future__ import annotations

import time
from pathlib import Path

from agent import runner
from agent.identity import Identity
from agent.pools import Lease
from agent.tasks import Running, Tasks
from agent.token import Attempt, Outcome, State, Token

TIMEOUT = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def start(tasks: Tasks, clock: Clock, token_id: str, argv: list[str]) -> Running:
    identity = Identity("pilot-a", "node1", None)
    attempt = Attempt(pilot=identity.pilot_id, host=identity.host, batch_job=None, claimed=0.0)
    lease = Lease(Token(token_id, {}, State.LOCKED, (attempt,), 0), "lease-1", 0.0, attempt)
    folder = tasks.folder_for(token_id, 1)
    payload = runner.start(
        token_id=token_id, argv=argv, env={}, folder=folder, timeout=TIMEOUT, kill_grace=1.0, clock=clock
    )
    assert isinstance(payload, runner.Payload)
    running = Running(lease, payload)
    tasks.add(running)
    return running


def wait_exited(pid: int) -> None:
    """Until the process has exited, without reaping it: a zombie, as a stopped pilot finds its tasks."""
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the task did not exit"
        time.sleep(0.01)


def test_tasks_that_exited_before_a_look_past_their_deadline_keep_their_own_exit_status(
    tmp_path: Path,
) -> None:
    """The soak found a pilot stopped longer than task.timeout taking its tasks, which had exited with 0
    in time, for timed out (charged): it applied the deadline before it reaped them."""
    clock = Clock()
    tasks = Tasks(tmp_path, "never", 0, 1.0)
    ok = start(tasks, clock, "ok", ["/bin/sh", "-c", "exit 0"])
    failing = start(tasks, clock, "failing", ["/bin/sh", "-c", "exit 3"])
    slow = start(tasks, clock, "slow", ["/bin/sleep", "30"])
    for running in (ok, failing):
        wait_exited(running.payload.pid)
    clock.now += 3 * TIMEOUT  # the pilot wakes long after every deadline
    ended = {running.lease.token.id: result for running, result in tasks.finished(clock(), 100, time.time)}
    assert {token_id: (r.outcome, r.exit_code) for token_id, r in ended.items()} == {
        "ok": (Outcome.DONE, 0),
        "failing": (Outcome.FAILED, 3),
    }
    assert slow.payload.stop is not None and slow.payload.stop.outcome is Outcome.TIMEOUT  # TERM sent
    wait_exited(slow.payload.pid)
    ((running, result),) = tasks.finished(clock(), 100, time.time)
    assert (running.lease.token.id, result.outcome, result.signal) == ("slow", Outcome.TIMEOUT, 15)
    assert len(tasks) == 0
