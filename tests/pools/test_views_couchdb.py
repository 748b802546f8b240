"""The views through pilot.pyz on a CouchDB pool (pouchdb-server): status on a known history read from our
pilot-stats views, tokens list, export with the tails from the attachments, delete, and a database made
before the views (without pilot-stats), by an admin and by a member who may not add design documents."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from typing import Optional

import pytest
import views_history
import views_sizes
from conftest import Site, wait_for
from servers.pouchdb import ADMIN, MEMBER, PouchDBServer

from agent import stats
from agent.config import CouchDBServer, Secret, ServerConfig
from agent.identity import Identity
from agent.pools.couchdb import CouchDBPool
from agent.pools.picas import SIZES_DESIGN, STATS_DESIGN

from .conftest import couch_config

pytestmark = pytest.mark.couchdb


def server(url: str, database: str, user: Optional[tuple[str, str]] = None) -> ServerConfig:
    couch = CouchDBServer(
        url=url,
        database=database,
        username=user[0] if user else None,
        password=Secret(user[1]) if user else None,
        design_doc="Monitor",
        ca_bundle=None,
        tls_verify=True,
    )
    return ServerConfig(backend="couchdb", lease=3600.0, max_outage=60.0, timeout=30.0, couchdb=couch)


def couch_history(couch: PouchDBServer, database: str, user: Optional[tuple[str, str]] = None) -> None:
    config = server(couch.url, database, user)

    def make_pool(host: str, clock: views_history.Clock) -> CouchDBPool:
        return CouchDBPool(config, Identity(f"pilot-{host}", host, None), clock=clock)

    views_history.build(make_pool, time.time())


@pytest.fixture
def history(site: Site, pouchdb: PouchDBServer, couch_db: str) -> Site:
    site.write(couch_config(site.folder, pouchdb, couch_db, ["/bin/true"]))
    assert site.run("init").returncode == 0
    couch_history(pouchdb, couch_db)
    return site


def test_status_shows_the_known_history_from_the_stats_views(history: Site) -> None:
    result = history.run("status", "--json")
    assert result.returncode == 0, result.stderr
    views_history.check(json.loads(result.stdout))
    assert "WARNING" not in result.stderr


def test_tokens_list_filters(history: Site) -> None:
    assert views_history.listed_ids(history, "--state", "error") == ["e1", "e2", "e3", "e4"]
    assert views_history.listed_ids(history, "--reason", "timeout") == ["e3"]
    assert views_history.listed_ids(history, "--host", "node-bad") == ["e1", "e2", "e3", "r1", "r2"]
    assert views_history.listed_ids(history, "--state", "locked", "--limit", "2") == ["l1", "l2"]
    assert len(views_history.listed_ids(history)) == 23  # design documents are not tokens


def test_tokens_export_round_trips_fields_attempts_and_tails(
    history: Site, pouchdb: PouchDBServer, couch_db: str
) -> None:
    result = history.run("tokens", "export", "--jsonl", "all.jsonl")
    assert result.returncode == 0, result.stderr
    exported = {line["id"]: line for line in map(json.loads, (history.folder / "all.jsonl").open())}
    docs = pouchdb.docs(couch_db)
    assert sorted(exported) == sorted(docs)
    for token_id, doc in docs.items():
        line = exported[token_id]
        assert line["fields"] == {"input": token_id}
        stored = doc.get("pilot", {}).get("attempts", [])
        assert [{k: a[k] for k in s} for a, s in zip(line["attempts"], stored)] == stored
        assert len(line["attempts"]) == len(stored)
        for suffix in ("out", "err"):
            name = f"logs_{token_id}.{suffix}"
            answer = pouchdb.request("GET", f"/{couch_db}/{token_id}?attachments=true")
            attached = answer.body.get("_attachments", {}).get(name)
            expected = base64.b64decode(attached["data"]).decode() if attached else ""
            assert line[f"std{suffix}_tail"] == expected
    assert exported["e1"]["stdout_tail"] == "out of exit code 3\n"
    assert exported["e1"]["attempts"][0]["ended_iso"].endswith("Z")


def test_tokens_delete_by_id_and_state(history: Site, pouchdb: PouchDBServer, couch_db: str) -> None:
    result = history.run("tokens", "delete", "d1", "d2", "--yes")
    assert result.returncode == 0 and "deleted 2 tokens" in result.stdout, result.stderr
    result = history.run("tokens", "delete", "--state", "error", "--yes")
    assert result.returncode == 0 and "deleted 4 tokens" in result.stdout, result.stderr
    missing = history.run("tokens", "delete", "d3", "nope", "--yes")
    assert missing.returncode == 3 and "token 'nope'" in missing.stderr
    assert "d1" not in pouchdb.docs(couch_db) and "d3" in pouchdb.docs(couch_db)
    shown = history.status()
    assert (shown["done"], shown["error"], shown["total"]) == (7, 0, 17)


def test_a_database_made_before_the_views_gets_them_or_is_read_without(
    site: Site, pouchdb_auth: PouchDBServer, member_db: str
) -> None:
    """The layout `init` wrote before pilot-stats existed: Monitor and our two indexes, nothing else."""
    site.write(couch_config(site.folder, pouchdb_auth, member_db, ["/bin/true"], user=ADMIN))
    assert site.run("init").returncode == 0
    stats = pouchdb_auth.request("GET", f"/{member_db}/_design/{STATS_DESIGN}").body
    assert (
        pouchdb_auth.request("DELETE", f"/{member_db}/_design/{STATS_DESIGN}?rev={stats['_rev']}").status
        == 200
    )
    sizes = pouchdb_auth.request("GET", f"/{member_db}/_design/{SIZES_DESIGN}").body
    assert (
        pouchdb_auth.request("DELETE", f"/{member_db}/_design/{SIZES_DESIGN}?rev={sizes['_rev']}").status
        == 200
    )
    couch_history(pouchdb_auth, member_db, MEMBER)
    site.write(couch_config(site.folder, pouchdb_auth, member_db, ["/bin/true"], user=MEMBER))
    member = site.run("status", "--json")  # may not add design documents: reads every token instead
    assert member.returncode == 0, member.stderr
    assert "no design document pilot-stats" in member.stderr and "pilot.pyz init" in member.stderr
    assert "no design document pilot-sizes" in member.stderr
    views_history.check(json.loads(member.stdout))
    assert json.loads(member.stdout)["todo_sizes"] is None  # not known, rather than every token read
    site.write(couch_config(site.folder, pouchdb_auth, member_db, ["/bin/true"], user=ADMIN))
    admin = site.run("status", "--json")  # adds them in place
    assert admin.returncode == 0 and "WARNING" not in admin.stderr, admin.stderr
    views_history.check(json.loads(admin.stdout))
    assert json.loads(admin.stdout)["todo_sizes"] == []
    for design in (STATS_DESIGN, SIZES_DESIGN):
        assert pouchdb_auth.request("GET", f"/{member_db}/_design/{design}").status == 200


def test_status_counts_the_todo_tokens_that_ask_for_a_size_from_the_sizes_view(
    site: Site, pouchdb: PouchDBServer, couch_db: str
) -> None:
    site.write(couch_config(site.folder, pouchdb, couch_db, ["/bin/true"]))
    assert site.run("init").returncode == 0
    views_sizes.add_sized(site)
    views_sizes.check_status(site)


def test_report_reads_every_attempt_of_the_pool(history: Site) -> None:
    result = history.run("report", "--html", "run.html", "--json", "run.json")
    assert result.returncode == 0, result.stderr
    data = json.loads((history.folder / "run.json").read_text())
    assert data["outcomes"] == views_history.OUTCOMES
    assert data["failures_by_host"] == views_history.FAILURES_BY_HOST
    summary = data["summary"]
    assert (summary["tokens"], summary["attempts"], summary["hosts"]) == (23, 19, 3)
    assert {k: summary[k] for k in ("todo", "locked", "done", "error")} == {
        "todo": 7,
        "locked": 3,
        "done": 9,
        "error": 4,
    }
    assert summary["median_duration"] == 40.0
    assert 'data-outcome="node-unhealthy" data-count="1"' in (history.folder / "run.html").read_text()


@pytest.fixture
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PouchDBServer]:
    """A server of this test's own that logs every request (method, path and query)."""
    server = PouchDBServer(
        tmp_path_factory.mktemp("pouchdb-logged"), auth=False, in_memory=True, log_requests=True
    )
    yield server.start()
    server.stop()


