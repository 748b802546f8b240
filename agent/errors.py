"""The errors a user can meet, each with its message written once, and the exit codes they end with.

The CLI is the only place that turns these into a printed line and an exit code (see ``cli.main``).
Anything that is not a ``PilotError`` is a bug and is shown with its traceback.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional


class ExitCode(enum.IntEnum):
    """Exit codes of pilot.pyz; the README has the same table."""

    OK = 0  # pool empty, max_tasks reached, or drained before the walltime
    INTERNAL = 1  # a bug in pilot: the traceback is printed
    CONFIG = 2  # bad site.toml or command-line input; nothing was claimed
    POOL = 3  # the pool is unusable: missing, corrupt or unreadable, refused credentials
    SERVER_UNREACHABLE = 4  # the pool server stayed away longer than server.max_outage, or cannot be reached
    CACHE = 5  # a cache entry could not be made ready; nothing was claimed
    NODE_UNHEALTHY = 6  # a check of the node failed before the first claim
    BLACK_HOLE = 7  # tasks kept failing on this node; the pilot stopped claiming
    ENVIRONMENT = 8  # pilot.pyz could not unpack its own dependencies (see build/pilot_boot.py)
    INTERRUPTED = 130  # stopped by SIGINT; running tasks were given back
    TERMINATED = 143  # stopped by SIGTERM; running tasks were given back


class PilotError(Exception):
    """Root of every expected error. ``str(err)`` is the one line shown to the user."""

    exit_code: ExitCode = ExitCode.INTERNAL


class ConfigError(PilotError):
    """A problem in site.toml, named by file and dotted key (or line and column)."""

    exit_code = ExitCode.CONFIG

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {problem}")


class UsageError(PilotError):
    """Bad command-line input, such as a missing or malformed token file."""

    exit_code = ExitCode.CONFIG


class PoolError(PilotError):
    """The pool cannot be used: ``where`` names the file or URL."""

    exit_code = ExitCode.POOL

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"pool {where}: {problem}")


class TokenError(PilotError):
    """A named token cannot be stored or found."""

    exit_code = ExitCode.POOL

    def __init__(self, token_id: str, problem: str) -> None:
        self.token_id = token_id
        self.problem = problem
        super().__init__(f"token {token_id!r}: {problem}")


class DependencyError(UsageError):
    """New tokens whose ``after`` lists cannot be met: ids that exist nowhere, or a cycle."""

    def __init__(
        self, problem: str, token_ids: list[str], hint: str = "", added: str = "nothing was added"
    ) -> None:
        self.problem = problem
        self.token_ids = token_ids
        self.hint = hint
        said = f"{problem}: {', '.join(token_ids)}; {added}"
        super().__init__(f"{said}; {hint}" if hint else said)


class ChildrenError(UsageError):
    """A line of a task's new-tokens file (``$PILOT_NEW_TOKENS``) that cannot be a token."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(f"{path}:{line}: {problem}; no tokens were added")


# Transport problems that waiting does not cure, as ServerUnreachable names them (see Outage.hopeless).
CERTIFICATE_FAILED = "TLS certificate verification failed"
HOST_NOT_FOUND = "host name not found"
LASTING = frozenset((CERTIFICATE_FAILED, HOST_NOT_FOUND))


EVERY_POOL = "`status`, `watch` and `tokens show ID` work on every pool"  # what a user can do instead


class NotSupported(PoolError):
    """This kind of pool cannot do what a command asks (yet): ``what`` names it."""

    def __init__(self, where: str, what: str) -> None:
        self.what = what
        super().__init__(where, f"{what} is not supported by this kind of pool; {EVERY_POOL}")


class ServerUnreachable(PoolError):
    """The pool server did not answer (connection refused, timeout, 5xx, 429) after retries.
    ``retry_after``: the seconds its Retry-After header asked for, if it sent one."""

    exit_code = ExitCode.SERVER_UNREACHABLE

    def __init__(self, where: str, problem: str, retry_after: Optional[float] = None) -> None:
        super().__init__(where, problem)
        self.retry_after = retry_after


