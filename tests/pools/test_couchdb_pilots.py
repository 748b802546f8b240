"""pilot.pyz against pouchdb-server, end to end: contention, a killed pilot, a server restart, the commands,
and credentials that do not work. Every pilot is the built zipapp run as a subprocess."""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, Site, a_node_dies_mid_task, one_line_error, wait_for
from servers.pouchdb import ADMIN, MEMBER, PouchDBServer

from pools.conftest import couch_config

pytestmark = pytest.mark.couchdb

TASKS = REPO / "tests" / "tasks"
RECORD = ["/bin/sh", "-c", 'echo "$1" >> "$2"', "record"]  # one write with O_APPEND: lines never mix


def executions(log: Path) -> collections.Counter[str]:
    return collections.Counter(log.read_text().split()) if log.exists() else collections.Counter()


@pytest.mark.parametrize("slots", [1, 2])
def test_four_pilots_run_each_of_500_tokens_exactly_once(
    site: Site, pouchdb: PouchDBServer, couch_db: str, reaper: list, slots: int
) -> None:
    """None twice, none missing, and no pilot takes another's quicker claim for an empty pool."""
    ran = site.folder / "ran.log"
    command = [*RECORD, "{id}", str(ran)]
    site.write(couch_config(site.folder, pouchdb, couch_db, command, pilot={"slots": slots}))
    assert site.run("init").returncode == 0
    assert site.run("tokens", "add", "--range", "500").returncode == 0
    pilots = [site.start(log_name=f"pilot-{i}.log") for i in range(4)]
    reaper.extend(pilots)
    codes = [pilot.wait(timeout=600) for pilot in pilots]
    assert codes == [0, 0, 0, 0], [(site.folder / f"pilot-{i}.log").read_text()[-2000:] for i in range(4)]
    counts = executions(ran)
    assert sorted(counts) == sorted(f"range-{i}" for i in range(500))  # none missing
    assert [token for token, n in counts.items() if n > 1] == []  # none twice
    assert site.status() == {"todo": 0, "locked": 0, "done": 500, "error": 0, "waiting": 0, "total": 500}
    docs = pouchdb.docs(couch_db)
    assert all(len(doc["pilot"]["attempts"]) == 1 for doc in docs.values())
    assert len({doc["pilot"]["attempts"][0]["pilot"] for doc in docs.values()}) == 4  # all four took part


def test_a_killed_pilots_token_is_finished_by_another_after_the_lease(
    site: Site, pouchdb: PouchDBServer, couch_db: str, reaper: list
) -> None:
    ran = site.folder / "ran.log"
    command = [sys.executable, str(TASKS / "record.py"), str(ran), "{id}", "{input}"]
    site.write(
        couch_config(
            site.folder,
            pouchdb,
            couch_db,
            command,
            server={"lease": "3s"},
            pilot={"slots": 1, "idle_timeout": "60s"},
        )
    )
    assert site.run("init").returncode == 0
    site.add_tokens([{"id": "slow", "input": "4"}])
    a_node_dies_mid_task(site, reaper, "slow", ran)
    assert site.status()["done"] == 1


def test_a_server_stopped_mid_run_and_started_again_loses_no_result(
    site: Site, own_server: PouchDBServer, reaper: list
) -> None:
    """The outage outlasts one request's HTTP retries: the pilots keep their running tasks, journal the
    reports (issue 6), claim nothing while the server is away, and replay once it is back."""
    server = own_server
    database = server.create_database()
    ran = site.folder / "ran.log"
    command = ["/bin/sh", "-c", 'sleep 0.05; echo "$1" >> "$2"', "record", "{id}", str(ran)]
    keys = {"server": {"max_outage": "120s"}, "pilot": {"slots": 2}}
    site.write(couch_config(site.folder, server, database, command, **keys))
    assert site.run("init").returncode == 0
    assert site.run("tokens", "add", "--range", "200").returncode == 0
    pilots = [site.start(log_name=f"pilot-{i}.log") for i in range(2)]
    reaper.extend(pilots)
    wait_for(lambda: sum(executions(ran).values()) >= 40, 120, what="40 tasks")
    server.stop()
    time.sleep(8)  # longer than the HTTP retries of one request
    server.start()
    codes = [pilot.wait(timeout=300) for pilot in pilots]
    assert codes == [0, 0], [(site.folder / f"pilot-{i}.log").read_text()[-3000:] for i in range(2)]
    assert site.status() == {"todo": 0, "locked": 0, "done": 200, "error": 0, "waiting": 0, "total": 200}
    assert sorted(executions(ran)) == sorted(f"range-{i}" for i in range(200))


