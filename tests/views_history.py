"""A pool with a known history, for the views' tests on every backend: tokens finished at known times
before ``now`` on known hosts, with known durations and reasons, built through the Pool interface with an
injected clock (real claims and reports, as pilots make them), and the figures `status` must show for it.

Times are minutes and hours before ``now`` and never near a window's edge, so `status`, run a few seconds
later with the real clock, sees the same tokens in its 5- and 60-minute windows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional

from agent.pools import NewToken, Pool
from agent.token import Outcome, Result, make_report

if TYPE_CHECKING:
    from conftest import Site


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# (id, host, seconds before now it ended, duration, outcome, exit code, reason, max_attempts)
Step = tuple[str, str, float, float, Outcome, Optional[int], str, int]
FINISHED: list[Step] = [
    ("d1", "node-a", 60, 10, Outcome.DONE, 0, "exit code 0", 1),
    ("d2", "node-a", 90, 20, Outcome.DONE, 0, "exit code 0", 1),
    ("d3", "node-b", 120, 30, Outcome.DONE, 0, "exit code 0", 1),
    ("d4", "node-b", 1800, 40, Outcome.DONE, 0, "exit code 0", 1),
    ("d5", "node-a", 1900, 50, Outcome.DONE, 0, "exit code 0", 1),
    ("d6", "node-b", 2000, 60, Outcome.DONE, 0, "exit code 0", 1),
    ("d7", "node-a", 7200, 70, Outcome.DONE, 0, "exit code 0", 1),
    ("d8", "node-a", 7300, 80, Outcome.DONE, 0, "exit code 0", 1),
    ("d9", "node-bad", 500, 5, Outcome.FAILED, 3, "exit code 3", 2),  # retried ...
    ("d9", "node-a", 150, 25, Outcome.DONE, 0, "exit code 0", 2),  # ... and done elsewhere
    ("e1", "node-bad", 200, 2, Outcome.FAILED, 3, "exit code 3", 1),
    ("e2", "node-bad", 210, 2, Outcome.FAILED, 3, "exit code 3", 1),
    ("e3", "node-bad", 2400, 60, Outcome.TIMEOUT, None, "timeout after 60s", 1),
    ("e4", "node-b", 10800, 4, Outcome.FAILED, 3, "exit code 3", 1),
]
LOCKED = {"node-a": ["l1", "l2"], "node-b": ["l3"]}  # claimed 10 s before now, still running
BACK_TO_TODO = {
    "r1": (Outcome.FAILED, 3, "exit code 3"),
    "r2": (Outcome.UNHEALTHY, None, "node looks broken"),
}
UNTOUCHED = [f"u{i}" for i in range(1, 6)]

EXPECTED: dict[str, Any] = {
    "todo": 7,
    "locked": 3,
    "done": 9,
    "error": 4,
    "total": 23,
    "running": {"total": 3, "hosts": {"node-a": 2, "node-b": 1}},
    "rate": {
        "done_per_minute_5m": 0.8,  # d1 d2 d3 d9 in 5 minutes
        "done_per_minute_60m": round(7 / 60, 4),  # and d4 d5 d6
        "finished_per_minute_5m": 1.2,  # and e1 e2
        "finished_per_minute_60m": round(10 / 60, 4),  # and e3
        "done_5m": 4,
        "done_60m": 7,
        "error_5m": 2,
        "error_60m": 3,
    },
    "eta": {"seconds": 500.0, "basis": "5m"},  # 10 left at 1.2 a minute
    "duration": {"median": 40.0, "p90": 80.0, "sample": 9},
    "failure_reasons": [
        {"reason": "exit code 3", "count": 3, "example": "e1"},
        {"reason": "timeout after 60s", "count": 1, "example": "e3"},
    ],
    "failure_hosts": [
        {"host": "node-bad", "failures": 6, "attempts": 6},
        {"host": "node-b", "failures": 1, "attempts": 4},
    ],
}


def result(outcome: Outcome, code: Optional[int], reason: str, started: float, ended: float) -> Result:
    return Result(outcome, reason, started, ended, code, None, f"out of {reason}\n".encode(), b"err\n")


def build(make_pool: Callable[[str, Clock], Pool], now: float) -> None:
    """The history of EXPECTED, relative to ``now``. ``make_pool(host, clock)`` opens the pool as a
    pilot on ``host``. Tokens are added one by one before they are claimed, so a claim of one gets it."""
    clock = Clock(now - 20_000)
    added: set[str] = set()

    def pool(host: str) -> Pool:
        return make_pool(host, clock)

    for token_id, host, before, took, outcome, code, reason, max_attempts in FINISHED:
        ended = now - before
        with pool(host) as p:
            if token_id not in added:
                p.add([NewToken(token_id, {"input": token_id})])
                added.add(token_id)
            clock.now = ended - took - 1
            (lease,) = p.claim(1)
            assert lease.token.id == token_id
            clock.now = ended
            done = result(outcome, code, reason, ended - took, ended)
            p.report(lease, make_report(lease.token, done, max_attempts))
    clock.now = now - 10
    for host, ids in LOCKED.items():
        with pool(host) as p:
            p.add([NewToken(token_id, {"input": token_id}) for token_id in ids])
            assert sorted(lease.token.id for lease in p.claim(len(ids))) == ids
    with pool("node-bad") as p:
        p.add([NewToken(token_id, {"input": token_id}) for token_id in BACK_TO_TODO])
        clock.now = now - 120
        leases = p.claim(2)
        assert sorted(lease.token.id for lease in leases) == sorted(BACK_TO_TODO)
        for lease in leases:
            outcome, code, reason = BACK_TO_TODO[lease.token.id]
            clock.now = now - 110 + (lease.token.id == "r1") * 10
            p.report(lease, make_report(lease.token, result(outcome, code, reason, now - 115, clock.now), 2))
        p.add([NewToken(token_id, {"input": token_id}) for token_id in UNTOUCHED])


LAST_FAILURES = ["r1", "r2", "e1", "e2", "d9"]  # newest first


def check(shown: Mapping[str, Any]) -> None:
    """`status --json` of the pool ``build`` made shows EXPECTED: counts, rates, ETA, durations, reasons,
    hosts, exactly."""
    assert [failure["token"] for failure in shown["last_failures"]] == LAST_FAILURES
    for key, value in EXPECTED.items():
        if key == "eta":
            assert {k: shown["eta"][k] for k in value} == value
        else:
            assert shown[key] == value, key


# What `report --json` shows for the same history: every attempt, by outcome and by host.
OUTCOMES = {"done": 9, "failed": 5, "running": 3, "node-unhealthy": 1, "timeout": 1}
FAILURES_BY_HOST = [{"host": "node-bad", "count": 6}, {"host": "node-b", "count": 1}]


def listed_ids(site: Site, *args: str) -> list[str]:
    """The ids `tokens list --json <args>` prints, in its order."""
    result = site.run("tokens", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["id"] for line in result.stdout.splitlines()]
