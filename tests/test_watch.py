"""`pilot.pyz watch`: one plain line per refresh into a pipe, and the terminal view in a real
pseudo-terminal (a tmux pane on a socket of this test's own), its screen read back."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Site, local_config, wait_for
from test_views import local_history


def test_plain_lines_follow_a_running_pilot_until_the_pool_is_done(site: Site, reaper: list) -> None:
    site.write(local_config(site.folder, ["sleep", "0.3"], pilot={"slots": 2}))
    assert site.run("tokens", "add", "--range", "8").returncode == 0
    watch = subprocess.Popen(
        [*site.argv("watch", "--interval", "0.2s", "--exit-when-done"), "--config", str(site.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=site.env,
    )
    reaper.append(watch)
    pilot = site.start(log_name="pilot.log")
    reaper.append(pilot)
    assert pilot.wait(timeout=120) == 0
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) >= 3 and "\x1b" not in out  # no escapes into a pipe
    assert all(line.split(" ")[1] == "done" and " total 8 | " in line for line in lines)
    assert "todo 8" in lines[0] or "locked" in lines[0]
    assert lines[-1].split(" | ")[0].endswith("done 8 error 0 locked 0 todo 0 total 8")
    assert "eta finished" in lines[-1]
    assert any("running 2: " in line for line in lines)  # seen while the tasks ran


def test_plain_line_mode_ends_cleanly_on_sigint(site: Site, reaper: list) -> None:
    local_history(site)
    watch = subprocess.Popen(
        [*site.argv("watch", "--interval", "0.2s"), "--config", str(site.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=site.env,
    )
    reaper.append(watch)
    first = watch.stdout.readline()
    assert " done 9 error 4 locked 3 todo 7 total 23 | 0.8 done/min (5m) | eta 8m20s" in first
    assert "running 3: node-a 2, node-b 1" in first
    watch.send_signal(signal.SIGINT)
    _, err = watch.communicate(timeout=30)
    assert watch.returncode == 0 and "Traceback" not in err and "aborted" not in err


class Tmux:
    """A tmux server on a socket of its own: one pane running a command, read back as text."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        self.env = env

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def screen(self) -> list[str]:
        return self("capture-pane", "-p", "-t", "views").splitlines()

    def pane(self, variable: str) -> str:
        return self("display-message", "-p", "-t", "views", f"#{{{variable}}}").strip()


@pytest.fixture
def tmux(tmp_path: Path, site: Site) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: run `make test-deps` (tests/setup/install-tmux.sh)")
    server = Tmux(tmp_path / "tmux.sock", {**site.env, "TERM": "xterm-256color"})
    yield server
    subprocess.run(["tmux", "-S", str(server.socket), "kill-server"], capture_output=True, check=False)


def test_terminal_view_redraws_in_place_and_ends_on_ctrl_c(site: Site, tmux: Tmux) -> None:
    local_history(site)
    watch = shlex.join([*site.argv("watch", "--interval", "0.3s"), "--config", str(site.config)])
    # The shell stays after watch ends, so the pane (its cursor, its last frame) can still be read; its
    # trap keeps Ctrl-C, which goes to the whole foreground group, from ending it (watch gets SIGINT as is).
    command = f"trap true INT; {watch}; echo watch exit $?; sleep 600"
    tmux("new-session", "-d", "-s", "views", "-x", "110", "-y", "30", command)
    screen = wait_for(lambda: (s := tmux.screen()) and any("last failures:" in line for line in s) and s, 60)
    first_time = screen[0].split()[2]
    assert screen[0].startswith("pilot watch  ") and "(every 0.3s, Ctrl-C to stop)" in screen[0]
    bar = screen[1]
    assert len(bar) == 110 and bar[0] == "[" and bar[-1] == "]"
    cells = bar[1:-1]
    # 9 done, 4 error, 3 locked, 7 todo of 23 over 108 cells, largest remainders: 42, 19, 14, 33
    assert (cells.count("#"), cells.count("x"), cells.count("="), cells.count(".")) == (42, 19, 14, 33)
    assert cells == "#" * 42 + "x" * 19 + "=" * 14 + "." * 33
    assert screen[2] == "done 9  error 4  locked 3  todo 7  (57% of 23 finished)"
    assert screen[3].startswith("rate    0.8 done/min (5m), 0.1 (60m)    ETA 8m20s (about ")
    assert screen[4] == "running 3: node-a 2, node-b 1"
    assert screen[5] == "tasks   median 40s, p90 1m20s"
    failures = screen[screen.index("last failures:") + 1 :]
    assert [line.split()[1:3] for line in failures[:5]] == [
        ["r1", "node-bad"],
        ["r2", "node-bad"],
        ["e1", "node-bad"],
        ["e2", "node-bad"],
        ["d9", "node-bad"],
    ]
    assert tmux.pane("cursor_flag") == "0"  # hidden while it draws
    # Redrawn in place: a later frame (a new time on its first line) and still one frame on the screen.
    later = wait_for(lambda: (s := tmux.screen()) and s[0].split()[2] != first_time and s, 30)
    assert sum(line.startswith("pilot watch") for line in later) == 1
    assert later[1:3] == screen[1:3] and later[4:6] == screen[4:6]  # (the ETA's clock time moves on)
    tmux("send-keys", "-t", "views", "C-c")
    final = wait_for(
        lambda: (s := tmux.screen()) and any(line.endswith("watch exit 0") for line in s) and s,
        30,
        what="watch to end",
    )
    assert tmux.pane("cursor_flag") == "1"  # shown again
    assert not any("Traceback" in line or "aborted" in line for line in final)
    assert sum(line.startswith("pilot watch") for line in final) == 1  # the last frame stays


def test_count_ends_after_that_many_refreshes(site: Site) -> None:
    local_history(site)
    result = site.run("watch", "--interval", "0.1s", "--count", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(" total 23 | " in line for line in lines)
