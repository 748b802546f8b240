"""The report's figures as pure functions: lanes, the spread of spans over steps, cells, utilisation."""

from __future__ import annotations

import pytest

from agent.token import Attempt, State, Token
from agent.views import figures


def span(pilot: str, start: float, end: float, outcome: str = "done", host: str = "h") -> figures.Span:
    return figures.Span("t", pilot, host, start, end, outcome, "", start)


def test_lanes_pack_each_pilots_spans_into_as_few_slots_as_it_ran_at_once() -> None:
    spans = [span("a", 0, 10), span("a", 5, 15), span("a", 10, 20), span("b", 0, 100), span("a", 16, 30)]
    assert figures.lanes(spans) == [0, 1, 0, 0, 1]


def test_spread_splits_spans_over_steps_exactly() -> None:
    spread = figures.Spread(0.0, 100.0, 10)
    spread.add(5, 35)  # 5 s in step 0, 10 in 1 and 2, 5 in 3
    spread.add(50, 52)
    spread.add(95, 100)  # the end of the range falls in the last step
    assert spread.seconds() == pytest.approx([5, 10, 10, 5, 0, 2, 0, 0, 0, 5])


def test_cells_count_attempts_where_they_start_and_take_the_busiest_outcome() -> None:
    spans = [span("a", 0, 50, "done"), span("a", 50, 55, "failed"), span("b", 52, 60, "failed")]
    found = figures.cells(spans, [0, 0, 0], 0.0, 100.0)
    assert sum(cell.attempts for cell in found) == 3
    by_column = {cell.column: cell for cell in found}
    middle = by_column[208]  # 52 s to 52.25 s (400 columns of 0.25 s): both failed attempts run
    assert middle.outcome == "failed" and middle.busy == pytest.approx(0.5)
    assert by_column[0].outcome == "done" and by_column[0].attempts == 1


def attempt(pilot: str, claimed: float, started: float, ended: float, outcome: str = "done") -> Attempt:
    return Attempt(pilot, "node", None, claimed, started, ended, 0, None, outcome, "")


def test_utilisation_is_busy_over_slots_times_life() -> None:
    tokens = [
        Token("t1", {}, State.DONE, (attempt("p", 0, 0, 10),)),
        Token("t2", {}, State.DONE, (attempt("p", 0, 1, 6),)),  # two at once: two slots
        Token("t3", {}, State.ERROR, (attempt("p", 10, 12, 20, "failed"),)),
        Token("t4", {}, State.LOCKED, (Attempt("q", "other", None, 15.0, 15.0),)),
    ]
    report = figures.build(map(figures.history_of, tokens), now=25.0)
    p, q = report.pilots
    assert (p.pilot, p.slots, p.attempts, p.busy, p.life) == ("p", 2, 3, 23.0, 20.0)
    assert p.utilisation == pytest.approx(23 / 40)
    assert (q.busy, q.life, q.utilisation) == (10.0, 10.0, 1.0)  # running until now
    assert report.utilisation() == pytest.approx(33 / 50)
    summary = report.summary()
    assert (summary["tokens"], summary["attempts"], summary["pilots"], summary["hosts"]) == (4, 4, 2, 2)
    assert summary["makespan"] == 25.0 and summary["median_duration"] == 7.5
    assert report.outcomes() == {"done": 2, "failed": 1, "running": 1}
    assert report.attempts_per_token == {1: 4}
    assert report.failures_by("host") == [("node", 1)]


def test_core_hours_asked_against_used_from_the_attempts_that_recorded_them() -> None:
    """Two 4-core attempts of an hour that kept 2 and 1 cores busy: 8 core-hours asked, 3 used; an
    attempt without the resource figures (an older pilot's) is left out, not counted as idle."""
    measured = [
        {
            "pilot": "a",
            "host": "n",
            "claimed": 0,
            "started": 0,
            "ended": 3600,
            "outcome": "done",
            "cores": 4,
            "cpu_user": 7000.0,
            "cpu_system": 200.0,
        },
        {
            "pilot": "a",
            "host": "n",
            "claimed": 0,
            "started": 0,
            "ended": 3600,
            "outcome": "done",
            "cores": 4,
            "cpu_user": 3000.0,
            "cpu_system": 600.0,
        },
    ]
    older = [{"pilot": "b", "host": "n", "claimed": 0, "started": 0, "ended": 3600, "outcome": "done"}]
    summary = figures.build([("t1", "done", measured), ("t2", "done", older)], 7200.0).summary()
    assert summary["core_hours_asked"] == pytest.approx(8.0)
    assert summary["core_hours_used"] == pytest.approx(3.0)
    assert summary["cpu_efficiency"] == pytest.approx(0.375)
    without = figures.build([("t2", "waiting", older)], 7200.0).summary()
    assert "core_hours_asked" not in without and without["waiting"] == 1


def test_every_outcome_has_a_colour_of_its_own_in_the_report() -> None:
    from agent.token import Outcome
    from agent.views import html

    outcomes = [outcome.value for outcome in Outcome] + [figures.RUNNING]
    assert sorted(html.COLOURS) == sorted(outcomes)
    assert len(set(html.COLOURS.values())) == len(outcomes)


def test_memory_kills_are_failures_by_reason_and_host() -> None:
    killed = Attempt("p", "big-node", None, 1.0, 2.0, 5.0, None, 9, "memory", "memory over 2 GiB")
    report = figures.build([figures.history_of(Token("m", {}, State.ERROR, (killed,)))], now=10.0)
    assert report.failures_by("reason") == [("memory over 2 GiB", 1)]
    assert report.failures_by("host") == [("big-node", 1)]
