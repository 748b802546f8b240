"""A fat node: one pilot with slots = 64 on 5,000 tokens of `sleep 0.05` (local pool), against a bare
64-thread `subprocess.run` loop on the same tasks in the same run, and against the ideal (64 / 0.05 s).

The pilot is one thread: at a millisecond of its own CPU per task it could not start more than about a
thousand tasks a second whatever the node has, so this is where the loop's cost shows. Rounds run the two
sides in an order that turns with the round; figures are medians, the ratio the median of the rounds'.
Target: at least 0.9 of the bare loop. The pilot runs with its workdir on disk and on tmpfs, as in
bench_local.py: each task makes a folder's two output files, and on an ext4 without a journal (this VM's
disk) every new file costs a scan past the inodes deleted in the last minute.

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
from common import ensure_pyz, report, rounds_option, rounds_text, run_own_cpu, turned
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


def pilot(
    pyz: Path, folder: Path, workdir: Path, count: int, env: dict[str, str]
) -> tuple[float, int, float]:
    """Seconds for one pilot with SLOTS slots to run ``count`` tokens, its start-up included, its peak RSS
    and its own CPU seconds (children excluded)."""
    for name in ("pool.db", "pool.db-wal", "pool.db-shm"):
        (folder / name).unlink(missing_ok=True)
    config = folder / "site.toml"
    sections = {
        "server": {"backend": "local", "path": str(folder / "pool.db")},
        "task": {"command": TASK},
        "pilot": {"slots": SLOTS, "workdir": str(workdir)},
    }
    config.write_text(to_toml(sections))
    add = [str(pyz), "tokens", "add", "--range", str(count), "--config", str(config)]
    subprocess.run(add, env=env, check=True, stdout=subprocess.DEVNULL)
    code, seconds, rss, cpu = run_own_cpu(
        [sys.executable, str(pyz), "--config", str(config), "--quiet"], env=env
    )
    if code != 0:
        raise SystemExit(f"pilot exited {code}")
    return seconds, rss, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rounds_option(parser, default=3)
    parser.add_argument("--tokens", type=int, default=5000)
    args = parser.parse_args()
    pyz = ensure_pyz()
    timed: list[dict[str, float]] = []
    used: list[dict[str, float]] = []  # per round: the pilot's own CPU seconds on each workdir
    peak = 0
    with (
        tempfile.TemporaryDirectory(prefix="bench-fatnode-") as tmp,
        tempfile.TemporaryDirectory(prefix="bench-fatnode-", dir="/dev/shm") as shm,
    ):
        folder = Path(tmp)
        workdirs = {"disk": folder / "work", "tmpfs": Path(shm)}
        env = {**os.environ, "PILOT_PYZ_ROOT": str(folder / "pyz-root")}
        subprocess.run([str(pyz), "--version"], env=env, check=True, stdout=subprocess.DEVNULL)
        for number in range(args.rounds):
            seconds: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for side in turned(["bare", "disk", "tmpfs"], number):
                if side == "bare":
                    seconds[side] = bare(args.tokens, SLOTS)
                else:
                    seconds[side], rss, cpu[side] = pilot(pyz, folder, workdirs[side], args.tokens, env)
                    peak = max(peak, rss)
            timed.append(seconds)
            used.append(cpu)
    ideal = SLOTS / SECONDS
    rates = {side: [args.tokens / seconds[side] for seconds in timed] for side in ("bare", "disk", "tmpfs")}

    def pilot_rows(side: str) -> list[tuple[str, str]]:
        rate, ratios = statistics.median(rates[side]), [seconds["bare"] / seconds[side] for seconds in timed]
        return [
            (
                f"pilot, {side}",
                f"{rate:7.0f} tasks/s, workdir on {side}, including start-up ({rate / ideal:.2f} of the "
                f"ideal; rounds {rounds_text(rates[side], '.0f')})",
            ),
            (
                f"ratio, {side}",
                f"{statistics.median(ratios):7.2f} of the bare loop (target >= 0.9; rounds "
                f"{rounds_text(ratios)})",
            ),
            (
                f"CPU, {side}",
                f"{statistics.median(c[side] for c in used) / args.tokens * 1000:7.3f} ms per task of the "
                "pilot's own CPU (user + system, its tasks excluded, start-up included), every thread",
            ),
        ]

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
            *pilot_rows("disk"),
            *pilot_rows("tmpfs"),
            ("peak RSS", f"{peak / 2**20:7.1f} MB"),
        ],
    )


if __name__ == "__main__":
    main()
