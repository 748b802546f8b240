"""The ToPoS pool when the real server goes away between two requests of one step: Apache really stopped
(by pid, as the fixture does) at the chosen moment, by a client wrapper that stops it once a given request
has been answered. The server itself cannot be told to stop "after this request"; everything else is real.
What the pool says afterwards is read back with plain HTTP (tests/servers/topos.py)."""

from __future__ import annotations

import json
import socket
import urllib.parse
from collections.abc import Mapping
from typing import Any, Callable, Optional

import pytest
from servers.topos import ToposServer

from agent.config import Secret, ServerConfig
from agent.config import ToposServer as ToposSettings
from agent.errors import ServerUnreachable
from agent.http import HttpClient, Response
from agent.identity import Identity
from agent.pools import Saved
from agent.pools.topos import ToposPool
from agent.token import Outcome, Result, make_report

pytestmark = pytest.mark.topos


class StopAfter:
    """The real HTTP client; once ``when(method, url, status)`` holds for an answer, ``stop()`` runs before
    that answer is handed back, so the pool's next request finds the server away."""

    def __init__(self, when: Callable[[str, str, int], bool], stop: Callable[[], None]) -> None:
        self.http = HttpClient(timeout=5.0, retries=0)
        self.when = when
        self.stop: Optional[Callable[[], None]] = stop

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        response = self.http.request(method, url, **kwargs)
        if self.stop is not None and self.when(method, url, response.status):
            self.stop, stop = None, self.stop
            stop()
        return response

    def close(self) -> None:
        self.http.close()


def make_pool(server: ToposServer, pool: str, http: Any) -> ToposPool:
    topos = ToposSettings(server.url, pool, f"{pool}.done", f"{pool}.error", None, Secret(""), None, True)
    config = ServerConfig(backend="topos", lease=30.0, max_outage=60.0, timeout=5.0, topos=topos)
    return ToposPool(config, Identity("p1", "node1", None), http=http)


def token_read(method: str, url: str, status: int) -> bool:
    return method == "GET" and "/tokens/" in url and status == 200


def lease_counts(server: ToposServer, pool: str) -> Mapping[int, int]:
    """Each token's lease count, read with plain HTTP."""
    return {
        int(row["Name"]): int(row["Leases"])
        for row in server.listing(pool)
        if str(row.get("Content-Type", "")).startswith("text/")
    }


def cut_claim(server: ToposServer, lines: bytes) -> tuple[str, ToposPool]:
    """A new pool with these lines, and a pool object whose claim(2) Apache's stop cut short after the
    first token was handed out and read; Apache is back when this returns."""
    pool_name = server.new_pool()
    server.add_lines(pool_name, lines)
    pool = make_pool(server, pool_name, StopAfter(token_read, server.stop_apache))
    with pytest.raises(ServerUnreachable):
        pool.claim(2)
    server.start_apache()
    return pool_name, pool


def test_a_claim_cut_short_by_an_outage_keeps_the_token_it_was_handed_for_the_next_claim(
    own_topos: ToposServer,
) -> None:
    """claim(2): ToPoS hands out and we read the first token, then Apache goes away before the second
    nextToken. The first token is locked for us: the next claim must return it (not leave it locked for
    nobody until the lock expires, while pilots that find nothing else end)."""
    server = own_topos
    pool_name, pool = cut_claim(server, b"a\nb\nc\nd\n")
    [first] = [token for token, leases in lease_counts(server, pool_name).items() if leases == 1]
    assert server.locks(pool_name) == 1  # handed out before the outage, locked for us
    leases = pool.claim(2)
    assert first in [int(lease.token.id) for lease in leases]  # ours, first
    assert len(leases) == 2
    assert server.locks(pool_name) == 2  # no lock that nobody holds
    assert sorted(lease_counts(server, pool_name).values()) == [0, 0, 1, 1]  # not handed out twice
    pool.close()


