from __future__ import annotations

from dataclasses import replace

import pytest

from agent.token import Attempt, Outcome, Result, State, check_token_id, close_attempt, next_state


def test_done_is_done() -> None:
    assert next_state(Outcome.DONE, 2, 3) == (State.DONE, 2)


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.TIMEOUT, Outcome.NOT_STARTED])
def test_a_charged_failure_goes_back_to_todo_until_the_budget_is_spent(outcome: Outcome) -> None:
    assert next_state(outcome, 0, 3) == (State.TODO, 1)
    assert next_state(outcome, 1, 3) == (State.TODO, 2)
    assert next_state(outcome, 2, 3) == (State.ERROR, 3)


def test_one_attempt_means_the_first_failure_is_an_error() -> None:
    assert next_state(Outcome.FAILED, 0, 1) == (State.ERROR, 1)


@pytest.mark.parametrize(
    "outcome", [Outcome.INTERRUPTED, Outcome.LEASE_LOST, Outcome.UNHEALTHY, Outcome.LEASE_EXPIRED]
)
def test_interruptions_give_the_token_back_uncharged(outcome: Outcome) -> None:
    assert next_state(outcome, 2, 3) == (State.TODO, 2)


@pytest.mark.parametrize("bad", ["", "_design/x", "a\0b", "x" * 513, 7, None])
def test_token_ids_that_a_pool_cannot_hold_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="token id"):
        check_token_id(bad)


def test_closing_an_attempt_keeps_who_claimed_it_and_takes_every_figure_of_the_result() -> None:
    """close_attempt builds the Attempt field by field: a field added to Attempt must be handled there."""
    opened = Attempt(pilot="p", host="h", batch_job="slurm:1", claimed=5.0)
    result = Result(Outcome.FAILED, "exit code 3", 6.0, 7.5, 3, None, b"", b"", 2, 0.25, 0.125, 4096)
    closed = close_attempt(opened, result)
    taken = {"started", "ended", "exit_code", "signal", "outcome", "reason", "cores", "cpu_user"}
    taken |= {"cpu_system", "max_rss"}
    assert set(Attempt.__dataclass_fields__) == taken | {"pilot", "host", "batch_job", "claimed"}
    assert closed == replace(
        opened, **{name: getattr(result, name) for name in taken - {"outcome"}}, outcome="failed"
    )
