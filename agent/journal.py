"""Reports the server could not take yet, kept on node-local disk until it can.

One JSON line per report, flushed and fsynced before the pilot moves on, so a finished result survives a
server outage and even the pilot's own death: a pilot holds a lock on its journal while it lives, and the
next pilot on the node that finds a journal nobody holds sends its reports first (``orphans``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from agent.locks import file_lock, try_acquire
from agent.pools import Lease
from agent.token import Attempt, NewToken, Outcome, Report, Result, State, Token

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    lease: Lease
    report: Report


class Journal:
    def __init__(self, folder: Path, pilot_id: str) -> None:
        self.folder = folder
        self.path = folder / f"{pilot_id}.jsonl"
        self.entries: list[Entry] = []
        self._lock: Optional[Any] = None

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, lease: Lease, report: Report) -> None:
        """Keep a report until the server takes it; on disk before this returns."""
        self.entries.append(Entry(lease, report))
        self._save()

    def sent(self, count: int) -> None:
        """The first ``count`` entries reached the server (or were refused for good)."""
        del self.entries[:count]
        self._save()

    def _save(self) -> None:
        if not self.entries:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._hold()
        partial = self.path.with_suffix(".partial")
        with partial.open("w", encoding="utf-8") as file:
            for entry in self.entries:
                file.write(json.dumps(entry_to_json(entry), separators=(",", ":")) + "\n")
            file.flush()
            os.fsync(file.fileno())
        partial.replace(self.path)

    def _hold(self) -> None:
        """Hold our journal's lock while we live, so no other pilot replays it under our feet."""
        if self._lock is None:
            self._lock = file_lock(Path(str(self.path) + ".lock"))
            self._lock.acquire()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            if not self.entries:
                with contextlib.suppress(FileNotFoundError):
                    Path(self._lock.lock_file).unlink()
            self._lock = None


@contextlib.contextmanager
def orphans(folder: Path, own: Path) -> Iterator[list[tuple[Path, list[Entry]]]]:
    """Journals left on this node by pilots that are gone (nobody holds their lock), locked for us.

    Yields (path, entries) pairs; the caller sends the entries and then deletes each path it finished.
    """
    held: list[Any] = []
    found: list[tuple[Path, list[Entry]]] = []
    try:
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
            if path == own:
                continue
            lock = file_lock(Path(str(path) + ".lock"))
            if not try_acquire(lock, 0):
                continue  # its pilot is alive
            held.append(lock)
            found.append((path, read(path)))
        yield found
    finally:
        for lock in held:
            lock.release()


def read(path: Path) -> list[Entry]:
    """The entries of a journal file; a torn last line (the writer died mid-write) is skipped."""
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(entry_from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as err:
            log.warning("journal %s line %d unreadable, skipped: %s", path, number, err)
    return entries


def entry_to_json(entry: Entry) -> dict[str, Any]:
    lease, report, result = entry.lease, entry.report, entry.report.result
    token = lease.token
    return {
        "token": {
            "id": token.id,
            "fields": token.fields,
            "state": token.state.value,
            "attempts": [a.to_json() for a in token.attempts],
            "failures": token.failures,
        },
        "lease_id": lease.lease_id,
        "expires": lease.expires,
        "attempt": lease.attempt.to_json(),
        "handle": lease.handle,
        "state": report.state.value,
        "failures": report.failures,
        "children": [{"id": child.id, "fields": child.fields} for child in report.children],
        "result": {
            "outcome": result.outcome.value,
            "reason": result.reason,
            "started": result.started,
            "ended": result.ended,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "stdout_tail": base64.b64encode(result.stdout_tail).decode(),
            "stderr_tail": base64.b64encode(result.stderr_tail).decode(),
        },
    }


def entry_from_json(data: dict[str, Any]) -> Entry:
    t, r = data["token"], data["result"]
    token = Token(
        id=t["id"],
        fields=t["fields"],
        state=State(t["state"]),
        attempts=tuple(Attempt.from_json(a) for a in t["attempts"]),
        failures=t["failures"],
    )
    lease = Lease(
        token=token,
        lease_id=data["lease_id"],
        expires=data["expires"],
        attempt=Attempt.from_json(data["attempt"]),
        handle=data["handle"],
    )
    result = Result(
        outcome=Outcome(r["outcome"]),
        reason=r["reason"],
        started=r["started"],
        ended=r["ended"],
        exit_code=r["exit_code"],
        signal=r["signal"],
        stdout_tail=base64.b64decode(r["stdout_tail"]),
        stderr_tail=base64.b64decode(r["stderr_tail"]),
    )
    children = tuple(NewToken(c["id"], c["fields"]) for c in data.get("children", ()))  # none before 16
    report = Report(result=result, state=State(data["state"]), failures=data["failures"], children=children)
    return Entry(lease, report)
