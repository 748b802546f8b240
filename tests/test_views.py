"""The views through pilot.pyz on the local pool: status on a known history, tokens list, export, delete,
and an older pool file (without the views' index) migrated in place."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import views_history
import views_sizes
from conftest import Site, local_config

from agent.identity import Identity
from agent.pools.local import SCHEMA_VERSION, LocalPool


def local_history(site: Site) -> Path:
    site.write(local_config(site.folder, ["/bin/true"]))
    path = site.folder / "pool.db"

    def make_pool(host: str, clock: views_history.Clock) -> LocalPool:
        return LocalPool(path, Identity(f"pilot-{host}", host, None), 3600, create=True, clock=clock)

    views_history.build(make_pool, time.time())
    return path


@pytest.fixture
def history(site: Site) -> Site:
    local_history(site)
    return site


def test_status_shows_rates_eta_durations_reasons_and_hosts_of_a_known_history(history: Site) -> None:
    result = history.run("status", "--json")
    assert result.returncode == 0, result.stderr
    views_history.check(json.loads(result.stdout))
    text = history.run("status").stdout
    assert text.startswith("todo           7\nlocked         3\ndone           9\nerror          4\n")
    assert "running   3 (node-a 2, node-b 1)" in text
    assert "done/min  0.80 over the last 5m, 0.12 over the last 60m" in text
    assert "eta       8m20s" in text
    assert "3  exit code 3  (e.g. e1)" in text
    assert "6  node-bad (6 of its 6 recent attempts failed)" in text
    assert "todo size" not in text and json.loads(history.run("status", "--json").stdout)["todo_sizes"] == []


def answering(site: Site, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``pilot.pyz <args>`` with ``answer`` typed at its prompt."""
    return subprocess.run(
        [*site.argv(*args), "--config", str(site.config)],
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
        env=site.env,
        check=False,
    )


def test_status_counts_the_todo_tokens_that_ask_for_a_size_of_their_own(site: Site) -> None:
    site.write(local_config(site.folder, ["/bin/true"]))
    views_sizes.add_sized(site)
    views_sizes.check_status(site)


def test_tokens_list_filters_by_state_reason_host_and_limit(history: Site) -> None:
    assert views_history.listed_ids(history, "--state", "error") == ["e1", "e2", "e3", "e4"]
    assert views_history.listed_ids(history, "--reason", "TIMEOUT") == ["e3"]
    assert views_history.listed_ids(history, "--host", "node-bad") == ["e1", "e2", "e3", "r1", "r2"]
    assert views_history.listed_ids(history, "--host", "node-bad", "--state", "todo") == ["r1", "r2"]
    assert views_history.listed_ids(history, "--state", "done", "--limit", "2") == ["d1", "d2"]
    (line,) = history.run("tokens", "list", "--json", "--reason", "timeout").stdout.splitlines()
    assert json.loads(line) == {
        **json.loads(line),
        "state": "error",
        "attempts": 1,
        "host": "node-bad",
        "duration": 60.0,
        "exit_code": None,
        "outcome": "timeout",
    }
    table = history.run("tokens", "list", "--state", "locked").stdout.splitlines()
    assert table[0].split()[:3] == ["id", "state", "attempts"]
    assert [row.split()[:4] for row in table[1:]] == [
        [f"l{i}", "locked", "1", h] for i, h in ((1, "node-a"), (2, "node-a"), (3, "node-b"))
    ]
    bad = history.run("tokens", "list", "--state", "finished")
    assert bad.returncode == 2 and "--state 'finished': not a state" in bad.stderr


def test_tokens_export_round_trips_every_field_attempt_and_tail(history: Site) -> None:
    path = history.folder / "pool.db"
    with sqlite3.connect(path) as db:  # one tail that is not UTF-8, as a task may write
        db.execute("UPDATE tokens SET stdout_tail = ? WHERE id = 'e1'", (b"\xff\xfebinary\n",))
    result = history.run("tokens", "export", "--jsonl", "all.jsonl")
    assert result.returncode == 0, result.stderr
    exported = [json.loads(line) for line in (history.folder / "all.jsonl").read_text().splitlines()]
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT id, state, fields, attempts, failures, stdout_tail, stderr_tail FROM tokens ORDER BY seq"
        ).fetchall()
    assert [line["id"] for line in exported] == [row[0] for row in rows]
    for line, (_, state, fields, attempts, failures, out, err) in zip(exported, rows):
        assert (line["state"], line["fields"], line["failures"]) == (state, json.loads(fields), failures)
        stored = json.loads(attempts)
        assert [{k: a[k] for k in stored_a} for a, stored_a in zip(line["attempts"], stored)] == stored
        for attempt in line["attempts"]:
            for name in ("claimed", "started", "ended"):
                if attempt[name] is not None:
                    assert (
                        attempt[f"{name}_iso"]
                        == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(attempt[name]))
                        + f".{int(attempt[name] * 1000) % 1000:03d}Z"
                    )
        tail = (
            base64.b64decode(line["stdout_tail_base64"])
            if "stdout_tail_base64" in line
            else line["stdout_tail"].encode()
        )
        assert (tail, line["stderr_tail"].encode()) == (out or b"", err or b"")
    assert exported[[line["id"] for line in exported].index("e1")]["stdout_tail_base64"]
    shown = history.token("d9")  # tokens show: the same attempts, times in ISO 8601 beside epoch seconds
    d9 = exported[[line["id"] for line in exported].index("d9")]
    assert shown["attempts"] == d9["attempts"] and len(shown["attempts"]) == 2
    errors = history.run("tokens", "export", "--jsonl", "-", "--state", "error")
    assert [json.loads(line)["id"] for line in errors.stdout.splitlines()] == ["e1", "e2", "e3", "e4"]