def mark(server: PouchDBServer, database: str) -> int:
    """The log's length once every request made so far is in it (it is written after each answer)."""
    name = f"mark-{time.monotonic_ns()}"
    server.request("GET", f"/{database}/{name}")
    log = server.folder / "requests.log"
    lines = wait_for(lambda: (found := log.read_text().splitlines()) and name in found[-1] and found, 30)
    return len(lines)


def requests_of(server: PouchDBServer, database: str, after: int) -> list[str]:
    """``METHOD /path?query`` of each request for ``database`` logged after the first ``after`` lines."""
    lines = (server.folder / "requests.log").read_text().splitlines()[after:]
    found = [re.search(rf" - - ([A-Z]+) (/{database}[^ ]*) \d+$", line) for line in lines]
    return [f"{match.group(1)} {match.group(2)}" for match in found if match]


def test_status_and_watch_count_from_views_and_read_no_more_than_the_recent_sample(
    site: Site, logged: PouchDBServer
) -> None:
    """The counts come from views' reduce, never from every document; only the recent sample (at most
    stats.SAMPLE tokens, newest first) is read with its documents."""
    database = logged.create_database()
    site.write(couch_config(site.folder, logged, database, ["/bin/true"]))
    assert site.run("init").returncode == 0
    couch_history(logged, database)
    before = mark(logged, database)
    for argv in (("status", "--json"), ("watch", "--count", "1")):
        result = site.run(*argv)
        assert result.returncode == 0, result.stderr
    assert " done 9 error 4 locked 3 todo 7 total 23 | 0.8 done/min (5m) | eta 8m20s" in result.stdout
    assert "running 3: node-a 2, node-b 1" in result.stdout  # the watch's plain line, on CouchDB
    asked = requests_of(logged, database, before)
    assert any("/_design/Monitor/_view/overview_total?" in line for line in asked), asked
    assert not [line for line in asked if "_all_docs" in line or "_find" in line or "_changes" in line]
    assert not [line for line in asked if not line.startswith("GET ")], asked  # it only looks
    with_docs = [line for line in asked if "include_docs=true" in line]
    assert with_docs and all("/_design/pilot-stats/_view/activity?" in line for line in with_docs), with_docs
    assert all(f"limit={stats.SAMPLE}" in line for line in with_docs), with_docs
