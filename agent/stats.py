"""The figures of a run that `status` and `watch` show: pure functions of what the pool said and the clock.

Rates count tokens that finished (reached done or error) in the last 5 and 60 minutes; the ETA divides the
tokens left (todo and locked) by the finish rate of the last 5 minutes, or of the last 60 when nothing
finished in the last 5. Durations and the hosts with failures come from a sample of the tokens changed
most recently (``Pool.recent``), so they describe the run as it is now, at a bounded cost.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from agent.pools.base import Counts, ReasonCount, SizeCount
from agent.token import Attempt, Outcome, Token

SHORT = 5 * 60.0  # seconds of the short rate window
LONG = 60 * 60.0  # ... and of the long one
SAMPLE = 2000  # tokens in the recent sample
TOP = 5  # reasons and hosts shown
# Outcomes that say something went wrong where the task ran: the black-hole suspects' signature. Every
# charged outcome (failed, timeout, not-started, memory) and a node found broken.
FAILED = frozenset(o.value for o in Outcome if o.charged or o is Outcome.UNHEALTHY)


def iso(seconds: Optional[float]) -> Optional[str]:
    """ISO 8601 in UTC with milliseconds and a Z, or None: how the views write times beside epoch seconds."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def per_minute(count: int, window: float) -> float:
    return count * 60.0 / window


def eta_seconds(remaining: int, rate_per_minute: float) -> Optional[float]:
    """Seconds until ``remaining`` tokens are finished at ``rate_per_minute``; None at rate 0."""
    if remaining == 0:
        return 0.0
    if rate_per_minute <= 0:
        return None
    return remaining * 60.0 / rate_per_minute


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The nearest-rank percentile (``q`` in 0..100) of ``values``: always one of the values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def duration(attempt: Attempt) -> Optional[float]:
    if attempt.started is None or attempt.ended is None:
        return None
    return attempt.ended - attempt.started


def done_durations(tokens: Iterable[Token]) -> list[float]:
    """How long the successful attempt of each done token took."""
    found = []
    for token in tokens:
        last = token.attempts[-1] if token.attempts else None
        took = duration(last) if last is not None and last.outcome == Outcome.DONE.value else None
        if took is not None:
            found.append(took)
    return found


@dataclass(frozen=True)
class HostFailures:
    host: str
    failures: int
    attempts: int


def host_failures(tokens: Iterable[Token], limit: int = TOP) -> list[HostFailures]:
    """Hosts with the most failed attempts (``FAILED``: charged ones and node-unhealthy) among every
    attempt of ``tokens``, most first, then by name; hosts without failures are left out."""
    failures: dict[str, int] = {}
    attempts: dict[str, int] = {}
    for token in tokens:
        for attempt in token.attempts:
            if attempt.outcome is None:
                continue
            attempts[attempt.host] = attempts.get(attempt.host, 0) + 1
            if attempt.outcome in FAILED:
                failures[attempt.host] = failures.get(attempt.host, 0) + 1
    ranked = sorted(failures.items(), key=lambda item: (-item[1], item[0]))
    return [HostFailures(host, count, attempts[host]) for host, count in ranked[:limit]]


@dataclass(frozen=True)
class Failure:
    token: str
    host: str
    ended: float
    outcome: str
    reason: str


def last_failures(tokens: Iterable[Token], limit: int = TOP) -> list[Failure]:
    """The latest failed attempts among ``tokens``, newest first."""
    found = [
        Failure(token.id, a.host, a.ended or a.claimed, str(a.outcome), a.reason)
        for token in tokens
        for a in token.attempts
        if a.outcome in FAILED
    ]
    found.sort(key=lambda failure: (-failure.ended, failure.token))
    return found[:limit]


@dataclass(frozen=True)
class Observed:
    """What the pool said at one moment: the inputs of every figure."""

    now: float
    counts: Counts
    short: Counts  # finished in the last SHORT seconds
    long: Counts  # ... and the last LONG
    running: Mapping[str, int]
    reasons: Sequence[ReasonCount]
    recent: Sequence[Token] = field(default_factory=tuple)
    sizes: Optional[Sequence[SizeCount]] = None  # todo tokens that ask for a size (None: not known)