def test_a_pilot_that_ends_after_such_a_claim_frees_the_token_at_once(own_topos: ToposServer) -> None:
    server = own_topos
    pool_name, pool = cut_claim(server, b"a\nb\n")
    assert server.locks(pool_name) == 1
    pool.close()  # the pilot ends (max_outage, a drain) without claiming again
    assert server.locks(pool_name) == 0  # claimable by others now, not after the 30 s lock


class LostAnswer(StopAfter):
    """The real client, except that the answer to the first ``nextToken`` is dropped after ToPoS has
    handed out the token (the fault: Apache killed, or the connection cut, between ToPoS's lock and its
    answer, a window the real server opens only by chance)."""

    def __init__(self) -> None:
        super().__init__(lambda *_: False, lambda: None)
        self.dropped = False

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        response = self.http.request(method, url, **kwargs)
        if "/nextToken?" in url and response.status == 303 and not self.dropped:
            self.dropped = True
            raise ServerUnreachable(url, "connection reset")
        return response


def test_a_token_handed_out_by_a_claim_whose_answer_was_lost_is_found_by_its_lock_and_run(
    own_topos: ToposServer,
) -> None:
    server = own_topos
    pool_name = server.new_pool()
    server.add_lines(pool_name, b"a\nb\n")
    pool = make_pool(server, pool_name, LostAnswer())
    with pytest.raises(ServerUnreachable):
        pool.claim(1)
    [handed] = [token for token, leases in lease_counts(server, pool_name).items() if leases == 1]
    assert server.locks(pool_name) == 1  # ToPoS locked it; we never heard which
    [lease] = pool.claim(1)
    assert int(lease.token.id) == handed  # found by the claim's lock description, not handed out again
    assert sorted(lease_counts(server, pool_name).values()) == [0, 1]
    assert server.locks(pool_name) == 1
    pool.close()


class CutPut(StopAfter):
    """The real client, except that the first result PUT goes out with half its body before the
    connection breaks (the fault: a pilot killed, or Apache stopped, mid-request), over a plain socket to
    the real server, which stores what arrived."""

    def __init__(self) -> None:
        super().__init__(lambda *_: False, lambda: None)
        self.cut = False

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        if method == "PUT" and ".done/" in url and not self.cut:
            self.cut = True
            half_put(url, kwargs.get("headers") or {}, kwargs["body"])
            raise ServerUnreachable(url, "connection reset")
        return self.http.request(method, url, **kwargs)


def half_put(url: str, headers: Mapping[str, str], body: bytes) -> None:
    parts = urllib.parse.urlsplit(url)
    lines = [f"PUT {parts.path}?{parts.query} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)
        sock.recv(4096)  # ToPoS's answer, to a client that is gone in real life


def test_a_result_put_cut_short_leaves_no_half_result_once_the_report_is_sent_again(
    topos: ToposServer,
) -> None:
    pool_name = topos.new_pool()
    topos.add_lines(pool_name, b"x\n")
    pool = make_pool(topos, pool_name, CutPut())
    [lease] = pool.claim(1)
    report = make_report(lease.token, Result(Outcome.DONE, "exit code 0", 1.0, 2.0, 0), 3)
    with pytest.raises(ServerUnreachable):
        pool.report(lease, report)
    [half] = topos.listing(f"{pool_name}.done")  # ToPoS kept the half that arrived
    assert half["Original Name"] == f"result-{lease.token.id}"
    assert json_or_none(topos.token(f"{pool_name}.done", int(half["Name"])).body) is None
    assert pool.report(lease, report) is Saved.SAVED  # the journal sends it again
    [row] = topos.listing(f"{pool_name}.done")
    assert row["Name"] != half["Name"]  # the half one is gone, the whole one written
    assert json_or_none(topos.token(f"{pool_name}.done", int(row["Name"])).body)["token"] == lease.token.id
    assert topos.token_ids(pool_name) == []
    pool.close()


def json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
