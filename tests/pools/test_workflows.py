"""Workflows through pilot.pyz, on the local pool and CouchDB: dependencies (`after`), tasks that add
tokens, and the bad input both refuse. Every pilot is the built zipapp run as a subprocess; the tasks
(tests/tasks/step.py) record when they started and ended."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import REPO, Site, local_config, pool_rows, wait_for
from servers.pouchdb import PouchDBServer

from pools.conftest import couch_config

STEP = [sys.executable, str(REPO / "tests" / "tasks" / "step.py")]
#: short leases: idle pilots look at the pool every lease / 2, a dead pilot's token is back after one
QUICK = {"server": {"lease": "4s"}, "pilot": {"slots": 1, "idle_timeout": "60s"}}

Configure = Callable[..., None]


@pytest.fixture(params=["local", "couchdb"])
def backend(request: pytest.FixtureRequest, site: Site) -> str:
    return str(request.param)


@pytest.fixture
def configure(request: pytest.FixtureRequest, site: Site, backend: str) -> Configure:
    """Writes site.toml for the backend (and runs init): configure(command, **overrides)."""

    def write(command: list[str], **overrides: dict[str, Any]) -> None:
        sections = {name: {**QUICK.get(name, {}), **overrides.get(name, {})} for name in {*QUICK, *overrides}}
        if backend == "local":
            site.write(local_config(site.folder, command, **sections))
        else:
            server: PouchDBServer = request.getfixturevalue("pouchdb")
            site.write(
                couch_config(site.folder, server, request.getfixturevalue("couch_db"), command, **sections)
            )
        assert site.run("init").returncode == 0

    return write


def runs(log: Path) -> dict[str, list[tuple[float, float]]]:
    found: dict[str, list[tuple[float, float]]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        token_id, start, end = line.split()
        found.setdefault(token_id, []).append((float(start), float(end)))
    return found


def run_pilots(site: Site, reaper: list, count: int, timeout: float = 300) -> None:
    pilots = [site.start(log_name=f"pilot-{i}.log") for i in range(count)]
    reaper.extend(pilots)
    codes = [pilot.wait(timeout=timeout) for pilot in pilots]
    logs = [(site.folder / f"pilot-{i}.log").read_text()[-3000:] for i in range(count)]
    assert codes == [0] * count, logs


def one_line(result: Any, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, lines
    return lines[0]


def diamond(middle: int, **fields: dict[str, Any]) -> list[dict[str, Any]]:
    ids = [f"m{i}" for i in range(middle)]
    return [
        {"id": "split", **fields.get("split", {})},
        *({"id": i, "after": ["split"], **fields.get(i, {})} for i in ids),
        {"id": "merge", "after": ids},
    ]


def test_a_diamond_runs_each_token_once_after_what_it_waits_on(
    site: Site, configure: Configure, reaper: list
) -> None:
    log = site.folder / "ran.log"
    configure([*STEP, str(log), "{id}"])
    site.add_tokens(diamond(100))
    assert site.status() == {"todo": 1, "locked": 0, "done": 0, "error": 0, "waiting": 101, "total": 102}
    run_pilots(site, reaper, 4)
    ran = runs(log)
    assert sorted(ran) == sorted(["split", "merge", *(f"m{i}" for i in range(100))])
    assert all(len(times) == 1 for times in ran.values())  # each once
    split_end = ran["split"][0][1]
    assert all(ran[f"m{i}"][0][0] >= split_end for i in range(100))
    assert ran["merge"][0][0] >= max(ran[f"m{i}"][0][1] for i in range(100))
    assert site.status()["done"] == 102


def test_a_failure_in_the_middle_fails_the_merge_and_the_pilots_end(
    site: Site, configure: Configure, backend: str, reaper: list
) -> None:
    log = site.folder / "ran.log"
    configure([*STEP, str(log), "{id}"], task={"max_attempts": 1})
    site.add_tokens(diamond(10, m3={"fail": "yes"}))
    run_pilots(site, reaper, 2, timeout=120)
    assert site.status() == {"todo": 0, "locked": 0, "done": 10, "error": 2, "waiting": 0, "total": 12}
    assert "merge" not in runs(log)
    merge = site.token("merge")
    assert merge["state"] == "error"
    assert merge["reason"] == "dependency m3 failed"


def test_a_killed_task_that_wrote_children_adds_them_once_on_the_rerun(
    site: Site, configure: Configure, reaper: list
) -> None:
    log = site.folder / "ran.log"
    configure([*STEP, str(log), "{id}"])
    hold = site.folder / "held"
    site.add_tokens([{"id": "parent", "children": 10, "hold": str(hold)}])
    first = site.start(log_name="first.log")
    reaper.append(first)
    wait_for(hold.exists, 60, what="the first run to write its children")
    task = next((site.folder / "work").glob("*/parent.1/pid"))
    os.kill(first.pid, signal.SIGKILL)
    os.killpg(int(task.read_text()), signal.SIGKILL)
    first.wait(timeout=10)
    assert site.status()["total"] == 1  # the children wait for the report
    run_pilots(site, reaper, 1)
    assert sorted(runs(log)) == sorted(["parent", *(f"parent.{i}" for i in range(1, 11))])
    assert site.status() == {"todo": 0, "locked": 0, "done": 11, "error": 0, "waiting": 0, "total": 11}


def test_children_may_wait_on_each_other_map_reduce(site: Site, configure: Configure, reaper: list) -> None:
    log = site.folder / "ran.log"
    configure([*STEP, str(log), "{id}"])
    reduce_line = json.dumps({"id": "reduce", "after": [f"map.{i}" for i in range(1, 6)]})
    site.add_tokens(
        [{"id": "map", "children": 5}, {"id": "reducer-maker", "after": ["map"], "children": reduce_line}]
    )
    run_pilots(site, reaper, 2)
    ran = runs(log)
    assert ran["reduce"][0][0] >= max(ran[f"map.{i}"][0][1] for i in range(1, 6))
    assert site.status()["done"] == 8


def test_a_malformed_children_file_fails_the_attempt_and_adds_nothing(
    site: Site, configure: Configure, reaper: list
) -> None:
    configure([*STEP, str(site.folder / "ran.log"), "{id}"], task={"max_attempts": 1})
    site.add_tokens(
        [{"id": "bad", "children": '{"input": 1'}, {"id": "ghost", "children": '{"after": ["nowhere"]}'}]
    )
    run_pilots(site, reaper, 1)
    assert site.status() == {"todo": 0, "locked": 0, "done": 0, "error": 2, "waiting": 0, "total": 2}
    bad = site.token("bad")["attempts"][-1]
    assert bad["outcome"] == "failed"
    assert "new-tokens.jsonl:1: not valid JSON" in bad["reason"] and "no tokens were added" in bad["reason"]
    ghost = site.token("ghost")["attempts"][-1]
    assert "`after` names tokens in neither the pool nor the input: nowhere" in ghost["reason"]


def test_tokens_add_refuses_a_cycle_and_an_unknown_dependency_with_one_line(
    site: Site, configure: Configure
) -> None:
    configure(["true"])
    for tokens, expected in (
        (
            [{"id": "a", "after": ["b"]}, {"id": "b", "after": ["a"]}],
            "`after` makes a cycle: a -> b -> a; nothing was added",
        ),
        (
            [{"id": "a"}, {"id": "b", "after": ["a", "zz"]}],
            "`after` names tokens in neither the pool nor the input: zz; nothing was added; add those tokens "
            "first (or earlier in the same input), or fix the ids in `after`",
        ),
    ):
        (site.folder / "t.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tokens))
        line = one_line(site.run("tokens", "add", "--jsonl", "t.jsonl"), 2)
        assert line == f"pilot: error: {expected}"
        assert site.status()["total"] == 0


def test_a_token_added_after_its_dependency_failed_fails_at_once(site: Site) -> None:
    site.write(local_config(site.folder, ["false"], task={"max_attempts": 1}))
    site.add_tokens([{"id": "x"}])
    assert site.run().returncode == 0
    site.add_tokens([{"id": "y", "after": ["x"]}])
    rows = {row["id"]: row for row in pool_rows(site.folder / "pool.db")}
    assert (rows["y"]["state"], rows["y"]["reason"]) == ("error", "dependency x failed")


def test_a_report_replayed_from_journals_adds_its_children_once(
    site: Site, own_server: PouchDBServer, reaper: list
) -> None:
    """The report of a task that wrote 10 children waits in the journal while the server is away; the
    journal is found twice on the node (as if a pilot died after sending it): the children come once."""
    log, gate = site.folder / "ran.log", site.folder / "gate"
    keys = {"server": {"timeout": "1s", "max_outage": "3s"}, "pilot": {"slots": 1}}
    site.write(
        couch_config(site.folder, own_server, own_server.create_database(), [*STEP, str(log), "{id}"], **keys)
    )
    assert site.run("init").returncode == 0
    site.add_tokens([{"id": "parent", "children": 10, "gate": str(gate)}])
    first = site.start(log_name="first.log")
    reaper.append(first)
    wait_for(lambda: list((site.folder / "work").glob("*/parent.1/pid")), 60, what="the task to start")
    own_server.stop()
    gate.write_text("go")
    assert first.wait(timeout=60) == 4, (site.folder / "first.log").read_text()[-3000:]
    (journal,) = (site.folder / "work" / "journal").glob("*.jsonl")
    assert len(json.loads(journal.read_text())["children"]) == 10
    (journal.parent / "copy.jsonl").write_text(journal.read_text())
    own_server.start()
    run_pilots(site, reaper, 1)
    assert sorted(runs(log)) == sorted(["parent", *(f"parent.{i}" for i in range(1, 11))])
    assert site.status() == {"todo": 0, "locked": 0, "done": 11, "error": 0, "waiting": 0, "total": 11}


def group_alive(pgid: int) -> bool:
    """True while any process of the process group ``pgid`` lives (zombies aside)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def test_cancel_stops_a_running_token_within_a_third_of_the_lease_and_the_pilot_goes_on(
    site: Site, configure: Configure, reaper: list
) -> None:
    log = site.folder / "ran.log"
    script = 'if [ "$1" = long ]; then echo $$ > pid; sleep 600 & sleep 600; fi; echo "$1" >> "$2"'
    configure(["/bin/sh", "-c", script, "task", "{id}", str(log)], server={"lease": "3s"})
    site.add_tokens(
        [
            {"id": "long"},
            {"id": "queued", "after": ["long"]},
            {"id": "next"},
            {"id": "after-long", "after": ["long"]},
        ]
    )
    pilot = site.start(log_name="pilot.log")
    reaper.append(pilot)
    pid_file = wait_for(lambda: next((site.folder / "work").glob("*/long.1/pid"), None), 60, what="the task")
    pgid = int(wait_for(pid_file.read_text, 5, what="its pid"))
    cancelled = site.run("tokens", "cancel", "long", "queued")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith("2 token(s) cancelled in ")
    # lease / 3 until the renewal, kill_grace (2s) at most for the TERM, and some slack for a busy machine
    wait_for(lambda: not group_alive(pgid), 1 + 2 + 3, interval=0.1, what="the task's processes to end")
    assert pilot.wait(timeout=60) == 0, (site.folder / "pilot.log").read_text()[-3000:]
    assert log.read_text().split() == ["next"]
    long = site.token("long")
    assert (long["state"], long["reason"], long["attempts"][-1]["outcome"]) == (
        "error",
        "cancelled",
        "cancelled",
    )
    queued = site.token("queued")
    assert (queued["state"], queued["reason"], queued["attempts"]) == ("error", "cancelled", [])
    assert site.token("after-long")["reason"] == "dependency long failed"
    assert "1 done, 0 failed, 0 given back, 1 cancelled" in (site.folder / "pilot.log").read_text()
    assert site.run("reset", "--errors").stdout.strip() == "3 tokens back to todo"
    assert site.status() == {"todo": 1, "locked": 0, "done": 1, "error": 0, "waiting": 2, "total": 4}


