"""How pilot's tokens and results look on a ToPoS 4.1 server: pure functions, no HTTP.

ToPoS stores bytes with a content type, and nothing else we could write to: a token has a numeric id, an
optional name, a lock and a lease count. So a ``text/*`` token's body is the field ``input``, byte for
byte (what the bash client's ``createTokensFromLinesInFile`` makes); an ``application/json`` object gives
the fields; the token's name, if it has one, is the field ``name``. There is no done or error state: a
done token leaves the pool and its result is a JSON token in the done pool; a token that failed for good
is moved to the error pool with its result beside it. Attempts that ended without finishing the token
(a failure with attempts left, a token given back) are kept as JSON tokens in the attempts pool until the
token finishes, so its result lists every attempt.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional
from urllib.parse import quote

from agent.token import Attempt, Outcome, Report, State, Token

JSON = "application/json"
TEXT = 'text/plain; charset="UTF-8"'  # what the bash client sends for a file of lines
RESULT = "pilot-result"
ATTEMPT = "pilot-attempt"
NO_RECORD = (
    "no record of this hand-out: its pilot went away without a report, or another client took the token"
)
CHARGED = frozenset(outcome.value for outcome in Outcome if outcome.charged)
_TOKEN_URL = re.compile(r"/tokens/(\d+)/?$")
_LOCK_URL = re.compile(r"/locks/([0-9A-Fa-f-]+)$")
_FILENAME = re.compile(r';\s*filename\s*=\s*"((?:[^"\\]|\\.)*)"')
_MESSAGE = re.compile(r'<pre id="message">(.*?)</pre>', re.DOTALL)
_TITLE = re.compile(r"<title>(.*?)</title>", re.DOTALL | re.IGNORECASE)
_COUNT = re.compile(r"\b(\d+) (tokens|locks)\b")


@dataclass(frozen=True)
class Pools:
    """The pool and its companions on the server."""

    todo: str
    done: str
    error: str

    @property
    def attempts(self) -> str:
        return f"{self.todo}.attempts"


def token_id_of(location: str) -> Optional[str]:
    """The token id at the end of a token URL (a ``Location`` header), or None."""
    found = _TOKEN_URL.search(location or "")
    return found.group(1) if found else None


def lock_of(lock_url: str) -> Optional[str]:
    """The lock's UUID at the end of ``X-Topos-LockURL``; None when the header names no lock."""
    found = _LOCK_URL.search(lock_url or "")
    return found.group(1) if found else None


def leases_of(headers: Mapping[str, str]) -> int:
    """How often the token was handed out (``X-Number-Of-Leases``); 0 when missing or unreadable."""
    try:
        return max(0, int(headers.get("X-Number-Of-Leases", "0")))
    except ValueError:
        return 0


def name_of(headers: Mapping[str, str]) -> str:
    """The token's name, from ``Content-Disposition: inline; filename="..."`` (empty when it has none)."""
    found = _FILENAME.search(headers.get("Content-Disposition", ""))
    return re.sub(r"\\(.)", r"\1", found.group(1)) if found else ""


def counts_of(page: str) -> dict[str, int]:
    """``tokens`` and ``locks`` from a pool's page (``GET pools/P/``, any of its formats)."""
    return {kind: int(number) for number, kind in _COUNT.findall(page)}


def summary(body: bytes, limit: int = 120) -> str:
    """One short line from a ToPoS or Apache error page: its message's first line, else its title; never
    the rest of the body (5xx pages carry a PHP stack trace)."""
    text = body[:20000].decode("utf-8", "replace")
    for pattern in (_MESSAGE, _TITLE):
        found = pattern.search(text)
        if found:
            line = _unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip().split("\n", 1)[0].strip()
            if line:
                return line[:limit]
    return "no details"


def is_topos_page(body: bytes) -> bool:
    """Whether an error body is one of ToPoS's own pages (not a proxy's or Apache's)."""
    return b'id="message"' in body[:20000]


