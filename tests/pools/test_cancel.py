"""`tokens cancel` racing a pilot, on both pools (CouchDB: a real pouchdb-server): a cancel that lands
between a claim and its first renewal, one that meets the task's report (the task ended before the
renewal that would have stopped it), one in flight with that report, and claims from a window read
before the cancel. The cancel wins: the token ends in error as cancelled, never back to todo or done,
and keeps none of the children its task wrote. The soak found the CouchDB report overwriting it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from servers.pouchdb import PouchDBServer

from agent.errors import ServerUnreachable
from agent.http import HttpClient, Response
from agent.identity import Identity
from agent.pools import NewToken, Pool, Saved
from agent.pools.couchdb import CouchDBPool
from agent.pools.local import LocalPool
from agent.token import Outcome, Report, Result, State, make_report

from .test_couchdb import Clock, LosesAnswers, make_pool

MakePool = Callable[..., Pool]


@pytest.fixture(params=["local", "couchdb"])
def pools(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakePool]:
    """Pools on one backend: the first is a pilot's, the next ones are other pilots' or the admin's."""
    made: list[Pool] = []

    def make(name: str = "pilot-a", **kwargs: Any) -> Pool:
        if request.param == "local":
            pool: Pool = LocalPool(tmp_path / "p.db", Identity(name, "node1", None), 10.0, create=True)
        else:
            server: PouchDBServer = request.getfixturevalue("pouchdb")
            pool = make_pool(server, request.getfixturevalue("couch_db"), name, clock=Clock(), **kwargs)
            if not made:
                pool.init()
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def token(token_id: str, *after: str) -> NewToken:
    return NewToken(token_id, {"input": token_id, **({"after": list(after)} if after else {})})


def ended(outcome: Outcome, code: int | None) -> Result:
    return Result(outcome, f"exit code {code}" if code is not None else "interrupted", 1.0, 2.0, code)


def assert_cancelled(pool: Pool, token_id: str, last_outcome: str) -> None:
    got = pool.get(token_id)
    assert (got.state, got.reason, got.attempts[-1].outcome) == (State.ERROR, "cancelled", last_outcome)


# The task ended by itself before its pilot's renewal learnt of the cancel: done, a failure with attempts
# left (a retry, were it not cancelled), its last failure, a give-back (the pilot was stopping).
REPORTS = [
    (Outcome.DONE, 0, 3, "done"),
    (Outcome.FAILED, 3, 3, "failed"),
    (Outcome.FAILED, 3, 1, "failed"),
    (Outcome.INTERRUPTED, None, 3, "interrupted"),
]


@pytest.mark.parametrize(("outcome", "code", "max_attempts", "recorded"), REPORTS)
def test_a_report_that_meets_the_cancel_never_undoes_it(
    pools: MakePool, outcome: Outcome, code: int | None, max_attempts: int, recorded: str
) -> None:
    pool, admin = pools(), pools("admin")
    pool.add([token("run"), token("next", "run")])
    (lease,) = pool.claim(1)
    assert admin.cancel(["run"], all_todo=False) == 1
    report = make_report(lease.token, ended(outcome, code), max_attempts)
    report = Report(report.result, report.state, report.failures, children=(token("run.1"),))
    assert pool.report(lease, report) is Saved.CANCELLED
    assert_cancelled(pool, "run", recorded)  # the attempt as it ended, the token as the cancel left it
    assert pool.get("next").reason == "dependency run failed"  # not released by a late success
    assert pool.claim(5) == []  # nothing back to todo, no child added
    assert pool.counts().total == 2


def test_a_cancel_between_a_report_and_claim_and_the_first_renewal_is_seen_by_that_renewal(
    pools: MakePool,
) -> None:
    """The token claimed along with a report (one request on CouchDB, whose lease is the answer's
    revision) and cancelled before its pilot's first renewal: that renewal says cancelled, not lost."""
    pool, admin = pools(), pools("admin")
    pool.add([token("first"), token("second")])
    (first,) = pool.claim(1)
    saved, (second,) = pool.report_and_claim(first, make_report(first.token, ended(Outcome.DONE, 0), 3), 1)
    assert saved is Saved.SAVED
    assert admin.cancel([second.token.id], all_todo=False) == 1
    renewal = pool.renew([second])
    assert (renewal.renewed, renewal.lost, renewal.cancelled) == ([], [], [second])
    stopped = Result(Outcome.CANCELLED, "cancelled", 1.0, 2.0, None, 15)
    assert pool.report(second, make_report(second.token, stopped, 3)) is Saved.CANCELLED
    assert_cancelled(pool, second.token.id, "cancelled")


