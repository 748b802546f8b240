"""The soak's chaos: what goes wrong while the pilots run, each part deciding from the scenario's clock
and random generator when it strikes, and doing it.

- Kills: at random times (KILL_GAP apart) a random pilot is SIGKILLed; mostly the whole node dies (the
  pilot and its tasks' process groups), sometimes the pilot alone, whose guard process then kills its
  tasks. The scenario gives the node a new pilot.
- Task kills: at random times (TASK_KILL_GAP apart) one running task of a random pilot is SIGKILLed
  (its process group), its pilot left alive: the pilot must report that attempt as failed and go on.
- Outage: once a third of the tokens are finished the server goes away for 30 seconds (what that means
  per backend: backends.py).
- Freezes: now and then a pilot with running tasks is stopped (SIGSTOP, its tasks go on) for longer than
  its lease, then continued: its locks expire while its tasks run, other pilots take the tokens, and when
  it wakes its renewals and reports meet a lease that moved on.
- Cancels (where the pool has them): twice, a few running tokens and a few waiting ones are cancelled
  with `pilot.pyz tokens cancel`; the soak watches the cancelled tasks' process groups go.
- The black hole (node 0) is not here: it is the environment its pilots get (scenario.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

KILL_GAP = (3.0, 9.0)  # seconds between kills, uniform
NODE_KILL_SHARE = 0.75  # of kills take the whole node (pilot and tasks); the rest the pilot alone
TASK_KILL_GAP = (4.0, 10.0)  # seconds between kills of one task alone, uniform
OUTAGE_AFTER = 1 / 3  # of the tokens finished when the server goes away


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the pilot's tasks: each leads its own session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@dataclass
class Kill:
    """One SIGKILL of a pilot: when, and whether its tasks died with it."""

    at: float
    whole_node: bool
    tasks: list[int]


def session_leaders(pid: int) -> list[int]:
    """The pilot's tasks: its children that lead their own session (the guard process does not)."""
    leaders = []
    for child in children(pid):
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == child:  # state, ppid, pgrp, session
            leaders.append(child)
    return leaders


@dataclass
class TaskKill:
    """One SIGKILL of a single task, its pilot left running."""

    at: float
    pid: int


@dataclass
class TaskKills:
    """When the next task dies alone, and which."""

    rng: random.Random
    next_at: float = 0.0
    done: list[TaskKill] = field(default_factory=list)

    def start(self, now: float) -> None:
        self.next_at = now + self.rng.uniform(*TASK_KILL_GAP)

    def tend(self, now: float, pilots: list[int], logged: Callable[[], set[int]]) -> Optional[TaskKill]:
        """When one is due, SIGKILL one running task of one of ``pilots`` (pids), among those that have
        logged their start and not their end (``logged``): a task killed before it logs is a failed
        attempt with no run to check it against."""
        if now < self.next_at:
            return None
        self.next_at = now + self.rng.uniform(*TASK_KILL_GAP)
        running = logged()
        tasks = [task for pilot in sorted(pilots) for task in session_leaders(pilot) if task in running]
        if not tasks:
            return None
        task = self.rng.choice(tasks)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(task, signal.SIGKILL)
            kill = TaskKill(time.time(), task)
            self.done.append(kill)
            return kill
        return None


def kill_pilot(pid: int, whole_node: bool) -> Kill:
    """SIGKILL the pilot; with ``whole_node`` its tasks too, as when the node dies. The pilot is stopped
    first so that it starts no task and reports nothing between the two."""
    os.kill(pid, signal.SIGSTOP)
    tasks = children(pid)
    os.kill(pid, signal.SIGKILL)
    at = time.time()
    if whole_node:
        for task in tasks:
            for kill in (os.killpg, os.kill):  # its group, or itself if it has none of its own yet
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(task, signal.SIGKILL)
    return Kill(at, whole_node, tasks)


@dataclass
class Kills:
    """When the next pilot dies, and whether alone."""

    rng: random.Random
    next_at: float = 0.0

    def start(self, now: float) -> None:
        self.next_at = now + self.rng.uniform(*KILL_GAP)

    def due(self, now: float) -> Optional[bool]:
        """None, or True (the whole node) / False (the pilot alone) when a kill is due now."""
        if now < self.next_at:
            return None
        self.next_at = now + self.rng.uniform(*KILL_GAP)
        return self.rng.random() < NODE_KILL_SHARE

    def victim(self, candidates: list[int]) -> int:
        return self.rng.choice(sorted(candidates))


FREEZE_GAP = (15.0, 30.0)  # seconds between freezes, uniform
# Also a freeze as soon as the todo tokens first drop to each of these: with todo tokens left other
# pilots take those first, and a frozen pilot's expired leases are taken over only near the end.
LATE_FREEZES = (60, 20)


@dataclass
class Freeze:
    pid: int
    at: float
    until: float
    tasks: list[int]
    woke: Optional[float] = None


