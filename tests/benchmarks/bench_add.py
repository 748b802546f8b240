"""Adding and claiming at scale: `tokens add` of 1,000,000 lines into the local pool and of 100,000 tokens
into CouchDB (pouchdb-server in memory), with their peak RSS, each against a bare loop that writes the same
rows in the same run; then the claim rate of a pilot on a pool of 1,000,000 tokens against one of 2,000.

Targets: under 60 MB whatever the size; at least 100,000 tokens/s into the local pool and 5,000 into
CouchDB; claims as fast at 1,000,000 tokens as at 2,000. Sides take turns, round after round, the one
that goes first changing each round; figures are medians. Into CouchDB, each side first adds a fifth of
the tokens untimed, to a server that has then run both (a pool's server is not freshly started).

    .venv/bin/python tests/benchmarks/bench_add.py [--rounds 2] [--lines 1000000] [--couch 100000]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import urllib3

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import ensure_pyz, report, rounds_option, rounds_text, run_own_cpu, turned  # noqa: E402
from conftest import to_toml  # noqa: E402
from servers.pouchdb import PouchDBServer, ServerMissing  # noqa: E402

from agent.pools import picas  # noqa: E402 - the documents as the pilot writes them, for the bare loop

CLAIMED = 2000  # tokens a pilot runs on each pool for the claim rate
WARM_UP = 5  # each side adds a fifth of the CouchDB tokens, untimed, before the rounds
MEMORY = 60 * 2**20
SCHEMA = "CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, state TEXT, fields TEXT)"


def local_site(folder: Path, pool: Path) -> Path:
    config = folder / f"{pool.stem}.toml"
    sections = {
        "server": {"backend": "local", "path": str(pool)},
        "task": {"command": ["/bin/true"]},
        "pilot": {"slots": 2, "workdir": str(folder / "work"), "max_tasks": CLAIMED},
    }
    config.write_text(to_toml(sections))
    return config


def fresh(pool: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{pool}{suffix}").unlink(missing_ok=True)


def pilot_add(pyz: Path, config: Path, source: list[str], env: dict[str, str]) -> tuple[float, int]:
    code, seconds, peak, _ = run_own_cpu(
        [sys.executable, str(pyz), "tokens", "add", *source, "--config", str(config)], env
    )
    if code != 0:
        raise SystemExit(f"tokens add exited {code}")
    return seconds, peak


def bare_sqlite(pool: Path, lines: Path) -> float:
    """The same rows into one SQLite table with a unique id, one transaction, executemany: no checks."""
    fresh(pool)
    start = time.perf_counter()
    db = sqlite3.connect(str(pool), isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(SCHEMA)
    db.execute("BEGIN")
    with lines.open("rb") as file:
        rows = (
            (f"lines-{n}", "todo", json.dumps({"input": raw.rstrip(b"\n").decode()}))
            for n, raw in enumerate(file, 1)
        )
        db.executemany("INSERT INTO t (id, state, fields) VALUES (?, ?, ?)", rows)
    db.execute("COMMIT")
    db.close()
    return time.perf_counter() - start


def bare_couch(server: PouchDBServer, database: str, count: int) -> float:
    """The same documents in _bulk_docs requests of 2,000, one after the other."""
    http = urllib3.PoolManager()
    start = time.perf_counter()
    for first in range(0, count, 2000):
        docs = [picas.new_token(f"range-{i}", {"input": i}) for i in range(first, min(count, first + 2000))]
        body = json.dumps({"docs": docs}).encode()
        answer = http.request(
            "POST",
            f"{server.url}/{database}/_bulk_docs",
            body=body,
            headers={"Content-Type": "application/json"},
        )
        if answer.status != 201:
            raise SystemExit(f"_bulk_docs answered {answer.status}")
    return time.perf_counter() - start


def couch_add(
    pyz: Path, server: PouchDBServer, folder: Path, *, side: str, name: str, count: int, env: dict[str, str]
) -> tuple[float, int]:
    """(seconds, peak RSS of the pilot's side) to add ``count`` tokens by ``side`` into a new database that
    `init` readied (views and indexes): what a user adds to. The database is deleted after."""
    database = server.create_database(name)
    config = folder / "couch.toml"
    sections = {
        "server": {"backend": "couchdb", "url": server.url, "database": database},
        "task": {"command": ["/bin/true"]},
    }
    config.write_text(to_toml(sections))
    subprocess.run([str(pyz), "init", "--config", str(config)], env=env, check=True, capture_output=True)
    if side == "pilot":
        seconds, peak = pilot_add(pyz, config, ["--range", str(count)], env)
    else:
        seconds, peak = bare_couch(server, database, count), 0
    server.delete_database(database)
    return seconds, peak


def claim_rate(pyz: Path, config: Path, env: dict[str, str]) -> float:
    """Tasks/s of one pilot running CLAIMED tokens (max_tasks), its start-up included."""
    code, seconds, _, _ = run_own_cpu([sys.executable, str(pyz), "--config", str(config), "--quiet"], env)
    if code != 0:
        raise SystemExit(f"pilot exited {code}")
    return CLAIMED / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rounds_option(parser, default=2)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--couch", type=int, default=100_000)
    args = parser.parse_args()
    pyz = ensure_pyz()
    local: dict[str, list[float]] = {"pilot": [], "bare": []}
    couch: dict[str, list[float]] = {"pilot": [], "bare": []}
    claims: dict[str, list[float]] = {"big": [], "small": []}
    peaks: dict[str, int] = {"local": 0, "couch": 0}
    with tempfile.TemporaryDirectory(prefix="bench-add-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "PILOT_PYZ_ROOT": str(folder / "pyz-root")}
        subprocess.run([str(pyz), "--version"], env=env, check=True, stdout=subprocess.DEVNULL)
        lines = folder / "lines.txt"
        with lines.open("w") as out:
            out.writelines(f"/data/sample-{n:07d}.fastq.gz\n" for n in range(args.lines))
        big, small = folder / "big.db", folder / "small.db"
        for number in range(args.rounds):
            for side in turned(["pilot", "bare"], number):
                if side == "pilot":
                    fresh(big)
                    seconds, peak = pilot_add(pyz, local_site(folder, big), ["--lines", str(lines)], env)
                    peaks["local"] = max(peaks["local"], peak)
                else:
                    seconds = bare_sqlite(folder / "bare.db", lines)
                local[side].append(args.lines / seconds)
        # The claim rate: the big pool as the last add left it, and a small one; each run takes CLAIMED.
        fresh(small)
        pilot_add(pyz, local_site(folder, small), ["--range", str(CLAIMED * args.rounds)], env)
        for number in range(args.rounds):
            for side in turned(["big", "small"], number):
                claims[side].append(claim_rate(pyz, local_site(folder, big if side == "big" else small), env))
        server = PouchDBServer(folder / "server", auth=False, in_memory=True).start()
        try:
            # Untimed: the first writes to a fresh pouchdb-server run while Node compiles its code, and
            # made the cold round the slow one for whichever side went first. A pool's server is warm.
            add = functools.partial(couch_add, pyz, server, folder, env=env)
            for side in ("pilot", "bare"):
                add(side=side, name=f"warm-{side}", count=args.couch // WARM_UP)
            for number in range(args.rounds):
                for side in turned(["pilot", "bare"], number):
                    seconds, peak = add(side=side, name=f"add-{side}-{number}", count=args.couch)
                    peaks["couch"] = max(peaks["couch"], peak)
                    couch[side].append(args.couch / seconds)
        finally:
            server.stop()

    def line(rates: dict[str, list[float]], target: int, peak: int, bare: str) -> str:
        ratios = [p / b for p, b in zip(rates["pilot"], rates["bare"])]
        return (
            f"{statistics.median(rates['pilot']):8.0f} tokens/s (target >= {target:,}; rounds "
            f"{rounds_text(rates['pilot'], '.0f')}), peak RSS {peak / 2**20:.1f} MB (target < 60 MB); "
            f"{bare} {statistics.median(rates['bare']):.0f} tokens/s, ratio {statistics.median(ratios):.2f}"
        )

    claim_ratios = [b / s for b, s in zip(claims["big"], claims["small"])]
    report(
        f"adding and claiming at scale, median of {args.rounds} rounds",
        [
            (
                f"local add, {args.lines:,} lines",
                line(local, 100_000, peaks["local"], "bare SQLite executemany"),
            ),
            (f"CouchDB add, {args.couch:,}", line(couch, 5_000, peaks["couch"], "bare _bulk_docs of 2,000")),
            (
                "claims",
                f"{statistics.median(claims['big']):8.0f} tasks/s on a pool of {args.lines:,} against "
                f"{statistics.median(claims['small']):.0f} on one of {CLAIMED * args.rounds:,} (ratio "
                f"{statistics.median(claim_ratios):.2f}, target ~1; rounds {rounds_text(claim_ratios)}); "
                f"{CLAIMED} x /bin/true, slots = 2, start-up included",
            ),
        ],
    )
    return 0 if max(peaks.values()) < MEMORY else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ServerMissing as err:
        sys.exit(f"bench_add: {err}")
