"""The views through pilot.pyz on a CouchDB pool (pouchdb-server): status on a known history read from our
pilot-stats views, tokens list, export with the tails from the attachments, delete, and a database made
before the views (without pilot-stats), by an admin and by a member who may not add design documents."""

from __future__ import annotations

import base64
import json
import time
from typing import Optional

import pytest
import views_history
from conftest import Site
from servers.pouchdb import ADMIN, MEMBER, PouchDBServer

from agent.config import CouchDBServer, Secret, ServerConfig
from agent.identity import Identity
from agent.pools.couchdb import CouchDBPool
from agent.pools.picas import STATS_DESIGN

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
    couch_history(pouchdb_auth, member_db, MEMBER)
    site.write(couch_config(site.folder, pouchdb_auth, member_db, ["/bin/true"], user=MEMBER))
    member = site.run("status", "--json")  # may not add design documents: reads every token instead
    assert member.returncode == 0, member.stderr
    assert "no design document pilot-stats" in member.stderr and "pilot.pyz init" in member.stderr
    views_history.check(json.loads(member.stdout))
    site.write(couch_config(site.folder, pouchdb_auth, member_db, ["/bin/true"], user=ADMIN))
    admin = site.run("status", "--json")  # adds them in place
    assert admin.returncode == 0 and "WARNING" not in admin.stderr, admin.stderr
    views_history.check(json.loads(admin.stdout))
    assert pouchdb_auth.request("GET", f"/{member_db}/_design/{STATS_DESIGN}").status == 200


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
