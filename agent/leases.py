"""Lease keeping: when to renew the leases a pilot holds, and what each renewal's outcome means.

Pure, with the clock passed in. A pilot holds a lease for each running task, each failure held back for
the black-hole breaker (a suspect) and the token held until it fits; it renews them all every third of a
lease. The loop makes the renewal and carries out the actions these functions return (log lines,
stopping a task, reporting); nothing here talks to the pool.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Optional

from agent.pools import Lease, Renewal


@dataclass(frozen=True)
class Schedule:
    """When the next renewal is due: a third of a lease after the last one, so that two thirds of each
    lease are left at least when renewals keep up."""

    every: float
    next: float = 0.0  # when the next renewal is due; a claim schedules the first (``after``)

    @classmethod
    def for_lease(cls, lease_seconds: float) -> Schedule:
        return cls(every=lease_seconds / 3)

    def due(self, now: float) -> bool:
        return now >= self.next

    def after(self, now: float) -> Schedule:
        """The schedule once the leases were renewed (or claimed) at ``now``."""
        return replace(self, next=now + self.every)


class Holder(enum.Enum):
    """What holds a lease in the pilot."""

    RUNNING = "running"  # a task runs the token
    SUSPECT = "suspect"  # a failure held back while the breaker decides
    HELD = "held"  # claimed, held until it fits


class Act(enum.Enum):
    """What a renewal said of one lease."""

    RENEWED = "renewed"  # keep it: the holder gets the new lease
    LOST = "lost"  # reset or taken by another pilot: its holder lets go, nothing is reported
    CANCELLED = "cancelled"  # `tokens cancel`: its holder stops, the attempt is reported cancelled


# The line logged for each holder of a lease that was lost, or cancelled (a suspect's cancel is logged by
# its report); why a running task is stopped; and the line for a lease lost before its task could start.
LOST = {
    Holder.RUNNING: "lease lost (token reset or taken by another pilot): stopping its task",
    Holder.SUSPECT: "lease lost while its failure was held back; the failure is not reported",
    Holder.HELD: "lease lost while it waited for room (token reset or taken)",
}
LOST_REASON = "lease lost: the token was reset or is held by another pilot"
NOT_STARTED = "not started: its lease ran out, or was not renewed, before its task could start"
CLAIMED_AGAIN = "not started: claimed again while its earlier run on this pilot went on"
CANCELLED = {
    Holder.RUNNING: "cancelled by `pilot.pyz tokens cancel`: stopping its task",
    Holder.HELD: "cancelled by `pilot.pyz tokens cancel` while it waited for room",
}


@dataclass(frozen=True)
class Action:
    """One lease of a renewal: what the renewal said of it, and what holds it in the pilot."""

    act: Act
    holder: Holder
    lease: Lease


def to_renew(running: Iterable[Lease], suspects: Iterable[Lease], waiting: Optional[Lease]) -> list[Lease]:
    """The leases to renew: running tasks', held-back failures' and the token held until it fits."""
    return [*running, *suspects, *([waiting] if waiting is not None else [])]


def holder_of(
    token_id: str, *, waiting: Optional[str], suspects: Collection[str], running: Collection[str]
) -> Optional[Holder]:
    """What holds ``token_id`` in the pilot, if anything: ``waiting`` is the id of the token held until it
    fits, ``suspects`` the ids of the held-back failures, ``running`` those of the tasks that run or have
    their resources granted."""
    if token_id == waiting:
        return Holder.HELD
    if token_id in suspects:
        return Holder.SUSPECT
    return Holder.RUNNING if token_id in running else None


def renewal_actions(renewal: Renewal, *, waiting: Optional[str], suspects: Collection[str]) -> list[Action]:
    """What to do with each lease of ``renewal``: the renewed first, then the lost, then the cancelled,
    each in the renewal's order. ``waiting`` is the id of the token held until it fits, ``suspects`` the
    ids of the held-back failures; any other lease is a running task's."""

    def holder(lease: Lease) -> Holder:
        return holder_of(lease.token.id, waiting=waiting, suspects=suspects, running=()) or Holder.RUNNING

    outcomes = ((Act.RENEWED, renewal.renewed), (Act.LOST, renewal.lost), (Act.CANCELLED, renewal.cancelled))
    return [Action(act, holder(lease), lease) for act, leases in outcomes for lease in leases]


# -- the last look before a task starts --------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Which leases' tasks may start, and which were lost or cancelled before they could."""

    startable: list[Lease]
    lost: list[Lease]
    cancelled: list[Lease]


def lapsing_leases(leases: Sequence[Lease], now: float, lease_seconds: float) -> list[Lease]:
    """The leases with less than a third left (see ``Lease.lapsing``): renewed before their tasks start."""
    return [lease for lease in leases if lease.lapsing(now, lease_seconds)]


def start_check(leases: Sequence[Lease], lapsing: Sequence[Lease], renewal: Optional[Renewal]) -> Start:
    """Sort ``leases`` after the renewal of the ``lapsing`` ones: those not lapsing start as they are,
    the renewed start with their new lease (after those, in their order); a lapsing lease the renewal
    did not renew does not start. No renewal (the server did not answer): all lapsing ones are lost,
    since another pilot may run them already."""
    if renewal is None:
        renewal = Renewal([], list(lapsing), [])
    renewed = {lease.token.id: lease for lease in renewal.renewed}
    ours = [lease for lease in leases if lease not in lapsing]
    fresh = [renewed[lease.token.id] for lease in lapsing if lease.token.id in renewed]
    return Start(ours + fresh, list(renewal.lost), list(renewal.cancelled))
