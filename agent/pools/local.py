"""The embedded pool: one SQLite file in WAL mode, shared by every pilot process on the node.

A claim runs in a ``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock before reading, so two
pilots can never both see a token free. Reports and renewals are conditional on the lease id, so a pilot
that lost its lease cannot overwrite the attempt that replaced it.

WAL needs shared memory between the processes, so the file must be on node-local disk, not NFS.
"""

from __future__ import annotations

import functools
import itertools
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

from agent import dependencies
from agent.errors import FIND_ID, DuplicateToken, PoolError, RepeatedToken, TokenError
from agent.identity import Identity, unique_ids
from agent.pools.base import (
    PAGE,
    Counts,
    Lease,
    Listed,
    NewToken,
    Pool,
    ReasonCount,
    Renewal,
    Saved,
    SizeCount,
    batches,
    missing_id,
    most_first,
)
from agent.resources import FIELDS, Fit, stored_needs
from agent.token import Attempt, Outcome, Report, State, Token, close_attempt

CHECK_PATH = "check that server.path names a pool file"  # what to do about a file that is not one
RESTORE = "the file is damaged: restore a copy, or give server.path a new pool and add the tokens again"

SCHEMA_VERSION = 2
CANCELLED = Outcome.CANCELLED.value  # the reason of a cancelled token
_NEEDS = tuple(f"need_{name}" for name in FIELDS)  # columns added in place to pools made before them
_ROW = "id, state, fields, attempts, failures, lease_id, lease_expires, " + ", ".join(_NEEDS)
EXPIRY_SCAN = 5.0  # seconds between looks for expired leases while there is todo work
BUSY_TIMEOUT_MS = 60_000  # many pilots on one node queue for the write lock; a claim takes microseconds
# Tokens (by seq) one probe for a big token looks through (see _Stretch). SQLite reads every todo row
# of the range to test its request, in the write transaction every pilot of the file waits on: 250 ms
# for a million tokens, none of them bigger, at every probe of every pilot with free cores.
PROBE_ROWS = 20_000
# Todo tokens, in claim order, a claim made beside running tasks looks through before a stretch as a
# probe's (see _claim_beside): it is made again as they end, and testing every row of a million that do
# not fit in what is free cost 430 ms of that transaction at each task's end.
BESIDE_ROWS = 20_000

_SCHEMA = """
CREATE TABLE tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- claim order: first added, first claimed
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('todo', 'locked', 'done', 'error')),
    fields TEXT NOT NULL,                   -- the user's JSON object
    attempts TEXT NOT NULL DEFAULT '[]',    -- JSON list of Attempt objects, oldest first
    failures INTEGER NOT NULL DEFAULT 0,    -- charged failures since added or reset
    lease_id TEXT,
    lease_expires REAL,
    exit_code INTEGER,
    reason TEXT,
    stdout_tail BLOB,
    stderr_tail BLOB,
    updated REAL
);
-- One index serves both claim queries: todo in order, and locked (few: one per running task) by expiry.
-- Every extra index is another page written at every claim and report.
CREATE INDEX tokens_state ON tokens (state, seq);
"""
_SIZED = "need_cores IS NOT NULL OR need_gpus IS NOT NULL OR need_memory IS NOT NULL"
# What the views read (status, watch): tokens finished or touched since a time, the newest first; and the
# error tokens by reason (a partial index: written only when a token enters or leaves error). Added to
# pools of every age when they are opened (``_add_view_indexes``); older pilots keep working on a pool that
# has them, since SQLite keeps an index up to date whoever writes. Their cost is a delete and an insert in
# one more B-tree at a claim and at a report (measured in tests/benchmarks/bench_views.py).
VIEW_INDEXES = {
    "tokens_updated": "CREATE INDEX IF NOT EXISTS tokens_updated ON tokens (updated, state)",
    "tokens_errors": "CREATE INDEX IF NOT EXISTS tokens_errors ON tokens (reason, id) WHERE state = 'error'",
    # The tokens that ask for a size of their own, for status's todo sizes: a pool without any writes
    # nothing more into it.
    "tokens_sized": (
        "CREATE INDEX IF NOT EXISTS tokens_sized "
        f"ON tokens (state, waiting, need_cores, need_gpus, need_memory) WHERE {_SIZED}"
    ),
}
# The columns _token reads, and the views' pages: seq and updated first, the tails last when asked for.
_TOKEN_COLUMNS = "id, state, fields, attempts, failures, lease_id, lease_expires, waiting, reason"
_SELECT_TOKEN = f"SELECT {_TOKEN_COLUMNS} FROM tokens "  # noqa: S608 - constants only
_SELECT_PAGE = {
    False: f"SELECT seq, updated, {_TOKEN_COLUMNS} FROM tokens ",  # noqa: S608 - constants only
    True: f"SELECT seq, updated, {_TOKEN_COLUMNS}, stdout_tail, stderr_tail FROM tokens ",  # noqa: S608
}
# A state's condition: todo and waiting share the stored state todo and differ in the waiting count.
_STATE_WHERE = {
    State.TODO: "state = 'todo' AND waiting = 0",
    State.WAITING: "state = 'todo' AND waiting > 0",
}
# What each version adds to the one before; a pool file of an older version is brought up to date in
# place when a newer pilot opens it, and a new pool is made as version 1 and then migrated the same way.
_MIGRATIONS = {
    2: """
-- Dependencies (`after`): a token is claimable once `waiting`, the number of tokens it comes after that
-- are not done yet, is 0. It is kept when a dependency is reported, in the report's transaction.
ALTER TABLE tokens ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
CREATE TABLE deps (
    token TEXT NOT NULL,  -- waits on
    after TEXT NOT NULL,
    PRIMARY KEY (token, after)
) WITHOUT ROWID;
CREATE INDEX deps_after ON deps (after);
-- Claims read todo tokens with waiting = 0 in order, without stepping over the waiting ones.
DROP INDEX tokens_state;
CREATE INDEX tokens_ready ON tokens (state, waiting, seq);
""",
}
# A token's waiting count counted again from the deps table: its dependencies that are not done.
_COUNT_WAITING = (
    "UPDATE tokens SET waiting = (SELECT count(*) FROM deps JOIN tokens AS dep ON dep.id = deps.after "
    "WHERE deps.token = tokens.id AND dep.state != 'done') "
)
# The unary + keeps SQLite from walking every waiting token through tokens_ready: the few dependents
# are found through deps_after instead (100,000 waiting tokens made each report 20 times slower).
_RELEASE = _COUNT_WAITING + (  # noqa: S608 - constants only
    "WHERE id IN (SELECT token FROM deps WHERE after = ?) AND +state = 'todo' AND +waiting > 0"
)
_WAIT_AGAIN = _COUNT_WAITING + "WHERE id = ?"


