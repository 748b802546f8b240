"""The soak's backends: each starts its real server as the tests do, writes the [server] section, makes
the server go away for the outage and come back, counts the pool's states while the soak runs, and reads
every token at the end, straight from the server (sqlite3, urllib), never through the code under test.

What an outage is per backend:
- local: there is no server; the pool file's write lock is held for the outage (``BEGIN EXCLUSIVE`` from
  the soak, as a long `sqlite3` session or a backup would): every claim, renewal and report waits on it;
- CouchDB: pouchdb-server (data on disk) is stopped and started again;
- ToPoS: Apache is stopped and started again (MariaDB stays up: the pilots meet connection errors).
"""

from __future__ import annotations

import abc
import concurrent.futures
import json
import re
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from servers.pouchdb import PouchDBServer  # noqa: E402

DATABASE = "soak"
# The soak's parts beyond plain tokens, and the module of agent/ that brings each: a pilot.pyz built
# without it gets no such part (and its checks say n/a).
FEATURES = {
    "sizes": "resources.py",
    "after": "dependencies.py",
    "children": "children.py",
    "cancel": "cancel.py",
}


def built_features() -> frozenset[str]:
    """The parts this checkout's agent/ has."""
    agent = HERE.parents[1] / "agent"
    return frozenset(name for name, module in FEATURES.items() if (agent / module).exists())


STATES = ("todo", "waiting", "locked", "done", "error")


@dataclass
class Final:
    """One token as the pool holds it at the end, the same shape on every backend."""

    id: str
    state: str  # todo, waiting, locked, done or error
    fields: dict[str, Any]
    attempts: list[dict[str, Any]]  # Attempt.to_json() objects, oldest first
    failures: int  # charged failures, as the pool counts them
    reason: str = ""  # why it is in error, where the pool says (cancelled, dependency x failed)
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific: PiCaS error entries, ...


class Backend(abc.ABC):
    """One real pool server for one scenario."""

    name: str
    outage_kind: str  # what the outage is, for the figures
    #: what the pool can do beyond plain tokens (the workload's parts, the checks that need them)
    features: frozenset[str] = frozenset(FEATURES)
    #: a hand-out nobody reported is listed without its pilot, as lease-expired (ToPoS keeps only a count)
    unnamed_handouts = False
    #: why a feature is missing, for the table
    missing: ClassVar[dict[str, str]] = {}
    #: ToPoS: result tokens whose body is not a result (a PUT cut short; ToPoS keeps what arrived)
    half_written: Optional[list[str]] = None

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def server_section(self) -> dict[str, Any]:
        """The [server] keys the pilots need (lease, timeout and max_outage are the scenario's)."""

    @abc.abstractmethod
    def go_away(self) -> None:
        """Start the outage."""

    @abc.abstractmethod
    def come_back(self) -> None:
        """End the outage."""

    @abc.abstractmethod
    def counts(self) -> Optional[dict[str, int]]:
        """How many tokens are in each state now; None when the server does not answer."""

    @abc.abstractmethod
    def finals(self) -> dict[str, Final]:
        """Every token of the pool at the end, by id."""


# -- local ------------------------------------------------------------------------------------------