def test_a_task_that_ends_before_its_pilot_learns_of_the_cancel_leaves_the_token_cancelled(
    site: Site, configure: Configure, reaper: list
) -> None:
    """The soak's race: the cancel lands, the task succeeds (and writes a child) before the renewal that
    would stop it (lease 30s: the next renewal is 10 s away), its report meets the cancel. The token stays
    cancelled, with the attempt as it ended; the child is not added; the pilot says what happened."""
    gate = site.folder / "gate"
    script = 'touch "$1.started"; while [ ! -e "$1" ]; do sleep 0.05; done; echo "{{}}" > "$PILOT_NEW_TOKENS"'
    configure(["/bin/sh", "-c", script, "task", str(gate)], server={"lease": "30s"})
    site.add_tokens([{"id": "racing"}])
    pilot = site.start(log_name="pilot.log")
    reaper.append(pilot)
    wait_for(Path(f"{gate}.started").exists, 60, what="the task to start")
    assert site.run("tokens", "cancel", "racing").returncode == 0
    gate.touch()
    assert pilot.wait(timeout=60) == 0, (site.folder / "pilot.log").read_text()[-3000:]
    racing = site.token("racing")
    assert (racing["state"], racing["reason"], [a["outcome"] for a in racing["attempts"]]) == (
        "error",
        "cancelled",
        ["done"],
    )
    assert site.status()["total"] == 1  # no child
    log = (site.folder / "pilot.log").read_text()
    assert "cancelled while it ran; the task ended first (exit code 0), the token stays cancelled" in log
    assert "0 done, 0 failed, 0 given back, 1 cancelled" in log


