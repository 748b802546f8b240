"""Memory enforcement (``[task] enforce_memory``): what each running task's processes hold, from /proc.

A task runs in a process group of its own (see spawn.py); its resident memory is the sum of the RSS of
the processes in that group, read from ``/proc/<pid>/stat`` every ``SAMPLE`` seconds while a task with a
memory request runs. One pass over /proc serves every task. Limits: a process that left the group (setsid)
is not counted, memory shared between processes is counted in each, and a task that allocates faster than
its request per sample can pass it by that much before it is killed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Optional

from agent.runner import Stop
from agent.token import Outcome
from agent.units import format_size

if TYPE_CHECKING:
    from agent.runner import Payload

log = logging.getLogger(__name__)

SAMPLE = 0.25  # seconds between looks
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def group_rss(groups: Collection[int], proc: str = "/proc") -> dict[int, int]:
    """Resident bytes of each of these process groups: the sum over their processes."""
    found = dict.fromkeys(groups, 0)
    try:
        names = os.listdir(proc)  # noqa: PTH208 - names only, many times a second
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as file:  # noqa: PTH123 - thousands per second
                stat = file.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(b")") + 2 :].split()  # the name may hold spaces and parentheses
        if len(fields) < 22:
            continue
        group = int(fields[2])
        if group in found:
            found[group] += int(fields[21]) * _PAGE
    return found


class MemoryWatch:
    """When to look next, and which tasks are over their request."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.next_look = 0.0

    def due(self, now: float, tasks: Sequence[Payload]) -> Optional[float]:
        """The next time to look, when enforcement is on and a task with a request runs."""
        return self.next_look if self.enabled and any(task.memory for task in tasks) else None

    def enforce(self, now: float, tasks: Sequence[Payload]) -> None:
        """Kill, at once, the tasks whose processes hold more than they asked for (KILL: a TERM's grace
        would leave the node's OOM killer time to act first)."""
        if not self.enabled:
            return
        over = self.over(now, {task.pid: task.memory for task in tasks if task.memory})
        for task in tasks:
            held = over.get(task.pid)
            if held is None:
                continue
            reason = (
                f"memory: {format_size(held)} resident, over its request of {format_size(task.memory)}; "
                "killed (task.enforce_memory)"
            )
            log.warning("%s", reason, extra={"token": task.token_id})
            task.kill_now(Stop(Outcome.MEMORY, reason))

    def over(self, now: float, requests: dict[int, int], proc: str = "/proc") -> dict[int, int]:
        """Process groups over their request (group: bytes it asks), with what they hold; {} when
        not yet due."""
        if not self.enabled or not requests or now < self.next_look:
            return {}
        self.next_look = now + SAMPLE
        held = group_rss(requests, proc)
        return {group: rss for group, rss in held.items() if rss > requests[group]}