def _unescape(text: str) -> str:
    for escaped, plain in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#039;", "'"), ("&amp;", "&")):
        text = text.replace(escaped, plain)
    return text


def token_fields(body: bytes, content_type: str, name: str) -> tuple[dict[str, Any], str]:
    """The fields of a token as the task sees them, and a problem to log ('' when none).

    A JSON object gives the fields; anything else (text, octet-stream, JSON that is not an object) is the
    field ``input``, its bytes kept (surrogateescape) so that the task gets them unchanged."""
    problem = ""
    if content_type.split(";", 1)[0].strip().lower() == JSON:
        try:
            value = json.loads(body)
        except ValueError:
            value, problem = None, "its application/json body is not valid JSON; passed on as `input`"
        if isinstance(value, dict):
            fields = dict(value)
            if name and "name" not in fields:
                fields["name"] = name
            return fields, ""
        problem = problem or "its JSON body is not an object; passed on as `input`"
    fields = {"input": body.decode("utf-8", "surrogateescape")}
    if name:
        fields["name"] = name
    return fields, problem


def json_body(fields: Mapping[str, Any]) -> bytes:
    """An application/json token's body; the field ``name`` becomes the token's name instead."""
    return json.dumps({k: v for k, v in fields.items() if k != "name"}, ensure_ascii=False).encode()


def line_chunks(lines: Iterable[str], size: int) -> Iterable[tuple[int, bytes]]:
    """Lines as ``text/plain`` bodies of about ``size`` bytes, each line ending in a newline (ToPoS drops
    a last line "0" that has none), with how many lines each holds. Lines are never split."""
    parts: list[bytes] = []
    length = 0
    for line in lines:
        data = line.encode("utf-8", "surrogateescape") + b"\n"
        parts.append(data)
        length += len(data)
        if length >= size:
            yield len(parts), b"".join(parts)
            parts, length = [], 0
    if parts:
        yield len(parts), b"".join(parts)


def check_line(line: str) -> Optional[str]:
    """Why a line cannot be one text/plain token (ToPoS splits on newlines and strips CR), or None."""
    if "\n" in line or line.endswith("\r"):
        return "a line for ToPoS cannot hold a newline or end in a carriage return"
    return None