class LocalBackend(Backend):
    name = "local"
    outage_kind = "pool file's write lock held"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.path = folder / "pool.db"
        self.holder: Optional[sqlite3.Connection] = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        self.come_back()

    def server_section(self) -> dict[str, Any]:
        return {"backend": "local", "path": str(self.path)}

    def go_away(self) -> None:
        holder = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # in WAL mode: no writer until we end it; readers go on
        self.holder = holder

    def come_back(self) -> None:
        holder, self.holder = self.holder, None
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()

    def _rows(self, query: str) -> list[sqlite3.Row]:
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5) as db:
            db.row_factory = sqlite3.Row
            return db.execute(query).fetchall()

    def _columns(self) -> set[str]:
        return {row["name"] for row in self._rows("PRAGMA table_info(tokens)")}

    def counts(self) -> Optional[dict[str, int]]:
        try:
            waiting = "waiting" in self._columns()
            rows = self._rows(
                "SELECT state, waiting > 0 AS w, count(*) AS n FROM tokens GROUP BY state, w"
                if waiting
                else "SELECT state, 0 AS w, count(*) AS n FROM tokens GROUP BY state"
            )
        except sqlite3.Error:
            return None
        found = dict.fromkeys(STATES, 0)
        for row in rows:
            found["waiting" if row["state"] == "todo" and row["w"] else row["state"]] += row["n"]
        return found

    def finals(self) -> dict[str, Final]:
        waiting = "waiting" in self._columns()
        waiting_column = "waiting" if waiting else "0 AS waiting"  # a pool made before dependencies
        rows = self._rows(
            f"SELECT id, state, fields, attempts, failures, reason, {waiting_column} FROM tokens"  # noqa: S608
        )
        finals = {}
        for row in rows:
            state = "waiting" if row["state"] == "todo" and row["waiting"] else row["state"]
            finals[row["id"]] = Final(
                id=row["id"],
                state=state,
                fields=json.loads(row["fields"]),
                attempts=json.loads(row["attempts"]),
                failures=row["failures"],
                reason=row["reason"] or "",
            )
        return finals


# -- CouchDB ----------------------------------------------------------------------------------------


class CouchBackend(Backend):
    name = "couchdb"
    outage_kind = "pouchdb-server stopped"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.server = PouchDBServer(folder / "server", auth=False, in_memory=False)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def server_section(self) -> dict[str, Any]:
        return {"backend": "couchdb", "url": self.server.url, "database": DATABASE}

    def go_away(self) -> None:
        self.server.stop()

    def come_back(self) -> None:
        if self.server.process is None:
            self.server.start()

    def counts(self) -> Optional[dict[str, int]]:
        try:
            answer = self.server.request(
                "GET", f"/{DATABASE}/_design/Monitor/_view/overview_total?group=true"
            )
        except OSError:
            return None
        if answer.status != 200:
            return None
        found = {row["key"]: row["value"] for row in answer.body["rows"]}
        counts = {state: int(found.get(state, 0)) for state in STATES}
        # Waiting tokens (lock -1) are in no PiCaS view: pilot.pyz's own counts them, where init made it.
        waiting = self.server.request("GET", f"/{DATABASE}/_design/pilot-waiting/_view/waiting")
        if waiting.status == 200 and waiting.body["rows"]:
            counts["waiting"] = int(waiting.body["rows"][0]["value"])
        return counts

    def finals(self) -> dict[str, Final]:
        return {token_id: couch_final(doc) for token_id, doc in self.server.docs(DATABASE).items()}


def couch_state(doc: dict[str, Any]) -> str:
    """The PiCaS view a token is in, from its lock, done and exit_code (as the Monitor views say); a
    waiting token (lock -1) is in none."""
    if doc["lock"] == -1:
        return "waiting"
    if doc["lock"] and doc["done"]:
        return "done" if doc["exit_code"] == 0 else "error"
    return "locked" if doc["lock"] else "todo"


def couch_final(doc: dict[str, Any]) -> Final:
    ours = doc.get("pilot", {})
    state = couch_state(doc)
    errors = doc.get("error") or []
    reason = str(errors[-1].get("message", "")) if state == "error" and errors else ""
    return Final(
        id=doc["_id"],
        state=state,
        fields=doc,
        attempts=ours.get("attempts", []),
        failures=ours.get("failures", 0),
        reason=reason,
        extra={"picas_errors": len(doc.get("error", []))},
    )


# -- ToPoS ------------------------------------------------------------------------------------------


