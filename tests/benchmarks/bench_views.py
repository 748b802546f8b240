"""The views at scale: `status` on a local pool of 1,000,000 tokens (target < 1 s), and `report` of a pool
with 100,000 attempts (targets < 10 s and < 10 MB), each beside `pilot.pyz --version` (the start-up every
command pays) measured in the same run; `tokens export` of both pools, whose peak RSS must not grow with
the pool (constant memory: the big pool's under twice the small one's).

The pools are written straight into SQLite in the layout pilot.pyz makes (its schema, made by LocalPool),
with a history like a run's: 40 pilots on 10 hosts, tokens finished over the last three hours, 5% failed
with a few reasons, some retried, 320 running, the rest todo.

    .venv/bin/python tests/benchmarks/bench_views.py [--tokens 1000000] [--attempts 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, ensure_pyz, median_time, report, rounds_option, rounds_text, run_measured
from conftest import to_toml

sys.path.insert(0, str(REPO))
from agent.identity import Identity
from agent.pools.local import LocalPool

HOSTS = [f"node{i:02d}" for i in range(10)]
PILOTS = [(f"{host}-{pid}-beef", host) for host in HOSTS for pid in range(1000, 1004)]
REASONS = ["exit code 1", "exit code 137", "timeout after 600s", "not started: command not found"]
SPAN = 3 * 3600.0  # the history covers the last three hours


def attempt(rng: random.Random, pilot: tuple[str, str], ended: float, outcome: str) -> dict[str, object]:
    took = rng.uniform(20, 600)
    failed = outcome != "done"
    return {
        "pilot": pilot[0],
        "host": pilot[1],
        "batch_job": f"slurm:4242_{PILOTS.index(pilot)}",
        "claimed": ended - took - 0.05,
        "started": ended - took,
        "ended": ended,
        "exit_code": 1 if failed else 0,
        "signal": None,
        "outcome": "failed" if failed else "done",
        "reason": rng.choice(REASONS) if failed else "exit code 0",
    }


def make_pool(path: Path, tokens: int, finished_share: float, seed: int = 7) -> int:
    """A pool of ``tokens`` with ``finished_share`` of them finished; returns how many attempts."""
    LocalPool(path, Identity("bench", "bench", None), 600, create=True).close()
    rng = random.Random(seed)
    now = time.time()
    finished = int(tokens * finished_share)
    attempts_total = 0
    rows = []
    for seq in range(tokens):
        if seq < finished:
            ended = now - SPAN + SPAN * seq / finished
            history = []
            if rng.random() < 0.1:  # retried once after a failure elsewhere
                history.append(attempt(rng, rng.choice(PILOTS), ended - 700, "failed"))
            state = "error" if rng.random() < 0.05 else "done"
            history.append(attempt(rng, rng.choice(PILOTS), ended, "failed" if state == "error" else "done"))
            last = history[-1]
            rows.append((f"t-{seq}", state, json.dumps(history), last["exit_code"], last["reason"], ended))
            attempts_total += len(history)
        elif seq < finished + 8 * len(PILOTS):
            pilot = PILOTS[(seq - finished) % len(PILOTS)]
            open_attempt = {"pilot": pilot[0], "host": pilot[1], "batch_job": None, "claimed": now - 30}
            rows.append((f"t-{seq}", "locked", json.dumps([open_attempt]), None, None, now - 30))
            attempts_total += 1
        else:
            rows.append((f"t-{seq}", "todo", "[]", None, None, now - SPAN - 60))
        if len(rows) == 50_000:
            _insert(path, rows)
            rows = []
    _insert(path, rows)
    return attempts_total


def _insert(path: Path, rows: list[tuple[object, ...]]) -> None:
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO tokens (id, state, fields, attempts, exit_code, reason, stdout_tail, stderr_tail, "
            "updated, failures) VALUES (?, ?, '{\"input\": 1}', ?, ?, ?, X'6f6b0a', X'', ?, 0)",
            rows,
        )


def site(folder: Path, pool: Path) -> Path:
    config = folder / "site.toml"
    sections = {
        "server": {"backend": "local", "path": str(pool)},
        "task": {"command": ["/bin/true"]},
        "pilot": {"workdir": str(folder / "work")},
    }
    config.write_text(to_toml(sections))
    return config


def pool_cycle(path: Path, tasks: int) -> float:
    """Microseconds of a pool's work per task (one report_and_claim, as a pilot makes it) over ``tasks``."""
    from agent.token import Outcome, Result, make_report

    with LocalPool(path, Identity("bench", "node", None), 600) as pool:
        (lease,) = pool.claim(1)
        start = time.perf_counter()
        for _ in range(tasks):
            now = time.time()
            result = Result(Outcome.DONE, "exit code 0", now, now, 0, None, b"ok\n", b"")
            _, (lease,) = pool.report_and_claim(lease, make_report(lease.token, result, 1), 1)
        return (time.perf_counter() - start) * 1e6 / tasks


