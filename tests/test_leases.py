"""Lease keeping (agent/leases.py): the renewal schedule, what a renewal means for each holder, and the
last look before a task starts. Pure: the clock is a number passed in, the renewals are built here. Last,
the Pilot carrying out a real local pool's renewal for each holder."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from conftest import local_config, to_toml

from agent.config import load
from agent.identity import Identity
from agent.leases import (
    CANCELLED,
    LOST,
    LOST_REASON,
    Act,
    Action,
    Holder,
    Schedule,
    lapsing_leases,
    renewal_actions,
    start_check,
    to_renew,
)
from agent.pilot import Pilot, Suspect
from agent.pools import Lease, NewToken, Renewal, open_pool
from agent.runner import Stop
from agent.token import Attempt, Outcome, Result, State, Token
from agent.walltime import End, Walltime

LEASE = 900.0  # server.lease: renewals every 300 s, lapsing with less than 300 s left


def lease(token_id: str, expires: float = 10_000.0, lease_id: str = "a") -> Lease:
    attempt = Attempt(pilot="p", host="h", batch_job=None, claimed=0.0)
    return Lease(Token(token_id, {}, State.LOCKED, (attempt,), 0), f"{token_id}-{lease_id}", expires, attempt)


def acts(actions: list[Action]) -> list[tuple[Act, Holder, str]]:
    return [(action.act, action.holder, action.lease.lease_id) for action in actions]


# -- the schedule -----------------------------------------------------------------------------------


def test_the_first_renewal_is_due_at_once_then_every_third_of_a_lease() -> None:
    schedule = Schedule.for_lease(LEASE)
    assert schedule.due(0.0)
    after = schedule.after(100.0)
    assert after.next == 400.0
    assert not after.due(399.9)
    assert after.due(400.0)
    assert after.after(400.0).next == 700.0
    assert schedule.next == 0.0  # frozen: the old schedule is unchanged


# -- which leases are renewed --------------------------------------------------------------------------


def test_running_tasks_suspects_and_the_held_token_are_all_renewed() -> None:
    run, suspect, held = lease("run"), lease("bad"), lease("big")
    assert to_renew([run], [suspect], held) == [run, suspect, held]
    assert to_renew([run], [], None) == [run]
    assert to_renew([], [], None) == []


# -- what each outcome means for each holder ---------------------------------------------------------


def test_renewed_leases_go_to_their_running_suspect_and_held_holders() -> None:
    renewal = Renewal(
        [lease("run", lease_id="b"), lease("bad", lease_id="b"), lease("big", lease_id="b")], []
    )
    assert acts(renewal_actions(renewal, waiting="big", suspects={"bad"})) == [
        (Act.RENEWED, Holder.RUNNING, "run-b"),
        (Act.RENEWED, Holder.SUSPECT, "bad-b"),
        (Act.RENEWED, Holder.HELD, "big-b"),
    ]


def test_lost_leases_of_each_holder() -> None:
    renewal = Renewal([], [lease("big"), lease("run"), lease("bad")])
    assert acts(renewal_actions(renewal, waiting="big", suspects=["bad"])) == [
        (Act.LOST, Holder.HELD, "big-a"),
        (Act.LOST, Holder.RUNNING, "run-a"),
        (Act.LOST, Holder.SUSPECT, "bad-a"),
    ]


def test_cancelled_leases_of_each_holder() -> None:
    renewal = Renewal([], [], [lease("bad"), lease("big"), lease("run")])
    assert acts(renewal_actions(renewal, waiting="big", suspects={"bad": object()})) == [
        (Act.CANCELLED, Holder.SUSPECT, "bad-a"),
        (Act.CANCELLED, Holder.HELD, "big-a"),
        (Act.CANCELLED, Holder.RUNNING, "run-a"),
    ]


def test_renewed_come_first_then_lost_then_cancelled_each_in_the_renewals_order() -> None:
    renewal = Renewal([lease("r2"), lease("r1")], [lease("l1")], [lease("c1"), lease("c2")])
    assert [
        (act, lease_id) for act, _, lease_id in acts(renewal_actions(renewal, waiting=None, suspects=()))
    ] == [
        (Act.RENEWED, "r2-a"),
        (Act.RENEWED, "r1-a"),
        (Act.LOST, "l1-a"),
        (Act.CANCELLED, "c1-a"),
        (Act.CANCELLED, "c2-a"),
    ]


def test_with_no_token_held_or_suspect_every_lease_is_a_running_tasks() -> None:
    renewal = Renewal([lease("a")], [lease("b")], [lease("c")])
    holders = {action.holder for action in renewal_actions(renewal, waiting=None, suspects=set())}
    assert holders == {Holder.RUNNING}


def test_every_lost_holder_and_every_cancelled_one_that_logs_has_its_line() -> None:
    assert set(LOST) == set(Holder)
    assert set(CANCELLED) == {Holder.RUNNING, Holder.HELD}  # a suspect's cancel is logged by its report


# -- the last look before a task starts ----------------------------------------------------------------


def test_leases_with_more_than_a_third_left_are_not_lapsing() -> None:
    now = 1000.0
    fresh, edge, old = lease("fresh", now + 600), lease("edge", now + 300), lease("old", now + 299)
    assert lapsing_leases([fresh, edge, old], now, LEASE) == [old]


def test_nothing_lapsing_everything_starts_as_it_is() -> None:
    leases = [lease("a"), lease("b")]
    start = start_check(leases, [], Renewal([], []))
    assert start.startable == leases
    assert (start.lost, start.cancelled) == ([], [])


def test_a_renewed_lapsing_lease_starts_with_its_new_lease_after_the_fresh_ones() -> None:
    old, fresh = lease("old", 10.0), lease("fresh")
    renewed = lease("old", 2000.0, lease_id="b")
    start = start_check([old, fresh], [old], Renewal([renewed], []))
    assert start.startable == [fresh, renewed]
    assert start.startable[1].expires == 2000.0
    assert (start.lost, start.cancelled) == ([], [])


def test_a_lost_lapsing_lease_does_not_start() -> None:
    old, fresh = lease("old", 10.0), lease("fresh")
    start = start_check([old, fresh], [old], Renewal([], [old]))
    assert start.startable == [fresh]
    assert start.lost == [old]
    assert start.cancelled == []


def test_a_cancelled_lapsing_lease_does_not_start() -> None:
    old = lease("old", 10.0)
    start = start_check([old], [old], Renewal([], [], [old]))
    assert start.startable == []
    assert start.lost == []
    assert start.cancelled == [old]


def test_a_lapsing_lease_the_renewal_does_not_mention_does_not_start() -> None:
    old = lease("old", 10.0)
    start = start_check([old], [old], Renewal([], []))
    assert (start.startable, start.lost, start.cancelled) == ([], [], [])


def test_server_unreachable_every_lapsing_lease_is_lost_the_fresh_ones_start() -> None:
    first, second, fresh = lease("first", 10.0), lease("second", 20.0), lease("fresh")
    start = start_check([first, fresh, second], [first, second], None)
    assert start.startable == [fresh]
    assert start.lost == [first, second]
    assert start.cancelled == []


# -- the Pilot carries them out, on a real local pool ----------------------------------------------------


@pytest.mark.parametrize("how", ["lost", "cancelled"])
def test_the_pilot_acts_on_a_renewal_for_its_running_task_suspect_and_held_token(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    sections = local_config(tmp_path, ["/bin/sleep", "30"], pilot={"cores": 4, "bind": False, "slots": 2})
    (tmp_path / "site.toml").write_text(to_toml(sections))
    config = load(tmp_path / "site.toml", {})
    identity = Identity("a", "node", None)
    pool = open_pool(config.server, identity, create=True)
    now = [1000.0]
    walltime = Walltime(End(None, "test"), config.walltime)
    pilot = Pilot(config, pool, identity, walltime, environ={}, cache_paths={}, clock=lambda: now[0])
    pool.add([NewToken("run", {})])
    [running] = pool.claim(1)
    assert pilot.book.place("run", {}, running, now[0]).grant is not None
    pilot._run(running)
    pool.add([NewToken("bad", {}), NewToken("big", {"cores": 4})])
    [bad] = pool.claim(1)
    failed = Result(Outcome.FAILED, "exit code 1", time.time(), time.time(), 1)
    pilot.suspects["bad"] = Suspect(bad, failed, pilot.tasks.folder_for("bad", 1))
    [big] = pool.claim(1)
    assert pilot.book.place("big", {"cores": 4}, big, now[0]).grant is None  # held: "run" has a core
    if how == "lost":
        assert pool.reset(locked=True, errors=False) == 3
    else:
        assert pool.cancel(["run", "bad", "big"], all_todo=False) == 3
    task = pilot.running["run"].payload
    pilot.renewals = pilot.renewals.after(now[0])  # as the claim did
    try:
        with caplog.at_level(logging.WARNING, logger="agent.pilot"):
            pilot._keep_leases()  # not due yet: nothing renewed
            assert task.stop is None and pilot.suspects and pilot.book.held is not None
            now[0] += config.server.lease / 3
            pilot._keep_leases()
    finally:
        task.kill_now(Stop(Outcome.INTERRUPTED, "test over"))
        task.process.wait()
    assert not pilot.suspects and pilot.book.held is None
    lines = [(record.token, record.getMessage()) for record in caplog.records]  # type: ignore[attr-defined]
    if how == "lost":
        assert task.stop == Stop(Outcome.LEASE_LOST, LOST_REASON)
        assert lines == [
            ("run", LOST[Holder.RUNNING]),
            ("bad", LOST[Holder.SUSPECT]),
            ("big", LOST[Holder.HELD]),
        ]
        assert pilot.tally.cancelled == 0  # nothing reported
    else:
        assert task.stop == Stop(Outcome.CANCELLED, "cancelled")
        assert ("run", CANCELLED[Holder.RUNNING]) in lines and ("big", CANCELLED[Holder.HELD]) in lines
        assert [pool.get(t).attempts[-1].outcome for t in ("bad", "big")] == ["cancelled", "cancelled"]
        assert pilot.tally.cancelled == 2
    pool.close()


def test_what_holds_a_token_in_the_pilot() -> None:
    from agent.leases import holder_of

    def where(token_id: str) -> Holder | None:
        return holder_of(token_id, waiting="w", suspects={"s"}, running={"r", "w", "s"})

    assert [where(t) for t in ("w", "s", "r", "elsewhere")] == [
        Holder.HELD,
        Holder.SUSPECT,
        Holder.RUNNING,
        None,
    ]
    assert holder_of("w", waiting=None, suspects=(), running=()) is None