def test_claims_from_a_window_read_before_the_cancel_never_hand_out_the_cancelled_tokens(
    pools: MakePool,
) -> None:
    """A CouchDB pilot keeps the rest of a window of todo tokens for its next claims: those cancelled
    since it read them must not be claimed from it (the claim is conditional on the revision read)."""
    pool, admin = pools(), pools("admin")
    pool.add([token(f"t{i}") for i in range(8)])
    claimed = {lease.token.id for lease in pool.claim(1)}
    if isinstance(pool, CouchDBPool):
        assert len(pool.windows.candidates) == 7  # the window's rest, as read before the cancel
    others = sorted({f"t{i}" for i in range(8)} - claimed)
    assert admin.cancel(others[:4], all_todo=False) == 4
    claimed |= {lease.token.id for lease in pool.claim(8)}
    assert claimed.isdisjoint(others[:4])
    assert len(claimed) == 4
    for token_id in others[:4]:
        got = pool.get(token_id)
        assert (got.state, got.reason, got.attempts) == (State.ERROR, "cancelled", ())


class CancelsFirst(HttpClient):
    """An HttpClient that, just before the first ``_bulk_docs`` that reports ``token_id``, has the admin
    cancel it: the cancel lands while the report is in flight."""

    def __init__(self, token_id: str) -> None:
        super().__init__(timeout=10.0)
        self.token_id = token_id
        self.cancel: Callable[[], int] = lambda: 0
        self.cancelled = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        docs = (kwargs.get("json_body") or {}).get("docs") if url.endswith("/_bulk_docs") else None
        mine = [doc for doc in docs or [] if doc.get("_id") == self.token_id]
        if not self.cancelled and mine and mine[0].get("pilot", {}).get("reported"):
            self.cancelled = self.cancel()
        return super().request(method, url, **kwargs)