@dataclass(frozen=True)
class Status:
    observed: Observed
    done_rate_short: float  # done tokens per minute
    done_rate_long: float
    finish_rate_short: float  # done and error tokens per minute
    finish_rate_long: float
    eta: Optional[float]  # seconds
    eta_basis: Optional[str]  # "5m" or "60m"
    median: Optional[float]
    p90: Optional[float]
    durations: int  # how many durations the two above are from
    hosts: list[HostFailures]
    failures: list[Failure]

    @property
    def remaining(self) -> int:
        counts = self.observed.counts
        return counts.todo + counts.locked + counts.waiting  # waiting tokens run later, still to do

    @property
    def finished(self) -> bool:
        """Nothing left to run: no todo, nothing locked, nothing waiting."""
        return self.remaining == 0


def figures(observed: Observed) -> Status:
    short, long = observed.short, observed.long
    finish_short = per_minute(short.done + short.error, SHORT)
    finish_long = per_minute(long.done + long.error, LONG)
    counts = observed.counts
    remaining = counts.todo + counts.locked + counts.waiting
    basis: Optional[str] = None
    if finish_short > 0:
        rate, basis = finish_short, "5m"
    elif finish_long > 0:
        rate, basis = finish_long, "60m"
    else:
        rate = 0.0
    durations = done_durations(observed.recent)
    return Status(
        observed=observed,
        done_rate_short=per_minute(short.done, SHORT),
        done_rate_long=per_minute(long.done, LONG),
        finish_rate_short=finish_short,
        finish_rate_long=finish_long,
        eta=eta_seconds(remaining, rate),
        eta_basis=basis if remaining else None,
        median=statistics.median(durations) if durations else None,
        p90=percentile(durations, 90),
        durations=len(durations),
        hosts=host_failures(observed.recent),
        failures=last_failures(observed.recent),
    )


def as_json(status: Status) -> dict[str, Any]:
    """The stable keys of `status --json`: the four counts and total at the top, as before."""
    observed = status.observed
    counts = observed.counts
    eta_at = observed.now + status.eta if status.eta is not None else None
    return {
        **counts.as_dict(),
        "total": counts.total,
        "now": observed.now,
        "now_iso": iso(observed.now),
        "running": {"total": sum(observed.running.values()), "hosts": dict(sorted(observed.running.items()))},
        "rate": {
            "done_per_minute_5m": round(status.done_rate_short, 4),
            "done_per_minute_60m": round(status.done_rate_long, 4),
            "finished_per_minute_5m": round(status.finish_rate_short, 4),
            "finished_per_minute_60m": round(status.finish_rate_long, 4),
            "done_5m": observed.short.done,
            "done_60m": observed.long.done,
            "error_5m": observed.short.error,
            "error_60m": observed.long.error,
        },
        "eta": {
            "seconds": None if status.eta is None else round(status.eta, 1),
            "at": eta_at,
            "at_iso": iso(eta_at),
            "basis": status.eta_basis,
        },
        "duration": {"median": status.median, "p90": status.p90, "sample": status.durations},
        "todo_sizes": None
        if observed.sizes is None
        else [
            {"cores": size.cores, "gpus": size.gpus, "memory": size.memory, "count": size.count}
            for size in observed.sizes
        ],
        "failure_reasons": [
            {"reason": r.reason, "count": r.count, "example": r.example} for r in observed.reasons
        ],
        "failure_hosts": [
            {"host": h.host, "failures": h.failures, "attempts": h.attempts} for h in status.hosts
        ],
        "last_failures": [
            {
                "token": f.token,
                "host": f.host,
                "ended": f.ended,
                "ended_iso": iso(f.ended),
                "outcome": f.outcome,
                "reason": f.reason,
            }
            for f in status.failures
        ],
    }
