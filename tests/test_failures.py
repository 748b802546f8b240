"""Failure handling end to end on the local pool: retries with history, black holes, node checks,
stubborn processes, huge output. (Server outages need a server: tests/pools/test_couchdb_failures.py.)"""

from __future__ import annotations

import re
import signal

from conftest import COUNT_RUNS, Site, alive, local_config, pool_rows, wait_for, wait_with_peak_rss
from httpfiles import FileServer, Rules

from agent.errors import ExitCode
from agent.health import FREE_SPACE, INSTALL_PROGRAM, WRITABLE_WORKDIR

# Fails until it has run `fail_times` times for this token.
FLAKY = COUNT_RUNS + '[ "$n" -ge "$PILOT_TOKEN_FAIL_TIMES" ]'


def test_failures_are_retried_up_to_max_attempts_with_every_attempt_recorded(site: Site) -> None:
    counts = site.folder / "counts"
    counts.mkdir()
    site.write(
        local_config(
            site.folder,
            ["sh", "-c", FLAKY],
            task={"max_attempts": 3, "env": {"COUNTS": str(counts)}},
            pilot={"black_hole_failures": 0, "slots": 1},
        )
    )
    site.add_tokens([{"id": "flaky", "fail_times": 2}, {"id": "broken", "fail_times": 99}])
    result = site.run()
    assert result.returncode == 0, result.stderr
    rows = {row["id"]: row for row in pool_rows(site.folder / "pool.db")}
    assert rows["flaky"]["state"] == "done"
    assert [a["outcome"] for a in rows["flaky"]["attempts"]] == ["failed", "failed", "done"]
    assert rows["broken"]["state"] == "error" and rows["broken"]["failures"] == 3
    assert [a["exit_code"] for a in rows["broken"]["attempts"]] == [1, 1, 1]
    for attempt in rows["broken"]["attempts"]:
        assert attempt["host"] and attempt["pilot"] and attempt["started"] <= attempt["ended"]
    assert "failure 1 of at most 3" in result.stderr
    assert site.run("reset", "--errors").stdout.strip() == "1 tokens back to todo"


def test_an_interrupted_task_is_given_back_uncharged(site: Site, reaper: list) -> None:
    site.write(local_config(site.folder, ["sleep", "60"], task={"max_attempts": 1}, pilot={"slots": 1}))
    assert site.run("tokens", "add", "--range", "1").returncode == 0
    pilot = site.start(log_name="pilot.log")
    reaper.append(pilot)
    wait_for(lambda: site.status()["locked"] == 1, 30, what="the token to be claimed")
    pilot.send_signal(signal.SIGTERM)
    assert pilot.wait(timeout=30) == ExitCode.TERMINATED
    (row,) = pool_rows(site.folder / "pool.db")
    assert row["state"] == "todo" and row["failures"] == 0
    assert row["attempts"][-1]["outcome"] == "interrupted" and "SIGTERM" in row["attempts"][-1]["reason"]


def test_a_black_hole_node_stops_after_k_failures_and_burns_no_token(site: Site) -> None:
    site.write(
        local_config(
            site.folder,
            ["sh", "-c", 'test -z "$BROKEN_NODE"'],
            task={"env": {"BROKEN_NODE": "libfoo.so missing"}},
            pilot={"black_hole_failures": 3, "slots": 2},
        )
    )
    assert site.run("tokens", "add", "--range", "20").returncode == 0
    result = site.run()
    assert result.returncode == ExitCode.BLACK_HOLE, result.stderr
    assert "black hole: 3 different tokens failed in a row" in result.stderr
    # The last line says what to do: look at one of the tokens the node failed.
    last = result.stderr.strip().splitlines()[-1]
    assert re.search(r"see why with `pilot\.pyz tokens show range-\d+`", last), last
    rows = pool_rows(site.folder / "pool.db")
    assert {row["state"] for row in rows} == {"todo"}
    assert all(row["failures"] == 0 for row in rows)
    tried = [row for row in rows if row["attempts"]]
    assert 3 <= len(tried) <= 4  # the streak, plus one that was running in the other slot
    for row in tried:
        assert row["attempts"][-1]["outcome"] == "node-unhealthy"
        assert (
            "black hole" in row["attempts"][-1]["reason"] and "exit code 1" in row["attempts"][-1]["reason"]
        )


def test_a_working_node_with_bad_tokens_does_not_trip(site: Site) -> None:
    site.write(
        local_config(
            site.folder, ["sh", "-c", 'test "$PILOT_TOKEN_BAD" != yes'], pilot={"black_hole_failures": 3}
        )
    )
    site.add_tokens([{"id": f"t{i}", "bad": "yes" if i % 3 == 0 else "no"} for i in range(12)])
    result = site.run()
    assert result.returncode == 0, result.stderr
    status = site.status()
    assert (status["done"], status["error"]) == (8, 4)
    assert all(
        row["failures"] == (1 if row["state"] == "error" else 0) for row in pool_rows(site.folder / "pool.db")
    )


def test_a_node_that_breaks_after_working_trips_after_twice_k_failures(site: Site) -> None:
    # Tokens 0 to 3 succeed, then every task fails, as on a node whose scratch disk filled up.
    site.write(
        local_config(
            site.folder,
            ["sh", "-c", 'test "$PILOT_TOKEN_INPUT" -lt 4'],
            pilot={"black_hole_failures": 3, "slots": 1},
        )
    )
    assert site.run("tokens", "add", "--range", "20").returncode == 0
    result = site.run()
    assert result.returncode == ExitCode.BLACK_HOLE, result.stderr
    assert "black hole: 6 different tokens failed in a row" in result.stderr
    rows = {row["id"]: row for row in pool_rows(site.folder / "pool.db")}
    assert [rows[f"range-{n}"]["state"] for n in range(4)] == ["done"] * 4
    given_back = [rows[f"range-{n}"] for n in range(4, 10)]
    assert all(row["state"] == "todo" and row["failures"] == 0 for row in given_back)
    assert all(row["attempts"][-1]["outcome"] == "node-unhealthy" for row in given_back)
    assert not any(rows[f"range-{n}"]["attempts"] for n in range(10, 20))


