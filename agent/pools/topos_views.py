"""What `tokens list`, `export`, `delete` and `report` read from a ToPoS pool: every token with its history.

ToPoS keeps no states, so a token's state is where it is: in the pool (todo, or locked while it has a
lock), moved to the error pool (error, its result beside it), or only its result in the done pool (done).
The pools' listings (one request each: ToPoS cannot page them) say which tokens there are; then each is
read once: a token in the pool with the records of its earlier hand-outs (the attempts pool), a finished
one from its newest result, which holds every attempt and the output tails.

What ToPoS does not record: when a lock was taken, so a locked token's running hand-out is not among its
attempts (`status` counts it per host from the lock's description).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from agent.pools import topos_layout as layout
from agent.pools.base import Listed, missing_id
from agent.token import Attempt, State, Token

if TYPE_CHECKING:
    from agent.pools.topos import ToposPool

# The parts of the listing, in the order the views walk them.
POOL, ERROR, DONE = 0, 1, 2


class Entry(NamedTuple):
    """A token as the listings show it: which part it is in, its id, the result tokens of it there."""

    part: int
    token_id: str
    results: tuple[str, ...]  # ids of its result tokens in that part's pool, oldest first
    created: float  # when its newest result was written (0 for a token in the pool)
    locked: bool

    @property
    def key(self) -> tuple[int, int]:
        """Its place in the views' order (the cursor of ``page``): the part, then ToPoS's numeric id."""
        return self.part, int(self.token_id)

    @property
    def state(self) -> State:
        if self.part == POOL:
            return State.LOCKED if self.locked else State.TODO
        return State.ERROR if self.part == ERROR else State.DONE


def _results_by_token(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The result rows of a pool's listing per token id, oldest first (ToPoS lists by id)."""
    found: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if layout.is_result(row):
            token_id = str(row.get("Original Name"))[len(layout.result_name("")) :]
            if token_id.isdigit():
                found.setdefault(token_id, []).append(row)
    return found


def _entry(part: int, token_id: str, results: Sequence[Mapping[str, Any]], locked: bool) -> Entry:
    created = layout.created_of(results[-1]) if results else 0.0
    return Entry(part, token_id, tuple(str(row["Name"]) for row in results), created, locked)


Rows = Sequence[Mapping[str, Any]]


def entries(pool_rows: Rows, error_rows: Rows, done_rows: Rows) -> list[Entry]:
    """Every token of the three listings, in the views' order: the pool's, the error pool's tokens (not
    their results), then the done tokens (one per token id, however many results it has)."""
    found = [
        _entry(POOL, str(row["Name"]), (), bool(row.get("Timeout")))
        for row in pool_rows
        if str(row["Name"]).isdigit()
    ]
    errors = _results_by_token(error_rows)
    found += [
        _entry(ERROR, str(row["Name"]), errors.get(str(row["Name"]), []), False)
        for row in error_rows
        if not layout.is_result(row) and str(row["Name"]).isdigit()
    ]
    found += [_entry(DONE, token_id, rows, False) for token_id, rows in _results_by_token(done_rows).items()]
    return sorted(found, key=lambda entry: entry.key)


def wanted(found: Sequence[Entry], state: Optional[State]) -> list[Entry]:
    return [entry for entry in found if state is None or entry.state is state]


def record_names(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, str]]:
    """The attempts pool's records per token id: lease number to the record's token id."""
    found: dict[str, dict[int, str]] = {}
    for row in rows:
        name = str(row.get("Original Name") or "")
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "attempt" and parts[1].isdigit() and parts[2].isdigit():
            found.setdefault(parts[1], {})[int(parts[2])] = str(row["Name"])
    return found


