"""The one small interface every pool backend implements: local SQLite, CouchDB (PiCaS layout), ...

A claim is a lease: the token is ours until ``Lease.expires`` unless we renew it. A pilot that dies
without a word loses its leases, and the next claimer records that attempt as lease-expired. A report
or renewal that finds the lease moved on returns a conflict instead of overwriting the newer attempt.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from agent.errors import FIND_ID, ClaimUnreachable, NotSupported, PoolError, ServerUnreachable, TokenError
from agent.identity import Identity
from agent.resources import Fit
from agent.token import Attempt, NewToken, Report, State, Token


@dataclass(frozen=True)
class Lease:
    token: Token  # as it was when claimed, with its history
    lease_id: str  # unique per claim; what reports and renewals are conditional on
    expires: float  # epoch seconds
    attempt: Attempt  # the attempt this claim opened
    handle: Any = field(default=None, compare=False, repr=False)  # backend-private, e.g. a revision

    def lapsing(self, now: float, lease_seconds: float) -> bool:
        """Less than a third of the lease left, where renewals keep two thirds at least: they stalled
        (the pilot was stopped, the server away), it may have run out and another pilot run the token."""
        return self.expires - now < lease_seconds / 3


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
    CANCELLED = "cancelled"  # saved, but the token was cancelled while the task ran: it stays cancelled


@dataclass(frozen=True)
class Renewal:
    renewed: list[Lease]
    lost: list[Lease]  # another pilot holds these now, or they were reset: stop their tasks
    cancelled: list[Lease] = field(default_factory=list)  # `tokens cancel`: stop their tasks, report them


@dataclass(frozen=True)
class Listed:
    """A token as the views list it, with the tails of its last output when they were asked for."""

    token: Token
    tails: Optional[tuple[bytes, bytes]] = None
    updated: Optional[float] = None  # epoch seconds of its last change, where the backend knows it


@dataclass(frozen=True)
class ReasonCount:
    """How many error tokens ended with one reason, and the smallest id among them."""

    reason: str
    count: int
    example: str


@dataclass(frozen=True)
class SizeCount:
    """How many todo tokens ask for the same cores, GPUs and memory (bytes); None where the token does
    not say, and the pilot's [task] default applies."""

    cores: Optional[int]
    gpus: Optional[int]
    memory: Optional[int]
    count: int


def most_first(sizes: Iterable[SizeCount]) -> list[SizeCount]:
    """Sizes by how many tokens ask for them, then by the request (not given first)."""

    def key(size: SizeCount) -> tuple[int, ...]:
        asked = (size.cores, size.gpus, size.memory)
        return (-size.count, *(-1 if value is None else value for value in asked))

    return sorted(sizes, key=key)


PAGE = 500  # tokens per page when the views walk the pool


ADD_BATCH = 1000  # tokens per batch of ``add``: memory stays flat however many are given