def disposition(name: str) -> str:
    """A ``Content-Disposition`` naming a new token (ToPoS keeps the filename as the token's name)."""
    return 'attachment; filename="' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def document_of(body: bytes) -> Optional[dict[str, Any]]:
    """A result document from a result token's body; None for anything else."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) and document.get("type") == RESULT else None


def token_of_result(document: Mapping[str, Any]) -> Token:
    """The finished token a result document describes: its fields, state and every attempt."""
    fields, _ = token_fields(body_of(document), str(document.get("content_type") or ""), "")
    attempts = tuple(Attempt.from_json(a) for a in document.get("attempts") or [] if isinstance(a, dict))
    state = State.ERROR if document.get("state") == State.ERROR.value else State.DONE
    return Token(str(document.get("token")), fields, state, attempts, int(document.get("failures") or 0))


def created_of(row: Mapping[str, Any]) -> float:
    """A listing row's ``Created`` (ISO 8601, UTC) as epoch seconds; 0 when unreadable."""
    try:
        created = datetime.strptime(str(row.get("Created")), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return 0.0
    return created.replace(tzinfo=timezone.utc).timestamp()


def is_result(row: Mapping[str, Any]) -> bool:
    """A result token of ours in a listing (named result-<id>, JSON), not a token moved to the pool."""
    name = str(row.get("Original Name") or "")
    return name.startswith("result-") and str(row.get("Content-Type", "")).startswith(JSON)


def tails_of(document: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The stdout and stderr tails a result or attempt record holds."""
    return (
        str(document.get("stdout_tail") or "").encode(),
        str(document.get("stderr_tail") or "").encode(),
    )


def host_of(description: str) -> str:
    """The host in a lock's description: ours read "pilot <id> on <host>[, batch job ...]"; another
    client's (the bash client writes `hostname -f`) is taken as it is."""
    if description.startswith("pilot ") and " on " in description:
        return description.split(" on ", 1)[1].split(",", 1)[0]
    return description or "?"


def claim_description(pilot: str, number: int) -> str:
    """A claim's lock description: the pilot (as ``host_of`` reads it) and the claim's number, so that a
    claim whose answer was lost finds its lock among the pool's locks."""
    return f"{pilot}, claim {number}"


def lock_token_id(page: bytes) -> Optional[str]:
    """The token id on a lock's ``text/plain`` page (``TokenId: 10291067``), or None."""
    found = re.search(rb"^TokenId: (\d+)\s*$", page, re.MULTILINE)
    return found.group(1).decode() if found else None


def result_name(token_id: str) -> str:
    return f"result-{token_id}"


def attempt_name(token_id: str, lease: int) -> str:
    return f"attempt-{token_id}-{lease}"


def attempt_lease(name: str, token_id: str) -> Optional[int]:
    """The lease number of an attempt record's name for this token, or None for other names."""
    prefix = f"attempt-{token_id}-"
    if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
        return None
    return int(name[len(prefix) :])


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def content_of(body: bytes) -> dict[str, Any]:
    """A token's body inside a JSON document: as text when it is UTF-8, else base64."""
    try:
        return {"content": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"content": None, "content_base64": base64.b64encode(body).decode("ascii")}


def body_of(document: Mapping[str, Any]) -> bytes:
    if document.get("content_base64"):
        return base64.b64decode(document["content_base64"])
    return str(document.get("content") or "").encode()


def attempt_record(token: Token, lease: int, attempt: Attempt, report: Report) -> dict[str, Any]:
    """One attempt that did not finish the token, kept until the token is done or in error."""
    return {
        "type": ATTEMPT,
        "token": token.id,
        "lease": lease,
        "attempt": attempt.to_json(),
        "stdout_tail": _text(report.result.stdout_tail),
        "stderr_tail": _text(report.result.stderr_tail),
    }


def history(leases: int, records: Mapping[int, Mapping[str, Any]], current: Attempt) -> list[Attempt]:
    """Every attempt, one per hand-out: the kept records, ``lease-expired`` for hand-outs nobody reported,
    and the current one last."""
    attempts = []
    for lease in range(1, leases):
        record = records.get(lease)
        if record is not None and isinstance(record.get("attempt"), dict):
            attempts.append(Attempt.from_json(record["attempt"]))
        else:
            attempts.append(
                Attempt("?", "?", None, 0.0, outcome=Outcome.LEASE_EXPIRED.value, reason=NO_RECORD)
            )
    attempts.append(current)
    return attempts


def charged(attempts: Iterable[Attempt]) -> int:
    """How many of these attempts count against ``task.max_attempts``: charged failures, as in every
    pool; a hand-out given back, or one without a record (lease-expired), is not charged."""
    return sum(1 for attempt in attempts if attempt.outcome in CHARGED)


def result_document(
    token: Token,
    report: Report,
    *,
    pool: str,
    body: bytes,
    content_type: str,
    lock: str,
    leases: int,
    attempts: list[Attempt],
) -> dict[str, Any]:
    """What a done or failed-for-good token leaves in the done or error pool."""
    result = report.result
    return {
        "type": RESULT,
        "token": token.id,
        "pool": pool,
        "state": report.state.value,
        "content_type": content_type,
        **content_of(body),
        "lock": lock,  # which run wrote it: a report resent after a lost answer finds its own
        "leases": leases,
        "exit_code": result.exit_code,
        "signal": result.signal,
        "reason": result.reason,
        "failures": report.failures,
        "attempts": [attempt.to_json() for attempt in attempts],
        "stdout_tail": _text(result.stdout_tail),
        "stderr_tail": _text(result.stderr_tail),
    }


def quoted(text: str) -> str:
    return quote(text, safe="")
