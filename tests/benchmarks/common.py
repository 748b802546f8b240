"""Helpers shared by the benchmark scripts: where pilot.pyz is, timing, and printing figures."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from conftest import high_water_mark, wait_with_peak_rss  # noqa: E402 - the tests' helpers, one sampler for both

PYZ = Path(os.environ.get("PILOT_PYZ", REPO / "pilot.pyz"))


def ensure_pyz() -> Path:
    if not PYZ.exists():
        subprocess.run([sys.executable, str(REPO / "build" / "build.py"), "--output", str(PYZ)], check=True)
    return PYZ


def run_measured(
    argv: Sequence[str], env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None
) -> tuple[int, float, int]:
    """Run to the end; returns (exit code, wall seconds, the process's own peak RSS in bytes)."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code, peak = wait_with_peak_rss(process, interval=0.02)  # often enough for a steady pilot
    return code, time.perf_counter() - start, peak


def run_own_cpu(
    argv: Sequence[str], env: Optional[dict[str, str]] = None, interval: float = 0.01
) -> tuple[int, float, int, float]:
    """Run to the end; returns (exit code, wall seconds, peak RSS in bytes, the process's own CPU seconds,
    user + system, its children excluded). The CPU is read from /proc once it has exited but before it is
    reaped (waitid with WNOWAIT): a zombie keeps its times, and wait4's would include its children's."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status, peak = Path(f"/proc/{process.pid}/status"), 0
    while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        peak = max(peak, high_water_mark(status))
        time.sleep(interval)
    seconds = time.perf_counter() - start
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return process.wait(), seconds, peak, own


def median_time(argv: Sequence[str], runs: int, env: Optional[dict[str, str]] = None) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(title: str, rows: Sequence[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def rounds_option(parser: argparse.ArgumentParser, default: int) -> None:
    """--rounds: how many timed rounds, each side once per round (at least 1)."""

    def at_least_one(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"at least 1 round, got {value}")
        return value

    parser.add_argument(
        "--rounds", type=at_least_one, default=default, help="rounds, each side once per round"
    )


def turned(sides: Sequence[str], number: int) -> list[str]:
    """The sides in an order that turns with round ``number``: none always runs first on a warming
    machine. Over a multiple of len(sides) rounds, each side runs first equally often."""
    shift = number % len(sides)
    return [*sides[shift:], *sides[:shift]]


def rounds_text(values: Sequence[float], spec: str = ".2f") -> str:
    """Each round's figure, in round order."""
    return " ".join(f"{value:{spec}}" for value in values)