def test_couchdb_a_cancel_that_lands_while_the_report_and_claim_is_in_flight_wins(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    """The report of a success with its children and the claim of the next token go in one request;
    the cancel lands just before it. The report then merges onto the cancelled token: it stays cancelled,
    and the children the request wrote are removed again; the claim in the same request stands."""
    http = CancelsFirst("parent")
    pool = make_pool(pouchdb, couch_db, clock=Clock(), http=http)
    pool.init()
    admin = make_pool(pouchdb, couch_db, "admin", clock=Clock())
    http.cancel = lambda: admin.cancel(["parent"], all_todo=False)
    pool.add([token("parent"), *(token(f"t{i}") for i in range(3))])
    leases = pool.claim(4)
    lease = next(lease for lease in leases if lease.token.id == "parent")
    report = make_report(lease.token, ended(Outcome.DONE, 0), 3)
    children = (token("parent.1"), token("parent.2", "parent.1"))
    report = Report(report.result, report.state, report.failures, children=children)
    pool.add([token("later")])
    saved, claimed = pool.report_and_claim(lease, report, 1)
    assert (saved, http.cancelled) == (Saved.CANCELLED, 1)
    assert_cancelled(pool, "parent", "done")
    docs = pouchdb.docs(couch_db)
    assert "parent.1" not in docs and "parent.2" not in docs
    assert [lease.token.id for lease in claimed] == ["later"]
    assert docs["later"]["pilot"]["lease"]["id"] == claimed[0].lease_id
    assert docs["parent"]["error"][-1]["message"] == "cancelled"


def test_couchdb_children_removed_after_a_cancel_are_only_those_the_report_wrote(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    """A child may name its own id: where that id is a token already (other fields), the report's write
    of it conflicted, and the token is not the child's to remove."""
    http = CancelsFirst("parent")
    pool = make_pool(pouchdb, couch_db, clock=Clock(), http=http)
    pool.init()
    admin = make_pool(pouchdb, couch_db, "admin", clock=Clock())
    http.cancel = lambda: admin.cancel(["parent"], all_todo=False)
    pool.add([token("parent")])
    (lease,) = pool.claim(1)
    pool.add([token("other")])
    report = make_report(lease.token, ended(Outcome.DONE, 0), 3)
    children = (token("parent.1"), NewToken("other", {"input": "the child's"}))
    report = Report(report.result, report.state, report.failures, children=children)
    assert pool.report(lease, report) is Saved.CANCELLED
    docs = pouchdb.docs(couch_db)
    assert "parent.1" not in docs
    assert docs["other"]["input"] == "other"


def test_couchdb_a_claim_settled_after_an_outage_closes_the_attempt_of_a_token_cancelled_meanwhile(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    """The claim's ``_bulk_docs`` reaches the server, then the server is away: its answer is lost, and so
    is the look-up of what it wrote. The claim is settled at the next claim, after the cancel."""
    http = LosesAnswers("POST", ("/_bulk_docs", "/_all_docs"), times=0)
    pool = make_pool(pouchdb, couch_db, clock=Clock(), http=http)
    pool.init()
    pool.add([token("gone"), token("kept")])
    http.times = 2
    with pytest.raises(ServerUnreachable):
        pool.claim(2)
    assert len(pool.uncertain) == 2
    assert make_pool(pouchdb, couch_db, "admin", clock=Clock()).cancel(["gone"], all_todo=False) == 1
    assert [lease.token.id for lease in pool.claim(2)] == ["kept"]
    assert_cancelled(pool, "gone", "cancelled")


class CancelAfterClaim(HttpClient):
    """The claim's ``_bulk_docs`` reaches the server, the admin cancels a token it locked, and only then
    is the claim's answer lost: the look-up that follows finds our lease on a cancelled token."""

    def __init__(self) -> None:
        super().__init__(timeout=10.0)
        self.cancel: Callable[[], int] = lambda: 0
        self.armed = False

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        response = super().request(method, url, **kwargs)
        if self.armed and url.endswith("/_bulk_docs"):
            self.armed = False
            assert self.cancel() == 1
            raise ServerUnreachable(url, "connection reset")
        return response


def test_couchdb_a_claim_whose_answer_was_lost_never_overwrites_a_cancel_that_came_meanwhile(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    """The lease found after a lost answer was written on what the server holds now, not on our claim's
    document at the server's revision: that renewal overwrote the cancel, and the task ran to its end."""
    http = CancelAfterClaim()
    pool = make_pool(pouchdb, couch_db, clock=Clock(), http=http)
    pool.init()
    admin = make_pool(pouchdb, couch_db, "admin", clock=Clock())
    http.cancel = lambda: admin.cancel(["gone"], all_todo=False)
    pool.add([token("gone")])
    http.armed = True
    assert pool.claim(1) == []  # cancelled before the claim was known to be ours: closed, not handed out
    assert_cancelled(pool, "gone", "cancelled")
    assert pool.get("gone").attempts[-1].started is None


def test_couchdb_tokens_cancelled_under_a_pilot_that_died_never_hide_expired_leases(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    """A running token cancelled keeps its lease for its pilot's renewal; when that pilot is dead, the
    lease stays on the cancelled token for good. Claims look for expired leases a window at a time,
    oldest first: such tokens, 20 of them, must not fill the window and hide a dead pilot's token."""
    clock = Clock()
    dead = make_pool(pouchdb, couch_db, "dead", clock=clock)
    dead.init()
    dead.add([token(f"c{i:02d}") for i in range(20)])
    assert len(dead.claim(20)) == 20
    admin = make_pool(pouchdb, couch_db, "admin", clock=clock)
    assert admin.cancel([f"c{i:02d}" for i in range(20)], all_todo=False) == 20
    clock.now += 1
    admin.add([token("lost")])
    assert [lease.token.id for lease in make_pool(pouchdb, couch_db, "gone", clock=clock).claim(1)] == [
        "lost"
    ]
    clock.now += 60  # every lease ran out; the pilots that held them are gone
    (lease,) = make_pool(pouchdb, couch_db, "pilot-c", clock=clock).claim(1)
    assert lease.token.id == "lost"
    assert [a.outcome for a in lease.token.attempts] == ["lease-expired", None]
