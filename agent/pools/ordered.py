"""Pools in order of priority (``[server] pools = ["urgent", "normal"]``), seen as one Pool.

Claims take from the first pool that has something claimable, then the next: every claim looks at
``urgent`` first, so it is drained first and ``normal`` is taken whenever ``urgent`` has nothing to
give. Each pool keeps its own layout (a file or a database of its own). A lease carries the name of
its pool in its handle, so reports and renewals (also those replayed from a journal by another pilot)
go to the pool the token came from.

Children a task writes go to the reporting token's pool with the report, in the same write, unless
they name another pool (``"pool": "stage2"``): those are added before the report, skipping any that a
run before this one added already, so a saved report never lacks its children.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Optional

from agent.children import POOL
from agent.errors import FIND_ID, TokenError
from agent.identity import Identity
from agent.pools.base import (
    PAGE,
    Counts,
    Lease,
    Listed,
    NewToken,
    Pool,
    ReasonCount,
    Renewal,
    Saved,
    fit_left,
)
from agent.resources import Fit
from agent.token import Report, State, Token


class OrderedPools(Pool):
    def __init__(self, pools: Sequence[tuple[str, Pool]], identity: Identity, lease_seconds: float) -> None:
        super().__init__(identity, lease_seconds)
        self.pools = dict(pools)
        self.names = [name for name, _ in pools]
        self.where = ", ".join(f"{name} ({pool.where})" for name, pool in pools)

    # -- leases carry their pool -------------------------------------------------------------------

    def _wrap(self, name: str, leases: Iterable[Lease]) -> list[Lease]:
        return [replace(lease, handle={"pool": name, "handle": lease.handle}) for lease in leases]

    def _owner(self, lease: Lease) -> tuple[str, Lease]:
        handle: Any = lease.handle
        if not isinstance(handle, dict) or handle.get("pool") not in self.pools:
            raise TokenError(lease.token.id, f"its lease names no pool of {self.names}")
        return handle["pool"], replace(lease, handle=handle["handle"])

    # -- Pool --------------------------------------------------------------------------------------

    def claim(self, n: int, fit: Optional[Fit] = None) -> list[Lease]:
        """In order of priority; with a fit, each pool may take what the ones before it left."""
        leases: list[Lease] = []
        for name in self.names:
            if len(leases) >= n:
                break
            leases += self._wrap(name, self.pools[name].claim(n - len(leases), fit_left(fit, leases)))
        return leases

    def report(self, lease: Lease, report: Report) -> Saved:
        name, inner = self._owner(lease)
        return self.pools[name].report(inner, self._children_elsewhere(name, report))

    def report_and_claim(
        self, lease: Lease, report: Report, n: int, fit: Optional[Fit] = None
    ) -> tuple[Saved, list[Lease]]:
        """In one round trip when the token came from the first pool; else the report, then claims in
        order of priority."""
        name, inner = self._owner(lease)
        report = self._children_elsewhere(name, report)
        if name != self.names[0] or n <= 0:
            return self.pools[name].report(inner, report), self.claim(n, fit) if n > 0 else []
        saved, leases = self.pools[name].report_and_claim(inner, report, n, fit)
        leases = self._wrap(name, leases)
        for other in self.names[1:]:
            if len(leases) >= n:
                break
            leases += self._wrap(other, self.pools[other].claim(n - len(leases), fit_left(fit, leases)))
        return saved, leases

    def _children_elsewhere(self, name: str, report: Report) -> Report:
        """Add the children that name another pool, before the report; the rest go with it."""
        here = []
        for child in report.children:
            target = child.fields.get(POOL, name)
            if target not in self.pools:
                raise TokenError(child.id, f"`{POOL}` {target!r} is none of server.pools {self.names}")
            if target == name:
                here.append(child)
            else:
                self._add_missing(self.pools[target], child)
        return replace(report, children=tuple(here))

    def _add_missing(self, pool: Pool, child: NewToken) -> None:
        try:
            pool.get(child.id)
        except TokenError:
            pool.add([child])

    def renew(self, leases: Sequence[Lease]) -> Renewal:
        renewed: list[Lease] = []
        lost: list[Lease] = []
        cancelled: list[Lease] = []
        by_pool: dict[str, list[tuple[Lease, Lease]]] = {}
        for lease in leases:
            name, inner = self._owner(lease)
            by_pool.setdefault(name, []).append((lease, inner))
        for name, pairs in by_pool.items():
            outer = {inner.lease_id: lease for lease, inner in pairs}
            renewal = self.pools[name].renew([inner for _, inner in pairs])
            renewed += self._wrap(name, renewal.renewed)
            lost += [outer[lease.lease_id] for lease in renewal.lost]
            cancelled += [outer[lease.lease_id] for lease in renewal.cancelled]
        return Renewal(renewed, lost, cancelled)

    def add(self, tokens: Iterable[NewToken]) -> int:
        return self.pools[self.names[0]].add(tokens)

    def counts(self) -> Counts:
        totals: dict[str, int] = {}
        for pool in self.pools.values():
            for state, number in pool.counts().as_dict().items():
                totals[state] = totals.get(state, 0) + number
        return Counts(**totals)

    def reset(self, *, locked: bool, errors: bool) -> int:
        return sum(pool.reset(locked=locked, errors=errors) for pool in self.pools.values())

    def cancel(self, token_ids: Sequence[str], *, all_todo: bool) -> int:
        if all_todo:
            return sum(pool.cancel([], all_todo=True) for pool in self.pools.values())
        return sum(self._holder(token_id).cancel([token_id], all_todo=False) for token_id in token_ids)

    def _holder(self, token_id: str) -> Pool:
        for pool in self.pools.values():
            try:
                pool.get(token_id)
            except TokenError:
                continue
            return pool
        raise TokenError(token_id, f"in none of the pools {self.where}; {FIND_ID}")

    def get(self, token_id: str) -> Token:
        return self._holder(token_id).get(token_id)

    def tails(self, token_id: str) -> Optional[tuple[bytes, bytes]]:
        return self._holder(token_id).tails(token_id)

    # -- the views: every pool's, in order of priority ------------------------------------------------

    def page(
        self, state: Optional[State], cursor: Any, limit: int, *, tails: bool = False
    ) -> tuple[list[Listed], Any]:
        """The pools one after the other; the cursor is (the pool's place in the order, its cursor)."""
        number, inner = cursor if cursor is not None else (0, None)
        listed, inner = self.pools[self.names[number]].page(state, inner, limit, tails=tails)
        if inner is not None:
            return listed, (number, inner)
        return listed, (number + 1, None) if number + 1 < len(self.names) else None

    def histories(self, page_size: int = PAGE) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
        for pool in self.pools.values():
            yield from pool.histories(page_size)

    def finished_since(self, since: float) -> Counts:
        found = [pool.finished_since(since) for pool in self.pools.values()]
        return Counts(done=sum(c.done for c in found), error=sum(c.error for c in found))

    def recent(self, limit: int) -> list[Token]:
        tokens = [token for pool in self.pools.values() for token in pool.recent(limit)]
        tokens.sort(key=lambda token: -max((a.ended or a.claimed for a in token.attempts), default=0.0))
        return tokens[:limit]

    def running(self) -> dict[str, int]:
        hosts: dict[str, int] = {}
        for pool in self.pools.values():
            for host, number in pool.running().items():
                hosts[host] = hosts.get(host, 0) + number
        return hosts

    def error_reasons(self, limit: int) -> list[ReasonCount]:
        found: dict[str, tuple[int, str]] = {}
        for pool in self.pools.values():
            for item in pool.error_reasons(limit):
                count, example = found.get(item.reason, (0, item.example))
                found[item.reason] = (count + item.count, min(example, item.example))
        ranked = sorted(found.items(), key=lambda item: (-item[1][0], item[0]))
        return [ReasonCount(reason, count, example) for reason, (count, example) in ranked[:limit]]

    def delete(self, token_ids: Sequence[str]) -> int:
        holders = [(self._holder(token_id), token_id) for token_id in token_ids]  # all there, or none goes
        return sum(pool.delete([token_id]) for pool, token_id in holders)

    def delete_state(self, state: State) -> int:
        return sum(pool.delete_state(state) for pool in self.pools.values())

    def init(self) -> list[str]:
        return [f"{name}: {line}" for name, pool in self.pools.items() for line in pool.init()]

    def check(self) -> list[str]:
        return [f"{name}: {line}" for name, pool in self.pools.items() for line in pool.check()]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
