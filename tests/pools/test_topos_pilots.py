"""pilot.pyz against the real ToPoS 4.1 (PHP on Apache, MariaDB), end to end: tokens as the bash client makes
and reads them, pilots sharing a pool, a killed pilot, failures, an outage, basic auth and wrong URLs. Every
pilot is the built zipapp run as a subprocess; the server is read back with plain HTTP calls (urllib or curl),
never through the code under test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, Site, one_line_error, wait_for
from servers.topos import USER, ToposServer

from pools.conftest import executions, topos_config

pytestmark = pytest.mark.topos

TASKS = REPO / "tests" / "tasks"
RECORD = ["/bin/sh", "-c", 'echo "$1" >> "$2"', "record"]  # one write with O_APPEND: lines never mix
CURL = ["curl", "--silent", "--fail"]  # as the bash client calls it
# Lines a user might have: shell syntax that must stay text, quotes, non-ASCII, tabs, spaces at the ends.
LINES = [
    "plain",
    "$(touch pwned-subst)",
    "`touch pwned-backtick`; touch pwned-semicolon",
    "a && touch pwned-and | cat > pwned-redirect",
    "'single' \"double\" \\back\\slash",
    "héllo wörld ✓ 日本語",
    "\ttab inside\tand  two  spaces ",
    "--option=value -x",
    "*",
]


def results(server: ToposServer, pool: str) -> list[dict]:
    """Every result document in a pool, read with plain HTTP."""
    found = []
    for row in server.listing(pool):
        answer = server.token(pool, int(row["Name"]))
        assert answer.status == 200, answer.status
        if row["Content-Type"].startswith("application/json"):
            found.append(json.loads(answer.body))
    return found


def logs(site: Site, count: int) -> list[str]:
    return [(site.folder / f"pilot-{i}.log").read_text()[-3000:] for i in range(count)]


def run_pilots(site: Site, reaper: list, count: int, timeout: float = 300) -> None:
    pilots = [site.start(log_name=f"pilot-{i}.log") for i in range(count)]
    reaper.extend(pilots)
    codes = [pilot.wait(timeout=timeout) for pilot in pilots]
    assert codes == [0] * count, logs(site, count)


def test_two_pilots_with_two_slots_run_each_of_200_tokens_once_and_leave_the_pool_empty(
    site: Site, topos: ToposServer, reaper: list
) -> None:
    pool = topos.new_pool()
    ran = site.folder / "ran.log"
    site.write(topos_config(site.folder, topos, pool, [*RECORD, "{id}", str(ran)], pilot={"slots": 2}))
    assert site.run("tokens", "add", "--range", "200").returncode == 0
    ids = topos.token_ids(pool)
    assert len(ids) == 200
    run_pilots(site, reaper, 2)
    counts = executions(ran)
    assert sorted(counts) == sorted(str(i) for i in ids)
    assert [token for token, n in counts.items() if n > 1] == []
    assert topos.token_ids(pool) == []  # the pool itself is empty
    done = results(topos, f"{pool}.done")
    assert sorted(doc["token"] for doc in done) == sorted(str(i) for i in ids)
    assert {doc["content"] for doc in done} == {str(i) for i in range(200)}  # --range: ToPoS's own numbers
    assert all(doc["exit_code"] == 0 and len(doc["attempts"]) == 1 for doc in done)
    assert site.status() == {"todo": 0, "locked": 0, "done": 200, "error": 0, "waiting": 0, "total": 200}


def test_lines_uploaded_as_the_bash_client_does_reach_the_tasks_unchanged_and_nothing_runs(
    site: Site, topos: ToposServer, reaper: list
) -> None:
    """createTokensFromLinesInFile: `curl --data-binary @file` with Content-Type text/plain."""
    pool = topos.new_pool()
    lines_file = site.folder / "lines.txt"
    lines_file.write_bytes(("\n".join(LINES) + "\n").encode())
    subprocess.run(
        [
            *CURL,
            "--data-binary",
            f"@{lines_file}",
            "--header",
            'Content-Type: text/plain; charset="UTF-8"',
            f"{topos.url}pools/{pool}/tokens/",
        ],
        check=True,
        capture_output=True,
    )
    out = site.folder / "out"
    out.mkdir()
    command = [sys.executable, str(TASKS / "echo_bytes.py"), str(out), "{id}", "{input}"]
    site.write(topos_config(site.folder, topos, pool, command))
    run_pilots(site, reaper, 1)
    ids = [doc["token"] for doc in results(topos, f"{pool}.done")]
    assert len(ids) == len(LINES)
    got = [(out / f"{token_id}.argv").read_bytes() for token_id in sorted(ids, key=int)]
    assert got == [line.encode() for line in LINES]  # in the order of the file, byte for byte
    assert [(out / f"{token_id}.env").read_bytes() for token_id in sorted(ids, key=int)] == got
    assert not list(site.folder.rglob("pwned*"))  # no line ran as a command anywhere


def test_tokens_added_with_lines_are_read_back_by_curl_as_the_same_lines(
    site: Site, topos: ToposServer
) -> None:
    """What the bash client sees of pilot.pyz's tokens: its getToken, one curl call per token."""
    pool = topos.new_pool()
    site.write(topos_config(site.folder, topos, pool, ["/bin/true"]))
    many = [*LINES, *(f"genome-{i}.fa --k 31" for i in range(3000))]
    (site.folder / "lines.txt").write_bytes(("\n".join(many) + "\n\n").encode())  # a blank line is skipped
    added = site.run("tokens", "add", "--lines", "lines.txt")
    assert added.returncode == 0, added.stderr
    assert f"added {len(many)} tokens" in added.stdout
    listing = subprocess.run(
        [*CURL, "--header", "Accept: text/plain", f"{topos.url}pools/{pool}/tokens/"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    ids = [line.split("\t", 1)[0] for line in listing.splitlines()[1:] if line]
    assert len(ids) == len(many)
    sample = [*ids[: len(LINES)], *ids[-3:]]  # every special line, and the end of the file
    read = [
        subprocess.run(
            [*CURL, "--header", "Accept: text/plain", f"{topos.url}pools/{pool}/tokens/{token_id}"],
            check=True,
            capture_output=True,
        ).stdout
        for token_id in sample
    ]
    assert read == [line.encode() for line in [*many[: len(LINES)], *many[-3:]]]
    assert [row["Content-Type"] for row in topos.listing(pool)][:1] == ['text/plain; charset="UTF-8"']


def test_a_killed_pilots_token_comes_back_after_the_lock_timeout_and_counts_two_leases(
    site: Site, topos: ToposServer, reaper: list
) -> None:
    pool = topos.new_pool()
    ran = site.folder / "ran.log"
    command = [sys.executable, str(TASKS / "record.py"), str(ran), "{id}", "{input}"]
    keys = {"server": {"lease": "3s"}, "pilot": {"slots": 1, "idle_timeout": "60s"}}
    site.write(topos_config(site.folder, topos, pool, command, **keys))
    topos.add_lines(pool, b"4\n")
    [token_id] = [str(i) for i in topos.token_ids(pool)]
    first = site.start(log_name="first.log")
    reaper.append(first)
    started = wait_for(
        lambda: next((site.folder / "work").glob(f"*/{token_id}.1/pid"), None), 60, what="task start"
    )
    task_pid = int(wait_for(started.read_text, 5, what="task pid"))
    os.kill(first.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):  # the pilot's guard may have killed it already
        os.killpg(task_pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert topos.locks(pool) == 1
    second = site.start(log_name="second.log")
    reaper.append(second)
    assert second.wait(timeout=120) == 0, (site.folder / "second.log").read_text()[-2000:]
    assert ran.read_text().split() == [token_id]  # once, by the second pilot
    [result] = results(topos, f"{pool}.done")
    assert result["token"] == token_id
    assert result["leases"] == 2
    assert [a["outcome"] for a in result["attempts"]] == ["lease-expired", "done"]
    assert topos.token_ids(pool) == []
    token = site.token(token_id)
    assert token["state"] == "done"
    assert len(token["attempts"]) == 2


def test_a_token_failing_with_max_attempts_2_ends_in_the_error_pool_with_both_attempts(
    site: Site, topos: ToposServer, reaper: list
) -> None:
    pool = topos.new_pool()
    command = ["/bin/sh", "-c", 'echo "out $1"; echo "err $1" >&2; [ "$1" = ok ] || exit 3', "t", "{input}"]
    # No breaker: it would hold the last failure back until the pilot ends, and the pilot would end without
    # claiming the token again (the loop's choice, for every backend).
    keys = {"task": {"max_attempts": 2}, "pilot": {"black_hole_failures": 0}}
    site.write(topos_config(site.folder, topos, pool, command, **keys))
    topos.add_lines(pool, b"ok\nbroken\n")
    ok_id, broken_id = (str(i) for i in topos.token_ids(pool))
    run_pilots(site, reaper, 1)
    assert topos.token_ids(pool) == []
    error_rows = topos.listing(f"{pool}.error")
    moved = [row for row in error_rows if row["Name"] == broken_id]
    assert len(moved) == 1  # the token itself, with its id ...
    assert topos.token(f"{pool}.error", int(broken_id)).body == b"broken"  # ... and its body
    [result] = results(topos, f"{pool}.error")
    assert result["token"] == broken_id
    assert result["state"] == "error"
    assert result["exit_code"] == 3
    assert [(a["outcome"], a["exit_code"]) for a in result["attempts"]] == [("failed", 3), ("failed", 3)]
    assert "err broken" in result["stderr_tail"]
    assert topos.token_ids(f"{pool}.attempts") == []  # the kept first attempt went into the result
    assert [doc["token"] for doc in results(topos, f"{pool}.done")] == [ok_id]
    assert site.status() == {"todo": 0, "locked": 0, "done": 1, "error": 1, "waiting": 0, "total": 2}
    figures = site.run("status")  # the rates, durations and reasons come from the newest results
    assert figures.returncode == 0, figures.stderr
    assert "exit code 3" in figures.stdout, figures.stdout
    shown = site.token(broken_id)
    assert shown["state"] == "error"
    assert len(shown["attempts"]) == 2
    reset = site.run("reset", "--errors")
    assert reset.returncode == 0, reset.stderr
    assert topos.token_ids(pool) == [int(broken_id)]  # back, same id
    assert site.status()["todo"] == 1


def test_contention_four_pilots_run_each_of_500_tokens_exactly_once(
    site: Site, topos: ToposServer, reaper: list
) -> None:
    pool = topos.new_pool()
    ran = site.folder / "ran.log"
    site.write(topos_config(site.folder, topos, pool, [*RECORD, "{id}", str(ran)], pilot={"slots": 1}))
    assert site.run("tokens", "add", "--range", "500").returncode == 0
    ids = {str(i) for i in topos.token_ids(pool)}
    run_pilots(site, reaper, 4, timeout=600)
    counts = executions(ran)
    assert set(counts) == ids  # none missing
    assert [token for token, n in counts.items() if n > 1] == []  # none twice
    done = results(topos, f"{pool}.done")
    assert len(done) == 500
    assert len({doc["attempts"][0]["pilot"] for doc in done}) == 4  # all four took part


def test_a_server_stopped_and_started_mid_run_loses_no_result(
    site: Site, own_topos: ToposServer, reaper: list
) -> None:
    """Apache away (connection refused), then MariaDB away (ToPoS answers 500 with a PHP stack trace):
    the pilots keep their tasks, journal the reports and send them once ToPoS is back."""
    server = own_topos
    pool = server.new_pool()
    ran = site.folder / "ran.log"
    command = ["/bin/sh", "-c", 'sleep 0.05; echo "$1" >> "$2"', "record", "{id}", str(ran)]
    keys = {"server": {"max_outage": "120s"}, "pilot": {"slots": 2}}
    site.write(topos_config(site.folder, server, pool, command, **keys))
    assert site.run("tokens", "add", "--range", "200").returncode == 0
    ids = {str(i) for i in server.token_ids(pool)}
    pilots = [site.start(log_name=f"pilot-{i}.log") for i in range(2)]
    reaper.extend(pilots)
    wait_for(lambda: sum(executions(ran).values()) >= 30, 120, what="30 tasks")
    server.stop_apache()
    time.sleep(6)  # longer than one request's retries
    server.start_apache()
    wait_for(lambda: sum(executions(ran).values()) >= 80, 120, what="80 tasks")
    server.stop_mariadb()
    time.sleep(1)
    status = site.run("status")
    line = one_line_error(status, 4)
    assert "server error (HTTP 500" in line
    assert "#0" not in status.stderr and "<pre" not in status.stderr  # no stack trace, no HTML
    time.sleep(4)
    server.start_mariadb()
    codes = [pilot.wait(timeout=300) for pilot in pilots]
    assert codes == [0, 0], logs(site, 2)
    assert sorted(doc["token"] for doc in results(server, f"{pool}.done")) == sorted(ids)
    assert set(executions(ran)) == ids
    assert server.token_ids(pool) == []
    text = "".join((site.folder / f"pilot-{i}.log").read_text() for i in range(2))
    assert "journal" in text
    assert "#0 " not in text and "<pre" not in text and "<html" not in text


def test_basic_auth_through_apache_and_clear_errors_for_wrong_or_missing_passwords(
    site: Site, topos: ToposServer, reaper: list
) -> None:
    pool = topos.new_pool()
    ran = site.folder / "ran.log"
    site.write(topos_config(site.folder, topos, pool, [*RECORD, "{input}", str(ran)], user=USER))
    (site.folder / "lines.txt").write_text("one\ntwo\n")
    added = site.run("tokens", "add", "--lines", "lines.txt")
    assert added.returncode == 0, added.stderr
    run_pilots(site, reaper, 1)
    assert sorted(ran.read_text().split()) == ["one", "two"]
    assert site.status()["done"] == 2
    assert topos.request("GET", f"pools/{pool}/", auth_port=True).status == 401  # really behind auth

    site.write(topos_config(site.folder, topos, pool, ["/bin/true"], user=(USER[0], "wrong-secret-3")))
    for argv in (("status",), ("run", "-q"), ("tokens", "add", "--lines", "lines.txt")):
        line = one_line_error(site.run(*argv), 3)
        assert f"refused the credentials of user {USER[0]!r}" in line, line
        assert "wrong-secret-3" not in line
    config = topos_config(site.folder, topos, pool, ["/bin/true"])
    config["server"]["url"] = topos.auth_url  # no user name at all
    site.write(config)
    line = one_line_error(site.run("status"), 3)
    assert "wants a user name and password" in line, line


def test_a_wrong_url_is_one_line_naming_the_redirect_or_the_missing_topos(
    site: Site, topos: ToposServer
) -> None:
    pool = topos.new_pool()
    moved = topos.url.replace("/4.1/", "/moved/")  # every request there is redirected (HTTP 301)
    config = topos_config(site.folder, topos, pool, ["/bin/true"])
    config["server"]["url"] = moved
    site.write(config)
    for argv in (("status",), ("run", "-q")):
        line = one_line_error(site.run(*argv), 3)
        assert "redirects to" in line and "(HTTP 301)" in line and "set server.url" in line, line
    config["server"]["url"] = topos.url.replace("/4.1/", "/nothing-here/")  # Apache's own 404 page
    site.write(config)
    line = one_line_error(site.run("status"), 3)
    assert "not a ToPoS answer" in line, line
    assert "<" not in line


def test_a_token_too_big_for_the_node_is_released_at_once_and_left_in_the_pool(
    site: Site, topos: ToposServer, reaper: list
) -> None:
    """ToPoS cannot choose tokens by size: a claimed token that does not fit is released (its lock
    deleted) at once, stays in the pool for a bigger node, and the pilot says how often that happened."""
    pool = topos.new_pool()
    ran = site.folder / "ran.log"
    pilot = {"slots": 2, "cores": 2, "bind": False}
    site.write(topos_config(site.folder, topos, pool, [*RECORD, "{id}", str(ran)], pilot=pilot))
    tokens = site.folder / "tokens.jsonl"
    tokens.write_text(
        "".join(json.dumps({"input": str(i), "cores": 4 if i == 3 else 1}) + "\n" for i in range(6))
    )
    assert site.run("tokens", "add", "--jsonl", str(tokens)).returncode == 0
    run_pilots(site, reaper, 1)
    assert len(executions(ran)) == 5  # every token that fits ran
    left = topos.token_ids(pool)
    assert len(left) == 1  # the big one, not run, not locked
    assert json.loads(topos.token(pool, left[0]).body)["cores"] == 4
    assert "did not fit what was free and were released at once" in logs(site, 1)[0]
    assert site.status()["locked"] == 0
