from __future__ import annotations

from agent.http import RETRY_AFTER_MAX, _unreachable, retry_after
from agent.outage import Outage, first_claim_delay


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


def test_a_cause_waiting_does_not_cure_is_hopeless_only_before_the_server_ever_answered() -> None:
    outage = Outage(900, jitter=lambda: 1.0)
    outage.failed(0.0, "connection refused")
    assert not outage.hopeless()  # a server starting up, or overloaded: wait
    outage.failed(1.0, "TLS certificate verification failed")
    assert outage.hopeless()  # never answered, and no wait will change the certificate
    outage.ok(2.0)
    assert not outage.hopeless()
    outage.failed(3.0, "host name not found")
    assert not outage.hopeless()  # it answered before: an outage like any other (DNS trouble)
    assert not outage.exceeded(902.0) and outage.exceeded(903.0)


def test_transport_causes_that_waiting_does_not_cure_make_a_never_reached_server_hopeless() -> None:
    causes = {
        "Failed to resolve 'x.invalid' ([Errno -2] Name or service not known)": True,
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate": True,
        "[Errno 111] Connection refused": False,
        "Temporary failure in name resolution": False,
        "Read timed out. (read timeout=10)": False,
    }
    for text, lasting in causes.items():
        error = _unreachable("https://user:secret@db.example.org/x", OSError(text))
        outage = Outage(900, jitter=lambda: 1.0)
        outage.failed(0.0, error.problem)
        assert outage.hopeless() is lasting, text
        assert "secret" not in str(error)


def test_retry_after_holds_the_next_try_back_at_least_that_long_with_a_little_jitter() -> None:
    outage = Outage(900, base=1.0, jitter=lambda: 1.0)
    outage.failed(100.0, "server busy (HTTP 429)", retry_after=20.0)
    assert outage.next_try == 122.0  # 20 s, and up to a tenth more so that a herd comes back spread
    outage.failed(200.0, "server busy (HTTP 429)", retry_after=0.5)
    assert outage.next_try == 202.0  # shorter than the backoff: the backoff stands


def test_retry_after_is_read_as_seconds_capped_and_a_date_is_ignored() -> None:
    assert retry_after({"Retry-After": "7"}) == 7.0
    assert retry_after({"retry-after": "86400"}) == RETRY_AFTER_MAX
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after({"Retry-After": "-3"}) is None
    assert retry_after({}) is None


def test_the_first_claim_waits_a_random_part_of_the_start_jitter() -> None:
    assert first_claim_delay(0.0) == 0.0  # off: claims at once
    assert first_claim_delay(60.0, jitter=lambda: 0.25) == 15.0
    assert {0.0 <= first_claim_delay(60.0) < 60.0 for _ in range(100)} == {True}
