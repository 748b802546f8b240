"""Which todo tokens a CouchDB pilot tries to claim next: windows read from the todo index, walked on from
where the last ended, left at the first conflict, and stretches of ids for tokens a window does not hold.

A pilot reads a window of todo tokens at a time and claims from it until it is spent or another pilot
takes one of its tokens first; fewer reads mean fewer index updates, which cost the server as much as the
writes do. The claim itself (the conditional writes, the leases, the lost answers) is the pool's:
couchdb.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Optional

from agent.pools import picas
from agent.resources import Fit

if TYPE_CHECKING:
    from agent.pools.couchdb import CouchDBPool

# Todo tokens read at a time. Every token a pilot holds as a candidate is one another pilot may take
# first (a conflict): with 64 pilots of one slot, windows of 64 covered a pool of 4,000 tokens and a claim
# in five met a conflict; windows of 16 cost one read per 16 tasks and meet a quarter of the conflicts.
WINDOW_MIN = 16
WINDOW_PER_SLOT = 16
WINDOW_MAX = 500
CANDIDATES_MAX_AGE = 30.0  # seconds a window read stays worth trying before it is read again
WINDOW_CONFLICTS = 1  # conflicts in a row after which a window is taken to be stale (see Windows.tally)
# Ids one probe for a big token, or a claim beside running tasks whose window held none that fits, looks
# through (see Windows._stretch). The server reads and filters every todo document of the range, 0.1 ms
# each on pouchdb-server: all 20,000 of a pool took a probe 2 s, and a million would outlast
# server.timeout. A pool of fewer documents is looked through whole each time.
PROBE_IDS = 1000


def window_size(wanted: int) -> int:
    return max(WINDOW_MIN, min(WINDOW_MAX, WINDOW_PER_SLOT * wanted))


class Windows:
    """One pilot's windows on one CouchDB pool, read through that pool's requests, its clock and its
    random numbers (pilots that read at once must pick differently; tests seed them)."""

    def __init__(self, pool: CouchDBPool) -> None:
        self.pool = pool
        self.candidates: list[dict[str, Any]] = []  # the rest of the last todo window, to try next
        self.candidates_read = 0.0
        self.window_conflicts = 0  # conflicts in a row met in the current window
        self.walk_from: Any = None  # the key of the last row read: the next window starts after it
        self.window_rows: Optional[int] = None  # todo tokens (or more) at the last read
        self.probe_from = ""  # the id the next probe looks from (see _stretch)
        self.beside_from = ""  # and the next claim beside running tasks that its window did not serve

    def next(self, wanted: int, fit: Optional[Fit] = None) -> list[dict[str, Any]]:
        """Up to ``wanted`` tokens to try: from the last window if fresh enough, else a new window. With a
        fit, those of the window that fit together; a new window when none of the last one does: first as
        it comes, then, when none of that fits either, read with the fit's selector. pouchdb-server ends a
        read through the index at its limit, but with a condition outside the index it reads and filters
        every todo token (20 times the time for 2,000 of them): claims that asked with the selector every
        time left a loaded server answering none within server.timeout. So only a claim with the node
        wholly free, the last before its pilot stops for want of work, asks it of the whole pool; one
        beside running tasks, made again as they end, asks it of a stretch of ids (see Fit.partial)."""
        now = self.pool.clock()
        if now - self.candidates_read > CANDIDATES_MAX_AGE:
            self.candidates, self.walk_from = [], None
        if fit is None:
            if len(self.candidates) < wanted:
                self._new_window(wanted, now)
            picked, self.candidates = self.candidates[:wanted], self.candidates[wanted:]
            return picked
        picked = self._pick(fit, wanted)
        if picked:
            return picked
        find = self.pool._plan().find
        if fit.beyond is not None and find:
            self.probe_from, picked = self._stretch(wanted, now, fit, self.probe_from)
            return picked
        self._new_window(wanted, now)
        picked = self._pick(fit, wanted)
        if picked or not find:
            return picked
        if fit.partial:
            self.beside_from, picked = self._stretch(wanted, now, fit, self.beside_from)
            return picked
        self._new_window(wanted, now, fit)
        return self._pick(fit, wanted)

    def tally(self, claimed: int, conflicts: int) -> None:
        """Keep trying the window until another pilot takes one of its tokens before us, then jump to a
        random place. A conflict costs one write; a window costs a read, its documents, and the updates
        of the view index since the last read."""
        self.window_conflicts = 0 if claimed else self.window_conflicts + conflicts
        if self.window_conflicts >= WINDOW_CONFLICTS:
            self.forget()

    def forget(self) -> None:
        """The next claim reads a new window at a random place: the pool changed under this one."""
        self.candidates, self.walk_from = [], None

    def _new_window(self, wanted: int, now: float, fit: Optional[Fit] = None) -> None:
        self.candidates = self._window(window_size(wanted), now, fit)
        self.candidates_read = now
        self.window_conflicts = 0

    def _stretch(self, wanted: int, now: float, fit: Fit, start: str) -> tuple[str, list[dict[str, Any]]]:
        """Where the next stretch starts, and the tokens that fit together (the biggest first for a
        probe, see ``Fit.beyond``) of those the server selects with ``fit`` from the todo tokens of the
        PROBE_IDS ids from ``start``. A pool of fewer is looked through whole each time, a bigger one a
        stretch a time, each on from where the last ended, round and round. Apart from the claims' window
        and its walk: a read where that window is would find a rare token only when it happened to be
        there."""
        end = self._id_after(start, PROBE_IDS)
        selector = picas.fit_selector(picas.todo_selector(start, below=end), fit)
        docs = self.pool._find(selector, picas.TODO_INDEX, window_size(wanted))
        claimable = [doc for doc in docs if picas.claimable(doc, now)]
        self.pool.rng.shuffle(claimable)  # pilots that look at once pick different ones
        chosen = set(replace(fit, tasks=min(fit.tasks, wanted)).pick([picas.needs_of(d) for d in claimable]))
        return end or "", [doc for i, doc in enumerate(claimable) if i in chosen]  # past the last: the first

    def _id_after(self, start: str, count: int) -> Optional[str]:
        """The id ``count`` documents on from ``start`` in ``_all_docs`` (keys only, no documents read), or
        None when there are no more. ``_all_docs`` orders ids by code point and Mango by CouchDB's
        collation, so a stretch may hold more or fewer ids than ``count``; as each starts where the last
        ended and the last one runs to the end, every round of them still covers every id."""
        answer = self.pool._all_docs({"startkey": json.dumps(start), "skip": count, "limit": 1})
        rows = answer.get("rows") if isinstance(answer, dict) else None
        first = rows[0] if isinstance(rows, list) and rows else None
        end = first.get("id") if isinstance(first, dict) else None
        return end if isinstance(end, str) and end > start else None  # else on to the end

    def _pick(self, fit: Fit, wanted: int) -> list[dict[str, Any]]:
        """The window's tokens that fit together, taken out of it; the others stay for later claims."""
        chosen = set(
            replace(fit, tasks=min(fit.tasks, wanted)).pick([picas.needs_of(d) for d in self.candidates])
        )
        picked = [doc for i, doc in enumerate(self.candidates) if i in chosen]
        self.candidates = [doc for i, doc in enumerate(self.candidates) if i not in chosen]
        return picked

    def _window(self, size: int, now: float, fit: Optional[Fit] = None) -> list[dict[str, Any]]:
        """The next window of todo tokens, in the order to try them. A pilot starts at a random place and
        walks on from there, window after window, so pilots keep to their own stretches of the tokens:
        windows at random places meet the others' more and more as the pool drains.

        A walk ends on the stretch of the pilot ahead, whose leftovers are the first tokens of the window:
        a walked window is taken from its far end, so they come last, by when their owner has claimed
        them, and the first conflict among them says that the rest is taken too. Shuffled walked windows,
        and a jump only at the second conflict, met two to three times the conflicts (0.19 per task with
        64 pilots against 0.08; 0.28 with 16 against 0.12). A window read at random is shuffled: pilots
        that read the same one (a small pool, its last tokens, a retried token) try different tokens."""
        docs: list[dict[str, Any]] = []
        walked = False
        if self.walk_from is not None:
            docs, position = self._read_window(size, skip=0, after=self.walk_from, fit=fit)
            walked = bool(docs)
        if not docs:  # a new pilot, a jump, or the walk reached the end: start again at random
            docs, position = self._random_window(size, fit)
        self.walk_from = position if len(docs) >= size else None
        claimable = [doc for doc in docs if picas.claimable(doc, now)]
        if walked:
            claimable.reverse()
        else:
            self.pool.rng.shuffle(claimable)
        return claimable

    def _random_window(self, size: int, fit: Optional[Fit] = None) -> tuple[list[dict[str, Any]], Any]:
        if self.window_rows is None:  # first read: learn the size, or every pilot reads the same tokens
            self.window_rows = self._range_size()
        skip = 0
        if self.window_rows > size:
            skip = self.pool.rng.randrange(self.window_rows - size + 1)
        docs, position = self._read_window(size, skip=skip, after=None, fit=fit)
        if not docs and skip:
            skip = 0
            docs, position = self._read_window(size, skip=0, after=None, fit=fit)
        if len(docs) < size:  # a short read tells the size exactly
            self.window_rows = skip + len(docs)
        return docs, position

    def _range_size(self) -> int:
        """How many tokens a window could be taken from, or more: the todo view's rows, or (with the
        Mango index, which has no count) all documents of the database."""
        if self.pool._plan().find:
            count = self.pool._database_info().get("doc_count")
        else:
            count = self.pool._rows(self.pool.design, "todo", limit=0).get("total_rows")
        return count if isinstance(count, int) else 0

    def _read_window(
        self, size: int, *, skip: int, after: Any, fit: Optional[Fit] = None
    ) -> tuple[list[dict[str, Any]], Any]:
        """Up to ``size`` todo tokens (and the position to walk on from), after the position ``after``
        (None: from the start, past ``skip`` of them); with a fit, only tokens that fit alone, chosen by
        the server through the todo index (a site's own todo view is filtered here)."""
        if self.pool._plan().find:
            selector = picas.todo_selector("" if after is None else after)
            if fit is not None:
                selector = picas.fit_selector(selector, fit)
            docs = self.pool._find(selector, picas.TODO_INDEX, size + (after is not None), skip)
            if after is not None:
                docs = [doc for doc in docs if doc.get("_id") != after]
            return docs, docs[-1]["_id"] if docs else None
        params: dict[str, Any] = {"include_docs": True, "limit": size, "skip": skip}
        if after is not None:
            params.update(startkey=json.dumps(after), skip=1)
        rows = self.pool._rows(self.pool.design, "todo", **params).get("rows", [])
        docs = [row["doc"] for row in rows if isinstance(row.get("doc"), dict)]
        return docs, rows[-1].get("key") if rows else None