def index_cost(folder: Path, tokens: int, rounds: int) -> tuple[float, float]:
    """Median microseconds per task on a pool of ``tokens`` with the views' index and without it (the
    layout before the views), alternating, each round on a fresh copy."""
    with_index, without = [], []
    for number in range(rounds):
        for dropped in (number % 2 == 0, number % 2 == 1):
            path = folder / f"cycle-{number}-{dropped}.db"
            LocalPool(path, Identity("b", "b", None), 600, create=True).close()
            _insert(path, [(f"c-{i}", "todo", "[]", None, None, 0.0) for i in range(tokens)])
            if dropped:
                with sqlite3.connect(path) as db:
                    db.execute("DROP INDEX tokens_updated")
                    db.execute("DROP INDEX tokens_errors")
                # LocalPool adds it back when it opens a pool without it: measure the old layout as is.
                cost = _without_migration(path, tokens // 2)
            else:
                cost = pool_cycle(path, tokens // 2)
            (without if dropped else with_index).append(cost)
    return statistics.median(with_index), statistics.median(without)


def _without_migration(path: Path, tasks: int) -> float:
    from agent.pools import local

    saved = local.LocalPool._add_view_indexes
    local.LocalPool._add_view_indexes = lambda self, db: None  # type: ignore[method-assign]
    try:
        return pool_cycle(path, tasks)
    finally:
        local.LocalPool._add_view_indexes = saved  # type: ignore[method-assign]


def export_measured(pyz: str, config: Path, out: Path) -> tuple[int, float, int]:
    """`tokens export` of the pool ``config`` names: (lines written, seconds, peak RSS in bytes)."""
    argv = [sys.executable, pyz, "tokens", "export", "--jsonl", str(out), "--config", str(config)]
    code, seconds, peak = run_measured(argv)
    assert code == 0
    with out.open("rb") as written:
        lines = sum(1 for _ in written)
    out.unlink()
    return lines, seconds, peak


def timed(argv: list[str], rounds: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--attempts", type=int, default=100_000)
    rounds_option(parser, 3)
    args = parser.parse_args()
    pyz = str(ensure_pyz())
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-views-") as tmp:
        folder = Path(tmp)
        startup = median_time([sys.executable, pyz, "--version"], args.rounds)

        pool = folder / "big.db"
        built = time.perf_counter()
        make_pool(pool, args.tokens, finished_share=0.6)
        build_time = time.perf_counter() - built
        config = site(folder, pool)
        argv = [sys.executable, pyz, "status", "--json", "--config", str(config)]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)  # warm the page cache once
        status_time, rounds = timed(argv, args.rounds)
        shown = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
        report(
            f"status --json on a local pool of {args.tokens:,} tokens (built in {build_time:.0f}s)",
            [
                ("status", f"{status_time:.3f}s (rounds {rounds_text(rounds, '.3f')}), target < 1s"),
                ("pilot.pyz --version", f"{startup:.3f}s (start-up floor)"),
                ("status - start-up", f"{status_time - startup:.3f}s"),
                ("counts", json.dumps({k: shown[k] for k in ("todo", "locked", "done", "error")})),
                ("rate 5m, eta", f"{shown['rate']['done_per_minute_5m']}/min, {shown['eta']['seconds']}s"),
            ],
        )
        failed |= status_time >= 1.0
        big_export = export_measured(pyz, config, folder / "big.jsonl")

        pool = folder / "run.db"
        attempts = make_pool(pool, int(args.attempts / 1.1), finished_share=1.0)
        config = site(folder, pool)
        page, data = folder / "run.html", folder / "run.json"
        argv = [
            sys.executable,
            pyz,
            "report",
            "--html",
            str(page),
            "--json",
            str(data),
            "--config",
            str(config),
        ]
        times, peaks = [], []
        for _ in range(args.rounds):
            code, seconds, peak = run_measured(argv)
            assert code == 0
            times.append(seconds)
            peaks.append(peak)
        report_time = statistics.median(times)
        size = page.stat().st_size
        report(
            f"report --html --json of {attempts:,} attempts",
            [
                ("report", f"{report_time:.2f}s (rounds {rounds_text(times)}), target < 10s"),
                ("page size", f"{size / 1e6:.2f} MB, target < 10 MB"),
                ("json size", f"{data.stat().st_size / 1e6:.2f} MB"),
                ("peak RSS", f"{statistics.median(peaks) / 2**20:.0f} MiB"),
                ("report / start-up", f"{report_time / startup:.0f}x"),
            ],
        )
        failed |= report_time >= 10.0 or size >= 10e6
        small_export = export_measured(pyz, config, folder / "run.jsonl")
        report(
            "tokens export --jsonl: memory stays constant as the pool grows",
            [
                (
                    f"{big_export[0]:,} tokens",
                    f"{big_export[1]:.1f}s, peak RSS {big_export[2] / 2**20:.0f} MiB",
                ),
                (
                    f"{small_export[0]:,} tokens",
                    f"{small_export[1]:.1f}s, peak RSS {small_export[2] / 2**20:.0f} MiB",
                ),
                ("RSS ratio", f"{big_export[2] / small_export[2]:.2f}, target < 2"),
                ("token ratio", f"{big_export[0] / small_export[0]:.0f}x"),
            ],
        )
        failed |= big_export[2] >= 2 * small_export[2]

        indexed, bare = index_cost(folder, 20_000, max(6, args.rounds))
        report(
            "what the views' indexes cost a pilot: one report_and_claim on a local pool of 20,000 tokens",
            [
                ("with tokens_updated, tokens_errors", f"{indexed:.0f} us per task"),
                ("without (the layout before)", f"{bare:.0f} us per task"),
                ("ratio", f"{indexed / bare:.2f}"),
            ],
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
