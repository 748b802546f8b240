"""Dependencies (`after`) in both pools, through the Pool interface: waiting, release on done, failure
down the graph, reset, the checks of `add`, and pools written before dependencies existed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers.pouchdb import PouchDBServer

from agent.errors import DependencyError, TokenError
from agent.identity import Identity
from agent.pools import NewToken, Pool, Saved
from agent.pools import local as local_module
from agent.pools.base import ADD_BATCH
from agent.pools.local import LocalPool
from agent.pools.picas import new_token
from agent.token import Outcome, Result, State, make_report

from .test_couchdb import Clock, make_pool


@pytest.fixture(params=["local", "couchdb"])
def pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pool]:
    if request.param == "local":
        made: Pool = LocalPool(tmp_path / "p.db", Identity("pilot-a", "node1", None), 10.0, create=True)
    else:
        server: PouchDBServer = request.getfixturevalue("pouchdb")
        made = make_pool(server, request.getfixturevalue("couch_db"), clock=Clock())
        made.init()
    with made:
        yield made


def token(token_id: str, *after: str) -> NewToken:
    return NewToken(token_id, {"input": token_id, **({"after": list(after)} if after else {})})


def finish(pool: Pool, outcome: Outcome = Outcome.DONE, max_attempts: int = 1) -> list[str]:
    """Claim everything claimable and report each with ``outcome``; returns the ids claimed."""
    leases = pool.claim(50)
    code = 0 if outcome is Outcome.DONE else 1
    for lease in leases:
        result = Result(outcome, f"exit code {code}", 1.0, 2.0, code)
        assert pool.report(lease, make_report(lease.token, result, max_attempts)) is Saved.SAVED
    return sorted(lease.token.id for lease in leases)


def test_a_diamond_is_claimed_level_by_level(pool: Pool) -> None:
    # `after` may name tokens that come later in the same input
    middle = [token(f"m{i}", "split") for i in (1, 2, 3)]
    pool.add([token("merge", "m1", "m2", "m3"), *middle, token("split")])
    counts = pool.counts()
    assert (counts.todo, counts.waiting) == (1, 4)
    assert pool.get("merge").state is State.WAITING
    assert finish(pool) == ["split"]
    assert finish(pool) == ["m1", "m2", "m3"]
    assert pool.counts().todo == 1
    assert finish(pool) == ["merge"]
    assert pool.counts().as_dict() == {"todo": 0, "locked": 0, "done": 5, "error": 0, "waiting": 0}


def test_a_failure_sends_what_waits_on_it_to_error_and_a_reset_brings_it_back(pool: Pool) -> None:
    pool.add([token("a"), token("b", "a"), token("c", "b"), token("d", "a", "other"), token("other")])
    claimed = pool.claim(2)
    by_id = {lease.token.id: lease for lease in claimed}
    failed = Result(Outcome.FAILED, "exit code 1", 1.0, 2.0, 1)
    assert pool.report(by_id["a"], make_report(by_id["a"].token, failed, 1)) is Saved.SAVED
    assert pool.counts().as_dict() == {"todo": 0, "locked": 1, "done": 0, "error": 4, "waiting": 0}
    assert pool.reset(locked=False, errors=True) == 4
    assert pool.counts().as_dict() == {"todo": 1, "locked": 1, "done": 0, "error": 0, "waiting": 3}
    done = Result(Outcome.DONE, "exit code 0", 1.0, 2.0, 0)
    assert pool.report(by_id["other"], make_report(by_id["other"].token, done, 1)) is Saved.SAVED
    assert finish(pool) == ["a"]
    assert finish(pool) == ["b", "d"]
    assert finish(pool) == ["c"]


def test_a_dependency_in_error_fails_new_tokens_at_once_and_a_done_one_is_not_waited_on(pool: Pool) -> None:
    pool.add([token("bad"), token("good")])
    leases = {lease.token.id: lease for lease in pool.claim(2)}
    for token_id, outcome, code in (("bad", Outcome.FAILED, 1), ("good", Outcome.DONE, 0)):
        result = Result(outcome, f"exit code {code}", 1.0, 2.0, code)
        pool.report(leases[token_id], make_report(leases[token_id].token, result, 1))
    pool.add([token("x", "bad"), token("y", "x"), token("z", "good")])
    assert pool.get("x").state is State.ERROR
    assert pool.get("y").state is State.ERROR
    assert pool.get("z").state is State.TODO


def test_add_refuses_unknown_ids_and_cycles_and_adds_nothing(pool: Pool) -> None:
    pool.add([token("old")])
    with pytest.raises(DependencyError, match="neither the pool nor the input: ghost; nothing was added"):
        pool.add([token("n1", "old"), token("n2", "ghost")])
    with pytest.raises(DependencyError, match="cycle: c1 -> c2 -> c1"):
        pool.add([token("c1", "c2"), token("c2", "c1")])
    assert pool.counts().total == 1
    with pytest.raises(TokenError):
        pool.get("n1")


def test_children_come_with_the_report_once(pool: Pool) -> None:
    pool.add([token("parent")])
    (lease,) = pool.claim(1)
    children = (token("parent.1"), token("parent.2"), token("sum", "parent.1", "parent.2"))
    done = Result(Outcome.DONE, "exit code 0", 1.0, 2.0, 0)
    report = make_report(lease.token, done, 1)
    report = type(report)(report.result, report.state, report.failures, children=children)
    assert pool.report(lease, report) is Saved.SAVED
    assert pool.counts().as_dict() == {"todo": 2, "locked": 0, "done": 1, "error": 0, "waiting": 1}
    pool.report(lease, report)  # sent again: recognised or refused, never doubled
    assert pool.counts().total == 4
    assert finish(pool) == ["parent.1", "parent.2"]
    assert finish(pool) == ["sum"]


def test_a_local_pool_of_the_first_schema_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:  # as pilot.pyz before dependencies wrote it
        db.executescript(local_module._SCHEMA)
        db.execute("PRAGMA user_version = 1")
        for i in range(3):
            db.execute(
                "INSERT INTO tokens (id, state, fields, updated) VALUES (?, 'todo', ?, 0)",
                (f"t{i}", json.dumps({"input": i})),
            )
    with LocalPool(path, Identity("pilot-a", "node1", None), 10.0) as pool:
        assert pool.counts().as_dict() == {"todo": 3, "locked": 0, "done": 0, "error": 0, "waiting": 0}
        pool.add([token("after-all", "t0", "t1", "t2")])
        assert finish(pool) == ["t0", "t1", "t2"]
        assert finish(pool) == ["after-all"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == local_module.SCHEMA_VERSION


def test_couchdb_tokens_written_before_dependencies_are_claimed_and_waited_on(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    for i in range(3):  # as pilot.pyz before dependencies wrote them: no lock -1, no pilot key
        pouchdb.request("PUT", f"/{couch_db}/t{i}", new_token(f"t{i}", {"input": i}))
    with make_pool(pouchdb, couch_db, clock=Clock()) as pool:
        pool.init()
        pool.add([token("after-all", "t0", "t1", "t2")])
        assert finish(pool) == ["t0", "t1", "t2"]
        assert finish(pool) == ["after-all"]


def test_cancel_moves_todo_waiting_and_running_tokens_to_error_and_the_renewal_says_so(pool: Pool) -> None:
    pool.add([token("run")])
    leases = {lease.token.id: lease for lease in pool.claim(1)}
    pool.add([token("todo"), token("wait", "run"), token("left")])
    assert pool.cancel(["run", "todo"], all_todo=False) == 2
    assert pool.get("wait").reason == "dependency run failed"
    renewal = pool.renew([leases["run"]])
    assert (renewal.renewed, renewal.lost, [lease.token.id for lease in renewal.cancelled]) == (
        [],
        [],
        ["run"],
    )
    stopped = Result(Outcome.CANCELLED, "cancelled", 1.0, 2.0, None, 15)
    assert pool.report(leases["run"], make_report(leases["run"].token, stopped, 1)) is Saved.CANCELLED
    run = pool.get("run")
    assert (run.state, run.reason, run.attempts[-1].outcome, run.failures) == (
        State.ERROR,
        "cancelled",
        "cancelled",
        0,
    )
    assert [lease.token.id for lease in pool.claim(5)] == ["left"]
    assert pool.cancel([], all_todo=True) == 0
    assert pool.reset(locked=False, errors=True) == 3
    assert pool.counts().as_dict() == {"todo": 2, "locked": 1, "done": 0, "error": 0, "waiting": 1}


def test_couchdb_claims_release_what_a_pilot_that_died_after_its_report_left_waiting(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    """The report saved, the release never sent (the pilot died in between, or a picas pilot did the
    task): a claim that finds nothing else looks the waiting tokens over."""
    with make_pool(pouchdb, couch_db, clock=Clock()) as pool:
        pool.init()
        pool.add([token("x"), token("y", "x"), token("z", "x", "y")])
        assert [lease.token.id for lease in pool.claim(1)] == ["x"]
        doc = pouchdb.request("GET", f"/{couch_db}/x").body
        doc.update({"done": doc["lock"], "exit_code": 0, "pilot": {**doc["pilot"], "lease": None}})
        assert pouchdb.request("PUT", f"/{couch_db}/x", doc).status == 201  # done, as picas reports it
        assert pool.get("y").state is State.WAITING
        assert [lease.token.id for lease in pool.claim(2)] == ["y"]
        assert pool.get("z").state is State.WAITING  # still waits on y


def test_a_streamed_local_add_links_tokens_across_its_batches(tmp_path: Path) -> None:
    """The local add writes a batch at a time and links `after` once the whole input is in: a token may
    name one that comes batches later, and a cycle through the last batch still refuses all of it."""
    size = 2 * ADD_BATCH + 5
    later = f"t{size - 1}"
    with LocalPool(tmp_path / "p.db", Identity("pilot-a", "node1", None), 10.0, create=True) as pool:
        pool.add([token("t0", later), *(token(f"t{i}") for i in range(1, size))])
        assert pool.get("t0").state is State.WAITING
        assert (pool.counts().todo, pool.counts().waiting) == (size - 1, 1)
        with pytest.raises(DependencyError, match="cycle"):
            cycle = [token("c0", f"c{size - 1}"), *(token(f"c{i}") for i in range(1, size - 1))]
            pool.add([*cycle, token(f"c{size - 1}", "c0")])
        assert pool.counts().total == size  # the refused input left nothing behind
