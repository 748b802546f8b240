"""Failure handling end to end against pouchdb-server (issue 6), through the built pilot.pyz: retries with
the whole history on the token, interruptions not charged, black-hole nodes, and server outages (tasks go
on, reports wait in the journal, a later pilot on the node sends them, a report whose lease moved on is a
conflict). The local-pool versions of the first ones are in tests/test_failures.py."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import COUNT_RUNS, Site, alive, wait_for
from servers.pouchdb import PouchDBServer

from agent.errors import ExitCode
from pools.conftest import couch_config

pytestmark = pytest.mark.couchdb

# Every run of a task: "start <id>", a pause of the token's `seconds`, "end <id>"; it fails where the
# pilot's environment says the node is broken. One O_APPEND write per line, so lines never mix.
TASK = [
    "/bin/sh",
    "-c",
    'echo "start $PILOT_TOKEN_ID" >> "$RAN"; sleep "$PILOT_TOKEN_SECONDS"; '
    'echo "end $PILOT_TOKEN_ID" >> "$RAN"; test -z "$NODE_BROKEN"',
]
BROKEN = {"NODE_BROKEN": "libfoo.so: cannot open shared object file"}
# How each token fails, by its `mode`: flaky ones twice before they work (counted in files under
# $COUNTS), broken ones always with exit code 3, killed ones by SIGKILL.
RETRIED = [
    "/bin/sh",
    "-c",
    COUNT_RUNS
    + 'case "$PILOT_TOKEN_MODE" in flaky) [ "$n" -ge 2 ];; broken) exit 3;; killed) kill -KILL $$;; esac',
]


def configure(site: Site, couch: PouchDBServer, database: str, **keys: Any) -> Path:
    """Write site.toml (or the file ``site.config`` names) to run TASK on this database, ``keys`` per
    section; returns the log of task runs."""
    ran = site.folder / "ran.log"
    sections = couch_config(site.folder, couch, database, TASK, **keys)
    sections["task"].setdefault("env", {})["RAN"] = str(ran)
    site.write(sections)
    return ran


def setup_pool(
    site: Site, couch: PouchDBServer, database: str, tokens: list[dict[str, Any]], **keys: Any
) -> Path:
    """configure, make the pool, add the tokens; returns the log of task runs."""
    ran = configure(site, couch, database, **keys)
    init = site.run("init")
    assert init.returncode == 0, init.stderr
    site.add_tokens(tokens)
    return ran


def runs(ran: Path, what: str) -> list[str]:
    """The token ids of the "start" or "end" lines of the task log, in order."""
    lines = ran.read_text().splitlines() if ran.exists() else []
    return [line.split()[1] for line in lines if line.split()[0] == what]


def journal(workdir: Path) -> list[dict[str, Any]]:
    """The reports waiting in the journals of a node's workdir, read as plain JSON."""
    return [
        json.loads(line)
        for path in sorted((workdir / "journal").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def log_of(site: Site, name: str) -> str:
    return (site.folder / name).read_text()


def lines_with(text: str, needle: str) -> list[int]:
    """The numbers of the log lines that contain ``needle``."""
    return [number for number, line in enumerate(text.splitlines()) if needle in line]


def journal_sent(text: str) -> int:
    """How many reports the pilot sent from its own journal."""
    return sum(int(n) for n in re.findall(r"sent (\d+) report\(s\) from the journal", text))


def outcomes(token: dict[str, Any]) -> list[str]:
    return [attempt["outcome"] for attempt in token["attempts"]]


# -- retries and history ---------------------------------------------------------------------------


def test_failures_are_retried_up_to_max_attempts_with_every_attempt_on_the_token(
    site: Site, pouchdb: PouchDBServer, couch_db: str
) -> None:
    counts = site.folder / "counts"
    counts.mkdir()
    keys = {
        "task": {"max_attempts": 3, "env": {"COUNTS": str(counts)}},
        "pilot": {"black_hole_failures": 0, "slots": 1},
    }
    site.write(couch_config(site.folder, pouchdb, couch_db, RETRIED, **keys))
    assert site.run("init").returncode == 0
    site.add_tokens([{"id": mode, "mode": mode} for mode in ("flaky", "broken", "killed")])
    result = site.run(env={"LSB_JOBID": "4242"})
    assert result.returncode == 0, result.stderr
    assert "failure 1 of at most 3" in result.stderr
    assert site.status() == {"todo": 0, "locked": 0, "done": 1, "error": 2, "waiting": 0, "total": 3}
    flaky, broken, killed = (site.token(mode) for mode in ("flaky", "broken", "killed"))
    assert (flaky["state"], outcomes(flaky)) == ("done", ["failed", "failed", "done"])
    assert [a["exit_code"] for a in flaky["attempts"]] == [1, 1, 0]
    assert (broken["state"], broken["failures"], outcomes(broken)) == ("error", 3, ["failed"] * 3)
    assert [(a["exit_code"], a["signal"]) for a in broken["attempts"]] == [(3, None)] * 3
    assert (killed["state"], killed["failures"], outcomes(killed)) == ("error", 3, ["failed"] * 3)
    assert [(a["exit_code"], a["signal"]) for a in killed["attempts"]] == [(None, signal.SIGKILL)] * 3
    assert all(a["reason"] == "killed by signal 9 (SIGKILL)" for a in killed["attempts"])
    for attempt in flaky["attempts"] + broken["attempts"] + killed["attempts"]:
        assert attempt["host"] == socket.gethostname()
        assert attempt["pilot"] == flaky["attempts"][0]["pilot"] and attempt["batch_job"] == "lsf:4242"
        assert attempt["claimed"] <= attempt["started"] <= attempt["ended"]
    # What PiCaS shows: the error view, an exit code, one entry in `error` per failure.
    docs = pouchdb.docs(couch_db)
    assert sorted(pouchdb.view_ids(couch_db, "Monitor", "error")) == ["broken", "killed"]
    assert (docs["broken"]["exit_code"], docs["killed"]["exit_code"]) == (3, 128 + signal.SIGKILL)
    assert [entry["message"] for entry in docs["broken"]["error"]] == ["exit code 3"] * 3

    reset = site.run("reset", "--errors")
    assert (reset.returncode, reset.stdout.strip()) == (0, "2 tokens back to todo")
    requeued = site.token("broken")
    assert (requeued["state"], requeued["failures"], len(requeued["attempts"])) == ("todo", 0, 3)
    again = site.run()
    assert again.returncode == 0, again.stderr
    broken = site.token("broken")
    assert (broken["state"], broken["failures"], outcomes(broken)) == ("error", 3, ["failed"] * 6)
    assert site.status()["error"] == 2


def test_an_interrupted_task_is_given_back_uncharged(
    site: Site, pouchdb: PouchDBServer, couch_db: str, reaper: list
) -> None:
    ran = setup_pool(
        site, pouchdb, couch_db, [{"id": "long", "seconds": 60}], task={"max_attempts": 1}, pilot={"slots": 1}
    )
    pilot = site.start(log_name="pilot.log")
    reaper.append(pilot)
    wait_for(lambda: runs(ran, "start"), 60, what="the task to start")
    pilot.send_signal(signal.SIGTERM)
    assert pilot.wait(timeout=30) == ExitCode.TERMINATED, log_of(site, "pilot.log")[-2000:]
    token = site.token("long")
    assert (token["state"], token["failures"], outcomes(token)) == ("todo", 0, ["interrupted"])
    assert "SIGTERM" in token["attempts"][0]["reason"]
    doc = pouchdb.docs(couch_db)["long"]
    assert (doc["lock"], doc["done"], doc["scrub_count"], doc["error"]) == (0, 0, 1, [])
    assert runs(ran, "end") == []  # killed with the pilot, not left running


# -- black holes -----------------------------------------------------------------------------------


def test_a_black_hole_node_stops_after_k_failures_and_burns_no_token(
    site: Site, pouchdb: PouchDBServer, couch_db: str
) -> None:
    tokens = [{"id": f"t{i:02d}", "seconds": 0} for i in range(20)]
    setup_pool(site, pouchdb, couch_db, tokens, pilot={"black_hole_failures": 3, "slots": 2})
    result = site.run(env=BROKEN)
    assert result.returncode == ExitCode.BLACK_HOLE, result.stderr
    assert "black hole: 3 different tokens failed in a row" in result.stderr
    assert site.status()["todo"] == 20
    docs = pouchdb.docs(couch_db)
    tried = [token_id for token_id, doc in docs.items() if "pilot" in doc]  # the rest were never claimed
    assert 3 <= len(tried) <= 4  # the streak, plus one that was running in the other slot
    for token_id in tried:
        assert (docs[token_id]["pilot"]["failures"], docs[token_id]["error"]) == (0, []), token_id
    for token_id in tried:
        (attempt,) = site.token(token_id)["attempts"]
        assert attempt["outcome"] == "node-unhealthy", attempt
        assert "black hole" in attempt["reason"] and "exit code 1" in attempt["reason"], attempt
    # The tokens are as good as new: a working node does them all.
    healthy = site.run()
    assert healthy.returncode == 0, healthy.stderr
    assert site.status()["done"] == 20


def test_a_working_node_with_some_failing_tasks_does_not_trip(
    site: Site, pouchdb: PouchDBServer, couch_db: str
) -> None:
    """Every third task fails, more than K in all but never K in a row: the node works, the tokens are
    bad. (Which token fails is decided by the order of execution, as claims come in random order.)"""
    counts = site.folder / "counts"
    counts.mkdir()
    command = ["/bin/sh", "-c", 'n=$(ls "$COUNTS" | wc -l); touch "$COUNTS/$n"; [ $((n % 3)) -ne 0 ]']
    keys = {"task": {"env": {"COUNTS": str(counts)}}, "pilot": {"black_hole_failures": 3, "slots": 1}}
    site.write(couch_config(site.folder, pouchdb, couch_db, command, **keys))
    assert site.run("init").returncode == 0
    assert site.run("tokens", "add", "--range", "12").returncode == 0
    result = site.run()
    assert result.returncode == 0, result.stderr
    assert "black hole" not in result.stderr
    assert site.status() == {"todo": 0, "locked": 0, "done": 8, "error": 4, "waiting": 0, "total": 12}
    for doc in pouchdb.docs(couch_db).values():
        expected = ["failed"] if doc["exit_code"] else ["done"]
        assert [a["outcome"] for a in doc["pilot"]["attempts"]] == expected, doc["_id"]


def test_tokens_that_failed_on_a_working_node_are_charged_not_blamed_on_the_next_node(
    site: Site, pouchdb: PouchDBServer, couch_db: str
) -> None:
    """The end of a pool: the tokens left are the bad ones, each already failed (and charged) where other
    tasks worked. A node that fails three of them in a row is not a black hole: they must go on to
    error, not be given back uncharged forever by one pilot after another."""
    tokens = [{"id": f"bad{i}", "seconds": 0} for i in range(5)]
    keys = {"task": {"max_attempts": 20}, "pilot": {"slots": 1, "max_tasks": 1, "black_hole_failures": 0}}
    setup_pool(site, pouchdb, couch_db, tokens, **keys)

    def failures() -> list[int]:
        return [doc.get("pilot", {}).get("failures", 0) for doc in pouchdb.docs(couch_db).values()]

    for _ in range(50):  # until every token failed once, charged: no breaker on this node
        if 0 not in failures():
            break
        assert site.run(env=BROKEN).returncode == 0
    else:
        pytest.fail(f"50 runs of one task each left tokens without a failure: {failures()}")
    configure(site, pouchdb, couch_db, task={"max_attempts": 20}, pilot={"black_hole_failures": 3})
    result = site.run(env=BROKEN)
    assert result.returncode == 0, result.stderr
    assert "black hole" not in result.stderr
    assert site.status() == {"todo": 0, "locked": 0, "done": 0, "error": 5, "waiting": 0, "total": 5}


def test_a_failure_held_by_the_breaker_keeps_its_lease(
    site: Site, pouchdb: PouchDBServer, couch_db: str, reaper: list
) -> None:
    """A failure is held back (its lease kept) until a success or the end shows whose fault it was. A
    pilot with nothing else to run still holds it: its lease must not run out and go to another pilot."""
    keys = {"server": {"lease": "3s"}, "pilot": {"slots": 1, "idle_timeout": "60s", "black_hole_failures": 3}}
    ran = setup_pool(site, pouchdb, couch_db, [{"id": "long", "seconds": 15}], **keys)
    holder = site.start(log_name="holder.log")
    reaper.append(holder)
    wait_for(lambda: runs(ran, "start"), 60, what="the long task to start")
    site.add_tokens([{"id": "bad", "seconds": 0}])
    failing = site.start(env=BROKEN, log_name="failing.log")
    reaper.append(failing)
    wait_for(lambda: "bad" in runs(ran, "end"), 60, what="the bad token to fail")
    time.sleep(6)  # two leases: held without renewal, the lease would have run out by now
    late = replace(site, config=site.folder / "late.toml")  # a pilot that takes what it can, then ends
    configure(late, pouchdb, couch_db, pilot={"idle_timeout": "0s"})
    result = late.run()
    assert result.returncode == 0, result.stderr
    assert failing.wait(timeout=120) == 0, log_of(site, "failing.log")[-3000:]
    assert holder.wait(timeout=120) == 0, log_of(site, "holder.log")[-3000:]
    text = log_of(site, "failing.log")
    assert "conflict" not in text
    # Its own held token is not "locked by other pilots": it ended once the holder's token was done.
    assert "pilot ends (exit 0): pool empty: nothing left to claim" in text, text[-3000:]
    bad = site.token("bad")
    assert (outcomes(bad), bad["state"], bad["failures"]) == (["failed"], "error", 1), bad
    assert runs(ran, "start").count("bad") == 1


# -- server outages --------------------------------------------------------------------------------


def stop_the_server_under_two_tasks(
    site: Site, server: PouchDBServer, reaper: list, max_outage: str, log_name: str
) -> tuple[subprocess.Popen[str], Path]:
    """A pilot with two slots on four tokens of three seconds; the server stops once two tasks run.
    Returns the pilot and the log of task runs."""
    tokens = [{"id": f"t{i}", "seconds": 3} for i in range(4)]
    keys = {"server": {"timeout": "1s", "max_outage": max_outage}, "pilot": {"slots": 2}}
    ran = setup_pool(site, server, server.create_database(), tokens, **keys)
    pilot = site.start(log_name=log_name)
    reaper.append(pilot)
    wait_for(lambda: len(runs(ran, "start")) == 2, 60, what="two tasks to start")
    server.stop()
    return pilot, ran


def test_a_server_outage_while_tasks_run_keeps_them_running_and_replays_their_reports(
    site: Site, own_server: PouchDBServer, reaper: list
) -> None:
    pilot, ran = stop_the_server_under_two_tasks(site, own_server, reaper, "5m", "pilot.log")
    workdir = site.folder / "work"
    # The tasks finish without the server; their reports wait on disk; nothing new is started.
    waiting = wait_for(
        lambda: len(journal(workdir)) == 2 and journal(workdir), 60, what="two journaled reports"
    )
    assert sorted(runs(ran, "end")) == sorted(runs(ran, "start")) == sorted(e["token"]["id"] for e in waiting)
    assert {entry["result"]["outcome"] for entry in waiting} == {"done"}
    assert alive(pilot.pid)
    own_server.start()
    assert pilot.wait(timeout=120) == 0, log_of(site, "pilot.log")[-3000:]
    text = log_of(site, "pilot.log")
    assert "running tasks go on, reports go to the journal, no new claims" in text
    assert journal_sent(text) == 2, text[-3000:]
    # Results first, then new work: the journal went out before the third task started.
    assert lines_with(text, "from the journal")[-1] < lines_with(text, "started (attempt")[2], text[-3000:]
    assert journal(workdir) == []
    assert site.status() == {"todo": 0, "locked": 0, "done": 4, "error": 0, "waiting": 0, "total": 4}
    assert sorted(runs(ran, "start")) == [f"t{i}" for i in range(4)]  # each ran once: nothing lost
    for token_id in runs(ran, "start"):
        assert outcomes(site.token(token_id)) == ["done"]


def test_a_server_away_past_max_outage_ends_the_pilot_with_exit_4_and_the_next_one_sends_its_journal(
    site: Site, own_server: PouchDBServer, reaper: list
) -> None:
    first, ran = stop_the_server_under_two_tasks(site, own_server, reaper, "4s", "first.log")
    workdir = site.folder / "work"
    assert first.wait(timeout=60) == ExitCode.SERVER_UNREACHABLE, log_of(site, "first.log")[-3000:]
    text = log_of(site, "first.log")
    assert "Traceback" not in text
    (last,) = [line for line in text.splitlines() if "pilot ends (exit 4)" in line]
    assert "longer than server.max_outage (4.0s)" in last and f"stay in {workdir / 'journal'}" in last
    assert last.endswith("once `pilot.pyz check` reaches the server again, submit pilots again"), last
    kept = journal(workdir)
    assert sorted(entry["token"]["id"] for entry in kept) == sorted(runs(ran, "end"))
    assert [entry["result"]["outcome"] for entry in kept] == ["done", "done"]

    own_server.start()
    assert site.status()["locked"] == 2  # the first pilot's leases, left to expire
    second = site.start(log_name="second.log")
    reaper.append(second)
    assert second.wait(timeout=120) == 0, log_of(site, "second.log")[-3000:]
    text = log_of(site, "second.log")
    adopted = lines_with(text, "found 2 unsent report(s) from an earlier pilot")
    assert adopted and adopted[0] < lines_with(text, "started (attempt")[0], text[-3000:]
    assert journal(workdir) == [] and not list((workdir / "journal").glob("*.jsonl"))
    assert site.status() == {"todo": 0, "locked": 0, "done": 4, "error": 0, "waiting": 0, "total": 4}
    assert sorted(runs(ran, "start")) == [f"t{i}" for i in range(4)]  # the journaled ones did not run again
    first_pilot = kept[0]["attempt"]["pilot"]
    for entry in kept:
        (attempt,) = site.token(entry["token"]["id"])["attempts"]
        assert (attempt["pilot"], attempt["outcome"]) == (first_pilot, "done")


def test_a_journaled_report_whose_lease_moved_on_is_a_conflict_and_not_forced(
    site: Site, own_server: PouchDBServer, reaper: list
) -> None:
    """Node a fails the token while the server is away, journals the failure, and dies. The lease
    expires; node b claims the token and does it. The next pilot on node a finds the old failure in the
    journal: the server refuses it (the lease moved on) and the token keeps node b's result."""
    database = own_server.create_database()
    keys = {
        "server": {"timeout": "1s", "lease": "3s"},
        "task": {"max_attempts": 1},
        "pilot": {
            "workdir": str(site.folder / "${NODE:-node-a}"),
            "black_hole_failures": 0,
            "idle_timeout": "60s",
        },
    }
    ran = setup_pool(site, own_server, database, [{"id": "contested", "seconds": 2}], **keys)
    node_a = site.start(env=BROKEN, log_name="node-a.log")
    reaper.append(node_a)
    wait_for(lambda: runs(ran, "start"), 60, what="the task to start")
    own_server.stop()
    (kept,) = wait_for(lambda: journal(site.folder / "node-a"), 60, what="the journaled failure")
    assert (kept["result"]["outcome"], kept["state"]) == ("failed", "error")
    node_a.send_signal(signal.SIGKILL)  # the node dies with its report on local disk
    node_a.wait(timeout=10)
    own_server.start()

    node_b = site.run(env={"NODE": "node-b"})
    assert node_b.returncode == 0, node_b.stderr
    assert "claimed again: the lease of its last pilot expired" in node_b.stderr
    after = site.run()  # node a again, with the dead pilot's journal
    assert after.returncode == 0, after.stderr
    assert "found 1 unsent report(s) from an earlier pilot" in after.stderr
    assert (
        "conflict: the lease moved to another pilot; our result (exit code 1) was not saved" in after.stderr
    )
    assert journal(site.folder / "node-a") == []
    token = site.token("contested")
    assert (token["state"], token["failures"], outcomes(token)) == ("done", 0, ["lease-expired", "done"])
    assert token["attempts"][0]["pilot"] == kept["attempt"]["pilot"] != token["attempts"][1]["pilot"]
    doc = own_server.docs(database)["contested"]
    assert (doc["exit_code"], doc["error"]) == (0, [])
    assert runs(ran, "start") == ["contested", "contested"]
