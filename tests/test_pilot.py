"""The pilot end to end, through the built pilot.pyz as a subprocess, on the embedded local pool."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, Site, a_node_dies_mid_task, alive, local_config, pool_rows, wait_for

TASKS = REPO / "tests" / "tasks"
PY = sys.executable


def test_two_pilots_with_two_slots_run_every_token_exactly_once(site: Site, reaper: list) -> None:
    ran = site.folder / "ran.log"
    site.write(local_config(site.folder, [PY, str(TASKS / "record.py"), str(ran), "{id}", "0.02"]))
    assert site.run("tokens", "add", "--range", "60").returncode == 0
    pilots = [site.start(log_name=f"pilot{n}.log") for n in range(2)]
    reaper.extend(pilots)
    assert [pilot.wait(timeout=180) for pilot in pilots] == [0, 0]
    executed = ran.read_text().split()
    assert len(executed) == 60 and set(executed) == {f"range-{i}" for i in range(60)}
    assert site.status() == {"todo": 0, "locked": 0, "done": 60, "error": 0, "waiting": 0, "total": 60}
    for n in range(2):
        log = (site.folder / f"pilot{n}.log").read_text()
        assert " INFO done in " in log, "both pilots should have run tasks"
        assert "pilot ends (exit 0): pool empty" in log
    for row in pool_rows(site.folder / "pool.db"):
        assert [a["outcome"] for a in row["attempts"]] == ["done"]


def test_a_pilot_killed_mid_task_loses_its_token_to_another_after_the_lease(site: Site, reaper: list) -> None:
    ran = site.folder / "ran.log"
    site.write(
        local_config(
            site.folder,
            [PY, str(TASKS / "record.py"), str(ran), "{id}", "{input}"],
            server={"lease": "2s"},
            pilot={"slots": 1, "idle_timeout": "60s"},
        )
    )
    site.add_tokens([{"id": "slow", "input": "3"}])
    a_node_dies_mid_task(site, reaper, "slow", ran, timeout=30)


def test_an_idle_pilot_waits_for_tokens_held_elsewhere_at_most_idle_timeout(site: Site, reaper: list) -> None:
    ran = site.folder / "ran.log"
    command = [PY, str(TASKS / "record.py"), str(ran), "{id}", "{input}"]
    site.write(local_config(site.folder, command, pilot={"slots": 1, "idle_timeout": "2s"}))
    site.add_tokens([{"id": "long", "input": "10"}])
    holder = site.start(log_name="holder.log")
    reaper.append(holder)
    wait_for(lambda: site.status()["locked"] == 1, 30, what="the long task to start")
    started = time.monotonic()
    idle = site.run()
    waited = time.monotonic() - started
    assert idle.returncode == 0, idle.stderr
    expected = "pool empty: nothing to claim, 1 token(s) still locked by other pilots after waiting 2.0s"
    assert expected in idle.stderr, idle.stderr[-2000:]
    assert waited >= 2, waited  # no sooner than the timeout; the task still runs
    assert holder.wait(timeout=60) == 0
    assert ran.read_text().split() == ["long"]


def test_timeouts_missing_commands_and_failures_are_errors_and_the_pilot_goes_on(site: Site) -> None:
    site.write(
        local_config(
            site.folder,
            ["{prog}", "{arg}"],
            task={"timeout": "1s", "kill_grace": "1s"},
            pilot={"black_hole_failures": 0},  # four failures in five tokens would trip it (tested elsewhere)
        )
    )
    tokens = [
        {"id": "slow", "prog": "/bin/sleep", "arg": "30"},
        {"id": "missing", "prog": "/nonexistent/tool", "arg": ""},
        {"id": "failing", "prog": "/bin/false", "arg": ""},
        {"id": "no-field", "prog": "/bin/true"},
        {"id": "fine", "prog": "/bin/true", "arg": ""},
    ]
    site.add_tokens(tokens)
    result = site.run()
    assert result.returncode == 0, result.stderr
    rows = {row["id"]: row for row in pool_rows(site.folder / "pool.db")}
    assert rows["fine"]["state"] == "done"
    assert rows["slow"]["state"] == "error" and rows["slow"]["reason"].startswith(
        "timeout: still running after"
    )
    assert rows["slow"]["attempts"][0]["outcome"] == "timeout"
    assert (
        rows["missing"]["state"] == "error"
        and rows["missing"]["reason"] == "command not found: /nonexistent/tool"
    )
    assert rows["failing"]["state"] == "error" and rows["failing"]["exit_code"] == 1
    assert rows["no-field"]["state"] == "error" and "has no field 'arg'" in rows["no-field"]["reason"]
    assert "pool empty" in result.stderr


def test_a_pilot_stopped_past_its_tasks_deadline_reports_what_they_exited_with(
    site: Site, reaper: list
) -> None:
    """SIGSTOP the pilot while its task runs, let the task exit in time, wake the pilot after the task's
    deadline: the task is done with its exit code, not timed out (the pilot reaps before it applies
    deadlines; the soak's freezes found it the other way round)."""
    script = 'touch "$1/started"; while [ ! -e "$1/gate" ]; do sleep 0.05; done'
    site.write(
        local_config(
            site.folder,
            ["/bin/sh", "-c", script, "task", str(site.folder)],
            task={"timeout": "2s"},
            pilot={"slots": 1},
        )
    )
    site.add_tokens([{"id": "quick"}])
    pilot = site.start(log_name="pilot.log")
    reaper.append(pilot)
    wait_for((site.folder / "started").exists, 60, what="the task to start")
    os.kill(pilot.pid, signal.SIGSTOP)
    try:
        (site.folder / "gate").touch()  # the task exits now, well within its 2 s
        time.sleep(3)  # the pilot sleeps through the deadline
    finally:
        os.kill(pilot.pid, signal.SIGCONT)
    assert pilot.wait(timeout=60) == 0, (site.folder / "pilot.log").read_text()[-3000:]
    (row,) = pool_rows(site.folder / "pool.db")
    assert (row["state"], row["exit_code"], [a["outcome"] for a in row["attempts"]]) == ("done", 0, ["done"])


NASTY_LINES = [
    b"; touch pwned1",
    b"$(touch pwned2)",
    b"`touch pwned3`",
    b"'quoted' \"double\" && touch pwned4 | cat > pwned5",
    b"caf\xc3\xa9 with raw \xff\xfe bytes",
    b"  spaces around  ",
    b"--flag-looking -rf ~",
]


def test_shell_syntax_in_tokens_is_passed_as_data_and_never_executed(site: Site) -> None:
    out = site.folder / "out"
    out.mkdir()
    (site.folder / "nasty.txt").write_bytes(b"\n".join(NASTY_LINES) + b"\n")
    site.write(local_config(site.folder, [PY, str(TASKS / "echo_bytes.py"), str(out), "{id}", "{input}"]))
    assert site.run("tokens", "add", "--lines", "nasty.txt").returncode == 0
    site.add_tokens([{"id": "newline", "input": "a\n; touch pwned6\n'b\""}])
    result = site.run()
    assert result.returncode == 0, result.stderr
    expected = {f"nasty-{n}": line for n, line in enumerate(NASTY_LINES, start=1)}
    expected["newline"] = b"a\n; touch pwned6\n'b\""
    for token_id, value in expected.items():
        assert (out / f"{token_id}.argv").read_bytes() == value, token_id
        assert (out / f"{token_id}.env").read_bytes() == value, token_id
    assert not [p for p in site.folder.rglob("pwned*")]
    assert not [p for p in Path.cwd().glob("pwned*")]


def test_a_shell_command_gets_values_through_the_environment(site: Site) -> None:
    out = site.folder / "out"
    out.mkdir()
    script = 'printf "%s" "$PILOT_TOKEN_INPUT" > "$0/$PILOT_TOKEN_ID"'
    site.write(local_config(site.folder, ["sh", "-c", script, str(out)]))
    (site.folder / "nasty.txt").write_bytes(b"\n".join(NASTY_LINES) + b"\n")
    assert site.run("tokens", "add", "--lines", "nasty.txt").returncode == 0
    assert site.run().returncode == 0
    for n, line in enumerate(NASTY_LINES, start=1):
        assert (out / f"nasty-{n}").read_bytes() == line
    assert not [p for p in site.folder.rglob("pwned*")]


def test_a_timed_out_task_is_killed_with_its_grandchildren_even_detached_ones(site: Site) -> None:
    # A child in the task's process group, and one that left it with setsid and ignores TERM.
    script = (
        "sleep 300 & echo $! > grandchild; "
        "setsid sh -c 'trap \"\" TERM; exec sleep 301' & echo $! > detached; "
        "wait"
    )
    site.write(local_config(site.folder, ["sh", "-c", script], task={"timeout": "1s", "kill_grace": "1s"}))
    assert site.run("tokens", "add", "--range", "1").returncode == 0
    result = site.run()
    assert result.returncode == 0, result.stderr
    (folder,) = (site.folder / "work").glob("*/range-0.1")
    grandchild = int((folder / "grandchild").read_text())
    detached = int((folder / "detached").read_text())
    wait_for(lambda: not alive(grandchild) and not alive(detached), 10, what="grandchildren to die")
    assert "timeout: still running after 1.0s, killed" in result.stderr


# Each task leaves a process behind outside its group (its pid is written after setsid) and exits; the
# second first waits, at most 10 s, for the first one's to die, and says whether it did and whether its
# own is still alive.
LEAVE_ONE_BEHIND = """
setsid sh -c 'echo $$ > "$0/left.$1"; exec sleep 301' "$0" "$PILOT_TOKEN_ID" < /dev/null > /dev/null 2>&1 &
while [ ! -s "$0/left.$PILOT_TOKEN_ID" ]; do sleep 0.01; done
gone() ( state=$(cut -d' ' -f3 "/proc/$1/stat" 2> /dev/null); [ -z "$state" ] || [ "$state" = Z ] )
if [ "$PILOT_TOKEN_ID" = range-1 ]; then
  first=$(cat "$0/left.range-0"); i=0
  while ! gone "$first" && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
  for token in range-0 range-1; do
    if gone "$(cat "$0/left.$token")"; then echo gone; else echo alive; fi > "$0/seen.$token"
  done
fi
"""


def test_what_finished_tasks_left_detached_is_killed_soon_after_and_at_the_end_not_what_others_run(
    site: Site, reaper: list
) -> None:
    command = ["sh", "-c", LEAVE_ONE_BEHIND, "{pilot.config_dir}"]
    site.write(local_config(site.folder, command, pilot={"slots": 1, "kill_leftovers_after": "1s"}))
    assert site.run("tokens", "add", "--range", "2").returncode == 0
    # A process carrying another pilot's cookie is not this pilot's to kill.
    env = {**os.environ, "PILOT_TASK_COOKIE": "0123456789abcdef-0"}
    other = subprocess.Popen(["sleep", "302"], env=env, start_new_session=True)  # the reaper kills its group
    reaper.append(other)
    try:
        result = site.run()
        assert result.returncode == 0, result.stderr
        # range-0's leftover died while range-1 ran, about a second after range-0 ended; range-1's lived on.
        assert (site.folder / "seen.range-0").read_text() == "gone\n"
        assert (site.folder / "seen.range-1").read_text() == "alive\n"
        killed = "killed 1 process(es) that finished tasks had left running, detached: "
        assert re.findall(re.escape(killed) + r"(.*)", result.stderr) == ["range-0 (1)", "range-1 (1)"]
        left = [int(path.read_text()) for path in site.folder.glob("left.*")]
        assert len(left) == 2
        # range-1's too, when the pilot ended.
        wait_for(lambda: not any(alive(pid) for pid in left), 10, what="the leftovers to die")
        assert other.poll() is None
    finally:  # after a failure, stop what the tasks left
        for path in site.folder.glob("left.*"):
            pid = int(path.read_text())
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_max_tasks_stops_claiming_and_leaves_the_rest(site: Site) -> None:
    site.write(local_config(site.folder, ["/bin/true"], pilot={"max_tasks": 3, "slots": 2}))
    assert site.run("tokens", "add", "--range", "10").returncode == 0
    result = site.run()
    assert result.returncode == 0
    assert "max_tasks (3) reached" in result.stderr
    assert site.status() == {"todo": 7, "locked": 0, "done": 3, "error": 0, "waiting": 0, "total": 10}


def test_task_folders_are_kept_only_for_failures_by_default(site: Site) -> None:
    site.write(local_config(site.folder, ["sh", "-c", 'test "$PILOT_TOKEN_INPUT" != 1']))
    assert site.run("tokens", "add", "--range", "3").returncode == 0
    assert site.run().returncode == 0
    kept = sorted(p.name for p in (site.folder / "work").glob("*/*"))
    assert kept == ["range-1.1"]
    assert (site.folder / "work").glob("*/range-1.1/stderr")


FOLDER_PROBE = """
echo "$PILOT_TOKEN_INPUT $(stat -c %i .) $(ls -A | tr '\\n' ' ')" >> "$0/folders.log"
case "$PILOT_TOKEN_INPUT" in
  1) touch leftover ;;
  2) setsid sh -c 'touch "$0/left-2"; sleep 1; echo late-from-2' "$0" &
     while [ ! -e "$0/left-2" ]; do sleep 0.01; done ;;  # out of the group: not killed when 2 ends
  3) sleep 2 ;;
esac
echo "mine $PILOT_TOKEN_INPUT"
"""


def test_emptied_task_folders_are_renamed_for_the_next_task_and_never_carry_anything_over(site: Site) -> None:
    site.write(
        local_config(site.folder, ["sh", "-c", FOLDER_PROBE, "{pilot.config_dir}"], pilot={"slots": 1})
    )
    assert site.run("tokens", "add", "--range", "5").returncode == 0
    run = site.run("run", "--verbose")
    assert run.returncode == 0, run.stderr
    seen = [line.split(" ", 2) for line in (site.folder / "folders.log").read_text().splitlines()]
    assert [token for token, _, _ in seen] == ["0", "1", "2", "3", "4"]
    assert all(listing.split() == ["stderr", "stdout"] for _, _, listing in seen)  # fresh: nothing left over
    renamed = re.findall(
        r"token=range-(\d) DEBUG task folder: the emptied \S+/range-(\d)\.1, renamed", run.stderr
    )
    # 1 left a file behind: its folder was removed, and 2 got a new one.
    assert renamed == [("1", "0"), ("3", "2"), ("4", "3")]
    # 2 left a process that wrote to its stdout while 3 ran in the same folder: 3's output is its own.
    assert site.token("range-3")["stdout_tail"] == "mine 3\n"
    assert list((site.folder / "work").glob("*/*")) == []  # no spare folder left at the end
