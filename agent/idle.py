"""When a pilot with nothing to claim and nothing running stops: at once, unless other pilots hold tokens
that may come back (their pilot may be dead), and then after at most ``pilot.idle_timeout``.

Pure and clock-free: the loop asks the pool what is left and passes it in, with the time.

A pilot that waits beside todo tokens none of its claims can take looks less and less often
(``next_look``): each of its looks, made with the node free, has the server test every such token
against the node's fit (4 pilots looking every 10 s beside 10,000 tokens too big for them kept
pouchdb-server 74% busy, docs/sizing.md), which the pilots still running pay for. Without such tokens
a look is cheap and the wait keeps its pace, so tokens coming back, or released children, are picked
up as soon as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from agent.units import format_duration

BACKOFF = 8  # beside tokens left behind, at most this many times the pilot's empty_poll between looks


@dataclass
class Idle:
    timeout: float  # pilot.idle_timeout in seconds; 0: stop as soon as nothing is left to claim
    since: Optional[float] = None  # since when nothing was claimed with nothing running
    left_behind: Optional[int] = None  # todo tokens none of our claims can take, counted once
    locked_elsewhere: int = 0  # tokens other pilots held at the last look
    looks: int = 0  # empty looks in a row beside tokens left behind

    @property
    def waits(self) -> bool:
        """Whether tokens locked elsewhere are worth counting: only a pilot that waits for them."""
        return self.timeout > 0

    def began(self, now: float) -> None:
        """A claim found nothing, and nothing runs."""
        if self.since is None:
            self.since = now

    def busy(self) -> None:
        """A claim found something: the wait starts over next time."""
        self.since = None
        self.looks = 0

    def next_look(self, poll: float) -> float:
        """Seconds from an empty look, while idle, to the next: ``poll`` (the pilot's empty_poll), doubled
        at each look in a row beside tokens left behind, up to BACKOFF times ``poll``."""
        if not self.left_behind:
            return poll
        self.looks += 1
        return poll * min(2 ** (self.looks - 1), BACKOFF)

    def ending(self, now: float) -> Optional[str]:
        """Why the pilot stops now, or None while it is not idle or still waits for tokens held elsewhere."""
        if self.since is None:
            return None
        if not self.locked_elsewhere:
            left = f"; {self.left_behind} todo token(s) left, none fits this node" if self.left_behind else ""
            return "pool empty: nothing left to claim" + left
        if now - self.since < self.timeout:
            return None
        return (
            f"pool empty: nothing to claim, {self.locked_elsewhere} token(s) still locked by other pilots "
            f"after waiting {format_duration(self.timeout)}"
        )

    def wake(self) -> Optional[float]:
        """When the wait for tokens held elsewhere is up, while idle."""
        return None if self.since is None else self.since + self.timeout
