"""The figures of `status` and `watch` as pure functions: rates, ETA, percentiles, hosts, last failures."""

from __future__ import annotations

import pytest

from agent import stats
from agent.pools.base import Counts, ReasonCount
from agent.token import Attempt, State, Token


def attempt(host: str, outcome: str, ended: float, took: float = 10.0, reason: str = "") -> Attempt:
    return Attempt("p", host, None, ended - took - 1, ended - took, ended, 0, None, outcome, reason)


def token(token_id: str, *attempts: Attempt, state: State = State.DONE) -> Token:
    return Token(token_id, {}, state, attempts)


def test_iso_is_utc_with_milliseconds() -> None:
    assert stats.iso(0) == "1970-01-01T00:00:00.000Z"
    assert stats.iso(1_796_154_194.5756) == "2026-12-01T19:43:14.575Z"
    assert stats.iso(None) is None


def test_eta_divides_what_is_left_by_the_rate() -> None:
    assert stats.eta_seconds(10, 1.2) == pytest.approx(500.0)
    assert stats.eta_seconds(0, 0.0) == 0.0
    assert stats.eta_seconds(5, 0.0) is None


def test_percentile_is_nearest_rank() -> None:
    assert stats.percentile([], 90) is None
    assert stats.percentile([3.0], 90) == 3.0
    values = [float(v) for v in range(1, 11)]
    assert stats.percentile(values, 90) == 9.0
    assert stats.percentile(values, 91) == 10.0
    assert stats.percentile(values, 50) == 5.0


def observed(**changes: object) -> stats.Observed:
    base = {
        "now": 10_000.0,
        "counts": Counts(todo=8, locked=2, done=20, error=3),
        "short": Counts(done=4, error=1),
        "long": Counts(done=30, error=6),
        "running": {"a": 2},
        "reasons": [ReasonCount("exit code 1", 3, "t1")],
        "recent": (),
    }
    base.update(changes)
    return stats.Observed(**base)  # type: ignore[arg-type]


def test_eta_uses_the_5_minute_rate_and_falls_back_to_the_hour() -> None:
    status = stats.figures(observed())
    assert status.finish_rate_short == pytest.approx(1.0)
    assert (status.eta, status.eta_basis) == (pytest.approx(600.0), "5m")
    status = stats.figures(observed(short=Counts()))
    assert status.finish_rate_long == pytest.approx(0.6)
    assert (status.eta, status.eta_basis) == (pytest.approx(1000.0), "60m")
    status = stats.figures(observed(short=Counts(), long=Counts()))
    assert (status.eta, status.eta_basis) == (None, None)
    status = stats.figures(observed(counts=Counts(done=5)))
    assert status.finished and status.eta == 0.0 and status.eta_basis is None


def test_durations_come_from_the_done_attempts_of_the_sample() -> None:
    recent = [
        token("a", attempt("h", "done", 100, took=4)),
        token("b", attempt("h", "failed", 50, took=99), attempt("h", "done", 100, took=2)),
        token("c", attempt("h", "failed", 100, took=50), state=State.ERROR),
        token("d", Attempt("p", "h", None, 90.0), state=State.LOCKED),
    ]
    status = stats.figures(observed(recent=recent))
    assert (status.median, status.p90, status.durations) == (3.0, 4.0, 2)


def test_hosts_rank_by_failed_attempts_then_name_and_count_only_closed_attempts() -> None:
    recent = [
        token("a", attempt("x", "failed", 1), attempt("y", "done", 2)),
        token("b", attempt("y", "timeout", 3), attempt("y", "node-unhealthy", 4), attempt("z", "done", 5)),
        token("c", attempt("x", "not-started", 6), attempt("w", "interrupted", 7)),
        token("d", Attempt("p", "y", None, 8.0), state=State.LOCKED),
    ]
    hosts = stats.host_failures(recent)
    assert [(h.host, h.failures, h.attempts) for h in hosts] == [("x", 2, 2), ("y", 2, 3)]
    failures = stats.last_failures(recent, limit=3)
    assert [(f.token, f.outcome) for f in failures] == [
        ("c", "not-started"),
        ("b", "node-unhealthy"),
        ("b", "timeout"),
    ]


def test_json_keeps_the_four_counts_on_top() -> None:
    shown = stats.as_json(stats.figures(observed()))
    assert {k: shown[k] for k in ("todo", "locked", "done", "error", "total")} == {
        "todo": 8,
        "locked": 2,
        "done": 20,
        "error": 3,
        "total": 33,
    }
    assert shown["eta"]["at"] == pytest.approx(10_600.0)
    assert shown["failure_reasons"] == [{"reason": "exit code 1", "count": 3, "example": "t1"}]


def test_every_charged_outcome_and_a_broken_node_count_as_failures_where_they_ran() -> None:
    recent = [token("m", attempt("x", "memory", 2), attempt("y", "cancelled", 3), state=State.ERROR)]
    assert [(h.host, h.failures, h.attempts) for h in stats.host_failures(recent)] == [("x", 1, 1)]
    assert [(f.token, f.outcome) for f in stats.last_failures(recent)] == [("m", "memory")]
    assert {"failed", "timeout", "not-started", "memory", "node-unhealthy"} == stats.FAILED