def test_cancel_of_a_token_held_until_it_fits_reports_it_cancelled_and_the_pilot_goes_on(
    site: Site, configure: Configure, reaper: list
) -> None:
    """A token claimed while a smaller task runs waits for room (held, its lease renewed): cancelled
    then, its pilot's renewal says so and the pilot reports it cancelled; it had no task to stop."""
    gate = site.folder / "gate"
    script = 'while [ ! -e "$1" ]; do sleep 0.1; done'
    configure(
        ["/bin/sh", "-c", script, "task", str(gate)],
        server={"lease": "3s"},
        pilot={"cores": 2, "bind": False, "slots": 2},
    )
    site.add_tokens([{"id": "small", "cores": 1}])
    pilot = site.start(log_name="pilot.log")
    reaper.append(pilot)
    log = site.folder / "pilot.log"
    wait_for(lambda: "token=small INFO started" in log.read_text(), 60, what="small to start")
    site.add_tokens([{"id": "big", "cores": 2}])  # claimed by the pilot's next look: held
    wait_for(lambda: "token=big INFO held until it fits" in log.read_text(), 60, what="big to be held")
    assert site.run("tokens", "cancel", "big").stdout.startswith("1 token(s) cancelled in ")
    wait_for(lambda: "while it waited for room" in log.read_text(), 10, what="the renewal to see it")
    gate.touch()
    assert pilot.wait(timeout=60) == 0, log.read_text()[-3000:]
    big = site.token("big")
    assert (big["state"], big["reason"], [a["outcome"] for a in big["attempts"]]) == (
        "error",
        "cancelled",
        ["cancelled"],
    )
    assert big["attempts"][0]["started"] is None
    assert site.token("small")["state"] == "done"
    assert "1 done, 0 failed, 0 given back, 1 cancelled" in log.read_text()


