"""Whether the pool server answers, and when to try it again: jittered exponential backoff, capped.

Pure bookkeeping with the clock passed in. The loop asks ``may_try`` before talking to the server,
reports ``failed`` or ``ok`` after, and gives up when ``exceeded`` says server.max_outage has passed.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

from agent.errors import LASTING
from agent.units import format_duration

# What a user does after a pilot gave up on its server (exit 4): its last line ends with it.
OUTAGE_HINT = "once `pilot.pyz check` reaches the server again, submit pilots again"


def first_claim_delay(spread: float, jitter: Callable[[], float] = random.random) -> float:
    """Seconds a pilot waits before its first claim: a random part of ``pilot.start_jitter``, so that the
    hundreds of pilots of an array that start in the same second do not all reach the server in it."""
    return spread * jitter()


class Outage:
    def __init__(
        self,
        max_outage: float,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.max_outage = max_outage
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.since: Optional[float] = None  # monotonic time of the first failure in a row
        self.failures = 0
        self.next_try = 0.0
        self.cause = ""
        self.reached = False  # the server has answered at least once

    @property
    def down(self) -> bool:
        return self.since is not None

    def may_try(self, now: float) -> bool:
        return self.since is None or now >= self.next_try

    def failed(self, now: float, cause: str, retry_after: Optional[float] = None) -> None:
        """One more failed attempt: wait twice as long as last time (capped), with a random half of it
        added so that a thousand pilots do not come back in step; at least as long as the server's
        Retry-After asked, with up to a tenth more at random, for the same reason."""
        if self.since is None:
            self.since = now
        self.failures += 1
        self.cause = cause
        delay = min(self.cap, self.base * 2 ** (self.failures - 1)) * (0.5 + self.jitter() / 2)
        if retry_after is not None:
            delay = max(delay, retry_after * (1 + self.jitter() / 10))
        self.next_try = now + delay

    def ok(self, now: float) -> Optional[float]:
        """The server answered. Returns how long it had been away, or None when it was not."""
        self.reached = True
        if self.since is None:
            return None
        away = now - self.since
        self.since, self.failures, self.cause = None, 0, ""
        return away

    def hopeless(self) -> bool:
        """The server never answered, and what stops it is not cured by waiting: a wrong host name or a
        certificate we do not trust. Waiting out max_outage would only hold a batch slot for nothing.
        Once the server has answered, the same causes count as an outage (DNS or a certificate changed)."""
        return self.down and self.cause in LASTING and not self.reached

    def exceeded(self, now: float) -> bool:
        return self.since is not None and now - self.since >= self.max_outage

    def describe(self, now: float) -> str:
        if self.since is None:
            return "server reachable"
        return f"server unreachable for {format_duration(now - self.since)} ({self.cause})"