class ClaimUnreachable(ServerUnreachable):
    """The report went in, but the claim made along with it found the server away: ``saved`` is how the
    report went (a ``pools.Saved``). No leases then means an outage, not an empty pool."""

    def __init__(self, err: ServerUnreachable, saved: object) -> None:
        super().__init__(err.where, err.problem, err.retry_after)
        self.saved = saved


class ServerBusy(ServerUnreachable):
    """The server answered that it is too busy (HTTP 429 or 503): the request was not carried out."""


class CacheError(PilotError):
    """A cache entry could not be made ready; ``entry`` names it as in ``[cache.files.<entry>]``."""

    exit_code = ExitCode.CACHE

    def __init__(self, entry: str, problem: str) -> None:
        self.entry = entry
        self.problem = problem
        super().__init__(f"cache entry {entry!r}: {problem}")


class NodeUnhealthy(PilotError):
    """A check before the first claim failed, so this node should not take tokens."""

    exit_code = ExitCode.NODE_UNHEALTHY

    def __init__(self, check: str, problem: str) -> None:
        self.check = check
        self.problem = problem
        super().__init__(f"node check {check!r} failed: {problem}")


class DuplicateToken(TokenError):
    """A token id the pool already has, so nothing was added; ``hint`` says where the id came from."""

    def __init__(self, token_id: str, where: str = "", hint: str = "") -> None:
        self.where = where
        self.hint = hint
        pool = f"the pool {where}" if where else "the pool"
        super().__init__(token_id, f"already in {pool}; nothing was added" + (f". {hint}" if hint else ""))

    def explained(self, hint: str) -> DuplicateToken:
        return DuplicateToken(self.token_id, self.where, hint)


class DifferentToken(TokenError):
    """A token id the pool has with other fields, left as it was, in an add that is resumable rather than
    atomic (CouchDB): ``left`` says what the add put in before it; ``hint`` where the id came from."""

    def __init__(self, token_id: str, where: str, left: str, more: int = 0, hint: str = "") -> None:
        self.where = where
        self.left = left
        self.more = more
        self.hint = hint
        also = f" (and {more} more)" if more else ""
        problem = f"already in the pool {where} with other fields{also}, left as it was; {left}"
        super().__init__(token_id, problem + (f". {hint}" if hint else ""))

    def explained(self, hint: str) -> DifferentToken:
        return DifferentToken(self.token_id, self.where, self.left, self.more, hint)


class RepeatedToken(TokenError):
    """One id given twice by the same input; ``left`` says what the add left in the pool, ``given``
    where the two are (the input, or a file's two lines once the CLI has found them)."""

    def __init__(self, token_id: str, left: str, given: str = "the input") -> None:
        self.left = left
        super().__init__(
            token_id, f'given twice in {given}; {left}. Ids must differ within a file: give one another "id"'
        )

    def located(self, path: str, lines: tuple[int, int]) -> RepeatedToken:
        return RepeatedToken(self.token_id, self.left, f"{path}, on lines {lines[0]} and {lines[1]}")


# What to do about an id the pool does not have.
FIND_ID = "`pilot.pyz tokens list` shows the ids (a file's tokens are <file name>-<line number>)"

# Where a duplicate id came from, as `tokens add` made it ({prefix} is the one it used).
IDS_FROM_FILE = (
    "Ids are {prefix}-<line number>, from the file's name and its line numbers: to add these lines as new "
    "tokens, give them other ids with --prefix (e.g. --prefix {prefix}-2)"
)
IDS_FROM_RANGE = (
    "Ids are {prefix}-<i>: to add more tokens, give them other ids with --prefix (e.g. --prefix {prefix}-2)"
)
ID_FROM_JSON = 'The id is the JSON line\'s own "id"{line}: give the line another one to add it as a new token'
