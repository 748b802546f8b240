"""A fat node: one pilot with slots = 64 on 5,000 tokens of `sleep 0.05` (local pool), against a bare
64-thread `subprocess.run` loop on the same tasks in the same run, and against the ideal (64 / 0.05 s).

The pilot is one thread: at a millisecond of its own CPU per task it could not start more than about a
thousand tasks a second whatever the node has, so this is where the loop's cost shows. Rounds run the two
sides in an order that turns with the round; figures are medians, the ratio the median of the rounds'.
Target: at least 0.9 of the bare loop.

    .venv/bin/python tests/benchmarks/bench_fatnode.py [--rounds 3] [--tokens 5000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_pyz, report, rounds_option, rounds_text, run_measured, turned
from conftest import to_toml

SLOTS = 64
TASK = ["sleep", "0.05"]
SECONDS = 0.05


def bare(count: int, threads: int) -> float:
    """Seconds for ``threads`` threads to run ``count`` tasks with subprocess.run."""

    def worker(n: int) -> None:
        for _ in range(n):
            subprocess.run(TASK, check=True)

    shares = [count // threads + (i < count % threads) for i in range(threads)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, shares))
    return time.perf_counter() - start


def pilot(pyz: Path, folder: Path, count: int, env: dict[str, str]) -> tuple[float, int]:
    """Seconds for one pilot with SLOTS slots to run ``count`` tokens, its start-up included."""
    for name in ("pool.db", "pool.db-wal", "pool.db-shm"):
        (folder / name).unlink(missing_ok=True)
    config = folder / "site.toml"
    sections = {
        "server": {"backend": "local", "path": str(folder / "pool.db")},
        "task": {"command": TASK},
        "pilot": {"slots": SLOTS, "workdir": str(folder / "work")},
    }
    config.write_text(to_toml(sections))
    add = [str(pyz), "tokens", "add", "--range", str(count), "--config", str(config)]
    subprocess.run(add, env=env, check=True, stdout=subprocess.DEVNULL)
    code, seconds, rss = run_measured([sys.executable, str(pyz), "--config", str(config), "--quiet"], env=env)
    if code != 0:
        raise SystemExit(f"pilot exited {code}")
    return seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rounds_option(parser, default=3)
    parser.add_argument("--tokens", type=int, default=5000)
    args = parser.parse_args()
    pyz = ensure_pyz()
    timed: list[dict[str, float]] = []
    peak = 0
    with tempfile.TemporaryDirectory(prefix="bench-fatnode-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "PILOT_PYZ_ROOT": str(folder / "pyz-root")}
        subprocess.run([str(pyz), "--version"], env=env, check=True, stdout=subprocess.DEVNULL)
        for number in range(args.rounds):
            seconds: dict[str, float] = {}
            for side in turned(["bare", "pilot"], number):
                if side == "bare":
                    seconds[side] = bare(args.tokens, SLOTS)
                else:
                    seconds[side], rss = pilot(pyz, folder, args.tokens, env)
                    peak = max(peak, rss)
            timed.append(seconds)
    ideal = SLOTS / SECONDS
    rates = {side: [args.tokens / seconds[side] for seconds in timed] for side in ("bare", "pilot")}
    ratios = [seconds["bare"] / seconds["pilot"] for seconds in timed]
    report(
        f"fat node: one pilot, slots = {SLOTS}, {args.tokens} x `{' '.join(TASK)}`, "
        f"median of {args.rounds} rounds",
        [
            ("ideal", f"{ideal:7.0f} tasks/s ({SLOTS} / {SECONDS} s)"),
            (
                "bare loop",
                f"{statistics.median(rates['bare']):7.0f} tasks/s ({SLOTS} threads, subprocess.run; "
                f"{statistics.median(rates['bare']) / ideal:.2f} of the ideal; rounds "
                f"{rounds_text(rates['bare'], '.0f')})",
            ),
            (
                "pilot.pyz",
                f"{statistics.median(rates['pilot']):7.0f} tasks/s, including start-up "
                f"({statistics.median(rates['pilot']) / ideal:.2f} of the ideal; rounds "
                f"{rounds_text(rates['pilot'], '.0f')})",
            ),
            (
                "ratio",
                f"{statistics.median(ratios):7.2f} of the bare loop "
                f"(target >= 0.9; rounds {rounds_text(ratios)})",
            ),
            ("peak RSS", f"{peak / 2**20:7.1f} MB"),
        ],
    )


if __name__ == "__main__":
    main()