# ensure_ascii keeps lone surrogates (non-UTF-8 bytes read with surrogateescape) as \\udcXX escapes,
# which json.loads turns back into the same str, so such bytes reach the task unchanged.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def _compact() -> Callable[[Any], str]:
    """``_ENCODER.encode``, with its C encoder made once: ``encode`` makes a new one at every call, which
    costs more than encoding a token's fields does (1.6 against 0.8 us). The arguments are the ones
    ``encode`` passes, but for the check of circular references, which JSON read from JSON needs not."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return _ENCODER.encode
    encode = make(
        None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    return lambda value: "".join(encode(value, 0))


_dumps = _compact()


# A million new rows touch the id index all over: with SQLite's default 2 MiB of cache, pages go out to
# the WAL and come back within the one transaction. 16 MiB more memory, at most, while adding.
ADD_CACHE_KIB = 16 * 1024
ADD_ROWS = 100  # rows per INSERT when adding: half SQLite's cost of one per row; 700 variables < 999


_ADD_COLUMNS = 7  # id, state, fields, updated and the three needs: see _add_row


def _add_row(token: NewToken, state: str, now: float) -> tuple[Any, ...]:
    """A new token's row; a wrong request (cores, gpus, memory) is refused before anything is written."""
    try:
        needs = stored_needs(token.fields)
    except ValueError as err:
        raise TokenError(token.id, f"{err}; nothing was added") from None
    if needs is None:  # most tokens: no request of their own
        return (token.id, state, _dumps(token.fields), now, None, None, None)
    return (token.id, state, _dumps(token.fields), now, *map(needs.get, FIELDS))


