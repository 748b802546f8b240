"""pouchdb-server (npm, pinned by tests/setup/install-node.sh) on 127.0.0.1: start, stop, restart, admin.

Used by the pytest fixtures (tests/pools/conftest.py) and by the standalone benchmark, so it depends on
the standard library only, and talks to the server with urllib, not with the code under test.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]
POUCHDB_SERVER = REPO / ".deps" / "node" / "node_modules" / ".bin" / "pouchdb-server"
PICAS_PYTHON = REPO / ".deps" / "picas-venv" / "bin" / "python"
ADMIN = ("admin", "admin-secret-1")  # the server admin, in --config; only ever on 127.0.0.1
MEMBER = ("alice", "alice-secret-7")  # the one member of the restricted test databases
START_TIMEOUT = 60.0


class ServerMissing(RuntimeError):
    """What the tests need is not installed: the message says how to install it."""


def require(path: Path, what: str, script: str) -> Path:
    if not path.exists():
        raise ServerMissing(f"{what} is not installed at {path}: run `make test-deps` (tests/setup/{script})")
    return path


def require_pouchdb_server() -> Path:
    return require(POUCHDB_SERVER, "pouchdb-server", "install-node.sh, which needs node and npm")


def require_picas() -> Path:
    return require(PICAS_PYTHON, "the picas client", "install-picas.sh")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Answer:
    status: int
    body: Any


class PouchDBServer:
    """One pouchdb-server process. ``auth``: an admin in its config (else everyone is admin)."""

    def __init__(self, folder: Path, *, auth: bool, in_memory: bool, log_requests: bool = False) -> None:
        self.binary = require_pouchdb_server()
        self.folder = folder
        self.auth = auth
        self.in_memory = in_memory
        self.log_requests = log_requests
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.log = folder / "server.log"

    # -- process -----------------------------------------------------------------------------------

    def start(self) -> PouchDBServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "config.json"
        if not config.exists():  # a restart keeps the config, which the server rewrote with hashes
            settings: dict[str, Any] = {
                "log": {
                    "file": str(self.folder / "requests.log"),
                    "level": "info" if self.log_requests else "error",
                }
            }
            if self.auth:
                settings["admins"] = {ADMIN[0]: ADMIN[1]}
            config.write_text(json.dumps(settings))
        argv = [
            str(self.binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--config",
            str(config),
            "--no-stdout-logs",
        ]
        argv += ["--in-memory"] if self.in_memory else ["--dir", str(self.folder / "data")]
        (self.folder / "data").mkdir(exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pouchdb-server exited with {self.process.returncode}: {self.tail()}")
            try:
                if self.request("GET", "/", admin=False).status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pouchdb-server did not answer within {START_TIMEOUT}s: {self.tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def request_count(self, database: str) -> int:
        """Requests logged for ``database`` (only with ``log_requests``)."""
        text = (self.folder / "requests.log").read_text(errors="replace")
        return sum(
            1 for line in text.splitlines() if f" /{database}/" in line or line.endswith(f" /{database}")
        )

    # -- admin over HTTP (urllib, never the code under test) ---------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        admin: bool = True,
        user: Optional[tuple[str, str]] = None,
    ) -> Answer:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        credentials = user or (ADMIN if admin and self.auth else None)
        if credentials:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our loopback server
                return Answer(response.status, json.loads(response.read() or b"null"))
        except urllib.error.HTTPError as err:
            return Answer(err.code, json.loads(err.read() or b"null"))

    def create_database(self, name: Optional[str] = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:12]}"
        answer = self.request("PUT", f"/{name}")
        assert answer.status in (201, 202), answer
        return name

    def delete_database(self, name: str) -> None:
        self.request("DELETE", f"/{name}")

    def create_user(self, name: str, password: str) -> None:
        doc = {"name": name, "password": password, "roles": [], "type": "user"}
        answer = self.request("PUT", f"/_users/org.couchdb.user:{name}", doc)
        assert answer.status in (201, 202), answer

    def restrict(self, database: str, members: list[str]) -> None:
        security = {"admins": {"names": [], "roles": []}, "members": {"names": members, "roles": []}}
        answer = self.request("PUT", f"/{database}/_security", security)
        assert answer.status in (200, 201), answer

    def docs(self, database: str) -> dict[str, dict[str, Any]]:
        """Every document of the database except design documents, by id."""
        answer = self.request("GET", f"/{database}/_all_docs?include_docs=true")
        assert answer.status == 200, answer
        return {row["id"]: row["doc"] for row in answer.body["rows"] if not row["id"].startswith("_design/")}

    def view_ids(self, database: str, design: str, view: str) -> list[str]:
        answer = self.request("GET", f"/{database}/_design/{design}/_view/{view}")
        assert answer.status == 200, answer
        return [row["id"] for row in answer.body["rows"]]