def test_tokens_delete_by_id_and_by_state_asks_first(history: Site) -> None:
    declined = answering(history, "n\n", "tokens", "delete", "--state", "error")
    assert declined.returncode == 0 and "delete all 4 error tokens" in declined.stdout
    assert "nothing deleted" in declined.stdout and history.status()["error"] == 4
    accepted = answering(history, "y\n", "tokens", "delete", "--state", "error")
    assert accepted.returncode == 0 and "deleted 4 tokens" in accepted.stdout
    assert history.status()["error"] == 0
    missing = history.run("tokens", "delete", "d1", "nope", "--yes")
    assert missing.returncode == 3 and "token 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr
    running = history.run("tokens", "delete", "d1", "l1", "--yes")
    assert running.returncode == 0 and "deleted 2 tokens" in running.stdout
    assert "1 of them running now" in running.stdout
    assert views_history.listed_ids(history, "--state", "done")[:1] == ["d2"]
    assert history.status()["locked"] == 2
    both = history.run("tokens", "delete", "d2", "--state", "done", "--yes")
    assert both.returncode == 2 and "not both" in both.stderr


V1_SCHEMA = """
CREATE TABLE tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('todo', 'locked', 'done', 'error')),
    fields TEXT NOT NULL,
    attempts TEXT NOT NULL DEFAULT '[]',
    failures INTEGER NOT NULL DEFAULT 0,
    lease_id TEXT,
    lease_expires REAL,
    exit_code INTEGER,
    reason TEXT,
    stdout_tail BLOB,
    stderr_tail BLOB,
    updated REAL
);
CREATE INDEX tokens_state ON tokens (state, seq);
PRAGMA user_version = 1;
"""


def test_a_pool_made_before_the_views_gets_their_index_in_place(site: Site) -> None:
    """The layout pilot.pyz wrote before the views (schema 1, one index), with a finished token in it."""
    site.write(local_config(site.folder, ["/bin/true"]))
    path = site.folder / "pool.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        attempt = {
            "pilot": "p",
            "host": "old-node",
            "batch_job": None,
            "claimed": time.time() - 70,
            "started": time.time() - 65,
            "ended": time.time() - 60,
            "exit_code": 0,
            "signal": None,
            "outcome": "done",
            "reason": "exit code 0",
        }
        db.execute(
            "INSERT INTO tokens (id, state, fields, attempts, exit_code, reason, updated) "
            "VALUES ('old-1', 'done', '{}', ?, 0, 'exit code 0', ?)",
            (json.dumps([attempt]), attempt["ended"]),
        )
        db.execute("INSERT INTO tokens (id, state, fields, updated) VALUES ('old-2', 'todo', '{}', 0)")
        db.execute(
            "INSERT INTO tokens (id, state, fields, updated) VALUES ('old-3', 'todo', '{\"cores\": 1}', 0)"
        )
    shown = json.loads(site.run("status", "--json").stdout)
    assert (shown["done"], shown["todo"], shown["rate"]["done_5m"]) == (1, 2, 1)
    assert shown["todo_sizes"] == [{"cores": 1, "gpus": None, "memory": None, "count": 1}]  # columns filled
    assert shown["duration"]["median"] == pytest.approx(5.0)
    with sqlite3.connect(path) as db:
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        version = db.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION  # migrated in place: the dependencies' schema, the views' indexes
    assert {"tokens_ready", "tokens_updated", "tokens_errors", "tokens_sized"} <= indexes
    ran = site.run()
    assert ran.returncode == 0, ran.stderr
    assert site.status()["done"] == 3


def test_an_old_pool_that_could_not_get_the_request_columns_has_todo_sizes_not_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool file we may not write keeps its old layout (the tests run as root, so the write that a
    read-only file refuses is left out here instead): its status says the sizes are not known."""
    path = tmp_path / "pool.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        db.execute(
            "INSERT INTO tokens (id, state, fields, updated) VALUES ('old-1', 'todo', '{\"cores\": 2}', 0)"
        )
    monkeypatch.setattr(LocalPool, "_add_needs", lambda self, db: None)
    monkeypatch.setattr(LocalPool, "_add_view_indexes", lambda self, db: None)
    pool = LocalPool(path, Identity("p", "h", None), 3600)
    assert pool.counts().todo == 1
    assert pool.todo_sizes() is None
