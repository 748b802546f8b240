"""Many pilots on one pool: the local pool with 16 and 64 pilot processes (slots = 1, tasks of 50 ms) on
one SQLite file, and CouchDB with 4, 16 and 64 (slots = 1, tasks of 200 ms) against pouchdb-server.

Throughput is measured where every pilot is at work: from the moment the last pilot to start has claimed
its first token to the moment the first pilot found the pool empty (the tokens' own attempt records say
when), so the start-up of 64 interpreters on a small machine is not what is timed. Each size runs in
turn, round after round, in an order that turns with the round; the figures are medians of the rounds.

Prints, per size: tasks/s (and of the ideal, pilots / task length), pilots that failed, tokens that ran
more or less than once; for CouchDB also claim conflicts per task and HTTP requests per task (from each
pilot's last log line, counted by the pool) and the server's CPU per task. Targets: no pilot fails, every
token once, throughput not lower as pilots are added; CouchDB: conflicts per task < 0.2 at 64.

    .venv/bin/python tests/benchmarks/bench_pilots.py [--rounds 2] [--local-only | --couchdb-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_couchdb import cpu_seconds  # noqa: E402
from common import ensure_pyz, report, rounds_option, rounds_text, turned  # noqa: E402 - puts tests/ on the path
from conftest import to_toml  # noqa: E402
from servers.pouchdb import PouchDBServer, ServerMissing  # noqa: E402

LOCAL_SIZES = {16: 4000, 64: 6000}  # pilots: tokens (enough that all are at work for a while)
LOCAL_TASK = 0.05
COUCH_SIZES = {4: 400, 16: 1500, 64: 4000}
COUCH_TASK = 0.2
POOL_LINE = re.compile(r"pool: (\d+) requests, (\d+) tokens claimed, (\d+) claims met another pilot's first")


@dataclass
class Run:
    pilots: int
    tokens: int
    rate: float  # tasks/s while every pilot was at work
    failed: int  # pilots that exited non-zero
    not_once: int  # tokens not done with exactly one attempt
    lock_errors: int  # log lines about a locked database
    requests: int = 0
    conflicts: int = 0
    server_cpu: float = 0.0


def steady_rate(attempts: list[dict[str, Any]]) -> float:
    """Tasks that ended while every pilot was at work, per second of that time."""
    by_pilot: dict[str, list[dict[str, Any]]] = {}
    for attempt in attempts:
        by_pilot.setdefault(attempt["pilot"], []).append(attempt)
    all_in = max(min(a["claimed"] for a in mine) for mine in by_pilot.values())
    first_out = min(max(a["ended"] for a in mine) for mine in by_pilot.values())
    if first_out <= all_in:  # the pool ran dry before the last pilot was up: the whole span instead
        all_in = min(a["started"] for a in attempts)
        first_out = max(a["ended"] for a in attempts)
    ended = sum(1 for a in attempts if all_in <= a["ended"] <= first_out)
    return ended / (first_out - all_in)


def measured(
    pilots: int, tokens: int, histories: list[list[dict[str, Any]]], failed: int, **counts: Any
) -> Run:
    """A run's figures from the tokens' attempt histories (the last attempt of each is its run)."""
    last = [history[-1] for history in histories if history and history[-1].get("ended")]
    return Run(pilots=pilots, tokens=tokens, rate=steady_rate(last), failed=failed, **counts)


def start_pilots(pyz: Path, config: Path, count: int, folder: Path, env: dict[str, str]) -> list[Any]:
    processes = []
    for number in range(count):
        with (folder / f"pilot-{number}.log").open("wb") as log:
            argv = [sys.executable, str(pyz), "run", "--config", str(config)]
            processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def logs_of(folder: Path, count: int) -> list[str]:
    return [(folder / f"pilot-{number}.log").read_text() for number in range(count)]


def local_run(pyz: Path, folder: Path, pilots: int, tokens: int, env: dict[str, str]) -> Run:
    folder.mkdir(parents=True)
    pool = folder / "pool.db"
    config = folder / "site.toml"
    sections = {
        "server": {"backend": "local", "path": str(pool)},
        "task": {"command": ["sleep", str(LOCAL_TASK)]},
        "pilot": {"slots": 1, "workdir": str(folder / "work")},
    }
    config.write_text(to_toml(sections))
    add = [str(pyz), "tokens", "add", "--range", str(tokens), "--config", str(config)]
    subprocess.run(add, env=env, check=True, stdout=subprocess.DEVNULL)
    processes = start_pilots(pyz, config, pilots, folder, env)
    failed = sum(process.wait() != 0 for process in processes)
    with sqlite3.connect(pool) as db:
        rows = db.execute("SELECT state, attempts FROM tokens").fetchall()
    histories = [json.loads(attempts) for _, attempts in rows]
    not_once = sum(state != "done" or len(h) != 1 for (state, _), h in zip(rows, histories))
    logs = logs_of(folder, pilots)
    lock_errors = sum(log.count("database is locked") for log in logs)
    return measured(pilots, tokens, histories, failed, not_once=not_once, lock_errors=lock_errors)


def couch_run(
    pyz: Path, server: PouchDBServer, folder: Path, pilots: int, *, tokens: int, env: dict[str, str]
) -> Run:
    folder.mkdir(parents=True)
    database = server.create_database(f"pilots-{pilots}-{folder.parent.name}")
    config = folder / "site.toml"
    sections = {
        "server": {"backend": "couchdb", "url": server.url, "database": database},
        "task": {"command": ["sleep", str(COUCH_TASK)]},
        "pilot": {"slots": 1, "workdir": str(folder / "work")},
    }
    config.write_text(to_toml(sections))
    for args in (["init"], ["tokens", "add", "--range", str(tokens)]):
        subprocess.run([str(pyz), *args, "--config", str(config)], env=env, check=True, capture_output=True)
    assert server.process is not None
    cpu_before = cpu_seconds(server.process.pid)
    processes = start_pilots(pyz, config, pilots, folder, env)
    failed = sum(process.wait() != 0 for process in processes)
    server_cpu = cpu_seconds(server.process.pid) - cpu_before
    docs = server.docs(database)
    histories = [doc.get("pilot", {}).get("attempts", []) for doc in docs.values()]
    not_once = sum(not doc.get("done") or len(h) != 1 for doc, h in zip(docs.values(), histories))
    logs = logs_of(folder, pilots)
    counted = [tuple(map(int, match.groups())) for log in logs for match in POOL_LINE.finditer(log)]
    server.delete_database(database)
    return measured(
        pilots,
        tokens,
        histories,
        failed,
        not_once=not_once,
        lock_errors=0,
        requests=sum(requests for requests, _, _ in counted),
        conflicts=sum(conflicts for _, _, conflicts in counted),
        server_cpu=server_cpu,
    )


def rounds_of(
    sizes: dict[int, int], rounds: int, run: Callable[[int, int, int], Run]
) -> dict[int, list[Run]]:
    runs: dict[int, list[Run]] = {pilots: [] for pilots in sizes}
    for number in range(rounds):
        for pilots in turned(list(sizes), number):
            runs[pilots].append(run(number, pilots, sizes[pilots]))
    return runs


def rows_of(runs: dict[int, list[Run]], task: float, couch: bool) -> list[tuple[str, str]]:
    rows = []
    for pilots, measured in runs.items():
        rates = [run.rate for run in measured]
        rate = statistics.median(rates)
        tokens = sum(run.tokens for run in measured)
        text = (
            f"{rate:6.1f} tasks/s ({rate / (pilots / task):.2f} of the ideal {pilots / task:.0f}; rounds "
            f"{rounds_text(rates, '.1f')}); pilots failed {sum(run.failed for run in measured)}, tokens "
            f"not run exactly once {sum(run.not_once for run in measured)}"
        )
        if couch:
            conflicts = sum(run.conflicts for run in measured) / tokens
            requests = sum(run.requests for run in measured) / tokens
            cpu = 1000 * sum(run.server_cpu for run in measured) / tokens
            text += f"; conflicts/task {conflicts:.3f}; requests/task {requests:.2f}; "
            text += f"server CPU {cpu:.1f} ms/task"
        else:
            text += f", lock errors {sum(run.lock_errors for run in measured)}"
        rows.append((f"{pilots} pilots", text))
    return rows


def verdict(runs: dict[int, list[Run]], couch: bool) -> list[tuple[str, str]]:
    sizes = list(runs)
    medians = [statistics.median(run.rate for run in runs[pilots]) for pilots in sizes]
    flat = all(later >= 0.95 * earlier for earlier, later in zip(medians, medians[1:]))
    clean = all(
        run.failed == run.not_once == run.lock_errors == 0 for measured in runs.values() for run in measured
    )
    rows = [
        (
            "throughput",
            f"{' -> '.join(f'{m:.1f}' for m in medians)} tasks/s: {'not falling' if flat else 'FALLS'}",
        ),
        ("every token once", "yes, no pilot failed" if clean else "NO"),
    ]
    if couch:
        top = runs[sizes[-1]]
        conflicts = sum(run.conflicts for run in top) / sum(run.tokens for run in top)
        rows.append((f"conflicts/task at {sizes[-1]}", f"{conflicts:.3f} (target < 0.2)"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rounds_option(parser, default=2)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--local-only", action="store_true")
    only.add_argument("--couchdb-only", action="store_true")
    args = parser.parse_args()
    pyz = ensure_pyz()
    with tempfile.TemporaryDirectory(prefix="bench-pilots-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "PILOT_PYZ_ROOT": str(folder / "pyz-root"), "TMPDIR": str(folder)}
        subprocess.run([str(pyz), "--version"], env=env, check=True, stdout=subprocess.DEVNULL)
        ok = True
        if not args.couchdb_only:
            runs = rounds_of(
                LOCAL_SIZES,
                args.rounds,
                lambda number, pilots, tokens: local_run(
                    pyz, folder / f"local-{number}" / str(pilots), pilots, tokens, env
                ),
            )
            report(
                f"local pool, one SQLite file: slots = 1, tasks of {LOCAL_TASK * 1000:.0f} ms, "
                f"median of {args.rounds} rounds",
                rows_of(runs, LOCAL_TASK, couch=False) + verdict(runs, couch=False),
            )
            ok &= all(run.failed == run.not_once == 0 for measured in runs.values() for run in measured)
        if not args.local_only:
            server = PouchDBServer(folder / "server", auth=False, in_memory=True).start()
            try:
                runs = rounds_of(
                    COUCH_SIZES,
                    args.rounds,
                    lambda number, pilots, tokens: couch_run(
                        pyz, server, folder / f"couch-{number}" / str(pilots), pilots, tokens=tokens, env=env
                    ),
                )
            finally:
                server.stop()
            report(
                f"CouchDB pool, pouchdb-server in memory: slots = 1, tasks of {COUCH_TASK * 1000:.0f} ms, "
                f"median of {args.rounds} rounds",
                rows_of(runs, COUCH_TASK, couch=True) + verdict(runs, couch=True),
            )
            ok &= all(run.failed == run.not_once == 0 for measured in runs.values() for run in measured)
    return 0 if ok else 1


if __name__ == "__main__":
    started = time.perf_counter()
    try:
        code = main()
    except ServerMissing as err:
        sys.exit(f"bench_pilots: {err}")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    sys.exit(code)
