"""Pool backends behind one interface (``base.Pool``); ``open_pool`` picks the configured one."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from agent.config import LocalServer, ServerConfig
from agent.errors import UsageError
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


def open_pool(
    server: ServerConfig, identity: Identity, *, create: bool = False, only: Optional[str] = None
) -> Pool:
    """The configured pool. ``create`` allows making a new local pool file; servers are never created here.
    With ``server.pools``, the pools in order of priority as one, or the one named ``only``.

    Backends are imported on demand so that a local pilot never imports urllib3.
    """
    if only is not None and only not in server.pools:
        known = ", ".join(server.pools) or "none: server.pools is not set"
        raise UsageError(f"--pool {only}: not one of server.pools ({known})")
    if server.pools:
        from agent.pools.ordered import OrderedPools

        names = [only] if only is not None else list(server.pools)
        pools = [(name, _open_one(one_of(server, name), identity, create)) for name in names]
        return pools[0][1] if only is not None else OrderedPools(pools, identity, server.lease)
    return _open_one(server, identity, create)


def one_of(server: ServerConfig, name: str) -> ServerConfig:
    """The configuration of pool ``name`` of server.pools: a file beside server.path, or a database."""
    if server.local is not None:
        return replace(server, local=LocalServer(server.local.path.parent / f"{name}.db"), pools=())
    assert server.couchdb is not None
    return replace(server, couchdb=replace(server.couchdb, database=name), pools=())


def _open_one(server: ServerConfig, identity: Identity, create: bool) -> Pool:
    if server.backend == "local":
        from agent.pools.local import LocalPool

        assert server.local is not None
        return LocalPool(server.local.path, identity, server.lease, create=create)
    if server.backend == "couchdb":
        from agent.pools.couchdb import CouchDBPool

        assert server.couchdb is not None
        return CouchDBPool(server, identity)
    if server.backend == "topos":
        from agent.pools.topos import ToposPool

        assert server.topos is not None
        return ToposPool(server, identity)
    raise AssertionError(f"config.py let through an unknown backend {server.backend!r}")
