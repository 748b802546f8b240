"""Claims with many waiting tokens: the claim rate of a pool that holds 100,000 tokens waiting on a
dependency against a pool of the same size with none waiting, in the same run (target: within 20%).

Each pool holds a gate token (claimed and never reported, so what waits on it waits for good), 100,000
more and 5,000 ready ones; in the waiting pool the 100,000 come after the gate and were added before
the ready ones (a claim that stepped over them would show), in the other they are plain todo tokens
added after the ready ones. A round claims and reports the 5,000 ready tokens one by one, as a pilot
does (report_and_claim), through the pool classes in this process. Sides turn order every round.

    .venv/bin/python tests/benchmarks/bench_workflows.py [--waiting 100000] [--ready 5000] [--rounds 4]
    .venv/bin/python tests/benchmarks/bench_workflows.py --backend couchdb --waiting 20000 --ready 1000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, report, rounds_option, rounds_text, turned  # noqa: E402 - puts tests/ on the path

sys.path.insert(0, str(REPO))
from agent.identity import Identity  # noqa: E402
from agent.pools import NewToken, Pool  # noqa: E402
from agent.token import Outcome, Result, make_report  # noqa: E402

DONE = Result(Outcome.DONE, "exit code 0", 1.0, 2.0, 0)
SIDES = ["waiting", "none waiting"]


def fill(pool: Pool, waiting: int, *, dependent: bool) -> None:
    """The gate, held for good, and ``waiting`` tokens: after the gate, or plain todo tokens."""
    pool.add([NewToken("gate", {})])
    (gate,) = pool.claim(1)
    assert gate.token.id == "gate"
    after = {"after": ["gate"]} if dependent else {}
    for start in range(0, waiting, 5000):
        pool.add([NewToken(f"w{i}", {"input": i, **after}) for i in range(start, min(waiting, start + 5000))])


def drain(pool: Pool, ready: int, number: int) -> float:
    """Claims per second over ``ready`` new tokens, each reported done with the next claim, as a pilot
    with one slot does."""
    pool.add([NewToken(f"r{number}-{i}", {"input": i}) for i in range(ready)])
    start = time.perf_counter()
    (lease,) = pool.claim(1)
    for _ in range(ready - 1):
        _, (lease,) = pool.report_and_claim(lease, make_report(lease.token, DONE, 1), 1)
    pool.report(lease, make_report(lease.token, DONE, 1))
    return ready / (time.perf_counter() - start)


@contextmanager
def local_pools(folder: Path, waiting: int) -> Iterator[dict[str, Pool]]:
    from agent.pools.local import LocalPool

    pools: dict[str, Pool] = {}
    for side in SIDES:
        pool = LocalPool(folder / f"{side}.db", Identity("bench", "node", None), 600.0, create=True)
        fill(pool, waiting, dependent=side == "waiting")
        pools[side] = pool
    try:
        yield pools
    finally:
        for pool in pools.values():
            pool.close()


@contextmanager
def couchdb_pools(folder: Path, waiting: int) -> Iterator[dict[str, Pool]]:
    from servers.pouchdb import PouchDBServer

    from agent.config import CouchDBServer, ServerConfig
    from agent.pools.couchdb import CouchDBPool

    server = PouchDBServer(folder, auth=False, in_memory=True).start()
    pools: dict[str, Pool] = {}
    try:
        for side in SIDES:
            database = server.create_database()
            couch = CouchDBServer(server.url, database, None, None, "Monitor", None, True)
            config = ServerConfig("couchdb", 600.0, 60.0, 60.0, couchdb=couch)
            pool = CouchDBPool(config, Identity("bench", "node", None), rng=random.Random(7))
            pool.init()
            fill(pool, waiting, dependent=side == "waiting")
            pools[side] = pool
        yield pools
    finally:
        for pool in pools.values():
            pool.close()
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("local", "couchdb"), default="local")
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--ready", type=int, default=5_000)
    rounds_option(parser, 4)
    args = parser.parse_args()
    pools_for = local_pools if args.backend == "local" else couchdb_pools
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    ratios = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-workflows-") as tmp,
        pools_for(Path(tmp), args.waiting) as pools,
    ):
        for number in range(args.rounds):
            got = {side: drain(pools[side], args.ready, number) for side in turned(SIDES, number)}
            for side, rate in got.items():
                rates[side].append(rate)
            ratios.append(got["waiting"] / got["none waiting"])
        assert pools["waiting"].counts().waiting == args.waiting  # they waited throughout
    ratio = statistics.median(ratios)
    rows = [
        (f"{side}: claims/s", f"{statistics.median(rates[side]):.0f}  ({rounds_text(rates[side], '.0f')})")
        for side in SIDES
    ]
    rows.append(("ratio (target >= 0.80)", f"{ratio:.2f}  ({rounds_text(ratios)})"))
    title = f"claims, {args.waiting:,} tokens waiting or not ({args.backend} pool, {args.ready:,} per round)"
    report(title, rows)
    return 0 if ratio >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
