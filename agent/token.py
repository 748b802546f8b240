"""Tokens, attempts and results: the shape every pool backend stores, and how a result moves a token.

The state machine is pure: ``next_state`` decides where a token goes after an attempt, the pools only
write what it decided.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Optional


class State(str, enum.Enum):
    TODO = "todo"
    WAITING = "waiting"  # todo, but some token it comes after (``after``) is not done yet
    LOCKED = "locked"
    DONE = "done"
    ERROR = "error"


class Outcome(str, enum.Enum):
    """How an attempt ended. Only payload failures are charged against ``task.max_attempts``."""

    DONE = "done"  # exit code 0
    FAILED = "failed"  # non-zero exit code or killed by a signal it did not get from us
    TIMEOUT = "timeout"  # ran longer than task.timeout and was killed
    NOT_STARTED = "not-started"  # command not found, not executable, or a field missing from the token
    INTERRUPTED = "interrupted"  # the pilot was stopped (signal, walltime) and gave the token back
    LEASE_LOST = "lease-lost"  # another pilot holds the token now; our run was stopped
    LEASE_EXPIRED = "lease-expired"  # the pilot went away without a word; written by the next claimer
    UNHEALTHY = "node-unhealthy"  # given back uncharged because the node looks broken
    RESET = "reset"  # put back by `pilot reset --locked`
    CANCELLED = "cancelled"  # stopped by `pilot.pyz tokens cancel`: to error, not charged
    MEMORY = "memory"  # used more memory than it asked for, with task.enforce_memory: killed

    @property
    def charged(self) -> bool:
        return self in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.NOT_STARTED, Outcome.MEMORY)


@dataclass(frozen=True)
class Attempt:
    """One claim of a token, from the claim to the report. Stored as a JSON object on the token."""

    pilot: str
    host: str
    batch_job: Optional[str]
    claimed: float  # epoch seconds
    started: Optional[float] = None
    ended: Optional[float] = None
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    outcome: Optional[str] = None  # an Outcome value; None while the attempt is under way
    reason: str = ""
    # What the task used, from the kernel's account of its reaped process (and the children it reaped).
    cores: Optional[int] = None  # cores it was given
    cpu_user: Optional[float] = None  # seconds
    cpu_system: Optional[float] = None
    max_rss: Optional[int] = None  # bytes, of its largest process

    def to_json(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict: this runs for every attempt at every claim and report.
        return {name: getattr(self, name) for name in _ATTEMPT_FIELDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known.setdefault("pilot", "?")
        known.setdefault("host", "?")
        known.setdefault("batch_job", None)
        known.setdefault("claimed", 0.0)
        return cls(**known)

    def closed(self, outcome: Outcome, ended: float, reason: str) -> Attempt:
        return replace(self, outcome=outcome.value, ended=ended, reason=reason)


_ATTEMPT_FIELDS = tuple(Attempt.__dataclass_fields__)


@dataclass(frozen=True)
class Token:
    id: str
    fields: Mapping[str, Any]  # the user's data: input, parameters, ...
    state: State = State.TODO
    attempts: tuple[Attempt, ...] = ()
    failures: int = 0  # charged failures since the token was added or last reset
    reason: str = ""  # why it is in error: its last attempt's reason, or "dependency <id> failed"


@dataclass(frozen=True)
class NewToken:
    """A token to add: by ``tokens add``, or as a child a task wrote (``$PILOT_NEW_TOKENS``)."""

    id: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """What one run of a task came to, as the runner saw it."""

    outcome: Outcome
    reason: str
    started: Optional[float] = None
    ended: Optional[float] = None
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    stdout_tail: bytes = b""
    stderr_tail: bytes = b""
    cores: Optional[int] = None  # as on Attempt
    cpu_user: Optional[float] = None
    cpu_system: Optional[float] = None
    max_rss: Optional[int] = None

    @property
    def duration(self) -> Optional[float]:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


@dataclass(frozen=True)
class Report:
    """A result with the state it moves the token to; what a pool writes."""

    result: Result
    state: State
    failures: int  # the token's charged failures after this attempt
    extra: Mapping[str, Any] = field(default_factory=dict)
    children: tuple[NewToken, ...] = ()  # added with the report when it is saved (state done only)


def next_state(outcome: Outcome, failures: int, max_attempts: int) -> tuple[State, int]:
    """The token's next state and charged failure count after an attempt that ended with ``outcome``.

    Done is done. A charged failure sends the token to error once it has failed ``max_attempts`` times,
    else back to todo for another pilot. Anything else (interrupted, lease lost, unhealthy node) gives the
    token back without charging it.
    """
    if outcome is Outcome.DONE:
        return State.DONE, failures
    if outcome is Outcome.CANCELLED:
        return State.ERROR, failures
    if outcome.charged:
        failures += 1
        return (State.ERROR if failures >= max_attempts else State.TODO), failures
    return State.TODO, failures


def make_report(
    token: Token, result: Result, max_attempts: int, children: tuple[NewToken, ...] = ()
) -> Report:
    state, failures = next_state(result.outcome, token.failures, max_attempts)
    return Report(result=result, state=state, failures=failures, children=children)


def close_attempt(attempt: Attempt, result: Result) -> Attempt:
    """The attempt as it ended: times, exit status, outcome and reason from the result. Made whole, not
    with dataclasses.replace, which costs three times as much at every report."""
    return Attempt(
        pilot=attempt.pilot,
        host=attempt.host,
        batch_job=attempt.batch_job,
        claimed=attempt.claimed,
        started=result.started,
        ended=result.ended,
        exit_code=result.exit_code,
        signal=result.signal,
        outcome=result.outcome.value,
        reason=result.reason,
        cores=result.cores,
        cpu_user=result.cpu_user,
        cpu_system=result.cpu_system,
        max_rss=result.max_rss,
    )


def check_token_id(token_id: Any) -> str:
    """A token id must be a non-empty string without NUL, no longer than 512 characters.

    Raises ValueError saying what is wrong; ``_`` at the start is refused because CouchDB reserves it.
    """
    if not isinstance(token_id, str) or not token_id:
        raise ValueError(f"a token id must be a non-empty string, got {token_id!r}")
    if "\0" in token_id or len(token_id) > 512:
        raise ValueError(f"token id {token_id[:40]!r} has a NUL byte or is longer than 512 characters")
    if token_id.startswith("_"):
        raise ValueError(f"token id {token_id!r} starts with '_', which CouchDB reserves")
    return token_id