class ToposViews:
    """The views' reads and deletes on one ToPoS pool, through that pool's HTTP client."""

    def __init__(self, pool: ToposPool) -> None:
        self.pool = pool
        self.pools = pool.pools

    def entries(self, state: Optional[State]) -> list[Entry]:
        """The tokens in ``state`` (or all) from the listings: one request per pool, no token read."""
        if state is State.WAITING:
            return []  # ToPoS cannot hold tokens back: nothing ever waits
        parts = {State.TODO: (POOL,), State.LOCKED: (POOL,), State.ERROR: (ERROR,), State.DONE: (DONE,)}
        read = parts.get(state, (POOL, ERROR, DONE)) if state is not None else (POOL, ERROR, DONE)
        names = {POOL: self.pools.todo, ERROR: self.pools.error, DONE: self.pools.done}
        rows = {part: self.pool._listing(names[part]) if part in read else [] for part in names}
        return wanted(entries(rows[POOL], rows[ERROR], rows[DONE]), state)

    def page(
        self, state: Optional[State], cursor: Any, limit: int, *, tails: bool
    ) -> tuple[list[Listed], Any]:
        """Up to ``limit`` tokens after ``cursor`` (an entry's key), read from fresh listings."""
        after = tuple(cursor) if cursor is not None else (-1, -1)
        found = [entry for entry in self.entries(state) if entry.key > after]
        chosen = found[:limit]
        records = self._records() if any(entry.part == POOL for entry in chosen) else {}
        listed = [item for item in (self._read(entry, records, tails) for entry in chosen) if item]
        return listed, list(chosen[-1].key) if len(found) > limit else None

    def tokens(self, state: Optional[State], *, tails: bool) -> Iterator[Listed]:
        """Every token in ``state`` (or all), the listings read once; one or more reads per token."""
        found = self.entries(state)
        records = self._records() if any(entry.part == POOL for entry in found) else {}
        for entry in found:
            item = self._read(entry, records, tails)
            if item is not None:
                yield item

    def _records(self) -> dict[str, dict[int, str]]:
        return record_names(self.pool._listing(self.pools.attempts))

    def _read(self, entry: Entry, records: Mapping[str, Mapping[int, str]], tails: bool) -> Optional[Listed]:
        """The token of an entry; None when it went away since the listing (or its result holds none)."""
        if entry.part == POOL:
            return self._in_pool(entry.token_id, records.get(entry.token_id, {}), tails)
        pool = self.pools.error if entry.part == ERROR else self.pools.done
        for result_id in reversed(entry.results):  # the newest result that holds one
            document = self._document(pool, result_id)
            if document is not None:
                token = layout.token_of_result(document)
                shown = Token(token.id, token.fields, entry.state, token.attempts, token.failures)
                return Listed(shown, layout.tails_of(document) if tails else None, entry.created or None)
        if entry.part == DONE:
            return None  # only a result cut short (docs/topos.md): nothing to show of it
        return self._in_pool(entry.token_id, {}, tails, pool=self.pools.error)

    def _in_pool(
        self, token_id: str, records: Mapping[int, str], tails: bool, pool: Optional[str] = None
    ) -> Optional[Listed]:
        """A token as it is in the pool (or, with no result, in the error pool), with its kept attempts."""
        where = pool or self.pools.todo
        response = self.pool._request("GET", self.pool._url(where, f"tokens/{token_id}"))
        if response.status == 404:
            return None  # finished or deleted since the listing
        if response.status != 200:
            raise self.pool._failure(response, f"reading token {token_id}")
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        fields, _ = layout.token_fields(response.data, content_type, layout.name_of(response.headers))
        locked = layout.lock_of(response.headers.get("X-Topos-LockURL", "")) is not None
        ended = layout.leases_of(response.headers) - locked  # the hand-outs that ended
        kept = {lease: doc for lease, doc in self._kept(token_id, records).items() if lease <= ended}
        attempts = layout.history(ended + 1, kept, _PLACEHOLDER)[:-1]
        state = State.ERROR if pool else State.LOCKED if locked else State.TODO
        token = Token(token_id, fields, state, tuple(attempts), layout.charged(attempts))
        # The tails of its last kept attempt; none yet, empty (not None: the export would ask again).
        shown_tails = (layout.tails_of(kept[max(kept)]) if kept else (b"", b"")) if tails else None
        return Listed(token, shown_tails)

    def _kept(self, token_id: str, records: Mapping[int, str]) -> dict[int, dict[str, Any]]:
        if not records:
            return {}
        return {lease: doc for lease, (_, doc) in self.pool._attempt_records(token_id, records).items()}

    def _document(self, pool: str, result_id: str) -> Optional[dict[str, Any]]:
        response = self.pool._request("GET", self.pool._url(pool, f"tokens/{result_id}"))
        if response.status == 404:
            return None
        if response.status != 200:
            raise self.pool._failure(response, f"reading the result {result_id} in {pool}")
        return layout.document_of(response.data)

    # -- delete ------------------------------------------------------------------------------------

    def delete(self, token_ids: Sequence[str]) -> int:
        """Each token wherever it is, with its results and kept attempts; none when one is missing."""
        ids = list(dict.fromkeys(token_ids))
        pool_rows = self.pool._listing(self.pools.todo)
        error_rows = self.pool._listing(self.pools.error)
        done_rows = self.pool._listing(self.pools.done)
        in_pool = {str(row["Name"]) for row in pool_rows}
        moved = {str(row["Name"]) for row in error_rows if not layout.is_result(row)}
        error_results, done_results = _results_by_token(error_rows), _results_by_token(done_rows)
        for token_id in ids:
            if token_id not in in_pool | moved and token_id not in done_results:
                raise missing_id(token_id, self.pool.where)
        records = self._records()
        for token_id in ids:
            doomed = [(self.pools.todo, token_id)] if token_id in in_pool else []
            doomed += [(self.pools.error, token_id)] if token_id in moved else []
            doomed += [(self.pools.error, str(row["Name"])) for row in error_results.get(token_id, [])]
            doomed += [(self.pools.done, str(row["Name"])) for row in done_results.get(token_id, [])]
            doomed += [(self.pools.attempts, name) for name in records.get(token_id, {}).values()]
            for pool, name in doomed:
                self.pool._delete(pool, name)
        return len(ids)

    def delete_state(self, state: State) -> int:
        ids = [entry.token_id for entry in self.entries(state)]
        return self.delete(ids) if ids else 0


# Stands for the current hand-out in ``layout.history``, which is cut off: a token's attempts are the
# hand-outs that ended.
_PLACEHOLDER = Attempt("?", "?", None, 0.0)
