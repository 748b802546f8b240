"""The running tasks' bookkeeping: which lease each runs for, their folders (and the finished ones kept for
the next tasks), and the sweep for what finished tasks left running. The loop decides; this keeps count."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from agent import runner
from agent.pools import Lease
from agent.reaping import Reaper
from agent.runner import Payload
from agent.sweep import sweep_leftovers
from agent.token import Report, Result, State

log = logging.getLogger(__name__)


@dataclass
class Running:
    lease: Lease
    payload: Payload


class Tasks:
    def __init__(self, folder: Path, keep_workdirs: str, spares: int, kill_leftovers_after: float) -> None:
        self.folder = folder  # the pilot's folder, holding one folder per task
        self.keep_workdirs = keep_workdirs
        self.spares = spares  # finished folders kept at most
        self.kill_leftovers_after = kill_leftovers_after
        self.running: dict[str, Running] = {}
        self.reaper = Reaper()  # which of them ended, without a wait4 for each at every look
        self.spare_folders: list[str] = []  # folders of finished tasks, for the next ones to empty and take
        self.unswept: dict[str, str] = {}  # cookie: token id, of tasks that ended since the last sweep
        self.sweep_due: Optional[float] = None  # when their detached leftovers are killed

    def __len__(self) -> int:
        return len(self.running)

    def __iter__(self) -> Iterator[Running]:
        return iter(list(self.running.values()))

    def add(self, running: Running) -> None:
        self.running[running.lease.token.id] = running
        self.reaper.add(running.payload)

    def folder_for(self, token_id: str, attempt: int) -> str:
        return runner.task_folder(self.folder, token_id, attempt)

    def spare_for(self) -> Optional[str]:
        """A finished task's folder for the next task to empty and rename (runner.start), if one is kept."""
        return self.spare_folders.pop() if self.spare_folders else None

    def finished(
        self, now: float, log_tail: int, wallclock: Callable[[], float]
    ) -> list[tuple[Running, Result]]:
        """The tasks that ended since the last look, with their results; their leftovers are swept at
        most ``kill_leftovers_after`` from now."""
        done = []
        # Reaped first: a task that exited by itself is reported with its own exit status, even when the
        # pilot looks only after its deadline (stopped by SIGSTOP, or slow to be scheduled).
        ended = self.reaper.ended([running.payload for running in self.running.values()])
        for token_id, running in list(self.running.items()):
            if running.payload not in ended:
                running.payload.tick(now)
                continue
            del self.running[token_id]
            done.append((running, running.payload.finish(log_tail, wallclock)))
            self.unswept[running.payload.cookie] = token_id
            if self.sweep_due is None:
                self.sweep_due = now + self.kill_leftovers_after
        return done

    def sweep(self, now: float, *, final: bool = False) -> None:
        """Kill what finished tasks left running outside their process group: at most
        pilot.kill_leftovers_after after they ended, and all of it when the pilot ends (as a batch job's
        end would; a grid node's next job should not find them). One /proc sweep serves every task that
        ended since the last, so short tasks do not pay a sweep each."""
        if not final and (self.sweep_due is None or now < self.sweep_due):
            return
        ended, self.unswept, self.sweep_due = self.unswept, {}, None
        spared = {task.payload.cookie for task in self.running.values()}
        killed = sweep_leftovers(runner.COOKIE_PREFIX, spared)
        if not killed:
            return
        total = sum(killed.values())
        whose = [f"{token} ({killed.pop(cookie)})" for cookie, token in ended.items() if cookie in killed]
        if killed:  # started, after the last sweep, by tasks that ended before it
            whose.append(f"earlier tasks ({sum(killed.values())})")
        log.warning(
            "killed %d process(es) that finished tasks had left running, detached: %s",
            total,
            ", ".join(whose),
        )

    def tidy_folder(self, folder: str, report: Report) -> None:
        keep = self.keep_workdirs
        if keep == "always" or (keep == "failed" and report.state is not State.DONE):
            return
        if len(self.spare_folders) < self.spares:
            self.spare_folders.append(folder)  # emptied and renamed by the next task's start, off the loop
        else:
            runner.remove_folder(folder)

    def tidy_pilot_folder(self) -> None:
        for spare in self.spare_folders:
            runner.remove_folder(spare)
        self.spare_folders = []
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when empty: kept task folders stay