def test_failures_at_the_end_of_the_pool_are_still_reported(site: Site) -> None:
    site.write(local_config(site.folder, ["false"], pilot={"black_hole_failures": 3, "slots": 1}))
    assert site.run("tokens", "add", "--range", "2").returncode == 0
    result = site.run()
    assert result.returncode == 0, result.stderr
    assert site.status()["error"] == 2


def node_check_fails(site: Site, *expected: str) -> None:
    assert site.run("tokens", "add", "--range", "3").returncode == 0
    result = site.run()
    assert result.returncode == ExitCode.NODE_UNHEALTHY, result.stderr
    assert all(part in result.stderr for part in expected) and "Traceback" not in result.stderr, result.stderr
    assert site.status()["todo"] == 3
    assert all(not row["attempts"] for row in pool_rows(site.folder / "pool.db"))


def test_an_unwritable_workdir_stops_the_pilot_before_any_claim(site: Site) -> None:
    (site.folder / "a-file").write_text("")
    site.write(local_config(site.folder, ["true"], pilot={"workdir": str(site.folder / "a-file" / "work")}))
    node_check_fails(site, "node check 'workdir' failed: cannot write in", WRITABLE_WORKDIR)


def test_too_little_free_space_stops_the_pilot_before_any_claim(site: Site) -> None:
    site.write(local_config(site.folder, ["true"], pilot={"min_free_space": "1000000TB"}))
    node_check_fails(site, "less than pilot.min_free_space", FREE_SPACE)


def test_a_missing_program_stops_the_pilot_before_any_claim(site: Site) -> None:
    site.write(local_config(site.folder, ["no-such-analysis-tool", "{input}"]))
    node_check_fails(site, "node check 'program' failed: 'no-such-analysis-tool'", INSTALL_PROGRAM)


STUBBORN = (
    "trap '' TERM; "
    "(trap '' TERM; sleep 300) & echo $! > child; "
    "setsid sh -c 'trap \"\" TERM; sleep 301' & echo $! > detached; "
    "sleep 302"
)


def test_a_stop_kills_a_task_that_ignores_term_forks_and_detaches(site: Site, reaper: list) -> None:
    site.write(
        local_config(site.folder, ["sh", "-c", STUBBORN], task={"kill_grace": "1s"}, pilot={"slots": 1})
    )
    assert site.run("tokens", "add", "--range", "1").returncode == 0
    pilot = site.start(log_name="pilot.log")
    reaper.append(pilot)
    folder = wait_for(lambda: next((site.folder / "work").glob("*/range-0.1"), None), 30, what="task folder")
    detached = int(wait_for(lambda: (folder / "detached").exists() and (folder / "detached").read_text(), 30))
    child = int((folder / "child").read_text())
    pilot.send_signal(signal.SIGTERM)
    assert pilot.wait(timeout=30) == ExitCode.TERMINATED
    wait_for(lambda: not alive(child) and not alive(detached), 10, what="the task's processes to die")
    assert site.status()["todo"] == 1


def test_gigabytes_of_output_do_not_fill_the_pilots_memory(site: Site, reaper: list) -> None:
    site.write(
        local_config(
            site.folder,
            ["sh", "-c", "head -c 1073741824 /dev/zero; echo tail-marker"],
            pilot={"slots": 1, "keep_workdirs": "always"},
        )
    )
    assert site.run("tokens", "add", "--range", "1").returncode == 0
    process = site.start(log_name="pilot.log")
    reaper.append(process)
    code, peak = wait_with_peak_rss(process)
    assert code == 0
    assert peak < 60 * 2**20, f"the pilot peaked at {peak / 2**20:.0f} MB while its task wrote 1 GiB"
    tail = site.token("range-0")["stdout_tail"]
    assert len(tail.encode()) <= 4096 and tail.endswith("tail-marker\n")
    (stdout,) = (site.folder / "work").glob("*/range-0.1/stdout")
    assert stdout.stat().st_size == 2**30 + len("tail-marker\n")


def test_a_drain_signal_during_start_up_is_kept_not_fatal(site: Site, reaper: list) -> None:
    """Slurm's early USR1 can come while the pilot still fetches its input: it must drain, not die."""
    data = b"x" * 400_000
    with FileServer() as server:
        url = server.serve("/ref.bin", data, Rules(rate=100_000))  # about four seconds
        cache = {"cache": {"dir": str(site.folder / "cache")}, "cache.files.ref": {"url": url}}
        site.write(local_config(site.folder, ["true", "{cache.ref}"], **cache))
        assert site.run("tokens", "add", "--range", "3").returncode == 0
        pilot = site.start(log_name="pilot.log")
        reaper.append(pilot)
        wait_for(lambda: server.sent("/ref.bin") > 0, 30, what="the download to start")
        pilot.send_signal(signal.SIGUSR1)
        assert pilot.wait(timeout=60) == 0
    log = (site.folder / "pilot.log").read_text()
    assert "drain requested by SIGUSR1" in log
    assert site.status()["todo"] == 3
