from __future__ import annotations

from agent.outage import Outage


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    outage = Outage(900, base=1.0, cap=8.0, jitter=lambda: 1.0)
    delays = []
    for _ in range(6):
        outage.failed(100.0, "connection refused")
        delays.append(outage.next_try - 100.0)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    half = Outage(900, base=1.0, jitter=lambda: 0.0)
    half.failed(0.0, "x")
    assert half.next_try == 0.5


def test_may_try_only_after_the_backoff() -> None:
    outage = Outage(900, jitter=lambda: 1.0)
    assert outage.may_try(0.0)
    outage.failed(10.0, "timed out")
    assert not outage.may_try(10.5) and outage.may_try(11.0)


def test_gives_up_after_max_outage_counted_from_the_first_failure() -> None:
    outage = Outage(60, jitter=lambda: 1.0)
    outage.failed(100.0, "refused")
    outage.failed(130.0, "refused")
    assert not outage.exceeded(159.0) and outage.exceeded(160.0)
    assert outage.ok(170.0) == 70.0
    assert not outage.down and not outage.exceeded(1000.0) and outage.ok(171.0) is None
