"""`tokens show`, `tokens list`, `tokens export` and `tokens delete`: tokens as people and pandas read them.

Times are written twice: epoch seconds as stored, and ISO 8601 in UTC beside them (``claimed_iso``, ...).
Listings and exports walk the pool page by page (``Pool.iter_tokens``): memory stays constant however
many tokens there are.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Optional

from agent.errors import UsageError
from agent.pools.base import Listed, Pool
from agent.stats import duration, iso
from agent.token import Attempt, State, Token

TIMES = ("claimed", "started", "ended")


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    """An attempt as stored, with its times also in ISO 8601 (UTC) and its duration."""
    shown = attempt.to_json()
    for name in TIMES:
        shown[f"{name}_iso"] = iso(shown[name])
    shown["duration"] = duration(attempt)
    return shown


def _tail_fields(name: str, data: bytes) -> dict[str, str]:
    """A tail as text; bytes that are not UTF-8 also come as base64, so an export loses nothing."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {name: data.decode("utf-8", "replace"), f"{name}_base64": base64.b64encode(data).decode()}


def token_json(token: Token, tails: Optional[tuple[bytes, bytes]]) -> dict[str, Any]:
    """One token as `tokens show` prints it and `tokens export` writes it, one line each."""
    shown: dict[str, Any] = {
        "id": token.id,
        "state": token.state.value,
        "fields": dict(token.fields),
        "failures": token.failures,
        "attempts": [attempt_json(attempt) for attempt in token.attempts],
    }
    if token.reason:
        shown["reason"] = token.reason
    if tails is not None:
        shown.update(_tail_fields("stdout_tail", tails[0]))
        shown.update(_tail_fields("stderr_tail", tails[1]))
    return shown


def show(pool: Pool, token_id: str) -> str:
    token = pool.get(token_id)
    return json.dumps(token_json(token, pool.tails(token_id)), indent=2, ensure_ascii=False, default=str)


# -- list ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What `tokens list` keeps: the last attempt's reason contains ``reason`` (any case), its host is
    ``host``."""

    reason: Optional[str] = None
    host: Optional[str] = None

    def keep(self, token: Token) -> bool:
        last = token.attempts[-1] if token.attempts else None
        if self.host is not None and (last is None or last.host != self.host):
            return False
        return self.reason is None or (last is not None and self.reason.lower() in last.reason.lower())


def parse_state(text: Optional[str]) -> Optional[State]:
    if text is None:
        return None
    try:
        return State(text)
    except ValueError:
        known = ", ".join(state.value for state in State)
        raise UsageError(f"--state {text!r}: not a state (one of {known})") from None


def summary(token: Token) -> dict[str, Any]:
    """A token's line in `tokens list --json`: what the table shows, as data."""
    last = token.attempts[-1] if token.attempts else None
    return {
        "id": token.id,
        "state": token.state.value,
        "attempts": len(token.attempts),
        "host": last.host if last else None,
        "duration": duration(last) if last else None,
        "exit_code": last.exit_code if last else None,
        "outcome": last.outcome if last else None,
        "reason": last.reason if last else "",
        "ended": last.ended if last else None,
        "ended_iso": iso(last.ended) if last else None,
    }


def listed(pool: Pool, state: Optional[State], filters: Filters, limit: Optional[int]) -> Iterator[Token]:
    kept = 0
    for item in pool.iter_tokens(state):
        if limit is not None and kept >= limit:
            return
        if filters.keep(item.token):
            kept += 1
            yield item.token


HEADER = ("id", "state", "attempts", "last host", "duration", "exit", "reason")


def table_row(token: Token) -> str:
    from agent.units import format_duration

    line = summary(token)
    took = "-" if line["duration"] is None else format_duration(line["duration"])
    code = "-" if line["exit_code"] is None else str(line["exit_code"])
    host = line["host"] or "-"
    return _cells((line["id"], line["state"], str(line["attempts"]), host, took, code, line["reason"]))


def _cells(cells: Sequence[str]) -> str:
    widths = (24, 7, 8, 20, 9, 5)
    return "  ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths)) + "  " + cells[-1]


def header() -> str:
    return _cells(HEADER)


# -- export ----------------------------------------------------------------------------------------


def export(pool: Pool, out: IO[str], state: Optional[State]) -> int:
    """One JSON line per token with its fields, state, every attempt and the tails; how many were written."""
    written = 0
    for item in pool.iter_tokens(state, tails=True):
        out.write(json.dumps(token_json(item.token, _tails(pool, item)), ensure_ascii=False) + "\n")
        written += 1
    return written


def _tails(pool: Pool, item: Listed) -> Optional[tuple[bytes, bytes]]:
    return item.tails if item.tails is not None else pool.tails(item.token.id)


def export_to(pool: Pool, path: Path, state: Optional[State]) -> int:
    """Write to a temporary name and rename: a half-written export never looks finished."""
    temporary = path.with_name(path.name + ".part")
    try:
        with temporary.open("w", encoding="utf-8") as out:
            written = export(pool, out, state)
        temporary.replace(path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise UsageError(f"export file {path}: {err.strerror}") from None
    return written


# -- delete ----------------------------------------------------------------------------------------


def delete(
    pool: Pool,
    ids: Sequence[str],
    state: Optional[State],
    confirm: Callable[[str], bool],
) -> str:
    """Delete the tokens named, or every token in ``state``, once ``confirm`` says yes; what was done."""
    if bool(ids) == (state is not None):
        raise UsageError("give token ids or --state S, not both and not neither")
    if state is not None:
        count = getattr(pool.counts(), state.value)
        if count == 0:
            return f"no {state.value} tokens in {pool.where}: nothing deleted"
        question = f"delete all {count} {state.value} tokens from {pool.where}?"
        if not confirm(question):
            return "nothing deleted"
        return f"deleted {pool.delete_state(state)} tokens"
    unique = list(dict.fromkeys(ids))
    locked = [token_id for token_id in unique if pool.get(token_id).state is State.LOCKED]
    note = f" ({len(locked)} of them running now; their pilots' reports will be refused)" if locked else ""
    if not confirm(f"delete {len(unique)} tokens from {pool.where}{note}?"):
        return "nothing deleted"
    return f"deleted {pool.delete(unique)} tokens{note}"