class ToposBackend(Backend):
    """The real ToPoS 4.1 (tests/servers/topos.py): Apache with mod_php and a private MariaDB."""

    name = "topos"
    outage_kind = "Apache stopped"
    unnamed_handouts = True
    features = frozenset()
    missing: ClassVar[dict[str, str]] = {
        "sizes": "ToPoS keeps no per-token resources",
        "after": "ToPoS has no dependencies",
        "children": "ToPoS has no tokens added by tasks",
        "cancel": "ToPoS has no cancel",
    }

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        from servers.topos import ToposServer  # only where the ToPoS fixture is

        folder.chmod(0o755)  # Apache's www-data workers read ToPoS's files in here
        self.server = ToposServer(folder / "topos")
        self.half_written = []

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def server_section(self) -> dict[str, Any]:
        return {"backend": "topos", "url": self.server.url, "pool": DATABASE}

    def go_away(self) -> None:
        self.server.stop_apache()

    def come_back(self) -> None:
        if self.server.apache is None:
            self.server.start_apache()

    def page_count(self, pool: str, kind: str) -> int:
        answer = self.server.request("GET", f"pools/{pool}/", headers={"Accept": "text/plain"})
        found = re.search(rf"(\d+) {kind}", answer.text)
        return int(found.group(1)) if answer.status == 200 and found else 0

    def counts(self) -> Optional[dict[str, int]]:
        try:
            tokens, locks = self.page_count(DATABASE, "tokens"), self.page_count(DATABASE, "locks")
            done = self.page_count(f"{DATABASE}.done", "tokens")
            error = self.page_count(f"{DATABASE}.error", "tokens") // 2  # each token beside its result
        except OSError:
            return None
        return {"todo": tokens - locks, "waiting": 0, "locked": locks, "done": done, "error": error}

    def documents(self, pool: str) -> list[tuple[str, bytes]]:
        """(token id, body) of every token in ``pool``, read eight at a time."""
        ids = [row["Name"] for row in self.server.listing(pool)]

        def body(token_id: str) -> tuple[str, bytes]:
            answer = self.server.token(pool, int(token_id))
            if answer.status != 200:
                raise RuntimeError(f"ToPoS: {pool} token {token_id}: HTTP {answer.status}")
            return token_id, answer.body

        with concurrent.futures.ThreadPoolExecutor(8) as workers:
            return list(workers.map(body, ids))

    def finals(self) -> dict[str, Final]:
        """Results from the done and error pools (JSON documents of type pilot-result), and whatever is
        still in the pool as todo (the checks then say it is not finished)."""
        finals: dict[str, Final] = {}
        for pool in (f"{DATABASE}.done", f"{DATABASE}.error"):
            for result_id, body in self.documents(pool):
                try:
                    document = json.loads(body)
                except ValueError:
                    # A PUT cut short (its pilot killed mid-request): ToPoS stores whatever arrived. The
                    # figures count them; the token's run is checked from its real result, or found missing.
                    self.half_written.append(f"{pool} {result_id}: {body[:40]!r}")
                    continue
                if not isinstance(document, dict) or document.get("type") != "pilot-result":
                    continue  # a token moved to the error pool, beside its result
                token_id = str(document["token"])
                finals[token_id] = Final(
                    id=token_id,
                    state=document["state"],
                    fields=json.loads(document.get("content") or "{}"),
                    attempts=document.get("attempts", []),
                    failures=int(document.get("failures") or 0),
                    reason=document.get("reason", ""),
                    extra={"leases": document.get("leases")},
                )
        for token_id, body in self.documents(DATABASE):
            finals.setdefault(token_id, Final(token_id, "todo", json.loads(body), [], 0))
        return finals


BACKENDS: dict[str, type[Backend]] = {"local": LocalBackend, "couchdb": CouchBackend}
if (HERE.parent / "servers" / "topos.py").exists():  # the ToPoS fixture, where ToPoS is supported
    BACKENDS["topos"] = ToposBackend
