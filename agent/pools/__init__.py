"""Pool backends behind one interface (``base.Pool``); ``open_pool`` picks the configured one."""

from __future__ import annotations

from agent.config import ServerConfig
from agent.identity import Identity
from agent.pools.base import Counts, Lease, Listed, NewToken, Pool, ReasonCount, Renewal, Saved

__all__ = [
    "Counts",
    "Lease",
    "Listed",
    "NewToken",
    "Pool",
    "ReasonCount",
    "Renewal",
    "Saved",
    "open_pool",
]


def open_pool(server: ServerConfig, identity: Identity, *, create: bool = False) -> Pool:
    """The configured pool. ``create`` allows making a new local pool file; servers are never created here.

    Backends are imported on demand so that a local pilot never imports urllib3.
    """
    if server.backend == "local":
        from agent.pools.local import LocalPool

        assert server.local is not None
        return LocalPool(server.local.path, identity, server.lease, create=create)
    if server.backend == "couchdb":
        from agent.pools.couchdb import CouchDBPool

        assert server.couchdb is not None
        return CouchDBPool(server, identity)
    raise AssertionError(f"config.py let through an unknown backend {server.backend!r}")
