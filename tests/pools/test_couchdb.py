"""The CouchDB pool against a real pouchdb-server: claims, leases, reports, resets, init, check, credentials.

Pools run in this process with an injected clock; the documents are read back over plain HTTP (urllib),
not through the code under test.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest
from servers.pouchdb import ADMIN, MEMBER, PouchDBServer, free_port

from agent.config import CouchDBServer, Secret, ServerConfig
from agent.errors import ExitCode, PoolError, ServerUnreachable, TokenError
from agent.http import HttpClient, Response
from agent.identity import Identity
from agent.pools import NewToken, Saved, couchdb_windows
from agent.pools.couchdb import ClaimPlan, CouchDBPool
from agent.pools.couchdb_windows import window_size
from agent.pools.picas import INDEXES, TODO_INDEX, fit_selector, monitor_views, new_token, todo_selector
from agent.resources import Fit, Request
from agent.token import Outcome, Result, make_report

LEASE = 10.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def server_config(
    url: str, database: str, *, user: Optional[tuple[str, Optional[str]]] = None, timeout: float = 10.0
) -> ServerConfig:
    username, password = user if user else (None, None)
    couch = CouchDBServer(
        url=url,
        database=database,
        username=username,
        password=Secret(password) if password is not None else None,
        design_doc="Monitor",
        ca_bundle=None,
        tls_verify=True,
    )
    return ServerConfig(backend="couchdb", lease=LEASE, max_outage=60.0, timeout=timeout, couchdb=couch)


def make_pool(
    server: PouchDBServer,
    database: str,
    name: str = "pilot-a",
    clock: Optional[Clock] = None,
    *,
    user: Optional[tuple[str, Optional[str]]] = None,
    http: Optional[HttpClient] = None,
) -> CouchDBPool:
    return CouchDBPool(
        server_config(server.url, database, user=user),
        Identity(name, f"{name}.node", "slurm:42"),
        http=http,
        clock=clock or Clock(),
        sleep=lambda _: None,
        rng=random.Random(7),
    )


def result(outcome: Outcome = Outcome.DONE, code: Optional[int] = 0, out: bytes = b"out") -> Result:
    return Result(outcome, f"exit code {code}", 1.0, 2.0, code, None, out, b"err")


def ready_pool(server: PouchDBServer, database: str, tokens: int, **kwargs: Any) -> CouchDBPool:
    pool = make_pool(server, database, **kwargs)
    pool.init()
    pool.add(NewToken(f"tok-{i:03d}", {"input": i}) for i in range(tokens))
    return pool


# -- init, add, counts -----------------------------------------------------------------------------


def test_init_creates_the_database_the_monitor_views_and_our_indexes_once(pouchdb: PouchDBServer) -> None:
    database = "init-" + str(free_port())
    pool = make_pool(pouchdb, database)
    try:
        first = pool.init()
        assert first[0] == f"database {database}: created"
        monitor = pouchdb.request("GET", f"/{database}/_design/Monitor").body
        assert monitor["views"] == monitor_views()
        assert monitor["language"] == "javascript"
        indexes = pouchdb.request("GET", f"/{database}/_index").body["indexes"]
        assert {(i["ddoc"], i["name"]) for i in indexes} >= {
            (f"_design/{i['ddoc']}", i["name"]) for i in INDEXES
        }
        again = pool.init()
        assert again[0].startswith(f"database {database}: exists")
        assert all("up to date" in line for line in again[1:])
    finally:
        pouchdb.delete_database(database)


def test_init_keeps_a_site_specific_monitor_view_and_adds_the_missing_ones(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    own = {
        "map": 'function(doc) { if (doc.type == "token" && doc.lock == 0 && doc.cores == 4) emit(doc._id); }'
    }
    pouchdb.request("PUT", f"/{couch_db}/_design/Monitor", {"language": "javascript", "views": {"todo": own}})
    lines = make_pool(pouchdb, couch_db).init()
    views = pouchdb.request("GET", f"/{couch_db}/_design/Monitor").body["views"]
    assert views["todo"] == own
    assert views["done"] == monitor_views()["done"]
    assert any("kept the site's own definition of todo" in line for line in lines)


def test_added_tokens_have_the_picas_fields_and_duplicates_are_refused(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    pool = ready_pool(pouchdb, couch_db, 3)
    doc = pouchdb.docs(couch_db)["tok-001"]
    assert {k: doc[k] for k in ("type", "lock", "done", "hostname", "scrub_count", "exit_code", "error")} == {
        "type": "token",
        "lock": 0,
        "done": 0,
        "hostname": "",
        "scrub_count": 0,
        "exit_code": "",
        "error": [],
    }
    assert doc["input"] == 1
    pool.add([NewToken("tok-001", {"input": 1})])  # there with the same fields: skipped
    with pytest.raises(TokenError, match=r"'tok-002': already in the pool .* with other fields"):
        pool.add([NewToken("new-1", {}), NewToken("tok-002", {})])
    assert "new-1" in pouchdb.docs(couch_db)  # resumable, not atomic: the batch went in, as the error says
    assert pouchdb.docs(couch_db)["tok-002"]["input"] == 2  # left as it was
    with pytest.raises(TokenError, match="field 'lock' is kept for PiCaS"):
        pool.add([NewToken("new-2", {"lock": 5})])
    assert pool.counts().as_dict() == {"todo": 4, "locked": 0, "done": 0, "error": 0, "waiting": 0}


# -- claims ----------------------------------------------------------------------------------------


def test_a_claim_on_a_stale_revision_gets_nothing_twice(pouchdb: PouchDBServer, couch_db: str) -> None:
    first = ready_pool(pouchdb, couch_db, 6, name="pilot-a")
    second = make_pool(pouchdb, couch_db, "pilot-b")
    seen_by_first = first.windows.next(3)  # read the window, as a claim does, and wait before writing
    assert len(seen_by_first) == 3
    first.windows.candidates = seen_by_first
    taken = second.claim(10)
    assert len(taken) == 6
    assert first.claim(3) == []  # its revisions are stale: every write conflicts, the view is empty now
    docs = pouchdb.docs(couch_db)
    assert {doc["pilot"]["lease"]["id"] for doc in docs.values()} == {lease.lease_id for lease in taken}


def test_two_pools_claiming_in_turns_share_out_every_token_once(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    pools = [ready_pool(pouchdb, couch_db, 40, name="pilot-a"), make_pool(pouchdb, couch_db, "pilot-b")]
    claimed: list[str] = []
    while True:
        got = [lease.token.id for pool in pools for lease in pool.claim(3)]
        if not got:
            break
        claimed += got
    assert sorted(claimed) == [f"tok-{i:03d}" for i in range(40)]
    assert pools[0].counts().locked == 40


def test_claimed_token_records_the_lock_as_picas_does(pouchdb: PouchDBServer, couch_db: str) -> None:
    clock = Clock()
    pool = ready_pool(pouchdb, couch_db, 1, clock=clock)
    (lease,) = pool.claim(1)
    doc = pouchdb.docs(couch_db)["tok-000"]
    assert doc["lock"] == int(clock.now)
    assert doc["done"] == 0
    assert doc["hostname"] == "pilot-a.node"
    assert doc["pilot"]["lease"] == {"id": lease.lease_id, "expires": clock.now + LEASE, "design": "Monitor"}
    assert pouchdb.view_ids(couch_db, "Monitor", "locked") == ["tok-000"]
    assert lease.token.fields == {"input": 0}


def test_an_expired_lease_is_claimed_again_and_the_late_report_is_a_conflict(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    clock = Clock()
    dying = ready_pool(pouchdb, couch_db, 1, name="pilot-a", clock=clock)
    (old,) = dying.claim(1)
    other = make_pool(pouchdb, couch_db, "pilot-b", clock)
    assert other.claim(1) == []  # the lease is still good
    clock.now += LEASE + 1
    other.next_lease_scan = 0
    (new,) = other.claim(1)
    assert new.token.id == old.token.id
    assert [a.outcome for a in new.token.attempts] == [Outcome.LEASE_EXPIRED.value, None]
    assert [a.pilot for a in new.token.attempts] == ["pilot-a", "pilot-b"]

    late = dying.report(old, make_report(old.token, result(), 1))
    assert late is Saved.CONFLICT
    assert pouchdb.docs(couch_db)["tok-000"]["pilot"]["lease"]["id"] == new.lease_id
    assert other.report(new, make_report(new.token, result(), 1)) is Saved.SAVED
    token = other.get("tok-000")
    assert token.state.value == "done"
    assert [a.outcome for a in token.attempts] == ["lease-expired", "done"]


def test_the_pool_looks_for_expired_leases_when_todo_is_empty(pouchdb: PouchDBServer, couch_db: str) -> None:
    clock = Clock()
    pool = ready_pool(pouchdb, couch_db, 1, clock=clock)
    pool.claim(1)
    clock.now += LEASE + 1
    pool.next_lease_scan = clock.now + 1000  # not due by the clock: found because todo is empty
    assert [lease.token.id for lease in pool.claim(2)] == ["tok-000"]


def test_claims_go_through_our_indexes_when_monitor_is_the_picas_one(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    pool = ready_pool(pouchdb, couch_db, 5)
    assert len(pool.claim(5)) == 5
    assert pool.plan == ClaimPlan(find=True, scans=True)
    assert pool.windows.candidates == []  # a window ending short of its size leaves nothing behind


def test_a_pool_walks_on_from_its_last_window_rather_than_jumping(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    # The first window starts at a random place: with make_pool's Random(7) it lies inside the 200 tokens.
    # Another seed could start it within a window of the end, where a short one would fail the first check.
    pool = ready_pool(pouchdb, couch_db, 200)
    size = window_size(1)
    window = sorted(pool.claim(1)[0].token.id for _ in range(size))  # one whole window, claimed one by one
    assert window == [f"tok-{i:03d}" for i in range(int(window[0][4:]), int(window[0][4:]) + size)]
    assert pool.windows.walk_from == window[-1]
    assert pool.claim(1)[0].token.id > window[-1]  # the next window starts where this one ended


def test_a_walked_window_is_taken_from_its_far_end_and_left_at_the_first_conflict(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    """A walk ends on the stretch of the pilot ahead, whose leftovers open the window: they are tried last,
    and the first one found taken (a conflict) sends the pool to read a window elsewhere."""
    pool = ready_pool(pouchdb, couch_db, 200)  # Random(7): the first window lies well inside the 200
    for _ in range(window_size(1)):
        pool.claim(1)  # the first window, read at random, shuffled
    first = pool.claim(1)[0].token.id  # from the window walked to
    left = [doc["_id"] for doc in pool.windows.candidates]
    assert [first, *left] == sorted([first, *left], reverse=True)  # the window's last token first
    taken = pouchdb.request("GET", f"/{couch_db}/{left[0]}").body
    assert pouchdb.request("PUT", f"/{couch_db}/{left[0]}", {**taken, "lock": 1}).status == 201  # another's
    before = pool.requests
    got = pool.claim(1)[0].token.id
    assert pool.conflicts == 1 and got != left[0]
    assert pool.requests - before == 3  # the conflict, a new window (not the next of this one), the claim


ONLY_FOUR_CORES = {
    "map": 'function(doc) { if (doc.type == "token" && doc.lock == 0 && doc.done == 0 && doc.cores == 4) '
    "emit(doc._id, doc._id); }"
}


def only_four_cores(pouchdb: PouchDBServer, database: str) -> None:
    """A site's own Monitor/todo view: only the tokens that ask for four cores."""
    pouchdb.request(
        "PUT", f"/{database}/_design/Monitor", {"language": "javascript", "views": {"todo": ONLY_FOUR_CORES}}
    )


