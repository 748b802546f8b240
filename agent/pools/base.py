"""The one small interface every pool backend implements: local SQLite, CouchDB (PiCaS layout), ...

A claim is a lease: the token is ours until ``Lease.expires`` unless we renew it. A pilot that dies
without a word loses its leases, and the next claimer records that attempt as lease-expired. A report
or renewal that finds the lease moved on returns a conflict instead of overwriting the newer attempt.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from agent.errors import PoolError, ServerUnreachable
from agent.identity import Identity
from agent.token import Attempt, NewToken, Report, Token


@dataclass(frozen=True)
class Lease:
    token: Token  # as it was when claimed, with its history
    lease_id: str  # unique per claim; what reports and renewals are conditional on
    expires: float  # epoch seconds
    attempt: Attempt  # the attempt this claim opened
    handle: Any = field(default=None, compare=False, repr=False)  # backend-private, e.g. a revision


@dataclass(frozen=True)
class Counts:
    todo: int = 0  # claimable now
    locked: int = 0
    done: int = 0
    error: int = 0
    waiting: int = 0  # todo once the tokens they come after are done

    def as_dict(self) -> dict[str, int]:
        return {
            "todo": self.todo,
            "locked": self.locked,
            "done": self.done,
            "error": self.error,
            "waiting": self.waiting,
        }

    @property
    def total(self) -> int:
        return self.todo + self.locked + self.done + self.error + self.waiting


class Saved(enum.Enum):
    SAVED = "saved"
    CONFLICT = "conflict"  # the lease had moved on: the newer attempt was kept, ours only logged


@dataclass(frozen=True)
class Renewal:
    renewed: list[Lease]
    lost: list[Lease]  # another pilot holds these now, or they were reset: stop their tasks
    cancelled: list[Lease] = field(default_factory=list)  # `tokens cancel`: stop their tasks, report them


class Pool(abc.ABC):
    """A token pool seen from one pilot: ``identity`` is written on every attempt it opens."""

    #: where the pool is, for messages: a file path or a URL without credentials
    where: str

    def __init__(self, identity: Identity, lease_seconds: float) -> None:
        self.identity = identity
        self.lease_seconds = lease_seconds

    def new_attempt(self, now: float) -> Attempt:
        return Attempt(
            pilot=self.identity.pilot_id,
            host=self.identity.host,
            batch_job=self.identity.batch_job,
            claimed=now,
        )

    @abc.abstractmethod
    def init(self) -> list[str]:
        """Create what the pool needs (file, database, views) if missing; say what was done."""

    @abc.abstractmethod
    def check(self) -> list[str]:
        """Reach the pool and say what was found; raise PoolError when it cannot be used."""

    @abc.abstractmethod
    def add(self, tokens: Iterable[NewToken]) -> int:
        """Add tokens in state todo; raise TokenError naming a duplicate id. Returns how many were added."""

    @abc.abstractmethod
    def claim(self, n: int) -> list[Lease]:
        """Lease up to ``n`` claimable tokens (todo, or locked with an expired lease); none twice, ever."""

    @abc.abstractmethod
    def renew(self, leases: Sequence[Lease]) -> Renewal:
        """Extend these leases by ``lease_seconds`` from now."""

    @abc.abstractmethod
    def report(self, lease: Lease, report: Report) -> Saved:
        """Close the lease's attempt with the report's result and move the token to the report's state."""

    def report_and_claim(self, lease: Lease, report: Report, n: int) -> tuple[Saved, list[Lease]]:
        """Report one result and claim up to ``n`` more: what a pilot does each time a task ends.

        This default makes the two calls; a backend that can do both in one round trip (one SQLite
        transaction, one ``_bulk_docs`` request) overrides it. The report counts even if the claim fails.
        As with ``claim``, fewer than ``n`` leases means the pool has no more to give now (the pilot takes
        it as empty), never merely that another pilot was quicker.
        """
        saved = self.report(lease, report)
        try:
            return saved, self.claim(n) if n > 0 else []
        except ServerUnreachable:
            return saved, []  # the report is in; the pilot's next claim finds the server away

    @abc.abstractmethod
    def counts(self) -> Counts:
        """How many tokens are in each state."""

    @abc.abstractmethod
    def reset(self, *, locked: bool, errors: bool) -> int:
        """Put locked and/or error tokens back to todo; errors get a fresh attempt budget."""

    def cancel(self, token_ids: Sequence[str], *, all_todo: bool) -> int:
        """Move these tokens (or every todo and waiting one) to error with the reason ``cancelled``; a
        running one keeps its lease, so its pilot learns at its next renewal and stops the task.
        Returns how many were cancelled; tokens that had ended already are left as they are."""
        raise PoolError(self.where, "this pool cannot cancel tokens")

    @abc.abstractmethod
    def get(self, token_id: str) -> Token:
        """One token with its history; TokenError when there is none."""

    def tails(self, token_id: str) -> Optional[tuple[bytes, bytes]]:
        """The stdout and stderr tails of the token's last report, where the backend keeps them."""
        return None

    def close(self) -> None:  # noqa: B027 - most backends have nothing to close
        """Release connections and files."""

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
