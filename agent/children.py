"""Tokens a task adds: one JSON object a line in ``$PILOT_NEW_TOKENS``, a file in the task's own folder.

They are read once the task succeeded and go to the pool with its report, in the same write, so either
the task is done and its children exist, or neither. A child's id is the task's token id, a dot and the
line number, unless the line gives an ``id``: the same file always makes the same tokens, so a report
sent twice, or a task run again, never doubles them. A malformed line fails the attempt with a reason
naming the file and the line, and nothing is added.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from agent.dependencies import after_of, topological
from agent.errors import ChildrenError, DependencyError, PilotError
from agent.token import NewToken, Outcome, Report, Result, Token, check_token_id, make_report

ENV = "PILOT_NEW_TOKENS"
FILE = "new-tokens.jsonl"
POOL = "pool"  # a child's field that names the pool it goes to, one of [server] pools


def path_in(folder: str) -> str:
    """The file in a task's folder, as a plain string: once per task, pathlib costs more than it helps."""
    return f"{folder}/{FILE}"


def read(path: str, parent: str) -> tuple[NewToken, ...]:
    """The children in ``path`` (none when there is no such file); ChildrenError for a malformed line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # most tasks add none: one failed open, no more
    except FileNotFoundError:
        return ()
    except OSError as err:
        raise ChildrenError(Path(path), 0, f"cannot read: {err.strerror}") from None
    return _children(Path(path), fd, parent)


def _children(path: Path, fd: int, parent: str) -> tuple[NewToken, ...]:
    try:
        with open(fd, "rb") as file:
            data = file.read()
    except OSError as err:
        raise ChildrenError(path, 0, f"cannot read: {err.strerror}") from None
    children: list[NewToken] = []
    lines: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        child = _parse(path, number, raw, parent)
        if child.id in lines:
            raise ChildrenError(path, number, f"id {child.id!r} is on line {lines[child.id]} too")
        lines[child.id] = number
        children.append(child)
    try:  # a cycle among the children is known here; unknown ids only at the pool
        topological({child.id: after_of(child.id, child.fields) for child in children})
    except DependencyError as err:
        raise ChildrenError(path, lines[err.token_ids[0].split(" -> ")[0]], err.problem) from None
    return tuple(children)


def _parse(path: Path, number: int, raw: bytes, parent: str) -> NewToken:
    try:
        fields = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ChildrenError(path, number, f"not valid JSON: {err}") from None
    if not isinstance(fields, dict):
        raise ChildrenError(path, number, f"expected a JSON object, got {type(fields).__name__}")
    token_id = fields.pop("id", None) or f"{parent}.{number}"
    try:
        check_token_id(token_id)
        after_of(token_id, fields)
    except ValueError as err:
        raise ChildrenError(path, number, str(err)) from None
    except DependencyError as err:
        raise ChildrenError(path, number, err.problem) from None
    for name in fields:
        if name.startswith("_"):
            raise ChildrenError(path, number, f"field {name!r} starts with '_', which CouchDB reserves")
    pool = fields.get(POOL)
    if pool is not None and not isinstance(pool, str):
        raise ChildrenError(path, number, f"`{POOL}` must be the name of a pool, got {pool!r}")
    return NewToken(token_id, fields)


def collect(result: Result, folder: str, token: Token) -> tuple[Result, tuple[NewToken, ...]]:
    """A finished task's result and its children: a done task's file is read; a malformed line turns
    the result into a failure of the attempt."""
    if result.outcome is not Outcome.DONE:
        return result, ()
    try:
        return result, read(path_in(folder), token.id)
    except ChildrenError as err:
        return failed(result, str(err)), ()


def failed(result: Result, reason: str) -> Result:
    return replace(result, outcome=Outcome.FAILED, reason=f"the task succeeded but its new tokens: {reason}")


def refused(lease_token: Token, report: Report, err: PilotError, max_attempts: int) -> Report:
    """The report to send instead of one whose children the pool refused (an id it has already, an
    `after` that names a token nowhere): a failure of the attempt, without children."""
    return make_report(lease_token, failed(report.result, str(err)), max_attempts)