def test_a_site_specific_todo_view_decides_which_tokens_are_claimed(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    only_four_cores(pouchdb, couch_db)
    pool = make_pool(pouchdb, couch_db)
    pool.init()
    pool.add(NewToken(f"tok-{i}", {"cores": 4 if i % 2 else 2}) for i in range(6))
    assert sorted(lease.token.id for lease in pool.claim(6)) == ["tok-1", "tok-3", "tok-5"]
    assert pool.plan == ClaimPlan(find=False, scans=True)


def test_with_a_site_specific_todo_view_only_its_own_expired_leases_come_back(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    only_four_cores(pouchdb, couch_db)
    clock = Clock()
    dying = make_pool(pouchdb, couch_db, "pilot-a", clock)
    dying.init()
    dying.add(NewToken(f"tok-{i}", {"cores": 4}) for i in range(2))
    dying.claim(2)
    elsewhere = pouchdb.docs(couch_db)["tok-1"]
    elsewhere["pilot"]["lease"]["design"] = "Elsewhere"  # claimed through another design document
    assert pouchdb.request("PUT", f"/{couch_db}/tok-1", elsewhere).status == 201
    clock.now += LEASE + 1
    other = make_pool(pouchdb, couch_db, "pilot-b", clock)
    assert [lease.token.id for lease in other.claim(2)] == ["tok-0"]


def test_without_our_indexes_claims_read_monitor_todo_and_say_what_is_missing(
    pouchdb: PouchDBServer, couch_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    pool = ready_pool(pouchdb, couch_db, 3, clock=clock)
    for index in INDEXES:
        path = f"/{couch_db}/_design/{index['ddoc']}"
        rev = pouchdb.request("GET", path).body["_rev"]
        assert pouchdb.request("DELETE", f"{path}?rev={rev}").status == 200
    assert "indexes: no pilot-todo, pilot-leases; claims are slower" in "\n".join(pool.check())
    with caplog.at_level(logging.WARNING):
        first = {lease.token.id for lease in pool.claim(2)}
    assert len(first) == 2
    assert pool.plan == ClaimPlan(find=False, scans=False)
    assert "no index pilot-leases: tokens of pilots that died stay locked" in caplog.text
    clock.now += LEASE + 1
    left = {"tok-000", "tok-001", "tok-002"} - first
    assert {lease.token.id for lease in pool.claim(3)} == left  # the expired two stay locked


def test_renewal_extends_the_lease_and_reports_it_lost_after_a_reset(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    clock = Clock()
    pool = ready_pool(pouchdb, couch_db, 2, clock=clock)
    leases = pool.claim(2)
    clock.now += 5
    renewal = pool.renew(leases)
    assert not renewal.lost
    assert {lease.expires for lease in renewal.renewed} == {clock.now + LEASE}
    docs = pouchdb.docs(couch_db)
    assert {doc["pilot"]["lease"]["expires"] for doc in docs.values()} == {clock.now + LEASE}

    assert make_pool(pouchdb, couch_db, "admin-tool").reset(locked=True, errors=False) == 2
    again = pool.renew(renewal.renewed)
    assert not again.renewed
    assert len(again.lost) == 2


def test_renewal_survives_an_edit_of_the_token_by_someone_else(pouchdb: PouchDBServer, couch_db: str) -> None:
    pool = ready_pool(pouchdb, couch_db, 1)
    (lease,) = pool.claim(1)
    edited = {**pouchdb.docs(couch_db)["tok-000"], "note": "edited by hand"}
    assert pouchdb.request("PUT", f"/{couch_db}/tok-000", edited).status == 201
    renewal = pool.renew([lease])
    assert len(renewal.renewed) == 1
    assert pouchdb.docs(couch_db)["tok-000"]["note"] == "edited by hand"


# -- reports ---------------------------------------------------------------------------------------


def test_done_and_failed_reports_land_in_the_picas_views_with_logs(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    pool = ready_pool(pouchdb, couch_db, 3)
    leases = sorted(pool.claim(3), key=lambda lease: lease.token.id)
    outcomes = [result(), result(Outcome.FAILED, 3, b"bad"), result(Outcome.FAILED, 4)]
    for lease, outcome in zip(leases, outcomes):
        max_attempts = 2 if lease.token.id == "tok-002" else 1
        assert pool.report(lease, make_report(lease.token, outcome, max_attempts)) is Saved.SAVED
    docs = pouchdb.docs(couch_db)
    assert pouchdb.view_ids(couch_db, "Monitor", "done") == ["tok-000"]
    assert pouchdb.view_ids(couch_db, "Monitor", "error") == ["tok-001"]
    assert pouchdb.view_ids(couch_db, "Monitor", "todo") == ["tok-002"]  # one more attempt allowed
    assert docs["tok-000"]["exit_code"] == 0
    assert docs["tok-001"]["exit_code"] == 3
    assert docs["tok-001"]["error"][-1]["message"] == "exit code 3"
    assert docs["tok-002"]["scrub_count"] == 1
    assert docs["tok-002"]["pilot"]["failures"] == 1
    assert set(docs["tok-001"]["_attachments"]) == {"logs_tok-001.out", "logs_tok-001.err"}
    assert pool.tails("tok-001") == (b"bad", b"err")
    raw = pouchdb.request("GET", f"/{couch_db}/tok-001?attachments=true").body["_attachments"]
    assert base64.b64decode(raw["logs_tok-001.out"]["data"]) == b"bad"
    assert pool.counts().as_dict() == {"todo": 1, "locked": 0, "done": 1, "error": 1, "waiting": 0}


def test_a_report_merges_onto_a_token_edited_while_it_ran(pouchdb: PouchDBServer, couch_db: str) -> None:
    pool = ready_pool(pouchdb, couch_db, 1)
    (lease,) = pool.claim(1)
    edited = {**pouchdb.docs(couch_db)["tok-000"], "note": "edited by hand"}
    assert pouchdb.request("PUT", f"/{couch_db}/tok-000", edited).status == 201
    assert pool.report(lease, make_report(lease.token, result(), 1)) is Saved.SAVED
    doc = pouchdb.docs(couch_db)["tok-000"]
    assert doc["note"] == "edited by hand"
    assert doc["done"] > 0
    assert doc["exit_code"] == 0


class LosesAnswers(HttpClient):
    """An HttpClient whose chosen requests reach the server but whose answers are lost on the way back."""

    def __init__(self, method: str, path_end: str | tuple[str, ...], times: int = 1) -> None:
        super().__init__(timeout=10.0)
        self.method = method
        self.path_end = path_end
        self.times = times

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        response = super().request(method, url, **kwargs)
        if self.times and method == self.method and url.split("?", maxsplit=1)[0].endswith(self.path_end):
            self.times -= 1
            raise ServerUnreachable(url, "connection reset")
        return response


def test_a_claim_whose_answer_was_lost_keeps_the_tokens_it_locked(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    ready_pool(pouchdb, couch_db, 2)
    pool = make_pool(pouchdb, couch_db, "pilot-b", http=LosesAnswers("POST", "/_bulk_docs"))
    leases = pool.claim(2)
    assert sorted(lease.token.id for lease in leases) == ["tok-000", "tok-001"]
    assert pool.http.times == 0
    for lease in leases:
        assert pool.report(lease, make_report(lease.token, result(), 1)) is Saved.SAVED


def test_a_report_sent_again_after_a_lost_answer_is_saved_once(pouchdb: PouchDBServer, couch_db: str) -> None:
    ready_pool(pouchdb, couch_db, 1)
    pool = make_pool(pouchdb, couch_db, "pilot-b", http=LosesAnswers("POST", "/_bulk_docs", times=0))
    (lease,) = pool.claim(1)
    pool.http.times = 1  # the report's _bulk_docs (with the children a task added, if any) is lost
    report = make_report(lease.token, result(), 1)
    with pytest.raises(ServerUnreachable):
        pool.report(lease, report)
    assert pool.report(lease, report) is Saved.SAVED  # the first PUT had landed
    token = pool.get("tok-000")
    assert [a.outcome for a in token.attempts] == ["done"]


# -- reset -----------------------------------------------------------------------------------------


def test_reset_puts_locked_and_error_tokens_back_like_resettokens(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    pool = ready_pool(pouchdb, couch_db, 3)
    leases = sorted(pool.claim(3), key=lambda lease: lease.token.id)
    pool.report(leases[0], make_report(leases[0].token, result(Outcome.FAILED, 2), 1))
    pool.report(leases[1], make_report(leases[1].token, result(), 1))
    assert pool.reset(locked=False, errors=True) == 1
    doc = pouchdb.docs(couch_db)["tok-000"]
    assert (doc["lock"], doc["done"], doc["exit_code"], doc["scrub_count"]) == (0, 0, "", 1)
    assert "_attachments" not in doc
    assert doc["pilot"]["failures"] == 0
    assert pool.reset(locked=True, errors=False) == 1
    attempts = pool.get("tok-002").attempts
    assert attempts[-1].outcome == Outcome.RESET.value
    assert pool.counts().as_dict() == {"todo": 2, "locked": 0, "done": 1, "error": 0, "waiting": 0}


# -- errors: credentials, missing database or views, unreachable server ------------------------------


def test_a_member_with_the_right_password_can_use_the_restricted_database(
    pouchdb_auth: PouchDBServer, member_db: str
) -> None:
    admin = make_pool(pouchdb_auth, member_db, user=ADMIN)
    admin.init()
    pool = make_pool(pouchdb_auth, member_db, user=MEMBER)
    pool.add([NewToken("t1", {"input": "x"})])
    lines = pool.check()
    assert f"credentials: user {MEMBER[0]!r} accepted" in lines
    (lease,) = pool.claim(1)
    assert pool.report(lease, make_report(lease.token, result(), 1)) is Saved.SAVED


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (
            (MEMBER[0], "not-the-password"),
            "refused the credentials of user 'alice': check server.username and",
        ),
        ((MEMBER[0], None), "no password for user 'alice'"),
        (None, "the server wants a user name and password"),
    ],
)
def test_bad_credentials_are_one_clear_pool_error(
    pouchdb_auth: PouchDBServer, member_db: str, user: Optional[tuple[str, Optional[str]]], expected: str
) -> None:
    with pytest.raises(PoolError) as caught:
        make_pool(pouchdb_auth, member_db, user=user).counts()
    assert expected in str(caught.value)
    assert caught.value.exit_code == ExitCode.POOL
    assert "\n" not in str(caught.value)
    assert "not-the-password" not in str(caught.value)


def test_a_database_that_is_missing_or_has_no_views_says_to_run_init(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    with pytest.raises(PoolError, match=r"no database 'no-such-db'.*pilot\.pyz init"):
        make_pool(pouchdb, "no-such-db").claim(1)
    with pytest.raises(PoolError, match=r"Monitor/todo: no such view.*pilot\.pyz init"):
        make_pool(pouchdb, couch_db).claim(1)


def test_an_unreachable_server_is_server_unreachable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    pool = CouchDBPool(
        server_config(url, "tokens", timeout=2.0),
        Identity("p", "h", None),
        http=HttpClient(timeout=2.0, retries=1, backoff=0.01),
    )
    with pytest.raises(ServerUnreachable, match="connection refused") as caught:
        pool.claim(1)
    assert caught.value.exit_code == ExitCode.SERVER_UNREACHABLE
    assert str(caught.value).startswith(f"pool {url}/tokens: ")


class ReversedBulkAnswers(HttpClient):
    """The real server, with every ``_bulk_docs`` answer reversed. Fault injection: pouchdb-server on disk
    sometimes answers in the order its writes finished, not the request's, and not on demand."""

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        response = super().request(method, url, **kwargs)
        if url.endswith("/_bulk_docs") and response.status < 300:
            reordered = json.dumps(list(reversed(json.loads(response.data)))).encode()
            return Response(response.status, response.headers, reordered)
        return response


def test_bulk_answers_in_another_order_never_turn_a_conflict_into_a_claim(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    clock = Clock()
    first = ready_pool(pouchdb, couch_db, 6, clock=clock)
    second = make_pool(pouchdb, couch_db, "pilot-b", clock, http=ReversedBulkAnswers(timeout=10.0))
    before = pouchdb.docs(couch_db)
    taken = first.claim(3)
    # The second pilot tries the three taken tokens (as it read them before) and three free ones at once.
    stale = [before[lease.token.id] for lease in taken]
    free = [doc for doc_id, doc in sorted(before.items()) if doc_id not in {d["_id"] for d in stale}][:3]
    leases, conflicts = second._lock(stale + free, clock())
    assert conflicts == 3
    assert sorted(lease.token.id for lease in leases) == sorted(doc["_id"] for doc in free)
    assert not {lease.token.id for lease in leases} & {lease.token.id for lease in taken}


# -- claims that fit -------------------------------------------------------------------------------


def fit(cores: int, gpus: int = 0, memory: Optional[int] = None, tasks: int = 10) -> Fit:
    return Fit(cores, gpus, memory, Request(), tasks)


def test_claims_take_only_tokens_that_fit_chosen_by_the_server(pouchdb: PouchDBServer, couch_db: str) -> None:
    pool = make_pool(pouchdb, couch_db)
    pool.init()
    pool.add(
        [
            NewToken("a-big", {"cores": 8}),
            NewToken("b-range", {"cores": "4-16"}),
            NewToken("c-plain", {}),
            NewToken("d-gpu", {"gpus": 1}),
            NewToken("e-mem", {"memory": "2GB"}),
        ]
    )
    # Written by another client (picas): a number is compared, a string never fits a claim with a fit.
    for doc in ({"_id": "f-picas-two", "cores": 2}, {"_id": "g-picas-text", "cores": "2"}):
        pouchdb.request("PUT", f"/{couch_db}/{doc['_id']}", {**new_token(doc["_id"], {}), **doc})
    found = pool._find(
        fit_selector(todo_selector(""), fit(1)), TODO_INDEX, 50
    )  # the server itself filters: what the index read returns
    assert sorted(doc["_id"] for doc in found) == ["c-plain", "e-mem"]
    claimed = pool.claim(10, fit(4, memory=10**9))
    assert sorted(lease.token.id for lease in claimed) in (["b-range"], ["c-plain", "f-picas-two"])
    rest = pool.claim(10, fit(8, gpus=1, memory=3 * 10**9, tasks=10))
    everything = {lease.token.id for lease in claimed + rest}
    assert "g-picas-text" not in everything
    rest += pool.claim(10, fit(8, gpus=1, memory=3 * 10**9, tasks=10))
    rest += pool.claim(10, fit(8, gpus=1, memory=3 * 10**9, tasks=10))
    everything = {lease.token.id for lease in claimed + rest}
    assert everything == {"a-big", "b-range", "c-plain", "d-gpu", "e-mem", "f-picas-two"}
    assert pool.claim(10, fit(64, gpus=8, memory=10**12)) == []  # the text one waits for `reset`/a fix
    assert pool.counts().todo == 1


class RecordsFinds(HttpClient):
    """An HttpClient that keeps the paths of the requests it sends and the selectors of its _find ones."""

    def __init__(self) -> None:
        super().__init__(timeout=10.0)
        self.selectors: list[dict[str, Any]] = []
        self.paths: list[str] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        self.paths.append(url.split("?", maxsplit=1)[0])
        if url.endswith("/_find"):
            self.selectors.append(kwargs["json_body"]["selector"])
        return super().request(method, url, **kwargs)


def test_claims_with_a_fit_ask_with_its_selector_only_when_no_token_of_the_window_fits(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    # pouchdb-server reads every todo token for a selector with a condition outside the index (20 times
    # a plain window's time for 2,000 tokens): a claim asking that each time left a loaded server that
    # answered no claim of the soak's 8 pilots within their 5 s timeout in 12 minutes.
    http = RecordsFinds()
    pool = make_pool(pouchdb, couch_db, http=http)
    pool.init()
    pool.add([NewToken(f"big-{i:02d}", {"cores": 4}) for i in range(40)])
    pool.add([NewToken("one", {"cores": 1})])
    assert [lease.token.id for lease in pool.claim(1, fit(2, tasks=1))] == ["one"]
    assert "$and" in http.selectors[-1]  # the shuffled windows of 4-core tokens had none: the selector
    http.selectors.clear()
    assert len(pool.claim(2, fit(4, tasks=2))) == 1  # a window of them: one fits in 4 cores
    assert http.selectors == [todo_selector("")]


def test_a_probe_finds_the_one_token_bigger_than_what_is_free_wherever_the_claims_window_is(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    # The whole-node token sorts first; the claims' window, read with one core free, walks past it. The
    # probe asks the server for tokens that fit the node but not one core, so it finds the one there is
    # (it found it only when the claims' window happened to start at it: a whole-node token starved).
    pool = make_pool(pouchdb, couch_db)
    pool.init()
    pool.add(
        [NewToken("a-whole", {"cores": 4}), *(NewToken(f"one-{i:03d}", {"cores": 1}) for i in range(60))]
    )
    pool.add([NewToken("b-gpu", {"gpus": 1})])  # bigger than what is free too, but not what this node has
    one_free = fit(1, tasks=1)
    assert pool.claim(1, one_free)[0].token.id.startswith("one-")
    window = list(pool.windows.candidates)
    assert window and all(doc["_id"].startswith("one-") for doc in window)
    probe = Fit(4, 0, None, Request(), 1, largest_first=True, beyond=one_free)
    assert [lease.token.id for lease in pool.claim(1, probe)] == ["a-whole"]
    assert pool.windows.candidates == window  # the claims' window is left as it was, for the claims
    assert pool.claim(1, probe) == []  # none left: no window of one-core tokens taken instead
    found = pool._find(fit_selector(todo_selector(""), probe), TODO_INDEX, 50)
    assert found == []  # the server filtered them all: nothing fits the node beyond one core now


def test_a_probe_on_a_big_pool_looks_through_a_stretch_of_ids_at_a_time_round_and_round(
    pouchdb: PouchDBServer, couch_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server filters every todo token a probe's range holds (0.1 ms each on pouchdb-server): on a
    # pool of more than PROBE_IDS documents each probe takes the next stretch of ids, so that it costs
    # what a small pool's does and a round of probes still finds the big token, wherever it is.
    monkeypatch.setattr(couchdb_windows, "PROBE_IDS", 10)
    http = RecordsFinds()
    pool = make_pool(pouchdb, couch_db, http=http)
    pool.init()  # its 5 design documents are among the first ids
    pool.add([*(NewToken(f"a-{i:02d}", {"cores": 1}) for i in range(40)), NewToken("z-whole", {"cores": 4})])
    probe = Fit(4, 0, None, Request(), 1, largest_first=True, beyond=fit(1, tasks=1))
    found, ranges = [], []
    for _ in range(5):  # 46 ids in stretches of 10: the fifth holds z-whole
        http.selectors.clear()
        found.append([lease.token.id for lease in pool.claim(1, probe)])
        (probed,) = [selector for selector in http.selectors if "$and" in selector]  # not the lease scan
        ranges.append(probed["$and"][0]["_id"])
    assert found == [[], [], [], [], ["z-whole"]]
    assert ranges[0]["$gte"] == "" and "$lt" not in ranges[-1]  # from the first id, and on to the end
    assert all(ranges[n]["$lt"] == ranges[n + 1]["$gte"] for n in range(4))  # each on from the last
    http.selectors.clear()
    assert pool.claim(1, probe) == []  # round again: from the first id
    assert [sel["$and"][0]["_id"] for sel in http.selectors if "$and" in sel] == [ranges[0]]


def test_a_claim_beside_running_tasks_asks_the_server_of_a_stretch_of_ids_not_of_the_whole_pool(
    pouchdb: PouchDBServer, couch_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claim beside running tasks is made again as they end: when no token of its window fits what is
    # free, the server filters the next stretch of ids for it, not every todo token; only a claim with
    # the node wholly free, the last before its pilot stops, asks it of the whole pool.
    monkeypatch.setattr(couchdb_windows, "PROBE_IDS", 10)
    http = RecordsFinds()
    pool = make_pool(pouchdb, couch_db, http=http)
    pool.init()
    pool.add([*(NewToken(f"a-{i:02d}", {"cores": 4}) for i in range(40)), NewToken("z-small", {})])
    beside = replace(fit(1, tasks=1), partial=True)
    found, ranges = [], []
    for _ in range(6):
        http.selectors.clear()
        claimed = [lease.token.id for lease in pool.claim(1, beside)]
        ranges += [selector["$and"][0]["_id"] for selector in http.selectors if "$and" in selector]
        found.append(claimed)
        if claimed:
            break
    assert found[-1] == ["z-small"]  # in a stretch, or in a window as it came
    assert ranges and ranges[0]["$gte"] == ""  # the server filters from the first id...
    assert all("$lt" in bounds for bounds in ranges[:-1])  # ...a stretch a time...
    assert "$lt" in ranges[-1] or len(ranges) > 1  # ...the last one alone open to the end
    assert all(ranges[n]["$lt"] == ranges[n + 1]["$gte"] for n in range(len(ranges) - 1))  # ...on and on
    http.selectors.clear()
    assert pool.claim(1, fit(1, tasks=1)) == []  # the node wholly free: every todo token is asked
    whole = [selector["$and"][0]["_id"] for selector in http.selectors if "$and" in selector]
    assert whole and not any("$lt" in bounds for bounds in whole)  # read at random, and again from the first


def test_a_token_with_a_wrong_request_is_refused_naming_the_field_couchdb(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    pool = make_pool(pouchdb, couch_db)
    pool.init()
    with pytest.raises(TokenError, match=r"bad.*field memory"):
        pool.add([NewToken("bad", {"memory": "lots"})])


def test_todo_left_reads_no_view_when_none_is_left_and_counts_them_when_some_are(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    # An idle pilot asks it as it stops. The counts read JavaScript views, which the server builds
    # from every document changed since they were last read: the whole run's history, on an emptied
    # pool. The todo index is kept up to date by the claims.
    http = RecordsFinds()
    pool = ready_pool(pouchdb, couch_db, 3, http=http)
    for lease in pool.claim(3):
        assert pool.report(lease, make_report(lease.token, result(), 1)) is Saved.SAVED
    http.paths.clear()
    assert pool.todo_left() == 0
    assert http.paths and not any("/_view/" in path for path in http.paths)
    pool.add([NewToken("late-1", {}), NewToken("late-2", {})])
    assert pool.todo_left() == 2 == pool.counts().todo