# -- the commands ----------------------------------------------------------------------------------


def test_init_check_status_show_and_reset_through_the_zipapp(
    site: Site, pouchdb: PouchDBServer, couch_db: str
) -> None:
    command = ["/bin/sh", "-c", 'echo "out $1"; echo "err $1" >&2; exit "$1"', "task", "{input}"]
    site.write(couch_config(site.folder, pouchdb, couch_db, command))
    init = site.run("init")
    assert init.returncode == 0, init.stderr
    assert "design document Monitor: created" in init.stdout
    (site.folder / "codes.txt").write_text("0\n0\n3\n")
    assert site.run("tokens", "add", "--lines", "codes.txt").returncode == 0
    check = site.run("check")
    assert check.returncode == 0, check.stderr
    assert f"database {couch_db}: ok" in check.stdout
    assert "tokens: todo 3, locked 0, done 0, error 0" in check.stdout
    run = site.run("run")
    assert run.returncode == 0, run.stderr
    assert site.status() == {"todo": 0, "locked": 0, "done": 2, "error": 1, "waiting": 0, "total": 3}
    shown = site.token("codes-3")
    assert shown["state"] == "error"
    assert shown["stdout_tail"] == "out 3\n"
    assert shown["stderr_tail"] == "err 3\n"
    reset = site.run("reset", "--errors")
    assert (reset.returncode, reset.stdout.strip()) == (0, "1 tokens back to todo")
    assert site.status()["todo"] == 1


def _auth_site(site: Site, server: PouchDBServer, database: str, **server_keys: str) -> None:
    sections = couch_config(site.folder, server, database, ["/bin/true"])
    sections["server"].update(server_keys)
    site.write(sections)


def test_a_member_runs_tokens_on_a_restricted_database(
    site: Site, pouchdb_auth: PouchDBServer, member_db: str
) -> None:
    site.write(couch_config(site.folder, pouchdb_auth, member_db, ["/bin/true"], user=ADMIN))
    assert site.run("init").returncode == 0
    site.write(couch_config(site.folder, pouchdb_auth, member_db, ["/bin/true"], user=MEMBER))
    assert site.run("tokens", "add", "--range", "3").returncode == 0
    run = site.run("run")
    assert run.returncode == 0, run.stderr
    assert MEMBER[1] not in run.stderr
    assert site.status()["done"] == 3


@pytest.mark.parametrize("case", ["wrong password", "no password", "no user"])
def test_credentials_that_do_not_work_are_one_line_with_the_pool_exit_code(
    site: Site, pouchdb_auth: PouchDBServer, member_db: str, case: str
) -> None:
    if case == "wrong password":
        user = (MEMBER[0], "guess-1")
        site.write(couch_config(site.folder, pouchdb_auth, member_db, ["/bin/true"], user=user))
        expected = "refused the credentials of user 'alice'"
    elif case == "no password":
        _auth_site(site, pouchdb_auth, member_db, username=MEMBER[0])
        expected = "no password for user 'alice': set server.password_file"
    else:
        _auth_site(site, pouchdb_auth, member_db)
        expected = "the server wants a user name and password"
    for command in (["status"], ["run", "-q"], ["check"]):
        result = site.run(*command, env={"PILOT_SERVER_PASSWORD": ""})
        line = one_line_error(result, 3)
        assert expected in line, (command, line)
        assert "guess-1" not in result.stderr + result.stdout
