"""Helpers shared by the benchmark scripts: where pilot.pyz is, timing, and printing figures."""

from __future__ import annotations

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
from conftest import wait_with_peak_rss  # noqa: E402 - the tests' helper, as the soak uses it too

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
    code, peak = wait_with_peak_rss(process, interval=0.005)
    return code, time.perf_counter() - start, peak


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
