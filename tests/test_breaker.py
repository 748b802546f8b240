from __future__ import annotations

from agent.breaker import Breaker


def test_trips_after_k_different_tokens_fail_in_a_row() -> None:
    breaker = Breaker(limit=3, window=600)
    assert not breaker.failure("a", 0)
    assert not breaker.failure("b", 1)
    assert breaker.failure("c", 2)
    assert breaker.tripped


def test_the_same_token_failing_again_counts_once() -> None:
    breaker = Breaker(limit=3, window=600)
    for when in range(5):
        assert not breaker.failure("bad", when)
    assert not breaker.tripped


def test_a_success_resets_the_streak_and_returns_the_real_failures() -> None:
    breaker = Breaker(limit=3, window=600)
    breaker.failure("a", 0)
    breaker.failure("b", 1)
    assert breaker.success() == ["a", "b"]
    assert not breaker.failure("c", 2)


def test_failures_older_than_the_window_do_not_count() -> None:
    breaker = Breaker(limit=3, window=60)
    breaker.failure("a", 0)
    breaker.failure("b", 10)
    assert breaker.expire(65) == ["a"]
    assert not breaker.failure("c", 66)
    assert breaker.failure("d", 67)


def test_a_limit_of_zero_never_trips() -> None:
    breaker = Breaker(limit=0, window=60)
    assert not any(breaker.failure(str(i), i) for i in range(100))


def test_after_a_success_a_streak_must_be_twice_as_long() -> None:
    breaker = Breaker(limit=3, window=600)
    breaker.failure("a", 0)
    breaker.success()
    assert breaker.needed == 6
    assert not any(breaker.failure(token, when) for when, token in enumerate("bcdef", start=1))
    assert breaker.failure("g", 6)


def test_before_any_success_the_limit_is_as_configured() -> None:
    breaker = Breaker(limit=3, window=600)
    assert breaker.needed == 3
    breaker.failure("a", 0)
    breaker.expire(700)  # a failure that aged out proves nothing about the node
    assert breaker.needed == 3