def test_cancel_all_todo_and_the_bad_requests(site: Site, configure: Configure) -> None:
    configure(["true"])
    site.add_tokens([{"id": "a"}, {"id": "b"}, {"id": "c", "after": ["a"]}])
    assert site.run("tokens", "cancel", "--all-todo").stdout.startswith("3 token(s) cancelled")
    assert site.status()["error"] == 3
    line = one_line(site.run("tokens", "cancel", "nowhere"), 3)
    assert line.startswith("pilot: error: token 'nowhere': not in the pool ")
    assert "; nothing was cancelled; `pilot.pyz tokens list` shows the ids" in line, line
    line = one_line(site.run("tokens", "cancel"), 2)
    assert line == "pilot: error: give the ids of the tokens to cancel, or --all-todo (not both)"


def test_two_pools_urgent_is_drained_first_and_taken_whenever_it_has_something(
    site: Site, configure: Configure, backend: str, request: pytest.FixtureRequest
) -> None:
    log = site.folder / "ran.log"
    prefix = "" if backend == "local" else request.getfixturevalue("couch_db") + "-"
    urgent, normal = f"{prefix}urgent", f"{prefix}normal"
    configure([*STEP, str(log), "{id}"], server={"pools": [urgent, normal]})
    to_urgent = json.dumps({"id": "n0.child", "pool": urgent})
    (site.folder / "n.jsonl").write_text(
        json.dumps({"id": "n0", "children": to_urgent})
        + "\n"
        + "".join(json.dumps({"id": f"n{i}"}) + "\n" for i in (1, 2, 3))
    )
    assert site.run("tokens", "add", "--pool", normal, "--jsonl", "n.jsonl").returncode == 0
    site.add_tokens([{"id": f"u{i}"} for i in range(4)] + [{"id": "u-last", "after": ["u0"]}])  # to the first
    assert site.status()["todo"] == 8
    assert json.loads(site.run("status", "--pool", normal, "--json").stdout)["todo"] == 4
    pilot = site.run()
    assert pilot.returncode == 0, pilot.stderr[-3000:]
    order = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(order[:5]) == ["u-last", "u0", "u1", "u2", "u3"], order
    assert order[order.index("n0") + 1] == "n0.child", order  # urgent again as soon as it has one
    assert sorted(order[5:]) == ["n0", "n0.child", "n1", "n2", "n3"], order
    assert site.status()["done"] == 10
    assert json.loads(site.run("status", "--pool", urgent, "--json").stdout)["done"] == 6
    bad = one_line(site.run("status", "--pool", "nowhere"), 2)
    assert bad == f"pilot: error: --pool nowhere: not one of server.pools ({urgent}, {normal})"
