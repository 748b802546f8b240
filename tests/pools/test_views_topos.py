"""The views through pilot.pyz on the real ToPoS 4.1: status, tokens list, export, show, delete, watch and the
report of a pool with a known history. ToPoS keeps no states: a token is in the pool (todo, or locked), moved
to the error pool beside its result, or only its result in the done pool. The history is made through the
Pool interface (real claims and reports, an injected clock for the attempts' times); what the server holds is
read back with plain HTTP, never through the code under test."""

from __future__ import annotations

import json
import time
from typing import Optional

import pytest
from conftest import Site
from servers.topos import ToposServer

from agent.config import Secret, ServerConfig
from agent.config import ToposServer as ToposSettings
from agent.identity import Identity
from agent.pools import NewToken
from agent.pools.topos import ToposPool
from agent.token import Outcome, Result, make_report
from pools.conftest import topos_config

pytestmark = pytest.mark.topos

MAX_ATTEMPTS = 2


class History:
    """Tokens A to F (ToPoS numbers them; the names are their `input`), made relative to ``now``:

    A done on node-a; B failed on node-bad, then done on node-a; C failed twice on node-bad (error);
    D failed once on node-bad (todo, its attempt kept); E running on node-b (locked); F untouched (todo).
    """

    def __init__(self, server: ToposServer, pool: str, now: float) -> None:
        self.server = server
        self.pool = pool
        self.clock = now - 3000
        self.ids: dict[str, str] = {}
        self._make(now)

    def _open(self, host: str) -> ToposPool:
        pool, url = self.pool, self.server.url
        settings = ToposSettings(url, pool, f"{pool}.done", f"{pool}.error", None, Secret(""), None, True)
        config = ServerConfig(backend="topos", lease=3600.0, max_outage=60.0, timeout=10.0, topos=settings)
        return ToposPool(config, Identity(f"pilot-{host}", host, None), clock=lambda: self.clock)

    def _add(self, name: str) -> None:
        with self._open("admin") as pool:
            assert pool.add([NewToken(name, {"input": name})]) == 1

    def _run(self, name: str, host: str, ended: float, took: float, code: Optional[int]) -> None:
        """One claim on ``host`` that must get token ``name``, reported ``took`` seconds long (or left
        running when ``code`` is None)."""
        with self._open(host) as pool:
            self.clock = ended - took - 1
            (lease,) = pool.claim(1)
            assert lease.token.fields["input"] == name
            self.ids[name] = lease.token.id
            if code is None:
                return  # left locked: closing the pool releases only tokens it never read
            outcome = Outcome.DONE if code == 0 else Outcome.FAILED
            tails = (f"out of {name}\n".encode(), f"err of {name}\n".encode())
            result = Result(outcome, f"exit code {code}", ended - took, ended, code, None, *tails)
            self.clock = ended
            pool.report(lease, make_report(lease.token, result, MAX_ATTEMPTS))

    def _make(self, now: float) -> None:
        self._add("A")
        self._run("A", "node-a", now - 600, 10, 0)
        self._add("B")
        self._run("B", "node-bad", now - 500, 5, 3)
        self._run("B", "node-a", now - 400, 20, 0)
        self._add("C")
        self._run("C", "node-bad", now - 300, 2, 3)
        self._run("C", "node-bad", now - 200, 2, 3)
        self._add("D")
        self._run("D", "node-bad", now - 100, 3, 3)
        self._add("E")  # the only token handed out less often than D: the next claim takes it
        self._run("E", "node-b", now - 50, 0, None)
        self._add("F")

    def order(self, *names: str) -> list[str]:
        return [self.ids.get(name) or self.untouched() for name in names]

    def untouched(self) -> str:
        (row,) = [row for row in self.server.listing(self.pool) if row["Name"] not in self.ids.values()]
        return str(row["Name"])


@pytest.fixture
def history(site: Site, topos: ToposServer) -> tuple[Site, History]:
    pool = topos.new_pool()
    site.write(topos_config(site.folder, topos, pool, ["/bin/true"], task={"max_attempts": MAX_ATTEMPTS}))
    return site, History(topos, pool, time.time())


