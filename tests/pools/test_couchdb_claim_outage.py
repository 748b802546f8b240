"""CouchDB's one-request report and claim, when the server goes away after the report went in and
before the claim that follows it (others had taken the tokens of the window): an outage, never an
empty pool.

The fault is in the client: every request after the report's ``_bulk_docs`` finds the server away.
pouchdb-server cannot be stopped between two requests of one call on demand; the report itself goes to
the real server.
"""

from __future__ import annotations

from typing import Any

import pytest
from servers.pouchdb import PouchDBServer

from agent.errors import ClaimUnreachable, ServerUnreachable
from agent.http import HttpClient, Response
from agent.pools import Saved
from agent.token import make_report
from pools.test_couchdb import make_pool, ready_pool, result


class AwayAfterBulk(HttpClient):
    """Armed, it lets one ``_bulk_docs`` through and then answers nothing more."""

    def __init__(self) -> None:
        super().__init__(timeout=10.0)
        self.armed = False
        self.away = False

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        if self.away:
            raise ServerUnreachable(url, "connection refused")
        response = super().request(method, url, **kwargs)
        if self.armed and method == "POST" and url.split("?", maxsplit=1)[0].endswith("/_bulk_docs"):
            self.away = True
        return response


def test_a_report_in_and_the_claim_after_it_cut_off_is_an_outage_not_an_empty_pool(
    pouchdb: PouchDBServer, couch_db: str
) -> None:
    ready_pool(pouchdb, couch_db, 3, name="pilot-b")
    pool = make_pool(pouchdb, couch_db, "pilot-a", http=AwayAfterBulk())
    (lease,) = pool.claim(1)
    pool.windows.candidates = pool.windows.next(2)  # the window it will claim from with its report ...
    assert len(make_pool(pouchdb, couch_db, "pilot-c").claim(5)) == 2  # ... which another pilot takes
    pool.http.armed = True
    with pytest.raises(ClaimUnreachable) as caught:
        pool.report_and_claim(lease, make_report(lease.token, result(), 1), 2)
    assert caught.value.saved is Saved.SAVED  # the report is in, and the pilot knows the server is away
    assert pool.http.away
    doc = pouchdb.request("GET", f"/{couch_db}/{lease.token.id}").body
    assert doc["done"] > 0
