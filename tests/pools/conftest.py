"""Fixtures for the CouchDB pool: pouchdb-server on 127.0.0.1 (one open, one with authentication), a fresh
database per test, site.toml files for it, and the picas client's own Python.

A missing server or client fails the tests that need it, with the reason; nothing is skipped.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import pytest
from servers.pouchdb import ADMIN, MEMBER, PouchDBServer, ServerMissing, require_picas
from servers.topos import ToposMissing, ToposServer, make_server

HERE = Path(__file__).resolve().parent


def executions(log: Path) -> collections.Counter[str]:
    """How often each token id was written to a task's log (one line per run)."""
    return collections.Counter(log.read_text().split()) if log.exists() else collections.Counter()


def start_server(folder: Path, *, auth: bool, in_memory: bool) -> PouchDBServer:
    try:
        return PouchDBServer(folder, auth=auth, in_memory=in_memory).start()
    except ServerMissing as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def pouchdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PouchDBServer]:
    """pouchdb-server without admins ("admin party"): anyone may do anything."""
    server = start_server(tmp_path_factory.mktemp("pouchdb-open"), auth=False, in_memory=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pouchdb_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PouchDBServer]:
    """pouchdb-server with an admin in its config and one member user in _users."""
    server = start_server(tmp_path_factory.mktemp("pouchdb-auth"), auth=True, in_memory=True)
    server.create_user(*MEMBER)
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PouchDBServer]:
    """A server for this test alone, on disk, so that it can be stopped and started again with its data."""
    server = start_server(tmp_path_factory.mktemp("pouchdb-own"), auth=False, in_memory=False)
    yield server
    server.stop()


@pytest.fixture
def couch_db(pouchdb: PouchDBServer) -> Iterator[str]:
    """A fresh database on the open server, deleted afterwards."""
    name = pouchdb.create_database()
    yield name
    pouchdb.delete_database(name)


@pytest.fixture
def member_db(pouchdb_auth: PouchDBServer) -> Iterator[str]:
    """A fresh database on the server with authentication, readable and writable by MEMBER only."""
    name = pouchdb_auth.create_database()
    pouchdb_auth.restrict(name, [MEMBER[0]])
    yield name
    pouchdb_auth.delete_database(name)


@pytest.fixture(scope="session")
def picas_python() -> Path:
    try:
        return require_picas()
    except ServerMissing as err:
        pytest.fail(str(err), pytrace=False)


def couch_config(
    folder: Path,
    couch: PouchDBServer,
    database: str,
    command: list[str],
    *,
    user: Optional[tuple[str, str]] = None,
    **overrides: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """A site.toml for the CouchDB pool; ``user`` writes a password file (mode 600) for it."""
    section: dict[str, Any] = {"backend": "couchdb", "url": couch.url, "database": database, "lease": "30s"}
    if user is not None:
        section.update(credentials(folder, user))
    return server_site(folder, section, command, overrides)


def credentials(folder: Path, user: tuple[str, str]) -> dict[str, str]:
    """server.username and a password file (mode 600) for ``user``."""
    password_file = folder / "password"
    password_file.write_text(user[1] + "\n")
    password_file.chmod(0o600)
    return {"username": user[0], "password_file": str(password_file)}


def server_site(
    folder: Path, section: dict[str, Any], command: list[str], overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """A site.toml with this [server] section; ``overrides`` replace or add keys per section."""
    sections: dict[str, dict[str, Any]] = {
        "server": section,
        "task": {"command": command, "timeout": "60s", "kill_grace": "2s"},
        "pilot": {"slots": 2, "workdir": str(folder / "work")},
    }
    for name, table in overrides.items():
        sections.setdefault(name, {}).update(table)
    return sections


def picas_side(
    python: Path,
    server: PouchDBServer,
    database: str,
    *args: str,
    user: tuple[str, str] = ADMIN,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run tests/pools/picas_side.py with the picas client's Python; fails the test if it fails."""
    env = {**os.environ, "PICAS_USER": user[0], "PICAS_PASSWORD": user[1]}
    if not server.auth:
        env.pop("PICAS_USER")
    result = subprocess.run(
        [str(python), str(HERE / "picas_side.py"), server.url, database, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def picas_argv(python: Path, server: PouchDBServer, database: str, *args: str) -> list[str]:
    return [str(python), str(HERE / "picas_side.py"), server.url, database, *args]


# -- ToPoS -------------------------------------------------------------------------------------------


def start_topos() -> ToposServer:
    """The real ToPoS 4.1 in a folder of its own under /tmp (Apache's www-data workers must read it, and
    pytest's folders are private); a failure to start fails the test with the servers' own words."""
    try:
        return make_server()
    except (ToposMissing, RuntimeError, OSError) as err:
        pytest.fail(f"the ToPoS test server did not start: {err}", pytrace=False)


@pytest.fixture(scope="session")
def topos() -> Iterator[ToposServer]:
    server = start_topos()
    yield server
    server.stop()
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture
def own_topos() -> Iterator[ToposServer]:
    """A ToPoS for this test alone, which it may stop and start again."""
    server = start_topos()
    yield server
    server.stop()
    shutil.rmtree(server.folder, ignore_errors=True)


def topos_config(
    folder: Path,
    topos: ToposServer,
    pool: str,
    command: list[str],
    *,
    user: Optional[tuple[str, str]] = None,
    **overrides: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """A site.toml for a ToPoS pool; ``user`` goes through the basic-auth port with a password file."""
    section: dict[str, Any] = {"backend": "topos", "url": topos.url, "pool": pool, "lease": "30s"}
    if user is not None:
        section.update({"url": topos.auth_url, **credentials(folder, user)})
    return server_site(folder, section, command, overrides)
