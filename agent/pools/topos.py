"""The ToPoS 4.1 pool: tokens on SURF's plain HTTP token pool server, as its bash client uses them.

A claim is ``nextToken?timeout=<lease>``: ToPoS locks one token for that many seconds and hands out each
token to one locker at a time (the hand-out is conditional on the lease count it read). The token's body
and ``X-Number-Of-Leases`` are fetched next; the lease count is the attempt number, and the records of
earlier hand-outs (the attempts pool) say which of them were charged failures. Renewal goes through the
lock URL; a renewal that finds the lock gone means the lease is lost.

Finishing: a done token's result goes to the done pool as a JSON token, then the token is deleted; a
token that failed for good gets its result in the error pool and is moved there (same id and body); a
failure with attempts left is recorded in the attempts pool and its lock released at once. Before any of
this the lock is renewed: a pilot whose lock expired never deletes a token another pilot now runs. What
remains (ToPoS checks no lock on DELETE): a ``reset --locked`` or another client's delete between our
renewal and our request, milliseconds apart.

A 404 from ``nextToken`` means empty *or* every token locked; the loop tells them apart by ``counts``
(the pool page's lock count), so pilots wait ``idle_timeout`` for tokens others hold. Never sent: a
DELETE of ``pools/P/`` or ``pools/P/tokens/``, which destroys the whole pool.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional
from urllib.parse import urlencode

from agent.config import ServerConfig
from agent.dependencies import AFTER
from agent.errors import PoolError, ServerUnreachable, TokenError, UsageError
from agent.http import HttpClient, Response, redact
from agent.identity import Identity
from agent.pools import topos_layout as layout
from agent.pools.base import PAGE, Counts, Lease, Listed, NewToken, Pool, ReasonCount, Renewal, Saved
from agent.pools.httpauth import auth_headers, refusal
from agent.pools.topos_views import ToposViews
from agent.resources import Fit, stored_needs
from agent.token import Attempt, Report, State, Token, close_attempt

log = logging.getLogger(__name__)

LINES_PER_POST = 1 << 20  # bytes per text/plain upload: a few large requests, well under PHP's limits
RANGE_PER_POST = 1_000_000  # ToPoS's own limit for ntokens
SET_URL = "set server.url to the ToPoS base URL, like https://topos.example.org/4.1/"
CLAIM_TRIES = 5  # a claimed token that vanished before we read it: claim another, this often
LISTING_AGE = 5.0  # seconds a pool's listing serves the figures of one status
RESULTS_READ = 100  # newest results read for status's durations and failure reasons
CHILDREN = "add the tokens a task writes to $PILOT_NEW_TOKENS"
UNSUPPORTED = (
    'server.backend = "topos": ToPoS cannot {what}: it keeps only a token\'s bytes, a lock and a lease '
    "count; use the local or CouchDB pool for this"
)


def refuse(what: str) -> UsageError:
    """The one error for features ToPoS cannot offer (say refuse("hold tokens until others are done")
    for dependencies, resources, cancel), to be raised before anything is added or claimed."""
    return UsageError(UNSUPPORTED.format(what=what))


@dataclass(frozen=True)
class Held:
    """What a claim learnt, for its report: the lock, the hand-out number, the token as stored. Kept on
    the lease as JSON (``as_handle``), since a report may wait in the journal for the server."""

    lock: str
    leases: int
    body: bytes
    content_type: str

    def as_handle(self) -> dict[str, Any]:
        return {
            "lock": self.lock,
            "leases": self.leases,
            "body": base64.b64encode(self.body).decode("ascii"),
            "content_type": self.content_type,
        }

    @classmethod
    def of(cls, lease: Lease) -> Held:
        handle = lease.handle
        body = base64.b64decode(handle["body"])
        return cls(str(handle["lock"]), int(handle["leases"]), body, str(handle["content_type"]))


class ToposPool(Pool):
    def __init__(
        self,
        server: ServerConfig,
        identity: Identity,
        *,
        http: Optional[HttpClient] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert server.topos is not None
        super().__init__(identity, server.lease)
        self.topos = server.topos
        self.pools = layout.Pools(self.topos.pool, self.topos.done_pool, self.topos.error_pool)
        self.base = self.topos.url
        self.where = f"{self.base}pools/{self.topos.pool}/"
        headers = auth_headers(self.where, self.topos.username, self.topos.password)
        self.http = http or HttpClient(
            timeout=server.timeout,
            ca_bundle=self.topos.ca_bundle,
            verify_tls=self.topos.tls_verify,
            headers=headers,
        )
        self.clock = clock
        self.lock_seconds = max(1, math.ceil(self.lease_seconds))
        description = f"pilot {identity.pilot_id} on {identity.host}"
        if identity.batch_job:
            description += f", batch job {identity.batch_job}"
        self.description = description
        self.claims_sent = 0  # numbers each claim's lock description: a claim whose answer was lost is found
        self.unanswered: set[str] = set()  # descriptions of claims that got no answer: their lock may be ours
        self.reached = False  # the server has answered as ToPoS does at least once
        self.stored: dict[str, str] = {}  # lease id: the result token already written for it
        self.unread: list[tuple[str, str, float]] = []  # handed to us, unread: token id, lock, when
        self.released_unfit = 0  # claimed tokens too big for what was free, released at once
        self.ambiguous: set[str] = set()  # lease ids whose result PUT got no clear answer
        self.listings: dict[str, tuple[float, list[dict[str, Any]]]] = {}  # pool: (read at, rows)
        self.views = ToposViews(self)

    # -- HTTP --------------------------------------------------------------------------------------

    def _url(self, pool: str, path: str = "") -> str:
        return f"{self.base}pools/{layout.quoted(pool)}/{path}"

    def _request(
        self,
        method: str,
        url: str,
        *,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        retry: Optional[bool] = None,
    ) -> Response:
        try:
            response = self.http.request(method, url, body=body, headers=headers, retry=retry)
        except ServerUnreachable as err:
            raise ServerUnreachable(self.where, err.problem) from None
        if response.status < 300 or (response.status < 500 and layout.is_topos_page(response.data)):
            self.reached = True  # ToPoS itself answered: a redirect from now on is an outage
        return response

    def _failure(self, response: Response, what: str) -> PoolError:
        """The one line for an answer we cannot use; never its body (5xx pages carry a stack trace)."""
        status = response.status
        detail = f"HTTP {status}: {layout.summary(response.data)}"
        problem = refusal(status, self.topos.username)
        if problem is None and status >= 500:
            return ServerUnreachable(self.where, f"{what}: server error ({detail})")
        if problem is None and 300 <= status < 400:
            location = redact(response.headers.get("Location", "") or "?")
            problem = f"the server redirects to {location} (HTTP {status})"
            if self.reached:  # it worked before: a maintenance redirect, as ToPoS's .htaccess has one
                return ServerUnreachable(self.where, f"{what}: {problem}")
            return PoolError(self.where, f"{what}: {problem}; {SET_URL}")
        if problem is None and status == 404 and not layout.is_topos_page(response.data):
            problem = f"not found, and not a ToPoS answer; {SET_URL}"
        return PoolError(self.where, f"{what}: {problem or 'unexpected answer'} ({detail})")

    def close(self) -> None:
        if self.released_unfit:
            log.info(
                "pool: %d claimed token(s) did not fit what was free and were released at once "
                "(ToPoS cannot choose by size)",
                self.released_unfit,
            )
        self._release_unread()
        self.http.close()

    def _release_unread(self) -> None:
        """On the way out: tokens handed to us that we will not run are freed for others at once, rather
        than when their lock expires."""
        released = 0
        for _, lock, _ in self.unread:
            try:
                released += self._release(lock)
            except PoolError:
                break  # still away: their locks expire on their own
        if released:
            log.info("released %d token(s) handed out as the server went away, not run here", released)
        self.unread.clear()

    # -- claim -------------------------------------------------------------------------------------

    def claim(self, n: int, fit: Optional[Fit] = None) -> list[Lease]:
        """Up to ``n`` tokens. ToPoS cannot look into tokens, so with a ``fit`` (what is free on the
        node) the claimed tokens that do not fit are released at once, their locks deleted: each such
        hand-out still counts in the token's lease count, though not as a failure (see docs/topos.md)."""
        if fit is not None and fit.beyond is not None:
            return []  # a probe for a token bigger than what is free: here it would be one more hand-out
        leases = self._claim_some(n)
        if fit is None or not leases:
            return leases
        taken = set(fit.pick([_needs(lease.token.fields) for lease in leases]))
        unfit = [lease for number, lease in enumerate(leases) if number not in taken]
        released: set[str] = set()
        try:
            for lease in unfit:
                self._release(lease.lease_id)
                released.add(lease.lease_id)
        except ServerUnreachable:
            self._keep_unread([lease for lease in leases if lease.lease_id not in released])
            raise
        if unfit:
            self.released_unfit += len(unfit)
            log.info(
                "released %d claimed token(s) that do not fit what is free now (%d so far): %s",
                len(unfit),
                self.released_unfit,
                ", ".join(lease.token.id for lease in unfit),
            )
        return [lease for number, lease in enumerate(leases) if number in taken]

    def _claim_some(self, n: int) -> list[Lease]:
        leases: list[Lease] = []
        try:
            if self.unanswered:
                self._find_unanswered()
            self._settle_unread(n, leases)
            tries = 0
            while len(leases) < n and tries < n + CLAIM_TRIES:
                tries += 1
                lease = self._claim_one()
                if lease is False:
                    continue  # handed out, then gone before we read it: another one
                if lease is None:
                    break
                leases.append(lease)
        except ServerUnreachable:
            self._keep_unread(leases)
            raise
        return leases

    def _keep_unread(self, leases: Sequence[Lease]) -> None:
        """Tokens handed to us by a claim the server's going away cut short: locked for us, so nobody
        else may take them until the lock expires. Dropped, nobody would run them that long (and a pilot
        that finds nothing else may end meanwhile): the next claim takes them first."""
        self.unread[:0] = [(lease.token.id, lease.lease_id, lease.attempt.claimed) for lease in leases]

    def _claim_one(self) -> Any:
        """A lease, None when ToPoS has nothing to hand out, False when the token vanished meanwhile."""
        now = self.clock()
        self.claims_sent += 1
        description = layout.claim_description(self.description, self.claims_sent)
        query = urlencode({"timeout": self.lock_seconds, "description": description})
        # A GET that hands out a token is not safe to repeat: a lost answer would leave a lock nobody holds
        # (unless we find it by its description: see _find_unanswered).
        try:
            response = self._request(
                "GET",
                self._url(self.pools.todo, f"nextToken?{query}"),
                headers={"Accept": "text/plain"},
                retry=False,
            )
        except ServerUnreachable:
            self.unanswered.add(description)
            raise
        if response.status >= 500:
            self.unanswered.add(description)  # a database gone mid-way may have handed one out
        if response.status == 404 and layout.is_topos_page(response.data):
            return None  # "No token available": empty, or every token locked (see counts)
        if response.status != 303:
            raise self._failure(response, "claiming a token")
        token_id = layout.token_id_of(response.headers.get("Location", ""))
        lock = layout.lock_of(response.headers.get("X-Topos-LockURL", ""))
        if token_id is None or lock is None:
            raise PoolError(self.where, "claiming a token: the answer names no token or no lock")
        try:
            fetched = self._request("GET", self._url(self.pools.todo, f"tokens/{token_id}"))
            if fetched.status >= 500:
                raise self._failure(fetched, f"reading token {token_id}")
            return self._read(token_id, lock, fetched, now)
        except ServerUnreachable:
            self.unread.append((token_id, lock, now))  # ours, locked: read it when the server is back
            raise

    def _find_unanswered(self) -> None:
        """Claims that got no answer (the connection dropped, a 500) may have been handed a token all the
        same: its lock, found by the claim's own description, is ours, and the token is read as unread."""
        response = self._request("GET", self._url(self.pools.todo, "locks/"), headers={"Accept": layout.JSON})
        if response.status != 200:
            raise self._failure(response, "listing the locks")
        try:
            rows = json.loads(response.data) or []
        except ValueError:
            raise PoolError(self.where, "listing the locks: the answer is not JSON") from None
        now = self.clock()
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or row.get("LockDescription") not in self.unanswered:
                continue
            lock = str(row.get("Name") or "")
            found = self._request(
                "GET", self._url(self.pools.todo, f"locks/{lock}"), headers={"Accept": "text/plain"}
            )
            if found.status >= 500:
                raise self._failure(found, "reading a lock")  # looked for again at the next claim
            token_id = layout.lock_token_id(found.data) if found.status == 200 else None  # 404: expired
            if token_id is not None:
                log.info("claim's answer was lost, its token found by its lock", extra={"token": token_id})
                self.unread.append((token_id, lock, now))
        self.unanswered.clear()

    def _settle_unread(self, n: int, leases: list[Lease]) -> None:
        """Tokens handed to us just before the server went away (unread, or read by a claim the outage
        cut short): ours while their lock holds. Each is taken off the list only once settled."""
        while self.unread and len(leases) < n:
            token_id, lock, now = self.unread[0]
            if self._renew_one(lock, self.lock_seconds):
                fetched = self._request("GET", self._url(self.pools.todo, f"tokens/{token_id}"))
                lease = self._read(token_id, lock, fetched, now)
                if lease:
                    leases.append(lease)
            self.unread.pop(0)

    def _read(self, token_id: str, lock: str, fetched: Response, now: float) -> Any:
        if fetched.status == 404:
            self._release(lock)
            return False
        if fetched.status != 200:
            raise self._failure(fetched, f"reading token {token_id}")
        return self._lease(token_id, lock, fetched, now)

    def _lease(self, token_id: str, lock: str, fetched: Response, now: float) -> Lease:
        leases = max(1, layout.leases_of(fetched.headers))
        content_type = fetched.headers.get("Content-Type", "application/octet-stream")
        fields, problem = layout.token_fields(fetched.data, content_type, layout.name_of(fetched.headers))
        if problem:
            log.warning("%s", problem, extra={"token": token_id})
        attempt = self.new_attempt(now)
        earlier = self._earlier(token_id, leases)
        token = Token(
            id=token_id,
            fields=fields,
            state=State.LOCKED,
            attempts=(*earlier, attempt),
            failures=layout.charged(earlier),  # as the other pools: give-backs and lost leases are free
        )
        # The lock lasts between lock_seconds - 1 and lock_seconds: ToPoS stores whole seconds.
        expires = now + self.lock_seconds - 1
        held = Held(lock=lock, leases=leases, body=fetched.data, content_type=content_type)
        return Lease(token=token, lease_id=lock, expires=expires, attempt=attempt, handle=held.as_handle())

    def _earlier(self, token_id: str, leases: int) -> list[Attempt]:
        """The hand-outs before this one, from the records of those that ended without finishing the
        token (the attempts pool); one with no record is lease-expired (its pilot went away)."""
        if leases <= 1:
            return []  # never handed out before: nothing to read
        records = {n: doc for n, (_, doc) in self._attempt_records(token_id).items()}
        return layout.history(leases, records, self.new_attempt(0.0))[:-1]

    def _release(self, lock: str) -> bool:
        response = self._request("DELETE", self._url(self.pools.todo, f"locks/{lock}"))
        if response.status in (200, 404):
            return response.status == 200
        raise self._failure(response, "releasing a lock")

    # -- renew -------------------------------------------------------------------------------------

    def _renew_one(self, lock: str, seconds: int) -> bool:
        """Extend our lock; False when it is gone (expired, released by a reset, or the token deleted)."""
        url = self._url(self.pools.todo, f"locks/{lock}?timeout={seconds}")
        response = self._request("HEAD", url)
        if response.status in (200, 404):
            return response.status == 200
        raise self._failure(response, "renewing a lock")

    def renew(self, leases: Sequence[Lease]) -> Renewal:
        renewed, lost = [], []
        for lease in leases:
            now = self.clock()
            if self._renew_one(lease.lease_id, self.lock_seconds):
                renewed.append(replace(lease, expires=now + self.lock_seconds - 1))
            else:
                lost.append(lease)
        return Renewal(renewed, lost)

    # -- report ------------------------------------------------------------------------------------

    def report(self, lease: Lease, report: Report) -> Saved:
        held = Held.of(lease)
        token = lease.token
        if report.children:  # refused before anything is written: the reporter fails the attempt instead
            raise TokenError(token.id, UNSUPPORTED.format(what=CHILDREN))
        if not self._still_ours(lease):
            return Saved.CONFLICT
        attempt = close_attempt(lease.attempt, report.result)
        if report.state is State.TODO:
            self._put(
                self.pools.attempts,
                layout.attempt_name(token.id, held.leases),
                layout.attempt_record(token, held.leases, attempt, report),
            )
            self._release(held.lock)
            return Saved.SAVED
        records = self._attempt_records(token.id) if held.leases > 1 else {}
        attempts = layout.history(held.leases, {n: doc for n, (_, doc) in records.items()}, attempt)
        document = layout.result_document(
            token,
            report,
            pool=self.pools.todo,
            body=held.body,
            content_type=held.content_type,
            lock=held.lock,
            leases=held.leases,
            attempts=attempts,
        )
        target = self.pools.done if report.state is State.DONE else self.pools.error
        self._store(lease, target, document)
        if report.state is State.DONE:
            self._delete(self.pools.todo, token.id)
        else:
            self._move(token.id, self.pools.todo, self.pools.error)
            self._release(held.lock)  # it went along with the token: free it there
        for record_id, _ in records.values():
            self._delete(self.pools.attempts, record_id)
        self.stored.pop(lease.lease_id, None)
        return Saved.SAVED

    def _store(self, lease: Lease, pool: str, document: Mapping[str, Any]) -> None:
        """Write the result once. A PUT whose answer was lost may have stored it: a resent report looks
        for it first (by the lock in it) rather than leave two results of one run."""
        lease_id, token_id = lease.lease_id, lease.token.id
        if lease_id in self.ambiguous:
            found = self._result(pool, token_id, lock=lease_id, tidy=True)
            if found is not None:
                self.stored[lease_id] = found[0]
            self.ambiguous.discard(lease_id)
        if lease_id in self.stored:  # written by an earlier try of this report
            return
        try:
            self.stored[lease_id] = self._put(pool, layout.result_name(token_id), document)
        except ServerUnreachable:
            self.ambiguous.add(lease_id)
            raise

    def _still_ours(self, lease: Lease) -> bool:
        """Renew the lock for long enough to finish: then no other pilot can be handed the token before our
        delete or move. A lock that expired while the server was away still counts as ours when nobody
        was handed the token since (its lease count has not moved)."""
        held = Held.of(lease)
        if self._renew_one(held.lock, max(60, self.lock_seconds)):
            return True
        response = self._request("HEAD", self._url(self.pools.todo, f"tokens/{lease.token.id}"))
        if response.status == 404:
            return lease.lease_id in self.stored  # gone: ours if it was our own delete
        if response.status != 200:
            raise self._failure(response, f"reading token {lease.token.id}")
        locked = layout.lock_of(response.headers.get("X-Topos-LockURL", ""))
        return locked is None and layout.leases_of(response.headers) == held.leases

    def _put(self, pool: str, name: str, document: Mapping[str, Any]) -> str:
        """A new JSON token named ``name``; returns its id. Not retried: each PUT makes another token."""
        headers = {"Content-Type": layout.JSON, "Content-Disposition": layout.disposition(name)}
        body = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogateescape")
        response = self._request("PUT", self._url(pool, "nextToken"), body=body, headers=headers, retry=False)
        token_id = layout.token_id_of(response.headers.get("Location", ""))
        if response.status != 201 or token_id is None:
            raise self._failure(response, f"writing {name} to the pool {pool}")
        return token_id

    def _delete(self, pool: str, token_id: str) -> None:
        response = self._request("DELETE", self._url(pool, f"tokens/{token_id}"))
        if response.status not in (200, 404):  # 404: gone already, as an earlier try left it
            raise self._failure(response, f"deleting token {token_id}")

    def _move(self, token_id: str, source: str, target: str) -> None:
        body = urlencode({"pool": source, "tokens": token_id}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        response = self._request("POST", self._url(target, "tokens/"), body=body, headers=headers, retry=True)
        if response.status != 200:
            raise self._failure(response, f"moving token {token_id} to the pool {target}")

    def _attempt_records(
        self, token_id: str, names: Optional[Mapping[int, str]] = None
    ) -> dict[int, tuple[str, dict[str, Any]]]:
        """The kept attempts of this token, by lease number: (record token id, record). ``names``: the
        records' ids by lease number, when the attempts pool was listed already (the views list it once)."""
        if names is None:
            listed: dict[int, str] = {}
            for row in self._listing(self.pools.attempts):
                lease = layout.attempt_lease(str(row.get("Original Name") or ""), token_id)
                if lease is not None:
                    listed[lease] = str(row["Name"])
            names = listed
        found: dict[int, tuple[str, dict[str, Any]]] = {}
        for lease, record_id in names.items():
            response = self._request("GET", self._url(self.pools.attempts, f"tokens/{record_id}"))
            if response.status == 404:
                continue  # went into the token's result meanwhile
            if response.status != 200:
                raise self._failure(response, f"reading the attempts of token {token_id}")
            try:
                record = json.loads(response.data)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("token") == token_id:
                found[lease] = (record_id, record)
        return found

    def _listing(self, pool: str) -> list[dict[str, Any]]:
        """Every token of a pool as ToPoS lists it: Name (the id), Original Name, Content-Type, Leases..."""
        response = self._request("GET", self._url(pool, "tokens/"), headers={"Accept": "application/json"})
        if response.status != 200:
            raise self._failure(response, f"listing the pool {pool}")
        try:
            rows = json.loads(response.data) or []
        except ValueError:
            raise PoolError(self.where, f"listing the pool {pool}: the answer is not JSON") from None
        return [row for row in rows if isinstance(row, dict) and "Name" in row]

    # -- adding ------------------------------------------------------------------------------------

    def add(self, tokens: Iterable[NewToken]) -> int:
        """JSON tokens, one PUT each, since a PUT can name its token. The id is ToPoS's: ``NewToken.id``
        is not kept."""
        added = 0
        for token in tokens:
            if AFTER in token.fields:
                raise refuse(f"hold token {token.id!r} until the tokens it comes `{AFTER}` are done")
            name = token.fields.get("name")
            headers = {"Content-Type": layout.JSON}
            if isinstance(name, str) and name:
                headers["Content-Disposition"] = layout.disposition(name)
            body = layout.json_body(token.fields)
            url = self._url(self.pools.todo, "nextToken")
            response = self._request("PUT", url, body=body, headers=headers, retry=False)
            if response.status != 201:
                raise self._adding_failed(response, added)
            added += 1
        return added

    def add_lines(self, tokens: Iterable[NewToken]) -> int:
        """Lines as ``text/plain`` tokens, as the bash client's createTokensFromLinesInFile makes them, in a
        few large POSTs."""
        added = 0
        checked = self._checked_lines(tokens)
        for count, body in layout.line_chunks(checked, LINES_PER_POST):
            headers = {"Content-Type": layout.TEXT}
            response = self._post(self.pools.todo, body, headers)
            if response.status != 202:
                raise self._adding_failed(response, added)
            added += count
        return added

    def _checked_lines(self, tokens: Iterable[NewToken]) -> Iterable[str]:
        for token in tokens:
            line = str(token.fields.get("input", ""))
            problem = layout.check_line(line)
            if problem:
                raise UsageError(f"{token.id}: {problem}")
            yield line

    def add_range(self, tokens: Iterable[NewToken], count: int, offset: int = 0) -> int:
        """``count`` tokens holding the numbers offset .. offset + count - 1, made by ToPoS itself."""
        added = 0
        while added < count:
            chunk = min(RANGE_PER_POST, count - added)
            body = urlencode({"ntokens": chunk, "offset": offset + added}).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            response = self._post(self.pools.todo, body, headers)
            if response.status != 202:
                raise self._adding_failed(response, added)
            added += chunk
        return added

    def _post(self, pool: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """A POST to a pool's tokens/: never repeated, as each one may add tokens."""
        return self._request("POST", self._url(pool, "tokens/"), body=body, headers=headers)

    def _adding_failed(self, response: Response, added: int) -> PoolError:
        err = self._failure(response, "adding tokens")
        note = f"; {added} tokens were added before this request, which may have added some too"
        return type(err)(self.where, err.problem + note)

    # -- looking -----------------------------------------------------------------------------------

    def _pool_page(self, pool: str) -> dict[str, int]:
        response = self._request("GET", self._url(pool), headers={"Accept": "text/plain"})
        if response.status != 200:
            raise self._failure(response, f"reading the pool {pool}")
        found = layout.counts_of(response.data.decode("utf-8", "replace"))
        if "tokens" not in found or "locks" not in found:
            raise PoolError(self.where, f"reading the pool {pool}: not a ToPoS pool page; check server.url")
        return found

    def counts(self) -> Counts:
        todo = self._pool_page(self.pools.todo)
        done = self._pool_page(self.pools.done)["tokens"]
        errors = sum(1 for row in self._listing(self.pools.error) if not layout.is_result(row))
        return Counts(todo=todo["tokens"] - todo["locks"], locked=todo["locks"], done=done, error=errors)

    def locked_left(self) -> int:
        """The pool page's lock count: one request, not the error pool's whole listing that counts read."""
        return self._pool_page(self.pools.todo)["locks"]

    # -- what status reads: from ToPoS's listings (the pool, the result pools), the newest results only --

    def _rows(self, pool: str) -> list[dict[str, Any]]:
        """A pool's listing, read once per look: status asks for several figures in a row."""
        now = self.clock()
        cached = self.listings.get(pool)
        if cached is None or now - cached[0] > LISTING_AGE:
            cached = (now, self._listing(pool))
            self.listings[pool] = cached
        return cached[1]

    def _results(self) -> list[tuple[float, str, dict[str, Any]]]:
        """(created, pool, row) of every result token, newest first."""
        found = [
            (layout.created_of(row), pool, row)
            for pool in (self.pools.done, self.pools.error)
            for row in self._rows(pool)
            if layout.is_result(row)
        ]
        return sorted(found, key=lambda item: -item[0])

    def finished_since(self, since: float) -> Counts:
        results = [pool for created, pool, _ in self._results() if created >= since]
        return Counts(done=results.count(self.pools.done), error=results.count(self.pools.error))

    def running(self) -> dict[str, int]:
        hosts: dict[str, int] = {}
        for row in self._rows(self.pools.todo):
            if row.get("Timeout"):  # locked now
                host = layout.host_of(str(row.get("LockDescription") or ""))
                hosts[host] = hosts.get(host, 0) + 1
        return hosts

    def _documents(self, limit: int, pool: Optional[str] = None) -> list[Token]:
        tokens = []
        for _, where, row in self._results():
            if len(tokens) >= min(limit, RESULTS_READ) or (pool is not None and where != pool):
                continue
            response = self._request("GET", self._url(where, f"tokens/{row['Name']}"))
            document = layout.document_of(response.data) if response.status == 200 else None
            if document is not None:
                tokens.append(layout.token_of_result(document))
        return tokens

    def recent(self, limit: int) -> list[Token]:
        return self._documents(limit)

    def error_reasons(self, limit: int) -> list[ReasonCount]:
        found: dict[str, tuple[int, str]] = {}
        for token in self._documents(RESULTS_READ, self.pools.error):
            reason = token.attempts[-1].reason if token.attempts else ""
            count, example = found.get(reason, (0, token.id))
            found[reason] = (count + 1, min(example, token.id))
        ranked = sorted(found.items(), key=lambda item: (-item[1][0], item[0]))
        return [ReasonCount(reason, count, example) for reason, (count, example) in ranked[:limit]]

    # -- what tokens list, export, delete and report read: every token, from the listings ----------

    def page(
        self, state: Optional[State], cursor: Any, limit: int, *, tails: bool = False
    ) -> tuple[list[Listed], Any]:
        return self.views.page(state, cursor, limit, tails=tails)

    def iter_tokens(
        self, state: Optional[State] = None, *, tails: bool = False, page_size: int = PAGE
    ) -> Iterator[Listed]:
        """The listings read once (ToPoS cannot page them), then each token: see topos_views.py."""
        return self.views.tokens(state, tails=tails)

    def delete(self, token_ids: Sequence[str]) -> int:
        return self.views.delete(token_ids)

    def delete_state(self, state: State) -> int:
        return self.views.delete_state(state)

    def cancel(self, token_ids: Sequence[str], *, all_todo: bool) -> int:
        raise refuse("cancel tokens (a running task learns nothing from a deleted token but a lost lock)")

    def get(self, token_id: str) -> Token:
        return self._find(token_id)[0]

    def tails(self, token_id: str) -> Optional[tuple[bytes, bytes]]:
        document = self._find(token_id)[1]
        return None if document is None else layout.tails_of(document)

    def _find(self, token_id: str) -> tuple[Token, Optional[dict[str, Any]]]:
        """The token wherever it is (pool, error pool, or only its result in the done pool) and its result."""
        if not token_id.isdigit():
            raise TokenError(token_id, "ToPoS token ids are numbers")
        response = self._request("GET", self._url(self.pools.todo, f"tokens/{token_id}"))
        if response.status == 200:
            locked = layout.lock_of(response.headers.get("X-Topos-LockURL", "")) is not None
            state = State.LOCKED if locked else State.TODO
            return self._token(token_id, response, state), None
        if response.status != 404:
            raise self._failure(response, f"reading token {token_id}")
        for pool in (self.pools.error, self.pools.done):
            found = self._result(pool, token_id)
            if found is not None:
                return layout.token_of_result(found[1]), found[1]
        raise TokenError(token_id, f"not in the pool {self.where}, nor a result in {self.pools.done}")

    def _token(self, token_id: str, response: Response, state: State) -> Token:
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        fields, _ = layout.token_fields(response.data, content_type, layout.name_of(response.headers))
        leases = layout.leases_of(response.headers)
        if state is State.LOCKED:
            leases -= 1  # the current hand-out is under way, not an earlier one
        earlier = self._earlier(token_id, leases + 1)  # the hand-outs that ended, as the views list them
        return Token(token_id, fields, state, tuple(earlier), layout.charged(earlier))

    def _result(
        self, pool: str, token_id: str, *, lock: Optional[str] = None, tidy: bool = False
    ) -> Optional[tuple[str, dict[str, Any]]]:
        """The newest result of this token in ``pool`` (of the run that held ``lock``, if given), with the
        id of the result token. With ``tidy``, a result token that holds no result is deleted: ToPoS keeps
        whatever part of a PUT arrived before the connection broke, and a token is listed only once its
        body is stored, so such a token is never a write still under way."""
        wanted = layout.result_name(token_id)
        for row in reversed(self._listing(pool)):  # the newest first
            if row.get("Original Name") != wanted:
                continue
            response = self._request("GET", self._url(pool, f"tokens/{row['Name']}"))
            document = layout.document_of(response.data) if response.status == 200 else None
            if document is not None and (lock is None or document.get("lock") == lock):
                return str(row["Name"]), document
            if document is None and response.status == 200 and tidy:
                log.info(
                    "deleting a result cut short by the outage (%d bytes)",
                    len(response.data),
                    extra={"token": token_id},
                )
                self._delete(pool, str(row["Name"]))
        return None

    # -- reset, init, check ------------------------------------------------------------------------

    def reset(self, *, locked: bool, errors: bool) -> int:
        changed = 0
        if locked:
            changed += self._pool_page(self.pools.todo)["locks"]
            response = self._request("DELETE", self._url(self.pools.todo, "locks/"))
            if response.status != 200:
                raise self._failure(response, "releasing every lock")
        if errors:
            rows = self._listing(self.pools.error)
            ids = [str(row["Name"]) for row in rows if not layout.is_result(row)]
            if ids:  # their results stay in the error pool, for a look
                self._move(",".join(ids), self.pools.error, self.pools.todo)
            changed += len(ids)
        return changed

    def init(self) -> list[str]:
        lines = self.check()
        return [*lines, f"pool {self.pools.todo}: ToPoS makes a pool when it is first used; nothing to do"]

    def check(self) -> list[str]:
        counts = self.counts()
        user = f"user {self.topos.username!r}" if self.topos.username else "none (anonymous)"
        return [
            f"server {self.base}: reachable (ToPoS)",
            f"credentials: {user} accepted",
            f"pool {self.pools.todo}: {counts.todo + counts.locked} tokens, {counts.locked} locked; "
            f"results in {self.pools.done} ({counts.done}) and {self.pools.error} ({counts.error} failed)",
        ]


def _needs(fields: Mapping[str, Any]) -> Optional[dict[str, int]]:
    """A token's request as numbers; a wrong one counts as none here, and the pilot that runs the token
    says what is wrong with it."""
    try:
        return stored_needs(fields)
    except ValueError:
        return None
