"""The black-hole breaker: a node that fails every task must stop eating the pool.

A broken node (missing library, full disk, bad GPU) fails each task in seconds and, left alone, moves the
whole pool to error. The breaker trips after ``limit`` consecutive failures of *different* tokens within
``window`` seconds on one pilot; any success resets it, so a working node with one bad token never trips.

Once a task has succeeded on the node, a streak must be twice as long. A node that never ran anything is
caught after ``limit`` failures; a node that has shown it works would otherwise trip now and then on the
pool's own bad luck (with 5% of tokens failing and a limit of 3, about once in 8,000 tasks: a lost pilot
with its batch slot) rather than on a fault. The price: a node that breaks later fails ``limit`` more
tasks, given back uncharged like the rest. Pure logic, clock passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# What a user does about a node the breaker stopped: the pilot's last line ends with it.
BLACK_HOLE_HINT = (
    "; see why with `pilot.pyz tokens show {token_id}` (its last attempt's reason and stderr), and keep "
    "jobs off this node until it is fixed"
)


@dataclass
class Breaker:
    limit: int  # 0: never trips
    window: float
    streak: list[tuple[str, float]] = field(default_factory=list)  # (token id, when it failed), oldest first
    tripped: bool = False
    proven: bool = False  # a task has succeeded on this node

    @property
    def needed(self) -> int:
        """How many failures in a row trip it now."""
        return 2 * self.limit if self.proven else self.limit

    def failure(self, token_id: str, now: float) -> bool:
        """Count a charged failure; True when this one trips the breaker."""
        if not self.limit:
            return False
        self.expire(now)
        if token_id not in {failed for failed, _ in self.streak}:
            self.streak.append((token_id, now))
        if len(self.streak) >= self.needed:
            self.tripped = True
        return self.tripped

    def success(self) -> list[str]:
        """A task succeeded: the node works. Returns the streak's token ids, which were real failures."""
        ids = [token_id for token_id, _ in self.streak]
        self.streak.clear()
        self.proven = True
        return ids

    def expire(self, now: float) -> list[str]:
        """Drop failures older than the window; returns their token ids (real failures, not the node)."""
        old = [token_id for token_id, when in self.streak if now - when > self.window]
        self.streak = [(token_id, when) for token_id, when in self.streak if now - when <= self.window]
        return old
