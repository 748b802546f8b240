"""The CouchDB pool in the PiCaS layout (see ``picas.py``), spoken over HTTP to CouchDB or pouchdb-server.

Claims never hand a token to two pilots: a claim writes the lock with ``_bulk_docs`` conditional on the
revision the pilot read, so of two pilots that saw the same token, one gets a conflict. Todo tokens are
found through a Mango index of ours (``_design/pilot-todo``) when the Monitor todo view is the PiCaS one,
else through the site's own todo view. Which of them a pilot tries, a window at a time, is
``couchdb_windows.py``; the claim backs off with jitter when nothing is left to try. A task costs about
one request: the report of a finished task and the claim of its successor go in one ``_bulk_docs``, and
a window read serves dozens of claims.

Leases: a claim writes a lease (id, expiry) under the token's ``pilot`` key; renewals extend it. Tokens
whose lease expired are found through a second index (``_design/pilot-leases``) now and then, and when
todo is empty. A report is conditional on our revision; on a conflict the token is read again: if it
still holds our lease, our result is merged onto it and saved, else the newer attempt wins (CONFLICT).
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional
from urllib.parse import quote, urlencode

from agent import dependencies
from agent.config import ServerConfig
from agent.errors import (
    FIND_ID,
    ClaimUnreachable,
    DependencyError,
    DifferentToken,
    PoolError,
    RepeatedToken,
    ServerBusy,
    ServerUnreachable,
    TokenError,
)
from agent.http import HttpClient, Response, retry_after
from agent.identity import Identity
from agent.pools import picas
from agent.pools.base import (
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
    fit_left,
    missing_id,
    most_first,
)
from agent.pools.couchdb_windows import Windows, window_size
from agent.pools.httpauth import auth_headers, refusal
from agent.resources import Fit, stored_needs
from agent.token import Attempt, Outcome, Report, Result, State, Token

log = logging.getLogger(__name__)

CONFLICT_ROUNDS = 30  # claim rounds that met only conflicts before a claim gives up for now
BACKOFF_BASE = 0.02  # seconds; doubled per conflict round, jittered, capped
BACKOFF_MAX = 1.0
WRITE_ROUNDS = 4  # re-read and merge this often before a renewal or report gives up
BATCH = 500  # documents per _bulk_docs or _all_docs request
ADD_BATCH = 2000  # documents per _bulk_docs when adding: fewer requests, memory still flat
LOCKED_LOOK = 1000  # locked tokens an idle pilot counts through the index before it reads the views


def conflict_backoff(round_: int, rng: random.Random) -> float:
    """Seconds to wait after ``round_`` (1, 2, ...) claim rounds in a row met conflicts: full jitter."""
    return rng.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (round_ - 1)))


def lease_scan_interval(lease_seconds: float) -> float:
    """How often claims also look for expired leases (always when the todo view is empty)."""
    return max(1.0, min(60.0, lease_seconds / 4))


# A claim being written: the new document, the token's attempts, the new attempt, the lease id.
_Claim = tuple[dict[str, Any], list[Attempt], Attempt, str]


@dataclass(frozen=True)
class ClaimPlan:
    """Where claims look: ``find``, our Mango todo index (else the design document's todo view);
    ``scans``, our lease index for expired leases is there."""

    find: bool
    scans: bool


def _index_key(index: Mapping[str, Any]) -> tuple[str, str]:
    return f"_design/{index['ddoc']}", index["name"]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class CouchDBPool(Pool):
    def __init__(
        self,
        server: ServerConfig,
        identity: Identity,
        *,
        http: Optional[HttpClient] = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: Optional[random.Random] = None,
    ) -> None:
        assert server.couchdb is not None
        super().__init__(identity, server.lease)
        self.couch = server.couchdb
        self.design = self.couch.design_doc
        self.where = f"{self.couch.url}/{self.couch.database}"
        self.db_url = f"{self.couch.url}/{quote(self.couch.database, safe='')}"
        headers = {
            "Accept": "application/json",
            **auth_headers(self.where, self.couch.username, self.couch.password),
        }
        self.http = http or HttpClient(
            timeout=server.timeout,
            ca_bundle=self.couch.ca_bundle,
            verify_tls=self.couch.tls_verify,
            headers=headers,
        )
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.windows = Windows(self)  # which todo tokens claims try next: couchdb_windows.py
        self.plan: Optional[ClaimPlan] = None  # where claims look; decided at the first claim
        # Expired leases are looked for now and then, and when todo is empty; not at the start, when the
        # scan would index every token to find what the first periodic scan finds as well.
        self.next_lease_scan = clock() + lease_scan_interval(self.lease_seconds)
        self.uncertain: list[_Claim] = []  # claims whose answer was lost while the server was away
        self.views_ready: dict[str, bool] = {}  # our design documents of views are there (see _views_ready)
        self.next_waiting_sweep = 0.0  # when claims that find nothing may look over the waiting tokens
        self.requests = 0  # for the last log line: what this pilot cost the server
        self.claimed = 0
        self.conflicts = 0  # claims that met another pilot's write first

    # -- HTTP --------------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, body: Any = None, retry: Optional[bool] = None, root: bool = False
    ) -> Response:
        url = (self.couch.url if root else self.db_url) + path
        self.requests += 1
        try:
            return self.http.request(method, url, json_body=body, retry=retry)
        except ServerUnreachable as err:
            raise ServerUnreachable(self.where, err.problem, err.retry_after) from None

    def _json(self, response: Response, what: str) -> Any:
        if response.status == 404:
            raise self._missing(what, f"not found (HTTP 404: {_reason(response)})")
        if response.status >= 300:
            raise self._error(response, what)
        try:
            return response.json()
        except ValueError:
            raise PoolError(
                self.where, f"{what}: the answer is not JSON; is this a CouchDB server? Check server.url"
            ) from None

    def _error(self, response: Response, what: str) -> PoolError:
        """The one line for an answer we cannot use. Credentials never appear: only the user name does."""
        status, reason = response.status, _reason(response)
        problem = refusal(status, self.couch.username)
        if problem is None and (status >= 500 or status == 429):
            # Busy or broken, for now: the pilot waits (as long as Retry-After says, at most 5 minutes,
            # else backing off) and tries again, within server.max_outage.
            kind = ServerBusy if status in (429, 503) else ServerUnreachable
            busy = "server busy" if kind is ServerBusy else "server error"
            return kind(
                self.where, f"{what}: {busy} (HTTP {status}: {reason})", retry_after(response.headers)
            )
        problem = problem or "unexpected answer"
        return PoolError(self.where, f"{what}: {problem} (HTTP {status}: {reason})")

    def _missing(self, what: str, problem: str) -> PoolError:
        """A 404: say so, or that the whole database is missing."""
        response = self._request("GET", "")
        if response.status == 404:
            return PoolError(
                self.where, f"no database {self.couch.database!r} on the server (create it: `pilot.pyz init`)"
            )
        if response.status >= 300:
            return self._error(response, what)
        return PoolError(self.where, f"{what}: {problem}")

    def _rows(self, design: str, view: str, **params: Any) -> dict[str, Any]:
        """A view's answer (rows, total_rows); a missing view or design document says to run init."""
        response = self._request("GET", f"/_design/{quote(design)}/_view/{quote(view)}?{_query(params)}")
        what = f"reading the view {design}/{view}"
        if response.status == 404:
            raise self._missing(what, "no such view (create it: `pilot.pyz init`)")
        return self._json(response, what)

    def _bulk(self, docs: Sequence[Mapping[str, Any]], what: str, *, retry: bool) -> list[dict[str, Any]]:
        """One ``_bulk_docs`` write: one result per document, in the order of ``docs``, ``rev`` or ``error``.

        Results are matched to documents by id, not by position: pouchdb-server on disk answers in the
        order its writes finished, and trusting the position handed one pilot another's conflict as a
        successful claim."""
        answer = self._json(self._request("POST", "/_bulk_docs", body={"docs": docs}, retry=retry), what)
        by_id = {result.get("id"): result for result in answer} if isinstance(answer, list) else {}
        results = [by_id.get(doc["_id"]) for doc in docs]
        if len(by_id) != len(docs) or any(result is None for result in results):
            raise PoolError(self.where, f"{what}: unexpected answer to _bulk_docs")
        for doc, result in zip(docs, results):
            error = result.get("error")
            if error and error != "conflict":
                raise PoolError(
                    self.where, f"{what}: token {doc['_id']!r}: {error}: {result.get('reason', '')}"
                )
        return results

    def _fetch(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The current documents of these ids (a read: safe to retry); missing or deleted ones left out."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(ids), BATCH):
            body = self._json(
                self._request("POST", "/_all_docs?include_docs=true", body={"keys": list(chunk)}, retry=True),
                "reading tokens",
            )
            for row in body.get("rows", []):
                doc = row.get("doc")
                if isinstance(doc, dict):
                    found[doc["_id"]] = doc
        return found

    def _doc_path(self, token_id: str) -> str:
        return "/" + quote(token_id, safe="")

    def _get_doc(self, token_id: str) -> Optional[dict[str, Any]]:
        response = self._request("GET", self._doc_path(token_id))
        if response.status == 404:
            return None
        return self._json(response, f"reading token {token_id!r}")

    def close(self) -> None:
        if self.claimed or self.conflicts:
            log.info(
                "pool: %d requests, %d tokens claimed, %d claims met another pilot's first",
                self.requests,
                self.claimed,
                self.conflicts,
            )
        self.http.close()

    # -- claim -------------------------------------------------------------------------------------

    def claim(self, n: int, fit: Optional[Fit] = None) -> list[Lease]:
        if n <= 0:
            return []
        now = self.clock()
        leases = self._settle_uncertain(n, now) if self.uncertain else []
        scanned = False
        if self._lease_scan_due(now):
            leases += self._claim_expired(n, now, fit_left(fit, leases))
            scanned = True
        conflict_rounds = 0
        while len(leases) < n:
            left = fit_left(fit, leases)
            if left is not None and left.spent:
                break
            docs = self.windows.next(n - len(leases), left)
            if not docs and not leases and self._sweep_waiting():
                docs = self.windows.next(n - len(leases), left)
            if not docs:
                if not scanned and self._plan().scans:  # todo is empty: dead pilots' tokens are left
                    leases += self._claim_expired(n - len(leases), self.clock(), left)
                break
            try:
                got, conflicts = self._lock(docs, self.clock())
            except ServerBusy:
                if leases:
                    break  # keep what this claim has; the next one meets the busy server
                raise
            leases += got
            self._tally(len(got), conflicts)
            if conflicts and not got:
                conflict_rounds += 1
                if conflict_rounds >= CONFLICT_ROUNDS:
                    log.warning("claim: %d rounds of conflicts in a row; trying again later", conflict_rounds)
                    break
                if not self.windows.candidates:  # the window is spent or taken: others claim as we do
                    self.sleep(conflict_backoff(conflict_rounds, self.rng))
        return leases

    def _plan(self) -> ClaimPlan:
        if self.plan is None:
            self.plan = self._choose_plan()
        return self.plan

    def _choose_plan(self) -> ClaimPlan:
        """Claims find todo tokens through our Mango index when the design document's todo view is the
        PiCaS one, so both hold the same tokens; a site's own todo view (a subset of the tokens) is read as
        it is. Expired leases are found through our lease index; without it, tokens of dead pilots wait
        for `reset --locked`."""
        indexes = self._indexes()
        todo_view = self._design_views(self.design).get("todo")
        find = _index_key(picas.TODO_INDEX) in indexes and todo_view == picas.monitor_views()["todo"]
        scans = _index_key(picas.LEASE_INDEX) in indexes
        if not scans:
            log.warning(
                "no index %s: tokens of pilots that died stay locked until `pilot.pyz reset --locked` "
                "(a database admin adds it with `pilot.pyz init`)",
                picas.LEASE_INDEX["ddoc"],
            )
        return ClaimPlan(find=find, scans=scans)

    def _indexes(self) -> set[tuple[str, str]]:
        """The Mango indexes of the database, as (design document, name)."""
        body = self._json(self._request("GET", "/_index"), "listing the indexes")
        found = body.get("indexes") if isinstance(body, dict) else None
        return {
            (str(index.get("ddoc")), str(index.get("name")))
            for index in found or []
            if isinstance(index, dict)
        }

    def _database_info(self) -> dict[str, Any]:
        """The database's own document: doc_count and the like."""
        return self._json(self._request("GET", ""), f"reading the database {self.couch.database!r}")

    def _design_views(self, name: str) -> dict[str, Any]:
        response = self._request("GET", f"/_design/{quote(name)}")
        if response.status == 404:
            return {}
        views = self._json(response, f"reading the design document {name}").get("views")
        return views if isinstance(views, dict) else {}

    def _find(
        self,
        selector: Mapping[str, Any],
        index: Mapping[str, Any],
        limit: int,
        skip: int = 0,
        fields: Optional[list[str]] = None,
    ) -> list[dict[str, Any]]:
        """Documents matching a Mango selector, through one of our indexes (a read: safe to retry); only
        their ``fields`` if given."""
        use = [index["ddoc"], index["name"]]
        body = {"selector": selector, "limit": limit, "skip": skip, "use_index": use}
        if fields is not None:
            body["fields"] = fields
        what = f"finding tokens through the index {index['ddoc']}"
        answer = self._json(self._request("POST", "/_find", body=body, retry=True), what)
        docs = answer.get("docs") if isinstance(answer, dict) else None
        return [doc for doc in docs or [] if isinstance(doc, dict)]

    def _all_docs(self, params: Mapping[str, Any], what: str = "reading the ids of the database") -> Any:
        return self._json(self._request("GET", f"/_all_docs?{_query(params)}"), what)

    def _lease_scan_due(self, now: float) -> bool:
        return now >= self.next_lease_scan and self._plan().scans

    def _settle_uncertain(self, n: int, now: float) -> list[Lease]:
        """Claims written just before the server went away, whose answer never came: the tokens that
        carry our lease are ours. Keep up to ``n`` (renewed, so the lease is fresh), give back the rest."""
        pending, self.uncertain = self.uncertain, []
        leases, _ = self._leases(pending, self._after_lost_answer(pending), now)
        if not leases:
            return []
        renewal = self.renew(leases)
        for lease in renewal.cancelled:  # cancelled meanwhile, never started: its attempt is closed
            result = Result(Outcome.CANCELLED, Outcome.CANCELLED.value, None, now)
            self.report(lease, Report(result, State.ERROR, lease.token.failures))
        kept = renewal.renewed
        for lease in kept[n:]:
            result = Result(Outcome.INTERRUPTED, "not started: claimed while the server went away", None, now)
            self.report(lease, Report(result, State.TODO, lease.token.failures))
        log.info("%d token(s) claimed just before the server went away are ours", len(kept))
        return kept[:n]

    def _tally(self, claimed: int, conflicts: int) -> None:
        """Counted for the pilot's last log line, and told to the windows, which a conflict makes stale."""
        self.claimed += claimed
        self.conflicts += conflicts
        self.windows.tally(claimed, conflicts)

    def _claim_expired(self, wanted: int, now: float, fit: Optional[Fit] = None) -> list[Lease]:
        """Tokens whose lease expired: their pilot is gone. A site's own todo view takes only those that
        were claimed through the same design document."""
        self.next_lease_scan = now + lease_scan_interval(self.lease_seconds)
        docs = [
            doc
            for doc in self._find(picas.expired_selector(now), picas.LEASE_INDEX, window_size(wanted))
            if picas.lease_expired(doc, now)
            and doc.get("type") == "token"
            and (self._plan().find or (picas.lease_of(doc) or {}).get("design") == self.design)
        ]
        if fit is not None:
            docs = [
                docs[i]
                for i in replace(fit, tasks=min(fit.tasks, wanted)).pick([picas.needs_of(d) for d in docs])
            ]
        if not docs:
            return []
        got, _ = self._lock(docs[:wanted], now)
        return got

    def _lock(self, docs: Sequence[Mapping[str, Any]], now: float) -> tuple[list[Lease], int]:
        """Write our lock on these documents, each conditional on the revision read; (leases, conflicts)."""
        pending = self._claims(docs, now)
        written = [new for new, _, _, _ in pending]
        try:
            results = self._bulk(written, "claiming tokens", retry=False)
        except ServerBusy:
            raise  # an answer: nothing was written, and the pilot waits as long as the server asks
        except ServerUnreachable:
            results = self._after_lost_answer(pending)
        return self._leases(pending, results, now)

    def _claims(self, docs: Sequence[Mapping[str, Any]], now: float) -> list[_Claim]:
        """The documents as we want to write them to claim them: lock, lease, a new attempt."""
        expires = now + self.lease_seconds
        pending = []
        for doc in docs:
            attempt = self.new_attempt(now)
            lease_id = uuid.uuid4().hex
            new, attempts = picas.claimed(
                doc, attempt, lease_id=lease_id, expires=expires, design=self.design, now=now
            )
            pending.append((new, attempts, attempt, lease_id))
        return pending

    def _after_lost_answer(self, pending: Sequence[_Claim]) -> list[dict[str, Any]]:
        """The claim may have reached the server before its answer was lost: keep what is ours, as it is
        now (``doc``: a cancel, or any edit since our write, is kept by what we write next). When the
        server is away, remember the claims and settle them at the first claim after it is back."""
        try:
            current = self._fetch([new["_id"] for new, _, _, _ in pending])
        except ServerUnreachable:
            self.uncertain.extend(pending)
            raise
        return [
            {"id": new["_id"], "rev": current[new["_id"]]["_rev"], "doc": current[new["_id"]]}
            if picas.lease_id_of(current.get(new["_id"], {})) == lease_id
            else {"id": new["_id"], "error": "conflict"}
            for new, _, _, lease_id in pending
        ]

    def _leases(
        self, pending: Sequence[_Claim], results: Sequence[Mapping[str, Any]], now: float
    ) -> tuple[list[Lease], int]:
        expires = now + self.lease_seconds
        leases, conflicts = [], 0
        for (new, attempts, attempt, lease_id), result in zip(pending, results):
            if "rev" not in result:
                conflicts += 1
                continue
            new["_rev"] = result["rev"]
            if len(attempts) > 1 and attempts[-2].outcome == Outcome.LEASE_EXPIRED.value:
                log.info("claimed again: the lease of its last pilot expired", extra={"token": new["_id"]})
            token = replace(picas.to_token(new), attempts=tuple(attempts))
            handle = result.get("doc", new)  # what the server holds, where our write was only found
            lease = Lease(token=token, lease_id=lease_id, expires=expires, attempt=attempt, handle=handle)
            if picas.is_cancelled(handle):  # cancelled since our lost answer: never started, closed here
                stopped = Result(Outcome.CANCELLED, Outcome.CANCELLED.value, None, now)
                self.report(lease, Report(stopped, State.ERROR, token.failures))
                continue
            leases.append(lease)
        return leases, conflicts

    # -- renew and report --------------------------------------------------------------------------

    def renew(self, leases: Sequence[Lease]) -> Renewal:
        expires = self.clock() + self.lease_seconds
        pending = [(lease, lease.handle) for lease in leases]
        renewed: list[Lease] = []
        lost: list[Lease] = []
        cancelled: list[Lease] = []
        for _ in range(WRITE_ROUNDS):
            if not pending:
                break
            docs = [picas.renewed(doc, expires) for _, doc in pending]
            results = self._bulk(docs, "renewing leases", retry=True)
            conflicted = []
            for (lease, _), doc, result in zip(pending, docs, results):
                if "rev" in result:
                    doc["_rev"] = result["rev"]
                    renewed.append(replace(lease, expires=expires, handle=doc))
                else:
                    conflicted.append(lease)
            pending = []
            if not conflicted:
                break
            current = self._fetch([lease.token.id for lease in conflicted])
            for lease in conflicted:
                doc = current.get(lease.token.id)
                ours = doc is not None and picas.lease_id_of(doc) == lease.lease_id
                if ours and picas.is_cancelled(doc):
                    cancelled.append(lease)
                elif ours:
                    pending.append((lease, doc))  # changed by someone else, but still ours: again
                else:
                    lost.append(lease)
        # Still conflicting after every round: keep them as they are; the lease has not run out yet.
        renewed += [lease for lease, _ in pending]
        return Renewal(renewed, lost, cancelled)

    def cancel(self, token_ids: Sequence[str], *, all_todo: bool) -> int:
        now = self.clock()
        if not all_todo:
            known = self._states(token_ids)
            missing = [token_id for token_id in token_ids if token_id not in known]
            if missing:
                raise TokenError(
                    missing[0], f"not in the pool {self.where}; nothing was cancelled; {FIND_ID}"
                )
            return self._cancel(token_ids, now)
        token_ids = []
        for design, view in ((self.design, "todo"), (picas.WAITING_DESIGN, "waiting")):
            params = {} if view == "todo" else {"reduce": False}
            try:
                rows = self._rows(design, view, **params).get("rows", [])
            except PoolError:
                if view == "waiting":
                    break  # a pool made before dependencies: nothing waits in it
                raise
            token_ids += [row["id"] for row in rows if isinstance(row.get("id"), str)]
        return self._cancel(token_ids, now)

    def _cancel(self, token_ids: Sequence[str], now: float) -> int:
        written = []
        for chunk in _chunks(list(token_ids), BATCH):
            written += self._update(chunk, lambda doc: picas.cancelled(doc, now), "cancelling tokens")
        for doc in written:  # after all of them: a named token is cancelled, not failed
            self._settle_dependents(doc, State.ERROR)
        return len(written)

    def report_and_claim(
        self, lease: Lease, report: Report, n: int, fit: Optional[Fit] = None
    ) -> tuple[Saved, list[Lease]]:
        """The report and the claims in one ``_bulk_docs`` request. On pouchdb-server a request costs
        about ten times what one more document in it does, so this nearly halves a task's server time.
        Falls back to two calls when the todo window is empty or a scan for expired leases is due."""
        now = self.clock()
        fast = n > 0 and not self._lease_scan_due(now) and not self.uncertain
        docs = self.windows.next(n, fit) if fast else []
        if not docs:
            return super().report_and_claim(lease, report, n, fit)
        reported = picas.reported(lease.handle, lease.lease_id, len(lease.token.attempts) - 1, report, now)
        children = self._children(report, now)
        pending = self._claims(docs, now)
        written = [reported, *children, *(new for new, _, _, _ in pending)]
        try:
            results = self._bulk(written, "reporting and claiming", retry=False)
        except ServerUnreachable:
            # Like a lost claim, the whole request may have been saved. Find out what is ours; if the
            # server is really away, this raises again and the report goes to the journal.
            results = [{}, *children, *self._after_lost_answer(pending)]
            saved = self.report(lease, report)  # a report that did land is recognised as ours
        else:
            if "rev" in results[0]:
                saved = Saved.SAVED
                self._settle_dependents(reported, report.state)
            else:
                saved = self.report(lease, report)
        leases, conflicts = self._leases(pending, results[1 + len(children) :], now)
        self._tally(len(leases), conflicts)
        if len(leases) < n:  # others took them first: go on as claim() does, past conflicts
            left = fit_left(fit, leases)
            if left is None or not left.spent:
                try:
                    leases += self.claim(n - len(leases), left)
                except ServerUnreachable as err:
                    if not leases:  # no leases would read as an empty pool: say the server went away
                        raise ClaimUnreachable(err, saved) from err
        return saved, leases

    def report(self, lease: Lease, report: Report) -> Saved:
        """The report, with the children a task wrote in the same ``_bulk_docs`` (a child that is there
        already is ours: the ids are fixed, so a report sent again adds none twice)."""
        token_id = lease.token.id
        index = len(lease.token.attempts) - 1
        doc = lease.handle
        children = self._children(report, self.clock())
        for _ in range(WRITE_ROUNDS):
            new = picas.reported(doc, lease.lease_id, index, report, self.clock())
            sent = [] if picas.is_cancelled(new) else children  # a cancelled token gets no children
            results = self._bulk([new, *sent], f"reporting token {token_id!r}", retry=True)
            if "rev" in results[0]:
                return self._after_report(new, report.state, children)
            current = self._get_doc(token_id)
            if current is None:
                return Saved.CONFLICT
            if picas.ours(current).get("reported") == lease.lease_id:
                # An earlier try was saved and its answer lost (or this is a replay from the journal):
                # the release of its dependents may not have happened yet; it does no harm twice.
                return self._after_report(current, report.state, children)
            if picas.lease_id_of(current) != lease.lease_id:
                return Saved.CONFLICT
            # Someone edited the token while it was ours: merge our result and save again. A cancel
            # keeps our lease (so our renewal can tell it from a loss) and wins: `reported` keeps it.
            doc = current
        raise TokenError(token_id, f"the report kept meeting conflicting writes in {self.where}")

    def _after_report(
        self, doc: Mapping[str, Any], state: State, children: Sequence[Mapping[str, Any]]
    ) -> Saved:
        """Once a report is saved: its dependents released or failed. A token cancelled while its task ran
        had them failed by the cancel, and keeps none of the children the task wrote: a try of the report
        made before it met the cancel wrote them (``_bulk_docs`` is no transaction); they go again.
        Returns CANCELLED for such a token, else SAVED."""
        if not picas.is_cancelled(doc):
            self._settle_dependents(doc, state)
            return Saved.SAVED
        if children:
            self._drop_children(children)
        return Saved.CANCELLED

    def _drop_children(self, children: Sequence[Mapping[str, Any]]) -> None:
        """Delete these children of a cancelled token where no pilot claimed them yet; a token of the same
        id with other fields is not one of them (a child may name its id) and stays."""
        fields = {child["_id"]: picas.user_fields(child) for child in children}
        unclaimed = [
            {"_id": doc["_id"], "_rev": doc["_rev"], "_deleted": True}
            for doc in self._fetch(list(fields)).values()
            if picas.state_of(doc) in (State.TODO, State.WAITING)
            and not picas.attempts_of(doc)
            and picas.user_fields(doc) == fields[doc["_id"]]
        ]
        if unclaimed:  # a delete that meets a claim (a conflict) leaves that child be
            self._bulk(unclaimed, "removing the children of a cancelled token", retry=True)

    # -- dependencies ------------------------------------------------------------------------------

    def _children(self, report: Report, now: float) -> list[dict[str, Any]]:
        """The documents of the children a successful task wrote, linked to what they wait on."""
        if report.state is not State.DONE or not report.children:
            return []
        return self._new_docs(list(report.children), now)

    def _new_docs(self, tokens: list[NewToken], now: float) -> list[dict[str, Any]]:
        """New tokens as documents, waiting on what they come after. Tokens already in the pool that
        they wait on are told first (``pilot.dependents``), so their report releases them."""
        plan = dependencies.plan(tokens, self._states)
        new_ids = {token.id for token in tokens}
        outside = {dep: ids for dep, ids in plan.dependents.items() if dep not in new_ids}
        pending = [dep for dep in outside if any(dep in plan.waiting_on[i] for i in outside[dep])]
        if pending:
            self._update(pending, lambda doc: picas.with_dependents(doc, outside[doc["_id"]]), "linking")
            # A dependency may have been reported between the look-up and the link: look again.
            late = {dep for dep, state in self._states(pending).items() if state in (State.DONE, State.ERROR)}
            if late:
                plan = dependencies.plan(tokens, self._states)
        return [
            picas.new_token(
                token.id,
                token.fields,
                waiting_on=plan.waiting_on[token.id],
                dependents=plan.dependents.get(token.id, ()),
                failed=plan.failed.get(token.id),
                now=now,
                needs=_needs(token.fields),
            )
            for token in tokens
        ]

    def _states(self, ids: Sequence[str]) -> dict[str, State]:
        return {
            token_id: picas.state_of(doc) or State.ERROR
            for token_id, doc in self._fetch(ids).items()
            if doc.get("type") == "token"
        }

    def _settle_dependents(self, doc: Mapping[str, Any], state: State) -> None:
        """After a saved report: the tokens waiting on this one lose it from their list (done) or go to
        error, and so on down the graph (error). A request of its own after the report, not in it: the
        report may conflict (the lease moved on), and _bulk_docs is no transaction. A pilot that dies in
        between leaves them waiting until a claim that finds nothing else looks them over."""
        dependents = picas.dependents_of(doc)
        if not dependents or state not in (State.DONE, State.ERROR):
            return
        token_id = doc["_id"]
        if state is State.DONE:
            self._update(dependents, lambda d: picas.released(d, token_id), "releasing dependents")
            return
        now = self.clock()
        queue = [(token_id, dependents)]
        while queue:
            failed, ids = queue.pop(0)
            written = self._update(
                ids, lambda d, dep=failed: picas.dependency_failed(d, dep, now), "failing dependents"
            )
            queue += [(d["_id"], picas.dependents_of(d)) for d in written if picas.dependents_of(d)]

    def _update(
        self, ids: Sequence[str], change: Callable[[dict[str, Any]], Optional[dict[str, Any]]], what: str
    ) -> list[dict[str, Any]]:
        """Apply ``change`` to the current documents of ``ids`` (None: nothing to change), each write
        conditional on the revision read; read again and apply again where another write came first.
        Returns the documents written."""
        written: list[dict[str, Any]] = []
        pending = list(dict.fromkeys(ids))
        for _ in range(WRITE_ROUNDS * 4):  # many pilots release the same merge token at once
            current = self._fetch(pending)
            docs = [new for new in (change(current[i]) for i in pending if i in current) if new is not None]
            if not docs:
                return written
            pending = []
            for doc, result in zip(docs, self._bulk(docs, what, retry=True)):
                if "rev" in result:
                    doc["_rev"] = result["rev"]
                    written.append(doc)
                else:
                    pending.append(doc["_id"])
            if not pending:
                return written
            self.sleep(conflict_backoff(1, self.rng))
        log.warning("%s: %d token(s) kept meeting conflicts; claims look at them later", what, len(pending))
        return written

    def _sweep_waiting(self) -> bool:
        """Waiting tokens whose dependencies all ended, left behind by a pilot that died between a report
        and the release (or by a picas pilot, which knows nothing of them): release or fail them. At most
        every lease / 4; True when some became claimable."""
        now = self.clock()
        if now < self.next_waiting_sweep:
            return False
        self.next_waiting_sweep = now + lease_scan_interval(self.lease_seconds)
        if self._plan().find:  # our todo index holds the waiting tokens too (lock -1): no index to update
            found = self._find(picas.waiting_selector(), picas.TODO_INDEX, BATCH)
        else:
            query = urlencode({"reduce": "false", "include_docs": "true", "limit": BATCH})
            response = self._request("GET", f"/_design/{picas.WAITING_DESIGN}/_view/waiting?{query}")
            if response.status == 404:
                return False  # a pool made before dependencies: nothing can be waiting in it
            rows = self._json(response, "reading the waiting tokens").get("rows", [])
            found = [row["doc"] for row in rows if isinstance(row.get("doc"), dict)]
        docs = {doc["_id"]: doc for doc in found if picas.state_of(doc) is State.WAITING}
        states = self._states(sorted({dep for doc in docs.values() for dep in picas.waiting_on(doc)}))
        released = False
        for doc in docs.values():
            ended = [dep for dep in picas.waiting_on(doc) if states.get(dep) in (State.DONE, State.ERROR)]
            failed = next((dep for dep in ended if states[dep] is State.ERROR), None)
            if failed is not None:
                fail = functools.partial(picas.dependency_failed, dependency=failed, now=now)
                for written in self._update([doc["_id"]], fail, "failing dependents"):
                    self._settle_dependents(written, State.ERROR)
            elif ended:
                for dep in ended:
                    self._update([doc["_id"]], lambda d, dep=dep: picas.released(d, dep), "releasing")
                released = released or len(ended) == len(picas.waiting_on(doc))
        if released:
            self.windows.forget()
        return released

    # -- tokens ------------------------------------------------------------------------------------

    def add(self, tokens: Iterable[NewToken]) -> int:
        """Batch after batch, one ``_bulk_docs`` each: resumable, not atomic. CouchDB has no transaction
        over many documents, so a duplicate or an outage halfway leaves the batches before it in the
        pool, and the error says which: the input's first N tokens. A token already there with the same
        fields is skipped, so running the same command again adds what is missing and nothing twice.
        Returns how many were added by this call."""
        added, given = 0, 0
        try:
            for batch in batches(tokens, ADD_BATCH):
                self.vet_batch(batch)
                added += self._add_batch(batch, given)
                given += len(batch)
        except ServerUnreachable as err:
            raise ServerUnreachable(self.where, f"{err.problem}; {_added_before(given, batch)}") from None
        return added

    def _add_batch(self, batch: Sequence[NewToken], given: int) -> int:
        """Write the batch; a token that was there already must have the same fields (else TokenError,
        once the rest of the batch is in). Returns how many were new."""
        docs: dict[str, dict[str, Any]] = {}
        for token in batch:
            taken = sorted(name for name in token.fields if name in picas.RESERVED or name.startswith("_"))
            if taken:
                raise TokenError(
                    token.id,
                    f"field {taken[0]!r} is kept for PiCaS and pilot bookkeeping; rename it; "
                    + _added_before(given, batch),
                )
            try:
                stored_needs(token.fields)  # checked before the batch is written
            except ValueError as err:
                raise TokenError(token.id, f"{err}; {_added_before(given, batch)}") from None
            if docs.setdefault(token.id, token.fields) != token.fields:
                raise RepeatedToken(token.id, _added_before(given, batch))
        # `after` may name tokens in the pool (earlier batches too) or in this batch: see _new_docs.
        unique = [NewToken(token_id, fields) for token_id, fields in docs.items()]
        try:
            fresh = self._new_docs(unique, self.clock())
        except DependencyError as err:  # the batches before this one are in: say so
            raise DependencyError(err.problem, err.token_ids, err.hint, _added_before(given, batch)) from None
        results = self._bulk(fresh, "adding tokens", retry=True)
        conflicted = [doc for doc, result in zip(fresh, results) if "rev" not in result]
        if not conflicted:
            return len(fresh)
        # There already: added by an earlier run of the same input (or by a retried request whose first
        # try was saved), or a different token with the same id.
        current = self._fetch([doc["_id"] for doc in conflicted])
        other = [
            doc["_id"]
            for doc in conflicted
            if doc["_id"] not in current
            or current[doc["_id"]].get("type") != "token"
            or picas.user_fields(current[doc["_id"]]) != picas.user_fields(doc)
        ]
        if other:
            raise DifferentToken(
                other[0],
                self.where,
                f"the input's first {given + len(batch)} tokens (up to {batch[-1].id!r}) are in the pool, "
                "none after them; fix the input and run the same command again: tokens already there with "
                "the same fields are skipped",
                len(other) - 1,
            )
        return len(fresh) - len(conflicted)  # a retried request's own first try counts as there already

    def get(self, token_id: str) -> Token:
        doc = self._get_doc(token_id)
        if doc is None:
            raise TokenError(token_id, f"not in the pool {self.where}; {FIND_ID}")
        if doc.get("type") != "token":
            raise TokenError(
                token_id, f"a document in {self.where}, but not a token (type {doc.get('type')!r})"
            )
        return picas.to_token(doc)

    def tails(self, token_id: str) -> Optional[tuple[bytes, bytes]]:
        self.get(token_id)
        tails = []
        for suffix in ("out", "err"):
            name = f"logs_{token_id}.{suffix}"
            response = self._request("GET", f"{self._doc_path(token_id)}/{quote(name, safe='')}")
            if response.status == 404:
                tails.append(b"")
            elif response.status >= 300:
                raise self._error(response, f"reading the attachment {name}")
            else:
                tails.append(response.data)
        return tails[0], tails[1]

    def counts(self) -> Counts:
        body = self._rows(self.design, "overview_total", group=True)
        found = {row.get("key"): row.get("value") for row in body.get("rows", [])}
        counts = {state: int(found.get(state) or 0) for state in ("todo", "locked", "done", "error")}
        response = self._request("GET", f"/_design/{picas.WAITING_DESIGN}/_view/waiting")
        if response.status != 404:  # a pool made before dependencies has nothing waiting
            rows = self._json(response, "counting the waiting tokens").get("rows", [])
            counts["waiting"] = int(rows[0].get("value") or 0) if rows else 0
        return Counts(**counts)

    def todo_left(self) -> int:
        """One todo token looked for through our todo index first, which claims keep up to date. The
        counts read the Monitor and waiting views, JavaScript views built when read from every document
        changed since: the first pilot to end on an emptied pool made the server run the whole run's
        history through six views (1.7 s of pouchdb-server's CPU per 1,000 tokens, growing with the
        pool) while the other pilots claimed. Counted only when some are left."""
        if self._plan().find and not self._find(picas.todo_selector(""), picas.TODO_INDEX, 1):
            return 0
        return self.counts().todo

    def locked_left(self) -> int:
        """Locked tokens, picas's own locks among them, looked for through our todo index (``lock > 0`` is
        a range of it), not counted in the views, for the reason ``todo_left`` gives. Only when more than
        LOCKED_LOOK are locked, when so many pilots still run that the views are worth it, do they count."""
        if not self._plan().find:
            return self.counts().locked
        found = self._find(picas.locked_selector(), picas.TODO_INDEX, LOCKED_LOOK, fields=["_id"])
        return len(found) if len(found) < LOCKED_LOOK else self.counts().locked

    def reset(self, *, locked: bool, errors: bool) -> int:
        changed = 0
        for view, wanted in (("locked", locked), ("error", errors)):
            if wanted:
                changed += self._reset_view(view)
        return changed

    def _reset_view(self, view: str) -> int:
        """Every token in the view back to todo, as PiCaS's resetTokens.py does with ``Monitor/<view>``."""
        changed, conflict_rounds = 0, 0
        while conflict_rounds < WRITE_ROUNDS:
            rows = self._rows(self.design, view, include_docs=True, limit=BATCH).get("rows", [])
            docs = [row["doc"] for row in rows if isinstance(row.get("doc"), dict)]
            if not docs:
                break
            now = self.clock()
            new = self._wait_again([picas.reset(doc, now, fresh_budget=view == "error") for doc in docs])
            results = self._bulk(new, f"resetting {view} tokens", retry=True)
            saved = sum(1 for result in results if "rev" in result)
            changed += saved
            conflict_rounds = 0 if saved == len(results) else conflict_rounds + 1
        return changed

    # -- views -------------------------------------------------------------------------------------

    def page(
        self, state: Optional[State], cursor: Any, limit: int, *, tails: bool = False
    ) -> tuple[list[Listed], Any]:
        """A state's tokens through its view of the design document, all tokens through ``_all_docs``; in
        id order, the cursor being the last id read. With ``tails``, attachments come inline."""
        params: dict[str, Any] = {"include_docs": True, "limit": limit}
        if tails:
            params["attachments"] = True
        if cursor is not None:
            params.update(startkey=json.dumps(cursor), skip=1)
        if state is None:
            body = self._all_docs(params, "listing tokens")
        elif state is State.WAITING:  # not a PiCaS state: our own view, by id
            body = self._rows(picas.WAITING_DESIGN, "waiting", reduce=False, **params)
        else:
            body = self._rows(self.design, state.value, **params)
        rows = body.get("rows", [])
        docs = [row["doc"] for row in rows if isinstance(row.get("doc"), dict)]
        listed = [
            Listed(token=picas.to_token(doc), tails=picas.tails_of(doc) if tails else None)
            for doc in docs
            if doc.get("type") == "token"
        ]
        return listed, rows[-1].get("key") if len(rows) == limit else None

    def _stats(self) -> bool:
        """Our pilot-stats views are there (see ``_views_ready``)."""
        return self._views_ready(picas.STATS_DESIGN, picas.STATS_VIEWS, "the views read every token")

    def _views_ready(self, name: str, views: Mapping[str, Any], without: str) -> bool:
        """A design document of our views is there, made now if missing or older than ours; False (and
        the slow defaults, with a warning) when we may not write design documents. Looked at once."""
        if name not in self.views_ready:
            try:
                self._ensure_views(name, views)
                self.views_ready[name] = True
            except PoolError as err:
                if isinstance(err, ServerUnreachable):
                    raise
                log.warning(
                    "no design document %s (%s): %s; a database admin adds it with `pilot.pyz init`",
                    name,
                    err.problem,
                    without,
                )
                self.views_ready[name] = False
        return self.views_ready[name]

    def _ensure_views(self, name: str, views: Mapping[str, Any]) -> str:
        path = f"/_design/{quote(name)}"
        response = self._request("GET", path)
        doc: dict[str, Any] = {"_id": f"_design/{name}"}
        if response.status != 404:
            doc = self._json(response, f"reading the design document {name}")
            if doc.get("views") == views:
                return f"design document {name}: up to date"
        doc.update(language="javascript", views=views)
        put = self._request("PUT", path, body=doc)
        if put.status not in (200, 201, 202):
            raise self._error(put, f"writing the design document {name} (a database admin can)")
        return f"design document {name}: {'created' if response.status == 404 else 'updated'}"

    def todo_sizes(self) -> Optional[list[SizeCount]]:
        if not self._views_ready(picas.SIZES_DESIGN, picas.SIZES_VIEWS, "status shows no todo sizes"):
            return None  # reading every todo token instead would take a big pool's status minutes
        rows = self._rows(picas.SIZES_DESIGN, "todo", group=True).get("rows", [])
        return most_first(
            SizeCount(*key, int(row.get("value") or 0))
            for row in rows
            if isinstance(row, dict) and isinstance(key := row.get("key"), list) and len(key) == 3
        )

    def _stats_rows(self, view: str, **params: Any) -> list[dict[str, Any]]:
        rows = self._rows(picas.STATS_DESIGN, view, **params).get("rows", [])
        return [row for row in rows if isinstance(row, dict)]

    def finished_since(self, since: float) -> Counts:
        if not self._stats():
            return super().finished_since(since)
        found = {}
        for state in ("done", "error"):
            rows = self._stats_rows("finished", startkey=[state, since], endkey=[state, {}], reduce=True)
            found[state] = int(rows[0].get("value") or 0) if rows else 0
        return Counts(**found)

    def recent(self, limit: int) -> list[Token]:
        if not self._stats():
            return super().recent(limit)
        rows = self._stats_rows("activity", descending=True, limit=limit, include_docs=True)
        return [picas.to_token(row["doc"]) for row in rows if isinstance(row.get("doc"), dict)]

    def running(self) -> dict[str, int]:
        if not self._stats():
            return super().running()
        return {
            str(row.get("key")): int(row.get("value") or 0) for row in self._stats_rows("running", group=True)
        }

    def error_reasons(self, limit: int) -> list[ReasonCount]:
        if not self._stats():
            return super().error_reasons(limit)
        counted = [
            (str(row.get("key") or ""), int(row.get("value") or 0))
            for row in self._stats_rows("reasons", group=True)
        ]
        counted.sort(key=lambda item: (-item[1], item[0]))
        reasons = []
        for reason, count in counted[:limit]:
            # Rows of one key come in id order: the first is the smallest id, as the local pool's min(id).
            first = self._stats_rows("reasons", key=json.dumps(reason), reduce=False, limit=1)
            reasons.append(ReasonCount(reason, count, str(first[0].get("id")) if first else ""))
        return reasons

    def delete(self, token_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(token_ids))
        current = self._fetch(ids)
        for token_id in ids:
            if current.get(token_id, {}).get("type") != "token":
                raise missing_id(token_id, self.where)
        return self._delete_docs(list(current.values()))

    def delete_state(self, state: State) -> int:
        deleted, conflict_rounds = 0, 0
        while conflict_rounds < WRITE_ROUNDS:
            rows = self._rows(self.design, state.value, include_docs=True, limit=BATCH).get("rows", [])
            docs = [row["doc"] for row in rows if isinstance(row.get("doc"), dict)]
            if not docs:
                break
            removed = self._delete_docs(docs)
            deleted += removed
            conflict_rounds = 0 if removed == len(docs) else conflict_rounds + 1
        return deleted

    def _delete_docs(self, docs: Sequence[Mapping[str, Any]]) -> int:
        """Delete these documents at the revisions read; one that changed meanwhile is read and deleted
        again (a token a pilot reported just now is still to be deleted: that was asked)."""
        pending = {doc["_id"]: doc["_rev"] for doc in docs}
        deleted = 0
        for _ in range(WRITE_ROUNDS):
            if not pending:
                break
            chunked = [{"_id": i, "_rev": rev, "_deleted": True} for i, rev in pending.items()]
            conflicted = []
            for chunk in _chunks(chunked, BATCH):
                results = self._bulk(chunk, "deleting tokens", retry=True)
                deleted += sum(1 for result in results if "rev" in result)
                conflicted += [doc["_id"] for doc, result in zip(chunk, results) if "rev" not in result]
            current = self._fetch(conflicted) if conflicted else {}
            pending = {i: doc["_rev"] for i, doc in current.items()}
        return deleted

    def _wait_again(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tokens put back to todo wait again on what they come after and is not done."""
        after = {doc["_id"]: dependencies.after_of(doc["_id"], doc) for doc in docs if doc.get("after")}
        if not after:
            return docs
        states = self._states(sorted({dep for deps in after.values() for dep in deps}))
        waiting = []
        for doc in docs:
            not_done = [dep for dep in after.get(doc["_id"], ()) if states.get(dep) is not State.DONE]
            waiting.append(picas.waiting_again(doc, not_done) if not_done else doc)
        return waiting

    # -- init and check ----------------------------------------------------------------------------

    def init(self) -> list[str]:
        lines = [self._ensure_database()]
        lines += self._ensure_design(self.design, picas.monitor_views())
        lines += self._ensure_design(picas.WAITING_DESIGN, picas.waiting_views())
        lines += [self._ensure_index(index) for index in picas.INDEXES]
        for name, views in ((picas.STATS_DESIGN, picas.STATS_VIEWS), (picas.SIZES_DESIGN, picas.SIZES_VIEWS)):
            lines.append(self._ensure_views(name, views))
            self.views_ready[name] = True
        return lines

    def _ensure_index(self, index: Mapping[str, Any]) -> str:
        """One of our Mango indexes; the server says whether it was there already."""
        response = self._request("POST", "/_index", body=index)
        what = f"creating the index {index['ddoc']} (a database admin can)"
        result = self._json(response, what).get("result")
        return f"index {index['ddoc']}: {'up to date' if result == 'exists' else 'created'}"

    def _ensure_database(self) -> str:
        name = self.couch.database
        response = self._request("GET", "")
        if response.status == 200:
            info = self._json(response, f"reading the database {name!r}")
            return f"database {name}: exists ({info.get('doc_count', '?')} documents)"
        if response.status != 404:
            raise self._error(response, f"reading the database {name!r}")
        response = self._request("PUT", "")
        if response.status in (201, 202, 412):
            return f"database {name}: created"
        raise self._error(response, f"creating the database {name!r} (a server admin can)")

    def _ensure_design(self, name: str, views: Mapping[str, Any]) -> list[str]:
        """Create the design document or add its missing views. A view that differs from the PiCaS one is
        the site's choice and is kept."""
        path = f"/_design/{quote(name)}"
        response = self._request("GET", path)
        if response.status == 404:
            doc: dict[str, Any] = {"_id": f"_design/{name}"}
        else:
            doc = self._json(response, f"reading the design document {name}")
        present = doc.get("views") if isinstance(doc.get("views"), dict) else {}
        missing = [view for view in views if view not in present]
        differing = [view for view in views if view in present and present[view] != views[view]]
        lines = []
        if missing or doc.get("language") != "javascript":
            doc["views"] = {**present, **{view: views[view] for view in missing}}
            doc["language"] = "javascript"
            put = self._request("PUT", path, body=doc)
            if put.status not in (200, 201, 202):
                raise self._error(put, f"writing the design document {name} (a database admin can)")
            verb = "created" if response.status == 404 else "updated"
            lines.append(f"design document {name}: {verb} (views {', '.join(missing or views)})")
        else:
            lines.append(f"design document {name}: up to date (views {', '.join(views)})")
        if differing:
            lines.append(
                f"design document {name}: kept the site's own definition of {', '.join(differing)} "
                "(differs from the PiCaS examples)"
            )
        return lines

    def check(self) -> list[str]:
        root = self._json(self._request("GET", "/", root=True), "reaching the server")
        if not isinstance(root, dict) or not ({"couchdb", "express-pouchdb"} & root.keys()):
            raise PoolError(self.where, "the server answers, but it is not CouchDB; check server.url")
        product = "CouchDB" if "couchdb" in root else "PouchDB Server"
        lines = [f"server {self.couch.url}: reachable ({product} {root.get('version', '?')})"]
        session = self._json(self._request("GET", "/_session", root=True), "checking the credentials")
        user = (session.get("userCtx") or {}).get("name")
        if self.couch.username is not None and user != self.couch.username:
            raise PoolError(
                self.where,
                f"the server did not log in user {self.couch.username!r}; "
                "check server.username and the password",
            )
        lines.append(f"credentials: {'user ' + repr(user) if user else 'none (anonymous)'} accepted")
        count = self._database_info().get("doc_count", "?")
        lines.append(f"database {self.couch.database}: ok ({count} documents)")
        lines.append(self._check_design(self.design, picas.monitor_views()))
        lines.append(self._check_indexes())
        counts = self.counts()
        lines.append("tokens: " + ", ".join(f"{k} {v}" for k, v in counts.as_dict().items()))
        return lines

    def _check_indexes(self) -> str:
        present = self._indexes()
        missing = [index["ddoc"] for index in picas.INDEXES if _index_key(index) not in present]
        if missing:
            return (
                f"indexes: no {', '.join(missing)}; claims are slower and tokens of pilots that die stay "
                "locked until `pilot.pyz reset --locked` (a database admin runs `pilot.pyz init` to add them)"
            )
        return f"indexes: {', '.join(index['ddoc'] for index in picas.INDEXES)} present"

    def _check_design(self, name: str, views: Mapping[str, Any]) -> str:
        present = self._design_views(name)
        missing = [view for view in views if view not in present]
        if missing:
            raise PoolError(
                self.where, f"design document {name}: no view {', '.join(missing)} (run `pilot.pyz init`)"
            )
        differing = [view for view in views if present[view] != views[view]]
        note = f"; {', '.join(differing)} differ from the PiCaS examples" if differing else ""
        return f"design document {name}: views {', '.join(views)} present{note}"


def _query(params: Mapping[str, Any]) -> str:
    """A view's query string: JSON values, strings as they are (already JSON where they are keys)."""
    return urlencode(
        {k: json.dumps(v) if not isinstance(v, str) else v for k, v in params.items()}, safe='[]",'
    )


def _needs(fields: Mapping[str, Any]) -> Optional[dict[str, int]]:
    """The token's request as numbers; a wrong one (only a task's new token can have it: ``add`` refused
    them) is left out, and the pilot that claims the token says what is wrong."""
    try:
        return stored_needs(fields)
    except ValueError:
        return None


def _added_before(given: int, batch: Sequence[NewToken]) -> str:
    """Which tokens an add that stopped in ``batch`` left in the pool, and how to finish the job."""
    if not given:
        return "nothing was added"
    return (
        f"the input's first {given} tokens (up to the one before {batch[0].id!r}) are in the pool, none "
        "after them; fix what is wrong and run the same command again: tokens already there with the "
        "same fields are skipped"
    )


def _reason(response: Response) -> str:
    """CouchDB's ``error: reason`` from an error answer, short and without anything we sent."""
    try:
        body = response.json()
    except ValueError:
        return response.data[:100].decode("utf-8", "replace").strip() or "no details"
    if isinstance(body, dict):
        parts = [str(body.get(key)) for key in ("error", "reason") if body.get(key)]
        return ": ".join(parts)[:200] or "no details"
    return "no details"