def _insert(db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """New tokens, ADD_ROWS to a statement."""
    groups = [
        list(itertools.chain.from_iterable(rows[at : at + ADD_ROWS])) for at in range(0, len(rows), ADD_ROWS)
    ]
    full = [group for group in groups if len(group) == _ADD_COLUMNS * ADD_ROWS]
    if full:
        db.executemany(_insert_sql(ADD_ROWS), full)
    for group in groups[len(full) :]:  # the short last one
        db.execute(_insert_sql(len(group) // _ADD_COLUMNS), group)


@contextmanager
def _cache(db: sqlite3.Connection, kib: int) -> Iterator[None]:
    """SQLite's page cache at ``kib`` KiB while inside, then as it was."""
    before = db.execute("PRAGMA cache_size").fetchone()[0]
    db.execute(f"PRAGMA cache_size = -{int(kib)}")
    try:
        yield
    finally:
        db.execute(f"PRAGMA cache_size = {int(before)}")


@functools.lru_cache(maxsize=4)
def _insert_sql(rows: int) -> str:
    placeholders = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
    columns = "id, state, fields, updated, need_cores, need_gpus, need_memory"
    return f"INSERT INTO tokens ({columns}) VALUES {placeholders}"  # noqa: S608 - only ?s


_REPORT_SET = (
    "UPDATE tokens SET state = {state}, attempts = ?, failures = ?, lease_id = NULL, lease_expires = NULL, "
    "exit_code = ?, reason = {reason}, stdout_tail = ?, stderr_tail = ?, updated = ? "
    "WHERE id = ? AND lease_id = ?"
)
# A token cancelled while it ran keeps its lease id (see cancel): a report that beats its pilot's stop is
# saved with its attempt, but the token stays cancelled, never back to todo nor done (the cancel failed
# its dependents already, and a cancelled token adds no children). One statement for the usual report,
# a second only when it met a cancel.
_REPORT = _REPORT_SET.format(state="?", reason="?") + f" AND NOT (state = 'error' AND reason = '{CANCELLED}')"
_REPORT_CANCELLED = _REPORT_SET.format(state="state", reason="reason")


class LocalPool(Pool):
    def __init__(
        self,
        path: Path,
        identity: Identity,
        lease_seconds: float,
        *,
        create: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(identity, lease_seconds)
        self.path = Path(path)
        self.where = str(self.path)
        self.clock = clock
        self._next_expiry_scan = 0.0
        self._probe = _Stretch()  # the seqs the next probe looks through
        self._beside = _Stretch()  # and a claim beside running tasks, when its first rows hold none
        self._lease_ids = unique_ids()
        self.view_indexes: set[str] = set()  # of VIEW_INDEXES, those the pool file has
        self._batched = False  # inside batch(): writes are savepoints of its transaction
        self._db = self._connect(create)

    # -- connection and schema ---------------------------------------------------------------------

    def _connect(self, create: bool) -> sqlite3.Connection:
        if not create and not self.path.exists():
            raise PoolError(self.where, "no such pool file (create it with `pilot.pyz tokens add` or `init`)")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            raise PoolError(self.where, f"cannot open: {err}") from None
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Read before writing anything: a file that is not a pool must stay untouched.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._create_schema(db, create)
            elif version > SCHEMA_VERSION:
                raise PoolError(
                    self.where,
                    f"pool schema version {version}, made by a newer pilot.pyz; this one reads up to "
                    f"{SCHEMA_VERSION}: use the newer pilot.pyz",
                )
            elif version < SCHEMA_VERSION:
                self._migrate(db)
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise PoolError(
                    self.where,
                    f"cannot use WAL mode (got {mode!r}); is it on a network file system? "
                    "Put server.path on node-local disk",
                )
            db.execute("PRAGMA synchronous = NORMAL")
            self._add_needs(db)  # before the views' indexes: one of them is on these columns
            self._add_view_indexes(db)
        except sqlite3.DatabaseError as err:
            db.close()
            raise PoolError(self.where, f"not a usable pool file: {err}; {CHECK_PATH}") from None
        except PoolError:
            db.close()
            raise
        return db

    def _create_schema(self, db: sqlite3.Connection, create: bool) -> None:
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise PoolError(
                self.where, f"an SQLite file, but not a pilot pool (no pool schema); {CHECK_PATH}"
            )
        if not create:
            raise PoolError(self.where, "empty file, not a pool (create it with `pilot.pyz init`)")
        self._migrate(db)

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the schema to SCHEMA_VERSION in one transaction (version 0: a new, empty pool)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            steps = [_SCHEMA] if version == 0 else []
            steps += [_MIGRATIONS[v] for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1)]
            for step in steps:
                for statement in step.split(";"):
                    if statement.strip():
                        db.execute(statement)
            if steps:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _add_view_indexes(self, db: sqlite3.Connection) -> None:
        """Migrate a pool made before the views in place: add their indexes (seconds for a million tokens,
        once). A pool file we may not write is read without them, slower."""
        found = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        self.view_indexes = found & VIEW_INDEXES.keys()
        for name, statement in VIEW_INDEXES.items():
            if name in found:
                continue
            try:
                db.execute(statement)
            except sqlite3.OperationalError as err:
                if "readonly" not in str(err):
                    raise
                return
            self.view_indexes.add(name)

    def _add_needs(self, db: sqlite3.Connection) -> None:
        """The columns need_cores, need_gpus, need_memory: the token's own request (resources.stored_needs),
        NULL where it has no such field and asks the pilot's [task] default. Added to a pool of any age
        when it is opened, filled from its tokens' fields (one transaction); the schema version stays,
        so older pilots still read the pool (they leave the columns NULL for the tokens they add)."""
        if _NEEDS[0] in self._columns(db):
            return
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            if "readonly" not in str(err):
                raise
            return  # a pool file we may not write is read as it is: no claims are made on it
        try:
            if _NEEDS[0] not in self._columns(db):  # another pilot may have done it meanwhile
                for column in _NEEDS:
                    db.execute(f"ALTER TABLE tokens ADD COLUMN {column} INTEGER")
                rows = db.execute("SELECT seq, fields FROM tokens").fetchall()
                for seq, fields in rows:
                    needs = _needs_or_none(json.loads(fields))
                    if needs:
                        db.execute(
                            "UPDATE tokens SET need_cores = ?, need_gpus = ?, need_memory = ? WHERE seq = ?",
                            (*(needs.get(name) for name in FIELDS), seq),
                        )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _columns(db: sqlite3.Connection) -> set[str]:
        return {row[1] for row in db.execute("PRAGMA table_info(tokens)")}

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from the start (no read-then-upgrade race).
        Inside ``batch`` the transaction is open already: the write is a savepoint of it, undone alone
        when it fails."""
        db = self._db
        if self._batched:
            db.execute("SAVEPOINT write")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK TO write")
                db.execute("RELEASE write")
                raise
            db.execute("RELEASE write")
            return
        self._begin()
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._commit()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside in one transaction, one commit: a commit costs more than the report and the
        claim it saves together, and what a turn's reports change shares its pages. What the writes
        that went through changed is committed even when one fails or the body raises."""
        if self._batched:
            yield
            return
        self._begin()
        self._batched = True
        try:
            yield
        finally:
            self._batched = False
            self._commit()

    def _begin(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise PoolError(self.where, f"cannot lock for writing: {err}") from None

    def _commit(self) -> None:
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            raise PoolError(self.where, f"cannot commit: {err}") from None

    def close(self) -> None:
        self._db.close()

    # -- Pool --------------------------------------------------------------------------------------

    def init(self) -> list[str]:
        return [f"local pool {self.where}: ready ({self.counts().total} tokens)"]

    def check(self) -> list[str]:
        try:
            result = self._db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise PoolError(self.where, f"not a usable pool file: {err}; {CHECK_PATH}") from None
        if result != "ok":
            raise PoolError(self.where, f"integrity check failed: {result}; {RESTORE}")
        counts = self.counts()
        return [f"local pool {self.where}: ok, " + ", ".join(f"{k} {v}" for k, v in counts.as_dict().items())]

    def add(self, tokens: Iterable[NewToken]) -> int:
        """All of them in one transaction, written a batch at a time: a duplicate anywhere, or input that
        turns out bad halfway (the CLI's readers raise as they read), leaves the pool as it was. Tokens
        with ``after`` are linked at the end, when every id of the input is in: the input may name its
        tokens in any order, and only those tokens' ids and lists are kept in memory meanwhile. A
        duplicate that is not in the pool once the add is undone was given twice by the input itself."""
        try:
            return self._add(tokens)
        except DuplicateToken as err:
            if self._read("SELECT 1 FROM tokens WHERE id = ?", (err.token_id,)):
                raise
            raise RepeatedToken(err.token_id, "nothing was added") from None

    def _add(self, tokens: Iterable[NewToken]) -> int:
        now = self.clock()
        todo = State.TODO.value
        added = 0
        linked: list[NewToken] = []
        with self._write() as db, _cache(db, ADD_CACHE_KIB):
            for batch in batches(tokens):
                self.vet_batch(batch)
                db.execute("SAVEPOINT batch")
                try:
                    _insert(db, [_add_row(token, todo, now) for token in batch])
                except sqlite3.IntegrityError:
                    db.execute("ROLLBACK TO batch")  # so the search below sees what was there before it
                    duplicate = self._duplicate(db, batch)
                    raise DuplicateToken(duplicate) from None
                db.execute("RELEASE batch")
                added += len(batch)
                linked += [
                    NewToken(t.id, {dependencies.AFTER: t.fields[dependencies.AFTER]})
                    for t in batch
                    if dependencies.AFTER in t.fields
                ]
            if linked:
                self._link(db, linked)
        return added

    def _link(self, db: sqlite3.Connection, tokens: list[NewToken]) -> None:
        """The new tokens that come after others (already inserted, as todo) start waiting, or fail at
        once after a token in error; DependencyError (unknown ids, a cycle) rolls the whole add back."""
        plan = dependencies.plan(tokens, lambda ids: self._states(db, ids))
        for token in tokens:
            failed = plan.failed.get(token.id)
            db.execute(
                "UPDATE tokens SET state = ?, waiting = ?, reason = ? WHERE id = ?",
                (
                    State.TODO.value if failed is None else State.ERROR.value,
                    len(plan.waiting_on[token.id]),
                    None if failed is None else dependencies.failure_reason(failed),
                    token.id,
                ),
            )
            db.executemany(
                "INSERT INTO deps (token, after) VALUES (?, ?)",
                [(token.id, dep) for dep in plan.after[token.id]],
            )

    def _insert_planned(self, db: sqlite3.Connection, tokens: list[NewToken], now: float) -> int:
        """New tokens, waiting on what they come after; DependencyError or TokenError roll it all back."""
        plan = dependencies.plan(tokens, lambda ids: self._states(db, ids))
        for token in tokens:
            failed = plan.failed.get(token.id)
            try:
                needs = stored_needs(token.fields) or {}
            except ValueError as err:
                raise TokenError(token.id, f"{err}; nothing was added") from None
            try:
                db.execute(
                    "INSERT INTO tokens (id, state, fields, updated, waiting, reason, need_cores, need_gpus, "
                    "need_memory) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        token.id,
                        State.TODO.value if failed is None else State.ERROR.value,
                        _dumps(token.fields),
                        now,
                        len(plan.waiting_on[token.id]),
                        None if failed is None else dependencies.failure_reason(failed),
                        *map(needs.get, FIELDS),
                    ),
                )
            except sqlite3.IntegrityError:
                raise DuplicateToken(token.id) from None
            if plan.after[token.id]:
                db.executemany(
                    "INSERT INTO deps (token, after) VALUES (?, ?)",
                    [(token.id, dep) for dep in plan.after[token.id]],
                )
        return len(tokens)

    def _states(self, db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, State]:
        found: dict[str, State] = {}
        for token_id in ids:  # by the primary key, one at a time: microseconds each
            row = db.execute("SELECT state FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is not None:
                found[token_id] = State(row[0])
        return found

    @staticmethod
    def _duplicate(db: sqlite3.Connection, batch: Sequence[NewToken]) -> str:
        """The first id of ``batch`` that is in the pool already, or earlier in the batch."""
        seen: set[str] = set()
        for token in batch:
            if token.id in seen or db.execute("SELECT 1 FROM tokens WHERE id = ?", (token.id,)).fetchone():
                return token.id
            seen.add(token.id)
        raise AssertionError("an integrity error without a duplicate id")  # the schema has no other

    def claim(self, n: int, fit: Optional[Fit] = None) -> list[Lease]:
        if n <= 0:
            return []
        with self._write() as db:
            return self._claim(db, n, self.clock(), fit)

    def report_and_claim(
        self, lease: Lease, report: Report, n: int, fit: Optional[Fit] = None
    ) -> tuple[Saved, list[Lease]]:
        """Both in one transaction: one lock and one commit per task instead of two."""
        with self._write() as db:
            saved = self._report(db, lease, report)
            return saved, self._claim(db, n, self.clock(), fit) if n > 0 else []

    def _claim(self, db: sqlite3.Connection, n: int, now: float, fit: Optional[Fit] = None) -> list[Lease]:
        # Tokens of dead pilots first, but look for them only every few seconds (a lease is minutes
        # long) or when todo is empty: one query less for almost every claim.
        scan = now >= self._next_expiry_scan
        rows = self._expired(db, now, n, fit) if scan else []
        if len(rows) < n:
            rows += self._todo(db, n - len(rows), fit)
        if not rows and not scan:
            rows = self._expired(db, now, n, fit)
        if fit is not None:  # each fits alone; take those that fit together
            rows = [rows[i] for i in fit.pick([_stored(row) for row in rows])]
        rows = rows[:n]
        leases = [self._lease(row, now) for row in rows]
        for lease in leases:  # one at a time: execute costs less than executemany for the usual one
            db.execute(
                "UPDATE tokens SET state = 'locked', lease_id = ?, lease_expires = ?, attempts = ?, "
                "updated = ? WHERE id = ?",
                (
                    lease.lease_id,
                    lease.expires,
                    _dumps([a.to_json() for a in lease.token.attempts]),
                    now,
                    lease.token.id,
                ),
            )
        return leases

    def _todo(self, db: sqlite3.Connection, n: int, fit: Optional[Fit]) -> list[Any]:
        """Todo tokens for ``n`` claims, oldest first: of all of them when nothing runs, else of a bounded
        number (see _claim_beside and _stretch)."""
        fits, values = _fit_condition(fit)
        limit = _candidates(n, fit)
        if fit is not None and fit.beyond is not None:
            return self._in_stretch(db, self._probe, fits, values, limit)
        if fit is not None and fit.partial:
            return self._claim_beside(db, fits, values, limit)
        return db.execute(
            f"SELECT {_ROW} FROM tokens WHERE state = 'todo' AND waiting = 0{fits} ORDER BY seq LIMIT ?",  # noqa: S608
            (*values, limit),
        ).fetchall()

    def _claim_beside(
        self, db: sqlite3.Connection, fits: str, values: tuple[int, ...], limit: int
    ) -> list[Any]:
        """Of the first BESIDE_ROWS todo tokens, else of the next stretch of seqs: the claim of a pilot
        whose running tasks leave part of the node free. Claims with the node wholly free look at all of
        the pool, so no token that fits is left behind; a pool of uniform tokens finds its first at once."""
        # The subquery is a co-routine that yields rows in claim order (a LIMIT keeps SQLite from
        # flattening it): no outer ORDER BY, which would read all BESIDE_ROWS rows to sort them.
        rows = db.execute(
            f"SELECT {_ROW} FROM (SELECT {_ROW} FROM tokens WHERE state = 'todo' AND waiting = 0 "  # noqa: S608
            f"ORDER BY seq LIMIT ?) WHERE 1{fits} LIMIT ?",
            (BESIDE_ROWS, *values, limit),
        ).fetchall()
        return rows or self._in_stretch(db, self._beside, fits, values, limit)

    def _in_stretch(
        self, db: sqlite3.Connection, stretch: _Stretch, fits: str, values: tuple[int, ...], limit: int
    ) -> list[Any]:
        start, end = stretch.next(db.execute("SELECT max(seq) FROM tokens").fetchone()[0] or 0, PROBE_ROWS)
        return db.execute(
            f"SELECT {_ROW} FROM tokens WHERE state = 'todo' AND waiting = 0{fits} AND seq >= ? AND seq < ? "  # noqa: S608
            "ORDER BY seq LIMIT ?",
            (*values, start, end, limit),
        ).fetchall()

    def _expired(self, db: sqlite3.Connection, now: float, n: int, fit: Optional[Fit] = None) -> list[Any]:
        self._next_expiry_scan = now + min(EXPIRY_SCAN, self.lease_seconds / 4)
        fits, values = _fit_condition(fit)
        return db.execute(
            f"SELECT {_ROW} FROM tokens WHERE state = 'locked' AND lease_expires < ?{fits} "  # noqa: S608
            "ORDER BY lease_expires LIMIT ?",
            (now, *values, _candidates(n, fit)),
        ).fetchall()

    def _lease(self, row: sqlite3.Row, now: float) -> Lease:
        token_id, state, fields, attempts_json, failures, _, old_expiry = row[:7]
        attempts = [Attempt.from_json(a) for a in json.loads(attempts_json)]
        if state == State.LOCKED.value and attempts and attempts[-1].outcome is None:
            # Its pilot went away without a word: close that attempt as the lease ran out.
            attempts[-1] = attempts[-1].closed(Outcome.LEASE_EXPIRED, old_expiry, "lease expired, pilot gone")
        attempt = self.new_attempt(now)
        attempts.append(attempt)
        token = Token(token_id, json.loads(fields), State.LOCKED, tuple(attempts), failures)
        return Lease(
            token=token, lease_id=next(self._lease_ids), expires=now + self.lease_seconds, attempt=attempt
        )

    def renew(self, leases: Sequence[Lease]) -> Renewal:
        now = self.clock()
        renewed, lost, cancelled = [], [], []
        with self._write() as db:
            for lease in leases:
                expires = now + self.lease_seconds
                cursor = db.execute(
                    "UPDATE tokens SET lease_expires = ? WHERE id = ? AND lease_id = ? AND state = 'locked'",
                    (expires, lease.token.id, lease.lease_id),
                )
                if cursor.rowcount == 1:
                    renewed.append(Lease(lease.token, lease.lease_id, expires, lease.attempt, lease.handle))
                elif self._cancelled(db, lease):
                    cancelled.append(lease)
                else:
                    lost.append(lease)
        return Renewal(renewed, lost, cancelled)

    def _cancelled(self, db: sqlite3.Connection, lease: Lease) -> bool:
        row = db.execute(
            "SELECT 1 FROM tokens WHERE id = ? AND lease_id = ? AND state = 'error' AND reason = ?",
            (lease.token.id, lease.lease_id, CANCELLED),
        ).fetchone()
        return row is not None

    def cancel(self, token_ids: Sequence[str], *, all_todo: bool) -> int:
        now = self.clock()
        changed: list[str] = []
        with self._write() as db:
            if all_todo:
                token_ids = [row[0] for row in db.execute("SELECT id FROM tokens WHERE state = 'todo'")]
            for token_id in token_ids:
                row = db.execute("SELECT state FROM tokens WHERE id = ?", (token_id,)).fetchone()
                if row is None:
                    raise TokenError(
                        token_id, f"not in the pool {self.where}; nothing was cancelled; {FIND_ID}"
                    )
                if row[0] not in (State.TODO.value, State.LOCKED.value):
                    continue  # ended already
                # A running token keeps its lease id: its pilot's renewal tells cancelled from lost.
                db.execute(
                    "UPDATE tokens SET state = 'error', reason = ?, updated = ? WHERE id = ?",
                    (CANCELLED, now, token_id),
                )
                changed.append(token_id)
            for token_id in changed:  # after all of them: a named token is cancelled, not failed
                self._fail_dependents(db, token_id)
        return len(changed)

    def report(self, lease: Lease, report: Report) -> Saved:
        with self._write() as db:
            return self._report(db, lease, report)

    def _report(self, db: sqlite3.Connection, lease: Lease, report: Report) -> Saved:
        attempts = list(lease.token.attempts)
        attempts[-1] = close_attempt(attempts[-1], report.result)
        result = report.result
        values = [
            report.state.value,
            _dumps([a.to_json() for a in attempts]),
            report.failures,
            result.exit_code,
            result.reason,
            result.stdout_tail,
            result.stderr_tail,
            self.clock(),
            lease.token.id,
            lease.lease_id,
        ]
        if db.execute(_REPORT, values).rowcount != 1:
            del values[4], values[0]  # the state and reason stay the cancel's
            cancelled = db.execute(_REPORT_CANCELLED, values).rowcount == 1
            return Saved.CANCELLED if cancelled else Saved.CONFLICT
        if report.state is State.DONE:
            self._release_dependents(db, lease.token.id)
            if report.children:
                self._insert_planned(db, list(report.children), self.clock())
        elif report.state is State.ERROR:
            self._fail_dependents(db, lease.token.id)
        return Saved.SAVED

    def _release_dependents(self, db: sqlite3.Connection, token_id: str) -> None:
        """Count again what the tokens waiting on this one (now done) wait on: those at 0 are claimable."""
        db.execute(_RELEASE, (token_id,))

    def _fail_dependents(self, db: sqlite3.Connection, token_id: str) -> None:
        """This token failed for good: what waits on it, directly or not, goes to error too."""

        def waiting_on(dep: str) -> list[str]:
            rows = db.execute(
                "SELECT deps.token FROM deps JOIN tokens ON tokens.id = deps.token "
                "WHERE deps.after = ? AND +tokens.state = 'todo' AND +tokens.waiting > 0",
                (dep,),
            )
            return [row[0] for row in rows]

        now = self.clock()
        for dependent, dep in dependencies.downstream_failures(token_id, waiting_on):
            db.execute(
                "UPDATE tokens SET state = 'error', reason = ?, updated = ? WHERE id = ?",
                (dependencies.failure_reason(dep), now, dependent),
            )

    def counts(self) -> Counts:
        try:
            rows = self._db.execute(
                "SELECT CASE WHEN state = 'todo' AND waiting > 0 THEN 'waiting' ELSE state END, count(*) "
                "FROM tokens GROUP BY 1"
            ).fetchall()
        except sqlite3.DatabaseError as err:
            raise PoolError(self.where, f"cannot read: {err}") from None
        return Counts(**dict(rows))

    def locked_left(self) -> int:
        """Through the state index, not a count of every row as ``counts`` makes (a million of them)."""
        try:
            return int(self._db.execute("SELECT count(*) FROM tokens WHERE state = 'locked'").fetchone()[0])
        except sqlite3.DatabaseError as err:
            raise PoolError(self.where, f"cannot read: {err}") from None

    def reset(self, *, locked: bool, errors: bool) -> int:
        now = self.clock()
        states = [state for state, wanted in (("locked", locked), ("error", errors)) if wanted]
        changed = 0
        with self._write() as db:
            for state in states:
                rows = db.execute("SELECT id, attempts FROM tokens WHERE state = ?", (state,)).fetchall()
                for token_id, attempts_json in rows:
                    attempts = [Attempt.from_json(a) for a in json.loads(attempts_json)]
                    if state == "locked" and attempts and attempts[-1].outcome is None:
                        attempts[-1] = attempts[-1].closed(
                            Outcome.RESET, now, "reset by `pilot reset --locked`"
                        )
                    db.execute(
                        "UPDATE tokens SET state = 'todo', lease_id = NULL, lease_expires = NULL, "
                        "failures = 0, attempts = ?, updated = ? WHERE id = ?",
                        (_dumps([a.to_json() for a in attempts]), now, token_id),
                    )
                    changed += 1
                if state == "error":  # with what they waited on (reset too), so they wait again
                    for token_id, _ in rows:
                        db.execute(_WAIT_AGAIN, (token_id,))
        return changed

    def get(self, token_id: str) -> Token:
        row = self._db.execute(_SELECT_TOKEN + "WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise TokenError(token_id, f"not in the pool {self.where}; {FIND_ID}")
        return _token(row)

    def tails(self, token_id: str) -> Optional[tuple[bytes, bytes]]:
        row = self._db.execute(
            "SELECT stdout_tail, stderr_tail FROM tokens WHERE id = ?", (token_id,)
        ).fetchone()
        if row is None:
            raise TokenError(token_id, f"not in the pool {self.where}; {FIND_ID}")
        return (row[0] or b"", row[1] or b"")

    def extra(self, token_id: str) -> dict[str, Any]:
        """exit_code and reason of the last report, for `tokens show`."""
        row = self._db.execute("SELECT exit_code, reason FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return {} if row is None else {"exit_code": row[0], "reason": row[1]}

    # -- views -------------------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as err:
            raise PoolError(self.where, f"cannot read: {err}") from None

    def page(
        self, state: Optional[State], cursor: Any, limit: int, *, tails: bool = False
    ) -> tuple[list[Listed], Any]:
        """In the order tokens were added (seq): the state index serves a state's pages, the table all."""
        select = _SELECT_PAGE[tails]
        after = -1 if cursor is None else int(cursor)
        if state is None:
            rows = self._read(select + "WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        else:
            where = _STATE_WHERE.get(state, f"state = '{state.value}'")
            rows = self._read(select + f"WHERE {where} AND seq > ? ORDER BY seq LIMIT ?", (after, limit))
        listed = [
            Listed(
                token=_token(row[2:11]),
                tails=(row[11] or b"", row[12] or b"") if tails else None,
                updated=row[1],
            )
            for row in rows
        ]
        return listed, rows[-1][0] if len(rows) == limit else None

    def histories(self, page_size: int = PAGE) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
        after = -1
        while True:
            rows = self._read(
                "SELECT seq, id, CASE WHEN state = 'todo' AND waiting > 0 THEN 'waiting' ELSE state END, "
                "attempts FROM tokens WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, page_size),
            )
            for _, token_id, state, attempts in rows:
                yield token_id, state, json.loads(attempts)
            if len(rows) < page_size:
                return
            after = rows[-1][0]

    def finished_since(self, since: float) -> Counts:
        # One count per state, `+state` so that SQLite reads the range of tokens_updated, not tokens_state.
        found = {}
        for state in ("done", "error"):
            (found[state],) = self._read(
                "SELECT count(*) FROM tokens WHERE updated >= ? AND +state = ?", (since, state)
            )[0]
        return Counts(**found)

    def recent(self, limit: int) -> list[Token]:
        # No tie-break by id: a million tokens added at once share one time, and would all be sorted.
        rows = self._read(_SELECT_TOKEN + "ORDER BY updated DESC LIMIT ?", (limit,))
        return [_token(row) for row in rows]

    def running(self) -> dict[str, int]:
        hosts: dict[str, int] = {}
        for (attempts_json,) in self._read("SELECT attempts FROM tokens WHERE state = 'locked'"):
            attempts = json.loads(attempts_json)
            host = str(attempts[-1].get("host", "?")) if attempts else "?"
            hosts[host] = hosts.get(host, 0) + 1
        return hosts

    def todo_sizes(self) -> Optional[list[SizeCount]]:
        """From the tokens_sized index alone: only tokens that ask for a size of their own are in it. An
        old pool file we may not write has no request columns: not known."""
        if "tokens_sized" in self.view_indexes:  # made on these columns: no need to look for them
            hint = "INDEXED BY tokens_sized "
        elif _NEEDS[0] in self._columns(self._db):
            hint = ""
        else:
            return None
        rows = self._read(
            f"SELECT need_cores, need_gpus, need_memory, count(*) FROM tokens {hint}"  # noqa: S608 - constants
            f"WHERE state = 'todo' AND waiting = 0 AND ({_SIZED}) GROUP BY 1, 2, 3"
        )
        return most_first(SizeCount(*row) for row in rows)

    def error_reasons(self, limit: int) -> list[ReasonCount]:
        # Read from the tokens_errors index alone, in its order (SQLite does not choose a partial index
        # by itself here); '' and NULL are one reason.
        hint = "INDEXED BY tokens_errors " if "tokens_errors" in self.view_indexes else ""
        found: dict[str, list[Any]] = {}
        for reason, count, example in self._read(
            f"SELECT reason, count(*), min(id) FROM tokens {hint}WHERE state = 'error' GROUP BY reason"  # noqa: S608 - a constant
        ):
            entry = found.setdefault(reason or "", [0, example])
            entry[0] += count
            entry[1] = min(entry[1], example)
        ranked = sorted(found.items(), key=lambda item: (-item[1][0], item[0]))
        return [ReasonCount(reason, count, example) for reason, (count, example) in ranked[:limit]]

    def delete(self, token_ids: Sequence[str]) -> int:
        with self._write() as db:
            for token_id in token_ids:
                if db.execute("SELECT 1 FROM tokens WHERE id = ?", (token_id,)).fetchone() is None:
                    raise missing_id(token_id, self.where)
            for token_id in token_ids:
                db.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
        return len(set(token_ids))

    def delete_state(self, state: State) -> int:
        with self._write() as db:
            return db.execute("DELETE FROM tokens WHERE state = ?", (state.value,)).rowcount


def _token(row: Sequence[Any]) -> Token:
    token_id, state, fields, attempts_json, failures, _, _, waiting, reason = row
    attempts = tuple(Attempt.from_json(a) for a in json.loads(attempts_json))
    shown = State.WAITING if state == State.TODO.value and waiting else State(state)
    why = reason or "" if shown is State.ERROR else ""
    return Token(token_id, json.loads(fields), shown, attempts, failures, why)


class _Stretch:
    """The seq numbers one bounded look goes through: all of a pool of no more than ``rows`` tokens, else
    the next ``rows`` on from where the last look ended, and from the first again past the last. The
    oldest token that fits of a stretch is found, and of the pool within one round of looks."""

    def __init__(self) -> None:
        self.start = 0

    def next(self, last: int, rows: int) -> tuple[int, int]:
        start = self.start if self.start <= last else 0
        end = start + rows
        self.start = end if end <= last else 0
        return start, end


def _fit_condition(fit: Optional[Fit]) -> tuple[str, tuple[int, ...]]:
    """The SQL condition for tokens that fit alone, and its values; a token without a request column
    asks the pilot's default."""
    if fit is None:
        return "", ()
    text, values = _fits(fit)
    if fit.beyond is not None:  # and not in what is free: a probe for a token to hold
        beyond, more = _fits(fit.beyond)
        text, values = f"{text} AND NOT ({beyond})", (*values, *more)
    return f" AND {text}", values


def _fits(fit: Fit) -> tuple[str, tuple[int, ...]]:
    default = fit.default
    text = "coalesce(need_cores, ?) <= ? AND coalesce(need_gpus, ?) <= ?"
    values: tuple[int, ...] = (default.cores, fit.cores, default.gpus, fit.gpus)
    if fit.memory is not None:
        text += " AND coalesce(need_memory, ?) <= ?"
        values += (default.memory, fit.memory)
    return text, values


def _candidates(n: int, fit: Optional[Fit]) -> int:
    """Rows to read for ``n`` claims: with a fit, a few more, as some that fit alone may not together."""
    return n if fit is None or n == 1 else 2 * n + 8


def _stored(row: Any) -> dict[str, int]:
    return {name: value for name, value in zip(FIELDS, row[7:10]) if value is not None}


def _needs_or_none(fields: Any) -> Optional[dict[str, int]]:
    """A stored token's request; a field it is wrong in is left to the pilot, which says so at claim."""
    try:
        return stored_needs(fields) if isinstance(fields, dict) else None
    except ValueError:
        return None
