"""Shared fixtures: the built pilot.pyz, site.toml files written per test, and pilots run as subprocesses.

Tests run the real zipapp as users do (``./pilot.pyz ...``). Its packages unpack into a per-session
folder (PILOT_PYZ_ROOT) so the tests never touch the machine's /tmp/pilot-pyz-<uid>.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

# A shell snippet for task commands: counts this token's runs in files under $COUNTS and leaves the
# number of earlier runs in $n, for commands that fail the first few times.
COUNT_RUNS = 'n=$(ls "$COUNTS" | grep -c "^$PILOT_TOKEN_ID\\." || true); touch "$COUNTS/$PILOT_TOKEN_ID.$n"; '


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A small TOML writer for test configs: {"server": {...}, "cache.files.ref": {...}}."""
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


@pytest.fixture(scope="session")
def pyz() -> Path:
    """The zipapp under test: $PILOT_PYZ, or ./pilot.pyz built by `make pyz` (built here if missing)."""
    path = Path(os.environ.get("PILOT_PYZ", REPO / "pilot.pyz"))
    if not path.exists():
        subprocess.run([sys.executable, str(REPO / "build" / "build.py"), "--output", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def pyz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pyz-root")


@dataclass
class Site:
    """One test's site: its folder, its site.toml, and how to run pilot.pyz against it."""

    folder: Path
    config: Path
    pyz: Path
    env: dict[str, str]

    def write(self, sections: Mapping[str, Mapping[str, Any]]) -> Path:
        self.config.write_text(to_toml(sections))
        return self.config

    def argv(self, *args: str) -> list[str]:
        return [str(self.pyz), *args]

    def run(
        self, *args: str, timeout: float = 120, env: Optional[Mapping[str, str]] = None, config: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pilot.pyz <args> --config <site.toml>`` to the end; returns the completed process."""
        argv = self.argv(*args) + (["--config", str(self.config)] if config else [])
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            cwd=self.folder,
            check=False,
        )

    def start(
        self, *args: str, env: Optional[Mapping[str, str]] = None, log_name: Optional[str] = None
    ) -> subprocess.Popen[str]:
        """Start ``pilot.pyz <args> --config <site.toml>`` in the background; stderr goes to a log file."""
        log = (self.folder / (log_name or f"pilot-{time.monotonic_ns()}.log")).open("w")
        return subprocess.Popen(
            [*self.argv(*args), "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.folder,
            start_new_session=True,
        )

    def add_tokens(self, tokens: list[dict[str, Any]]) -> None:
        """Add these tokens (JSON objects, in this order) with `tokens add --jsonl`."""
        (self.folder / "tokens.jsonl").write_text("".join(json.dumps(token) + "\n" for token in tokens))
        added = self.run("tokens", "add", "--jsonl", "tokens.jsonl")
        assert added.returncode == 0, added.stderr

    def status(self) -> dict[str, int]:
        """The counts of `status --json` (todo, locked, done, error, waiting, total), no other figures."""
        result = self.run("status", "--json")
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        return {key: shown[key] for key in ("todo", "locked", "done", "error", "waiting", "total")}

    def token(self, token_id: str) -> dict[str, Any]:
        result = self.run("tokens", "show", token_id)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def site(tmp_path: Path, pyz: Path, pyz_root: Path) -> Site:
    return Site(folder=tmp_path, config=tmp_path / "site.toml", pyz=pyz, env=pilot_env(tmp_path, pyz_root))


def pilot_env(folder: Path, pyz_root: Path) -> dict[str, str]:
    """The environment pilots run in: this machine's, with pilot.pyz unpacking into ``pyz_root``, TMPDIR
    in ``folder``, and no site config or Slurm job of the shell that started the tests."""
    env = {**os.environ, "PILOT_PYZ_ROOT": str(pyz_root), "TMPDIR": str(folder)}
    for variable in ("PILOT_CONFIG", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_END_TIME"):
        env.pop(variable, None)
    return env


def local_config(
    folder: Path, command: list[str], **overrides: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """A site.toml for the local pool in ``folder``; ``overrides`` replace or add keys per section."""
    sections: dict[str, dict[str, Any]] = {
        "server": {"backend": "local", "path": str(folder / "pool.db"), "lease": "30s"},
        "task": {"command": command, "timeout": "60s", "kill_grace": "2s"},
        "pilot": {"slots": 2, "workdir": str(folder / "work")},
    }
    for name, table in overrides.items():
        sections.setdefault(name, {}).update(table)
    return sections


def pool_rows(pool: Path) -> list[dict[str, Any]]:
    """Every token of a local pool file, read directly with sqlite3 (not through the code under test)."""
    with sqlite3.connect(pool) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, state, fields, attempts, failures, exit_code, reason FROM tokens"
        ).fetchall()
    return [
        {**dict(row), "fields": json.loads(row["fields"]), "attempts": json.loads(row["attempts"])}
        for row in rows
    ]


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line a user's mistake prints: the documented exit code, no traceback, `pilot: error: ...`."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("pilot: error: ")
    return lines[0]


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for a parent that does not reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def a_node_dies_mid_task(
    site: Site, reaper: list[subprocess.Popen[Any]], token_id: str, ran: Path, timeout: float = 60
) -> None:
    """Start a pilot; once its task for ``token_id`` runs, kill the pilot and the task at once (the node
    goes away, nobody says goodbye), check the token is still locked, then run a second pilot to the end.
    The task (tests/tasks/record.py, logging to ``ran``) must have finished once, by the second pilot,
    after the first one's lease expired."""
    first = site.start(log_name="first.log")
    reaper.append(first)
    started = wait_for(
        lambda: next((site.folder / "work").glob(f"*/{token_id}.1/pid"), None), timeout, what="task start"
    )
    task_pid = int(wait_for(started.read_text, 5, what="task pid"))
    os.kill(first.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):  # the pilot's guard may have killed it already
        os.killpg(task_pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert site.status()["locked"] == 1
    second = site.start(log_name="second.log")
    reaper.append(second)
    log = site.folder / "second.log"
    assert second.wait(timeout=timeout * 2) == 0, log.read_text()[-2000:]
    assert ran.read_text().split() == [token_id]
    token = site.token(token_id)
    assert token["state"] == "done"
    assert [a["outcome"] for a in token["attempts"]] == ["lease-expired", "done"]
    assert token["attempts"][0]["pilot"] != token["attempts"][1]["pilot"]


def wait_with_peak_rss(
    process: subprocess.Popen[Any], interval: float = 0.01, timeout: float = 600
) -> tuple[int, int]:
    """Wait for ``process``; returns (exit code, its own peak RSS in bytes, from /proc's VmHWM). After
    ``timeout`` seconds it is killed and subprocess.TimeoutExpired raised.

    Not wait4's ru_maxrss: a child started with vfork inherits its parent's high-water mark at exec, so
    under a big pytest process every child would look big."""
    peak = 0
    status = Path(f"/proc/{process.pid}/status")
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise subprocess.TimeoutExpired(process.args, timeout)
        peak = max(peak, high_water_mark(status))
        time.sleep(interval)
    return process.returncode, peak


def high_water_mark(status: Path) -> int:
    """VmHWM of a /proc/<pid>/status, in bytes; 0 once the process is exiting (the last reading stands)."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def wait_for(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[Any]]]:
    """Processes a test starts; whatever is still alive at the end is killed with its process group."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    for process in started:
        if process.poll() is None:
            try:
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                process.kill()
            process.wait(timeout=10)
