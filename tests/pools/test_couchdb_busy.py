"""A busy server (HTTP 429 with Retry-After), end to end through pilot.pyz: the pilot waits as long as the
server asks, then finishes the work; no token is lost or run twice.

pouchdb-server cannot be told to answer 429 on demand, so a small proxy on 127.0.0.1 stands in front of
it: it answers the first claims with 429 and forwards everything else unchanged. That is the one fake
here, for a fault a real server cannot produce when a test wants it (a CouchDB behind a rate-limiting
proxy answers the same way)."""

from __future__ import annotations

import collections
import http.server
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Site
from servers.pouchdb import PouchDBServer

from pools.conftest import couch_config

pytestmark = pytest.mark.couchdb

RETRY_AFTER = 2  # seconds the proxy asks for
RECORD = ["/bin/sh", "-c", 'echo "$1" >> "$2"', "record"]


class BusyProxy(http.server.ThreadingHTTPServer):
    """Forwards to ``upstream``; while ``busy`` is above 0, a POST to _bulk_docs (a claim, or a report
    with the next claim) gets 429 instead, and ``busy`` goes down by one. ``refused`` and ``forwarded``
    keep when each happened."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.busy = 0
        self.refused: list[float] = []
        self.forwarded: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: BusyProxy

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            refuse = self.command == "POST" and self.path.endswith("/_bulk_docs") and self.server.busy > 0
            if refuse:
                self.server.busy -= 1
                self.server.refused.append(time.monotonic())
            else:
                self.server.forwarded.append((time.monotonic(), self.command, self.path))
        if refuse:
            answer = b'{"error":"too_many_requests","reason":"slow down"}'
            self.send_response(429)
            self.send_header("Retry-After", str(RETRY_AFTER))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        request = urllib.request.Request(  # noqa: S310 - the upstream is pouchdb-server on loopback
            self.server.upstream + self.path,
            data=body if self.command in ("POST", "PUT") else None,
            method=self.command,
            headers={k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback only
                status, headers, data = response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            status, headers, data = err.code, err.headers, err.read()
        self.send_response(status)
        self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


@pytest.fixture
def proxy(pouchdb: PouchDBServer) -> Iterator[BusyProxy]:
    server = BusyProxy(pouchdb.url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_pilot_told_429_waits_as_long_as_retry_after_says_then_finishes(
    site: Site, pouchdb: PouchDBServer, couch_db: str, proxy: BusyProxy
) -> None:
    ran = site.folder / "ran.log"
    sections = couch_config(site.folder, pouchdb, couch_db, [*RECORD, "{id}", str(ran)])
    sections["server"]["url"] = proxy.url
    site.write(sections)
    assert site.run("init").returncode == 0
    assert site.run("tokens", "add", "--range", "6").returncode == 0
    proxy.busy = 2
    result = site.run("--verbose", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "server busy (HTTP 429: too_many_requests: slow down)" in result.stderr
    assert len(proxy.refused) == 2
    # After each refusal, no claim came back before the server's Retry-After had passed.
    for refused in proxy.refused:
        claims = [
            at for at, method, path in proxy.forwarded if method == "POST" and path.endswith("_bulk_docs")
        ]
        after = [at for at in claims if at > refused]
        assert after and after[0] - refused >= RETRY_AFTER * 0.95, (refused, after[:1])
    counts = collections.Counter(Path(ran).read_text().split())
    assert sorted(counts) == sorted(f"range-{i}" for i in range(6)) and set(counts.values()) == {1}
    assert site.status()["done"] == 6