def listed(site: Site, *args: str) -> list[dict]:
    result = site.run("tokens", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def ids(site: Site, *args: str) -> list[str]:
    return [line["id"] for line in listed(site, *args)]


def documents(server: ToposServer, pool: str) -> dict[str, dict]:
    """The JSON tokens of a pool (results, attempt records) by the token they are of, read with HTTP."""
    found = {}
    for row in server.listing(pool):
        if row["Content-Type"].startswith("application/json"):
            document = json.loads(server.token(pool, int(row["Name"])).body)
            if document.get("type") in ("pilot-result", "pilot-attempt"):  # not a JSON token moved there
                found[document["token"]] = document
    return found


def test_status_and_watch_show_the_counts_running_hosts_rates_and_reasons(
    history: tuple[Site, History],
) -> None:
    site, made = history
    result = site.run("status", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert {k: shown[k] for k in ("todo", "locked", "done", "error", "total")} == {
        "todo": 2,
        "locked": 1,
        "done": 2,
        "error": 1,
        "total": 6,
    }
    assert shown["running"] == {"total": 1, "hosts": {"node-b": 1}}
    assert (shown["rate"]["done_5m"], shown["rate"]["error_5m"]) == (2, 1)  # ToPoS's times: written just now
    assert shown["failure_reasons"] == [{"reason": "exit code 3", "count": 1, "example": made.ids["C"]}]
    assert shown["duration"] == {"median": 15.0, "p90": 20.0, "sample": 2}
    assert shown["failure_hosts"] == [{"host": "node-bad", "failures": 3, "attempts": 3}]
    assert shown["todo_sizes"] is None  # ToPoS would have to read every token: not known
    watch = site.run("watch", "--count", "1")
    assert watch.returncode == 0, watch.stderr
    assert " done 2 error 1 locked 1 todo 2 total 6 | " in watch.stdout
    assert "running 1: node-b 1" in watch.stdout


def test_tokens_list_walks_the_pool_the_error_pool_and_the_done_pool_with_filters(
    history: tuple[Site, History],
) -> None:
    site, made = history
    everything = listed(site)
    assert [line["id"] for line in everything] == made.order("D", "E", "F", "C", "A", "B")
    summary = {made.order(name)[0]: name for name in "ABCDEF"}
    shown = {
        summary[line["id"]]: (line["state"], line["attempts"], line["host"], line["exit_code"])
        for line in everything
    }
    assert shown == {
        "A": ("done", 1, "node-a", 0),
        "B": ("done", 2, "node-a", 0),
        "C": ("error", 2, "node-bad", 3),
        "D": ("todo", 1, "node-bad", 3),
        "E": ("locked", 0, None, None),  # ToPoS does not record when a lock was taken
        "F": ("todo", 0, None, None),
    }
    assert ids(site, "--state", "error") == made.order("C")
    assert ids(site, "--state", "todo") == made.order("D", "F")
    assert ids(site, "--state", "locked") == made.order("E")
    assert ids(site, "--host", "node-bad") == made.order("D", "C")
    assert ids(site, "--reason", "EXIT CODE 3") == made.order("D", "C")
    assert ids(site, "--state", "done", "--limit", "1") == made.order("A")
    with made._open("admin") as pool:  # Pool.page, the interface's own form: the same order, in pages
        cursor, paged = None, []
        while True:
            page, cursor = pool.page(None, cursor, 4)
            paged.append([item.token.id for item in page])
            if cursor is None:
                break
    assert paged == [made.order("D", "E", "F", "C"), made.order("A", "B")]
    table = site.run("tokens", "list", "--state", "done").stdout.splitlines()
    assert [row.split()[:4] for row in table[1:]] == [
        [made.ids["A"], "done", "1", "node-a"],
        [made.ids["B"], "done", "2", "node-a"],
    ]


def test_export_round_trips_what_the_results_and_attempt_records_hold(history: tuple[Site, History]) -> None:
    site, made = history
    result = site.run("tokens", "export", "--jsonl", "all.jsonl")
    assert result.returncode == 0, result.stderr
    exported = {line["id"]: line for line in map(json.loads, (site.folder / "all.jsonl").open())}
    assert sorted(exported) == sorted(made.order(*"ABCDEF"))
    results = {**documents(made.server, f"{made.pool}.done"), **documents(made.server, f"{made.pool}.error")}
    records = documents(made.server, f"{made.pool}.attempts")
    for name in "ABC":
        line, stored = exported[made.ids[name]], results[made.ids[name]]
        assert line["fields"] == {"input": name}
        assert [{k: a[k] for k in s} for a, s in zip(line["attempts"], stored["attempts"])] == stored[
            "attempts"
        ]
        assert len(line["attempts"]) == len(stored["attempts"])
        assert (line["stdout_tail"], line["stderr_tail"]) == (f"out of {name}\n", f"err of {name}\n")
        assert line["failures"] == stored["failures"]
        assert all(a["ended_iso"].endswith("Z") for a in line["attempts"])
    d = exported[made.ids["D"]]
    assert [{k: a[k] for k in records[made.ids["D"]]["attempt"]} for a in d["attempts"]] == [
        records[made.ids["D"]]["attempt"]
    ]
    assert (d["state"], d["failures"], d["stdout_tail"]) == ("todo", 1, "out of D\n")
    f = exported[made.untouched()]
    assert (f["fields"], f["attempts"], f["state"]) == ({"input": "F"}, [], "todo")
    assert (f["stdout_tail"], f["stderr_tail"]) == ("", "")  # never ran: empty tails, as the other pools
    shown = site.token(made.ids["D"])  # tokens show: the kept attempt too
    assert [a["outcome"] for a in shown["attempts"]] == ["failed"] and shown["attempts"][0]["claimed_iso"]


def test_report_counts_every_attempt_the_pool_holds(history: tuple[Site, History]) -> None:
    site, _ = history
    result = site.run("report", "--html", "run.html", "--json", "run.json")
    assert result.returncode == 0, result.stderr
    data = json.loads((site.folder / "run.json").read_text())
    summary = data["summary"]
    assert (summary["tokens"], summary["attempts"], summary["hosts"]) == (6, 6, 2)
    assert [summary[k] for k in ("todo", "locked", "done", "error")] == [2, 1, 2, 1]  # as status counts
    assert data["outcomes"] == {"failed": 4, "done": 2}
    assert data["failures_by_host"] == [{"host": "node-bad", "count": 4}]
    page = (site.folder / "run.html").read_text()
    assert page.count('<rect class="bar"') == 6
    assert 'data-outcome="failed" data-count="4"' in page


def test_delete_by_id_and_by_state_removes_tokens_results_and_records(history: tuple[Site, History]) -> None:
    site, made = history
    missing = site.run("tokens", "delete", made.ids["A"], "99999999", "--yes")
    assert missing.returncode == 3 and "token '99999999'" in missing.stderr, missing.stderr
    assert made.ids["A"] in documents(made.server, f"{made.pool}.done")  # nothing was deleted
    deleted = site.run("tokens", "delete", made.ids["A"], made.ids["C"], "--yes")
    assert deleted.returncode == 0 and "deleted 2 tokens" in deleted.stdout, deleted.stderr
    assert sorted(documents(made.server, f"{made.pool}.done")) == [made.ids["B"]]
    assert made.server.listing(f"{made.pool}.error") == []  # the moved token and its result
    by_state = site.run("tokens", "delete", "--state", "todo", "--yes")
    assert by_state.returncode == 0 and "deleted 2 tokens" in by_state.stdout, by_state.stderr
    assert made.server.token_ids(f"{made.pool}.attempts") == []  # D's kept attempt went with it
    assert [str(i) for i in made.server.token_ids(made.pool)] == [made.ids["E"]]
    assert site.status() == {"todo": 0, "locked": 1, "done": 1, "error": 0, "waiting": 0, "total": 2}
