"""Which running tasks have ended, found without polling every one of them.

With 64 slots the loop polled 64 processes (a wait4 each, most of them still running) at every wake-up.
``os.waitid(P_ALL, WNOWAIT)`` names a child that has exited without reaping it; the task that owns it is
then reaped as before (``Payload.poll``). A task whose process id the loop does not know yet (a spawner
thread is starting it) is looked at by itself; a child that is no task's (the guard, say) sends the look
back to polling every task, as before.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from agent.runner import Payload

_FLAGS = os.WEXITED | os.WNOHANG | os.WNOWAIT


class Reaper:
    def __init__(self) -> None:
        self.by_pid: dict[int, Payload] = {}  # started tasks whose process id the loop knows
        self.unseen: list[Payload] = []  # tasks a spawner thread may still be starting

    def add(self, payload: Payload) -> None:
        self.unseen.append(payload)

    def ended(self, running: Collection[Payload]) -> set[Payload]:
        """Those of ``running`` whose process has ended, reaped."""
        ended = self._seen()
        while self.by_pid:
            info = _exited_child()
            if info is None:
                break
            payload = self.by_pid.pop(info, None)
            if payload is None or not payload.poll():  # not a task's child: look at every task
                if payload is not None:
                    self.by_pid[info] = payload
                return ended | self._poll_all(running)
            ended.add(payload)
        return ended

    def _seen(self) -> set[Payload]:
        """The tasks whose start has settled since the last look: known by pid from now on, unless they
        ended already (a start that failed, or a task done before its spawner thread looked)."""
        ended, unseen = set(), []
        for payload in self.unseen:
            pid = payload.known_pid()
            if pid is None:
                unseen.append(payload)
            elif payload.poll():
                ended.add(payload)
            else:
                self.by_pid[pid] = payload
        self.unseen = unseen
        return ended

    def _poll_all(self, running: Collection[Payload]) -> set[Payload]:
        ended = {payload for payload in running if payload.poll()}
        for payload in ended:
            self.by_pid.pop(payload.pid, None)
        return ended


def _exited_child() -> int | None:
    """The id of a child that has exited, left unreaped; None when none has."""
    try:
        info = os.waitid(os.P_ALL, 0, _FLAGS)
    except ChildProcessError:  # no children at all
        return None
    return None if info is None else info.si_pid