def batches(tokens: Iterable[NewToken], size: int = ADD_BATCH) -> Iterator[list[NewToken]]:
    """The tokens in lists of ``size`` (the last one shorter), read from ``tokens`` only as needed."""
    it = iter(tokens)
    while True:
        batch = list(itertools.islice(it, size))
        if not batch:
            return
        yield batch


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
        """Add tokens in state todo; raise TokenError naming a duplicate id. Returns how many were added.

        ``tokens`` is read a batch at a time (``batches``), each passed to ``vet_batch`` before it is
        written, so any number of them fits in memory."""

    def vet_batch(self, batch: Sequence[NewToken]) -> None:  # noqa: B027 - a hook, empty by default
        """A check of each batch of ``add`` before it is written; raise TokenError to refuse the add
        (the local pool then adds nothing; see each backend's ``add``). None here."""

    def add_lines(self, tokens: Iterable[NewToken]) -> int:
        """Tokens made from a file's lines (the line in ``input``). A backend with a bulk form of its own
        (ToPoS's text/plain upload) overrides this."""
        return self.add(tokens)

    def add_range(self, tokens: Iterable[NewToken], count: int) -> int:
        """The ``count`` tokens of ``tokens add --range`` (``input`` 0 to count - 1); ToPoS makes them."""
        return self.add(tokens)

    @abc.abstractmethod
    def claim(self, n: int, fit: Optional[Fit] = None) -> list[Lease]:
        """Lease up to ``n`` claimable tokens (todo, or locked with an expired lease); none twice, ever.

        With ``fit``, only tokens whose cores, GPUs and memory fit in it together (``Fit.pick``), chosen
        by the server where the backend can; a backend that cannot look into tokens may ignore it (the
        pilot gives a token that does not fit back at once)."""

    @abc.abstractmethod
    def renew(self, leases: Sequence[Lease]) -> Renewal:
        """Extend these leases by ``lease_seconds`` from now."""

    @abc.abstractmethod
    def report(self, lease: Lease, report: Report) -> Saved:
        """Close the lease's attempt with the report's result and move the token to the report's state."""

    def report_and_claim(
        self, lease: Lease, report: Report, n: int, fit: Optional[Fit] = None
    ) -> tuple[Saved, list[Lease]]:
        """Report one result and claim up to ``n`` more: what a pilot does each time a task ends.

        This default makes the two calls; a backend that can do both in one round trip (one SQLite
        transaction, one ``_bulk_docs`` request) overrides it. The report counts even if the claim fails:
        then ``ClaimUnreachable`` says how it went. As with ``claim``, fewer than ``n`` leases means the
        pool has no more to give now (the pilot takes it as empty), never merely that another pilot was
        quicker, nor that the server went away.
        """
        saved = self.report(lease, report)
        try:
            return saved, self.claim(n, fit) if n > 0 else []
        except ServerUnreachable as err:
            raise ClaimUnreachable(err, saved) from err

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The reports (and claims) made inside go to the pool in one write where the backend can: the
        local pool makes them one transaction, one commit for a turn's reports instead of one each. Each
        still succeeds or fails by itself. This default does nothing."""
        yield

    @abc.abstractmethod
    def counts(self) -> Counts:
        """How many tokens are in each state."""

    def todo_left(self) -> int:
        """How many todo tokens are left, asked by an idle pilot when it stops (most often: none). A pool
        whose counts cost more than a look for one todo token overrides it."""
        return self.counts().todo

    def locked_left(self) -> int:
        """How many tokens are locked, asked by an idle pilot that waits for tokens other pilots hold
        (``pilot.idle_timeout``), at each look at the empty pool. A pool whose counts cost more than a
        count of locked tokens alone overrides it."""
        return self.counts().locked

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

    # -- what the views read (status, tokens list/export/delete, watch, report) -------------------------
    # ``page`` is the one a backend must give; the rest have defaults that walk every token with it,
    # correct but slow, which the local and CouchDB pools replace with indexed queries.

    def page(
        self, state: Optional[State], cursor: Any, limit: int, *, tails: bool = False
    ) -> tuple[list[Listed], Any]:
        """Up to ``limit`` tokens (in ``state``, or all) after ``cursor`` (None: from the start), in a
        stable order, and the cursor of the next page (None when there is no more)."""
        raise NotSupported(self.where, "listing tokens")

    def iter_tokens(
        self, state: Optional[State] = None, *, tails: bool = False, page_size: int = PAGE
    ) -> Iterator[Listed]:
        """Every token (in ``state``), page by page: memory stays constant however big the pool."""
        cursor: Any = None
        while True:
            listed, cursor = self.page(state, cursor, page_size, tails=tails)
            yield from listed
            if cursor is None:
                return

    def histories(self, page_size: int = PAGE) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
        """Every token's id, state and attempts as stored (JSON objects), page by page: what the report
        reads, without the fields and the objects ``iter_tokens`` makes."""
        for listed in self.iter_tokens(page_size=page_size):
            token = listed.token
            yield token.id, token.state.value, [attempt.to_json() for attempt in token.attempts]

    def finished_since(self, since: float) -> Counts:
        """Done and error tokens whose last report came at or after ``since`` (the other counts are 0)."""
        found = {State.DONE: 0, State.ERROR: 0}
        for state in found:
            for listed in self.iter_tokens(state):
                ended = listed.updated or _last_end(listed.token)
                found[state] += ended is not None and ended >= since
        return Counts(done=found[State.DONE], error=found[State.ERROR])

    def recent(self, limit: int) -> list[Token]:
        """Up to ``limit`` tokens changed most recently, newest first: the sample for durations, the
        hosts with failures and the last failures."""
        newest: list[tuple[float, str, Token]] = []
        for listed in self.iter_tokens():
            when = listed.updated or _last_end(listed.token) or 0.0
            newest.append((when, listed.token.id, listed.token))
            if len(newest) > 4 * limit:  # keep memory bounded: trim now and then
                newest = sorted(newest, key=lambda item: (-item[0], item[1]))[:limit]
        return [token for _, _, token in sorted(newest, key=lambda item: (-item[0], item[1]))[:limit]]

    def running(self) -> dict[str, int]:
        """Locked tokens per host of their open attempt: the tasks running now."""
        hosts: dict[str, int] = {}
        for listed in self.iter_tokens(State.LOCKED):
            attempts = listed.token.attempts
            host = attempts[-1].host if attempts else "?"
            hosts[host] = hosts.get(host, 0) + 1
        return hosts

    def todo_sizes(self) -> Optional[list[SizeCount]]:
        """The todo tokens (not the waiting ones) that ask for cores, GPUs or memory of their own, per
        request, most first: what a pilot too small leaves behind. None where the pool cannot tell
        without reading every token (ToPoS); the pools that can, override this."""
        return None

    def error_reasons(self, limit: int) -> list[ReasonCount]:
        """The commonest reasons among error tokens (their last attempt's), most first, then by reason."""
        found: dict[str, tuple[int, str]] = {}
        for listed in self.iter_tokens(State.ERROR):
            attempts = listed.token.attempts
            reason = attempts[-1].reason if attempts else ""
            count, example = found.get(reason, (0, listed.token.id))
            found[reason] = (count + 1, min(example, listed.token.id))
        ranked = sorted(found.items(), key=lambda item: (-item[1][0], item[0]))
        return [ReasonCount(reason, count, example) for reason, (count, example) in ranked[:limit]]

    def delete(self, token_ids: Sequence[str]) -> int:
        """Remove these tokens; TokenError naming the first that is not there, and then none is removed."""
        raise NotSupported(self.where, "deleting tokens")

    def delete_state(self, state: State) -> int:
        """Remove every token in ``state``; how many were removed."""
        ids = [listed.token.id for listed in self.iter_tokens(state)]
        return self.delete(ids) if ids else 0

    def close(self) -> None:  # noqa: B027 - most backends have nothing to close
        """Release connections and files."""

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last_end(token: Token) -> Optional[float]:
    attempts = token.attempts
    return attempts[-1].ended if attempts else None


def missing_id(token_id: str, where: str) -> TokenError:
    return TokenError(token_id, f"not in the pool {where}; nothing was deleted; {FIND_ID}")


def fit_left(fit: Optional[Fit], leases: Sequence[Lease]) -> Optional[Fit]:
    """What is left of a claim's ``fit`` once these leases were claimed (None: no fit)."""
    return None if fit is None else fit.after([lease.token.fields for lease in leases])
