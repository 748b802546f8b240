"""What counts against task.max_attempts on the real ToPoS 4.1: charged failures, as in every pool. The
lease count is the attempt number; the records of earlier hand-outs (the attempts pool) say which of them
failed. A give-back and a hand-out that left no record are not charged. Read back with plain HTTP."""

from __future__ import annotations

import json
from typing import Optional

import pytest
from servers.topos import ToposServer

from agent.http import HttpClient
from agent.pools import Lease, Saved
from agent.token import Outcome, Result, make_report
from pools.test_topos_outage import make_pool

pytestmark = pytest.mark.topos

MAX_ATTEMPTS = 2


def finish(pool: object, lease: Lease, outcome: Outcome, code: Optional[int] = None) -> Saved:
    result = Result(outcome, f"{outcome.value}", 1.0, 2.0, code)
    return pool.report(lease, make_report(lease.token, result, MAX_ATTEMPTS))  # type: ignore[attr-defined]


def test_a_give_back_is_not_charged_so_a_token_given_back_at_its_last_hand_out_has_that_attempt_left(
    topos: ToposServer,
) -> None:
    pool_name = topos.new_pool()
    topos.add_lines(pool_name, b"x\n")
    pool = make_pool(topos, pool_name, HttpClient(timeout=5.0))
    [first] = pool.claim(1)
    assert first.token.failures == 0
    assert finish(pool, first, Outcome.FAILED, 3) is Saved.SAVED  # charged: 1 of 2
    [second] = pool.claim(1)
    assert second.token.failures == 1
    assert finish(pool, second, Outcome.INTERRUPTED) is Saved.SAVED  # given back (a stop, the walltime)
    assert pool.get(second.token.id).failures == 1  # tokens show: still one failure, not two hand-outs
    [third] = pool.claim(1)  # hand-out 3 of a token with max_attempts = 2: one failure left, not none
    assert third.token.failures == 1
    assert [a.outcome for a in third.token.attempts] == ["failed", "interrupted", None]
    assert make_report(
        third.token, Result(Outcome.FAILED, "exit code 3", 1, 2, 3), MAX_ATTEMPTS
    ).state.value == ("error")  # and the next failure is its last
    assert finish(pool, third, Outcome.DONE, 0) is Saved.SAVED
    [row] = topos.listing(f"{pool_name}.done")
    result = json.loads(topos.token(f"{pool_name}.done", int(row["Name"])).body)
    assert (result["leases"], result["failures"]) == (3, 1)
    assert [a["outcome"] for a in result["attempts"]] == ["failed", "interrupted", "done"]
    assert topos.token_ids(f"{pool_name}.attempts") == []  # the records went into the result
    pool.close()


def test_a_hand_out_that_left_no_record_is_lease_expired_and_not_charged(topos: ToposServer) -> None:
    """Its pilot was killed, or its claim's answer was lost: ToPoS only counted it."""
    pool_name = topos.new_pool()
    topos.add_lines(pool_name, b"x\n")
    pool = make_pool(topos, pool_name, HttpClient(timeout=5.0))
    [first] = pool.claim(1)
    assert topos.request("DELETE", f"pools/{pool_name}/locks/{first.lease_id}").status == 200  # as if expired
    [second] = pool.claim(1)
    assert second.token.failures == 0
    assert [a.outcome for a in second.token.attempts] == ["lease-expired", None]
    assert second.token.attempts[0].pilot == "?"  # nobody said who had it
    pool.close()
