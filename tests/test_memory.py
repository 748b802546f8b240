"""Memory enforcement's sampler: the resident memory of a process group, read from /proc."""

from __future__ import annotations

import subprocess
import sys
import time

from agent.memory import SAMPLE, MemoryWatch, group_rss

HOLD = "import sys, time\nx = bytearray(int(sys.argv[1]) * 2**20)\nx[::4096] = b'1' * len(x[::4096])\n"
HOLD += "print('ready', flush=True)\ntime.sleep(30)"


def holder(mb: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(mb)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_group_rss_sums_a_groups_processes_and_only_its_own() -> None:
    big, small = holder(120), holder(10)
    try:
        held = group_rss([big.pid, small.pid, 999_999_999])
        assert 120 * 2**20 <= held[big.pid] < 200 * 2**20
        assert held[small.pid] < 60 * 2**20
        assert held[999_999_999] == 0
    finally:
        for process in (big, small):
            process.kill()
            process.wait()


def test_the_watch_looks_every_sample_and_names_the_groups_over() -> None:
    process = holder(60)
    try:
        watch = MemoryWatch(enabled=True)
        now = time.monotonic()
        assert watch.over(now, {process.pid: 10 * 2**20}).keys() == {process.pid}
        assert watch.over(now + SAMPLE / 2, {process.pid: 10 * 2**20}) == {}  # not due yet
        assert watch.over(now + SAMPLE, {process.pid: 500 * 2**20}) == {}
        assert MemoryWatch(enabled=False).over(now, {process.pid: 1}) == {}
        assert watch.next_look == now + 2 * SAMPLE
    finally:
        process.kill()
        process.wait()