@dataclass
class Freezes:
    """Pilots stopped for ``seconds`` (more than the lease) while their tasks run."""

    rng: random.Random
    seconds: float
    next_at: float = 0.0
    frozen: list[Freeze] = field(default_factory=list)
    late: list[int] = field(default_factory=lambda: list(LATE_FREEZES))

    def start(self, now: float) -> None:
        self.next_at = now + self.rng.uniform(*FREEZE_GAP)

    def tend(self, now: float, candidates: list[int], todo: Optional[int]) -> Optional[Freeze]:
        """Wake the pilots whose time is up; freeze one of ``candidates`` (pids) with running tasks when
        one is due (by the clock, or ``todo`` fell to the next of LATE_FREEZES). Returns the new freeze,
        if any."""
        for freeze in self.frozen:
            if freeze.woke is None and now >= freeze.until:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(freeze.pid, signal.SIGCONT)
                freeze.woke = now
        late = bool(self.late) and todo is not None and todo <= self.late[0]
        if now < self.next_at and not late:
            return None
        busy = [pid for pid in sorted(candidates) if children(pid)]
        if not busy:
            return None
        self.next_at = now + self.rng.uniform(*FREEZE_GAP)
        if late:
            self.late.pop(0)
        pid = self.rng.choice(busy)
        os.kill(pid, signal.SIGSTOP)
        at = time.time()  # not the loop's ``now``: the checks compare the pilot's own times with it
        freeze = Freeze(pid, at, at + self.seconds, children(pid))
        self.frozen.append(freeze)
        return freeze

    def wake_all(self) -> None:
        for freeze in self.frozen:
            if freeze.woke is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(freeze.pid, signal.SIGCONT)
                freeze.woke = time.time()


@dataclass
class Outage:
    """The server goes away once ``share`` of the tokens are finished, for ``seconds``."""

    seconds: float
    total: int
    go_away: Callable[[], None]
    come_back: Callable[[], None]
    share: float = OUTAGE_AFTER
    down_since: Optional[float] = None
    window: tuple[float, float] = (0.0, 0.0)  # (went away, came back), epoch seconds
    notes: list[str] = field(default_factory=list)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    @property
    def done(self) -> bool:
        return bool(self.window[0])

    def tend(self, now: float, finished: Optional[int], started: float) -> None:
        """Start the outage when enough tokens are finished; end it after ``seconds``."""
        if self.down_since is not None:
            if now - self.down_since >= self.seconds:
                self.end()
            return
        if not self.done and finished is not None and finished >= self.total * self.share:
            print(
                f"  {finished} tokens finished after {now - started:.0f}s: the server goes away", flush=True
            )
            self.go_away()
            self.down_since = time.time()

    def end(self) -> None:
        if self.down_since is None:
            return
        self.come_back()
        self.window = (self.down_since, time.time())
        self.down_since = None
        print(f"  server back after {self.window[1] - self.window[0]:.0f}s", flush=True)


CANCEL_AT = (0.45, 0.7)  # shares of the tokens finished when a round of cancels strikes
CANCEL_RUNNING = 3  # running tokens cancelled per round: long ones (stopped by their pilot) and one
# short one, whose task often ends by itself before its pilot hears of the cancel (the report races it)
CANCEL_WAITING = 3  # waiting (or todo) tokens cancelled per round


@dataclass
class Cancel:
    """One `tokens cancel` round: when, which tokens, and the task processes that ran them then."""

    sent: float  # when `tokens cancel` started
    running: list[str]
    waiting: list[str]
    pids: dict[int, str]  # pid of a task running a cancelled token: its token
    gone: dict[int, float] = field(default_factory=dict)  # pid: when its process group was seen gone
    at: float = 0.0  # when `tokens cancel` returned: the cancel is in the pool by then


def group_alive(pid: int) -> bool:
    """Whether any process of the group ``pid`` leads is left (the task and what it started)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Cancels:
    """Rounds of cancels at CANCEL_AT shares of the tokens finished; ``cancel`` runs the command."""

    rng: random.Random
    total: int
    cancel: Callable[[list[str]], None]
    rounds: list[Cancel] = field(default_factory=list)
    shares: list[float] = field(default_factory=lambda: list(CANCEL_AT))

    def due(self, finished: Optional[int]) -> bool:
        return bool(self.shares) and finished is not None and finished >= self.total * self.shares[0]

    def strike(self, running: dict[int, str], waiting: list[str]) -> Cancel:
        """Cancel a few of the ``running`` tasks' tokens (pid: token) and of the ``waiting`` tokens."""
        self.shares.pop(0)
        long = sorted((pid, t) for pid, t in running.items() if t.startswith("long-"))
        short = sorted((pid, t) for pid, t in running.items() if not t.startswith("long-"))
        chosen = self.rng.sample(long, min(CANCEL_RUNNING - 1, len(long)))
        chosen += self.rng.sample(short, min(CANCEL_RUNNING - len(chosen), len(short)))
        late = self.rng.sample(sorted(waiting), min(CANCEL_WAITING, len(waiting)))
        round_ = Cancel(time.time(), [token for _, token in chosen], late, dict(chosen))
        self.cancel(round_.running + round_.waiting)
        round_.at = time.time()
        print(f"  cancelled {len(round_.running)} running and {len(late)} waiting tokens", flush=True)
        self.rounds.append(round_)
        return round_

    def watch(self) -> None:
        """Note when each cancelled task's process group is gone."""
        now = time.time()
        for round_ in self.rounds:
            for pid in round_.pids:
                if pid not in round_.gone and not group_alive(pid):
                    round_.gone[pid] = now
