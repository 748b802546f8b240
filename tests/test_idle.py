"""When an idle pilot stops (agent/idle.py): pure, the time passed in."""

from __future__ import annotations

from agent.idle import Idle


def test_a_pilot_that_is_not_idle_does_not_stop_for_it() -> None:
    idle = Idle(timeout=60.0)
    assert idle.ending(1000.0) is None
    assert idle.wake() is None


def test_with_nothing_held_elsewhere_an_idle_pilot_stops_at_once_saying_what_it_left() -> None:
    idle = Idle(timeout=60.0)
    idle.began(100.0)
    assert idle.ending(100.0) == "pool empty: nothing left to claim"
    idle.left_behind = 3
    left = "pool empty: nothing left to claim; 3 todo token(s) left, none fits this node"
    assert idle.ending(100.0) == left


def test_tokens_held_elsewhere_are_waited_for_until_the_timeout_from_the_first_empty_look() -> None:
    idle = Idle(timeout=60.0, locked_elsewhere=2)
    idle.began(100.0)
    idle.began(130.0)  # a later empty look does not restart the wait
    assert idle.wake() == 160.0
    assert idle.ending(159.9) is None
    assert idle.ending(160.0) == (
        "pool empty: nothing to claim, 2 token(s) still locked by other pilots after waiting 1m"
    )


def test_a_claim_that_finds_something_starts_the_wait_over() -> None:
    idle = Idle(timeout=60.0, locked_elsewhere=1)
    idle.began(100.0)
    idle.busy()
    assert idle.ending(500.0) is None and idle.wake() is None
    idle.began(500.0)
    assert idle.ending(559.0) is None
    assert idle.ending(560.0) is not None


def test_only_a_pilot_with_a_timeout_counts_what_is_held_elsewhere() -> None:
    assert Idle(timeout=60.0).waits
    assert not Idle(timeout=0.0).waits


def test_beside_tokens_left_behind_looks_come_less_often_up_to_a_bound() -> None:
    idle = Idle(timeout=3600.0, locked_elsewhere=1, left_behind=5)
    assert [idle.next_look(10.0) for _ in range(6)] == [10.0, 20.0, 40.0, 80.0, 80.0, 80.0]
    idle.busy()  # a claim found something: the next wait starts at the pilot's pace again
    assert idle.next_look(10.0) == 10.0


def test_with_nothing_left_behind_looks_keep_their_pace() -> None:
    idle = Idle(timeout=3600.0, locked_elsewhere=1, left_behind=0)
    assert [idle.next_look(10.0) for _ in range(4)] == [10.0] * 4
