"""What an idle pilot asks the real ToPoS 4.1 while it waits for tokens other pilots hold: the pool page's
lock count, in one request, the same figure the counts give."""

from __future__ import annotations

from typing import Any

import pytest
from servers.topos import ToposServer

from agent.http import HttpClient, Response
from pools.test_topos_outage import make_pool

pytestmark = pytest.mark.topos


class Recording(HttpClient):
    """The real client, keeping the method and path of each request it sends."""

    def __init__(self) -> None:
        super().__init__(timeout=5.0)
        self.sent: list[tuple[str, str]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        self.sent.append((method, url.split("?", maxsplit=1)[0]))
        return super().request(method, url, **kwargs)


def test_locked_left_is_one_read_of_the_pool_page_and_agrees_with_the_counts(topos: ToposServer) -> None:
    pool_name = topos.new_pool()
    topos.add_lines(pool_name, b"a\nb\nc\n")
    http = Recording()
    pool = make_pool(topos, pool_name, http)
    pool.claim(2)
    http.sent.clear()
    assert pool.locked_left() == 2
    assert [method for method, _ in http.sent] == ["GET"]
    assert http.sent[0][1].rstrip("/").endswith(f"pools/{pool_name}")
    assert pool.counts().locked == 2
    pool.close()
