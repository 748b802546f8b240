"""Interop with the real picas client (PyPI `picas`, in .deps/picas-venv): the same views, tokens made by
either side run by the other, and the same counts read through both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Site
from servers.pouchdb import ADMIN, MEMBER, PouchDBServer

from agent.token import make_report
from pools.conftest import couch_config, picas_side
from pools.test_couchdb import RecordsFinds, ready_pool, result

pytestmark = pytest.mark.couchdb

# Fails when the token's input is a multiple of 3; records every execution first.
MIXED = ["/bin/sh", "-c", 'echo "$1" >> "$2"; exit $(( $3 % 3 == 0 ))', "task", "{id}"]
NO_BLACK_HOLE = {"black_hole_failures": 0}


def picas_counts(python: Path, server: PouchDBServer, database: str, **kwargs: tuple[str, str]) -> dict:
    return json.loads(picas_side(python, server, database, "counts", **kwargs).stdout)


def test_our_monitor_views_are_the_ones_the_picas_examples_store(
    site: Site, pouchdb: PouchDBServer, couch_db: str, picas_python: Path
) -> None:
    picas_side(picas_python, pouchdb, couch_db, "views", "Monitor")
    stored = pouchdb.request("GET", f"/{couch_db}/_design/Monitor").body
    site.write(couch_config(site.folder, pouchdb, couch_db, ["/bin/true"]))
    init = site.run("init")
    assert init.returncode == 0, init.stderr
    assert "design document Monitor: up to date" in init.stdout  # nothing of ours differs
    after = pouchdb.request("GET", f"/{couch_db}/_design/Monitor").body
    assert after["_rev"] == stored["_rev"]
    assert set(stored["views"]) == {"todo", "locked", "done", "error", "overview_total"}


@pytest.mark.parametrize("our_indexes", [False, True])
def test_tokens_made_by_picas_are_run_by_our_pilot(
    site: Site, pouchdb: PouchDBServer, couch_db: str, picas_python: Path, our_indexes: bool
) -> None:
    picas_side(picas_python, pouchdb, couch_db, "views", "Monitor")
    picas_side(picas_python, pouchdb, couch_db, "add", "12")
    ran = site.folder / "ran.log"
    command = ["/bin/sh", "-c", 'echo "$1" >> "$2"; echo "$3"', "task", "{id}", str(ran), "{input}"]
    site.write(couch_config(site.folder, pouchdb, couch_db, command))
    if our_indexes:  # claims through our Mango index; without `init`, through PiCaS's Monitor/todo
        assert site.run("init").returncode == 0
    run = site.run("run")
    assert run.returncode == 0, run.stderr
    assert ("no index pilot-leases" in run.stderr) is not our_indexes
    assert sorted(ran.read_text().split()) == sorted(f"token_{i}" for i in range(12))
    assert picas_counts(picas_python, pouchdb, couch_db) == {"todo": 0, "locked": 0, "done": 12, "error": 0}
    doc = pouchdb.docs(couch_db)["token_3"]
    assert doc["lock"] > 0 and doc["done"] > 0 and doc["exit_code"] == 0
    assert doc["input"] == "picas input 3"
    assert set(doc["_attachments"]) == {"logs_token_3.out"}  # its stderr was empty: no attachment
    assert site.token("token_3")["stdout_tail"] == "picas input 3\n"


def test_tokens_added_by_pilot_are_run_by_a_picas_runactor(
    site: Site, pouchdb_auth: PouchDBServer, member_db: str, picas_python: Path
) -> None:
    site.write(couch_config(site.folder, pouchdb_auth, member_db, ["/bin/true"], user=ADMIN))
    assert site.run("init").returncode == 0
    site.write(couch_config(site.folder, pouchdb_auth, member_db, ["/bin/true"], user=MEMBER))
    assert site.run("tokens", "add", "--range", "9").returncode == 0
    ran = site.folder / "ran.log"
    argv = ["run", str(site.folder / "picas.log"), "--", *MIXED, str(ran), "{input}"]
    picas_side(picas_python, pouchdb_auth, member_db, *argv, user=MEMBER)
    assert sorted(ran.read_text().split()) == sorted(f"range-{i}" for i in range(9))
    expected = {"todo": 0, "locked": 0, "done": 6, "error": 3}
    assert picas_counts(picas_python, pouchdb_auth, member_db, user=MEMBER) == expected
    assert site.status() == {**expected, "waiting": 0, "total": 9}
    shown = site.token("range-3")
    assert shown["state"] == "error"
    assert shown["fields"] == {"input": 3}


def test_counts_right_after_a_mixed_run_agree_through_both_clients(
    site: Site, pouchdb: PouchDBServer, couch_db: str, picas_python: Path
) -> None:
    ran = site.folder / "ran.log"
    # One token in three fails: the node is fine, so the black-hole check stays out of the way.
    command = [*MIXED, str(ran), "{input}"]
    site.write(couch_config(site.folder, pouchdb, couch_db, command, pilot=NO_BLACK_HOLE))
    assert site.run("init").returncode == 0
    assert site.run("tokens", "add", "--range", "30").returncode == 0
    run = site.run("run")
    assert run.returncode == 0, run.stderr
    expected = {"todo": 0, "locked": 0, "done": 20, "error": 10}
    assert site.status() == {**expected, "waiting": 0, "total": 30}
    assert picas_counts(picas_python, pouchdb, couch_db) == expected
    assert pouchdb.view_ids(couch_db, "Monitor", "error") == sorted(f"range-{i}" for i in range(0, 30, 3))
    failed = pouchdb.docs(couch_db)["range-3"]
    assert failed["exit_code"] == 1
    assert failed["error"][-1]["message"] == "exit code 1"
    # PiCaS's way back: reset the errors, and a picas pilot runs them again.
    assert site.run("reset", "--errors").returncode == 0
    assert picas_counts(picas_python, pouchdb, couch_db)["todo"] == 10
    again = site.folder / "again.log"
    picas_side(picas_python, pouchdb, couch_db, "run", str(again), "--", "/bin/true")
    assert len(again.read_text().split()) == 10
    assert site.status() == {"todo": 0, "locked": 0, "done": 30, "error": 0, "waiting": 0, "total": 30}


def test_an_idle_pilot_counts_the_tokens_picas_pilots_hold_without_reading_the_views(
    pouchdb: PouchDBServer, couch_db: str, picas_python: Path
) -> None:
    # A pilot that waits for tokens held elsewhere (pilot.idle_timeout) counts them at each look at the
    # empty pool. The views would make the server run the run's history through six JavaScript views;
    # the claims' index has the locks of picas pilots too (lock > 0), which carry no lease of ours.
    http = RecordsFinds()
    pool = ready_pool(pouchdb, couch_db, 5, http=http)
    picas_side(picas_python, pouchdb, couch_db, "lock", "2")
    leases = pool.claim(1)
    http.paths.clear()
    assert pool.locked_left() == 3
    assert any(path.endswith("/_find") for path in http.paths)
    assert not any("/_view/" in path for path in http.paths)
    assert pool.counts().locked == 3  # as the views count them
    for lease in leases:
        pool.report(lease, make_report(lease.token, result(), 1))
    assert pool.locked_left() == 2
