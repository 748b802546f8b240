"""`pilot.pyz watch`: the run in a terminal, refreshed every few seconds, until Ctrl-C or the pool is done.

On a terminal the view is redrawn in place (ANSI: cursor home, erase to the end of each line and of the
screen; the cursor hidden meanwhile and shown again at the end). Anywhere else (a log file, a pipe) it is one
plain line per refresh. SIGINT and SIGTERM only set an event; the loop sees it and ends cleanly, leaving the
last frame on the screen. The frame is a pure function of the figures (``frame``, ``plain_line``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, TextIO

import click

from agent import stats
from agent.pools.base import Pool
from agent.units import format_duration
from agent.views.status import observe

HOME = "\x1b[H"
ERASE_LINE = "\x1b[K"
ERASE_BELOW = "\x1b[J"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"

# (state, bar character, colour): the order of the bar, finished first
SEGMENTS = (("done", "#", "green"), ("error", "x", "red"), ("locked", "=", "yellow"), ("todo", ".", None))


@dataclass(frozen=True)
class Screen:
    where: str
    width: int
    interval: float


def bar_cells(counts: dict[str, int], width: int) -> list[tuple[str, int]]:
    """How many of ``width`` cells each state gets, in bar order; the cells add up to ``width`` (largest
    remainders), and a state with any tokens gets at least one cell when there is room."""
    total = sum(counts.values())
    if total == 0:
        return [(state, width if state == "todo" else 0) for state, _, _ in SEGMENTS]
    exact = {state: counts[state] * width / total for state, _, _ in SEGMENTS}
    cells = {state: int(value) for state, value in exact.items()}
    left = width - sum(cells.values())
    for state in sorted(exact, key=lambda s: exact[s] - cells[s], reverse=True)[:left]:
        cells[state] += 1
    return [(state, cells[state]) for state, _, _ in SEGMENTS]


def bar(counts: dict[str, int], width: int, colour: bool) -> str:
    parts = []
    for (_, cells), (_, char, tint) in zip(bar_cells(counts, width), SEGMENTS):
        text = char * cells
        parts.append(click.style(text, fg=tint) if colour and tint and text else text)
    return "[" + "".join(parts) + "]"


def _clock(seconds: float) -> str:
    return (stats.iso(seconds) or "")[11:19]


def _eta(status: stats.Status) -> str:
    if status.finished:
        return "finished"
    if status.eta is None:
        return "unknown"
    return f"{format_duration(status.eta)} (about {_clock(status.observed.now + status.eta)} UTC)"


def _counts(status: stats.Status) -> str:
    counts = status.observed.counts
    share = (counts.done + counts.error) * 100 / counts.total if counts.total else 0.0
    return (
        f"done {counts.done}  error {counts.error}  locked {counts.locked}  todo {counts.todo}  "
        f"({share:.0f}% of {counts.total} finished)"
    )


def _running(status: stats.Status) -> str:
    running = status.observed.running
    ranked = sorted(running.items(), key=lambda item: (-item[1], item[0]))
    hosts = ", ".join(f"{host} {n}" for host, n in ranked)
    return f"running {sum(running.values())}" + (f": {hosts}" if hosts else "")


def frame(status: stats.Status, screen: Screen, colour: bool) -> list[str]:
    """The lines of one refresh on a terminal, each at most ``screen.width`` characters wide."""
    observed = status.observed
    width = max(20, screen.width)
    head = (
        f"pilot watch  {stats.iso(observed.now)}  (every {format_duration(screen.interval)}, "
        f"Ctrl-C to stop)  {screen.where}"
    )
    rate = (
        f"rate    {status.done_rate_short:.1f} done/min (5m), {status.done_rate_long:.1f} (60m)"
        f"    ETA {_eta(status)}"
    )
    lines = [head[:width], bar(observed.counts.as_dict(), width - 2, colour), _counts(status)[:width]]
    lines += [rate[:width], _running(status)[:width]]
    if status.median is not None and status.p90 is not None:
        durations = f"tasks   median {format_duration(status.median)}, p90 {format_duration(status.p90)}"
        lines.append(durations[:width])
    lines.append("last failures:" if status.failures else "last failures: none")
    for failure in status.failures:
        when = _clock(failure.ended)
        line = f"  {when}  {failure.token}  {failure.host}  {failure.outcome}: {failure.reason}"
        lines.append(line[:width])
    return lines


def plain_line(status: stats.Status) -> str:
    """One refresh as one line, for logs and pipes."""
    counts = status.observed.counts
    return (
        f"{stats.iso(status.observed.now)} done {counts.done} error {counts.error} locked {counts.locked} "
        f"todo {counts.todo} total {counts.total} | {status.done_rate_short:.1f} done/min (5m) | "
        f"eta {_eta(status)} | {_running(status)}"
    )


def frames(lines: list[str]) -> str:
    """What redraws a frame in place: home, each line erased to its end, the rest of the screen erased."""
    return HOME + "".join(line + ERASE_LINE + "\n" for line in lines) + ERASE_BELOW


@dataclass
class Watch:
    pool: Pool
    out: TextIO
    terminal: bool
    interval: float
    exit_when_done: bool
    count: Optional[int]  # refreshes before it ends by itself; None: until stopped
    clock: Callable[[], float]
    width: Callable[[], int]

    def run(self, stop: threading.Event) -> None:
        if self.terminal:
            self.out.write(HIDE_CURSOR)
        try:
            for status in self._refreshes(stop):
                if self.terminal:
                    screen = Screen(self.pool.where, self.width(), self.interval)
                    self.out.write(frames(frame(status, screen, colour=True)))
                else:
                    self.out.write(plain_line(status) + "\n")
                self.out.flush()
        finally:
            if self.terminal:
                self.out.write(SHOW_CURSOR)
                self.out.flush()

    def _refreshes(self, stop: threading.Event) -> Iterator[stats.Status]:
        done = 0
        while not stop.is_set():
            status = stats.figures(observe(self.pool, self.clock()))
            yield status
            done += 1
            if (self.exit_when_done and status.finished) or done == self.count:
                return
            stop.wait(self.interval)


def stop_on_signals() -> tuple[threading.Event, Callable[[], None]]:
    """An event that SIGINT and SIGTERM set, and what puts the old handlers back."""
    stop = threading.Event()
    previous: dict[int, Any] = {}

    def handler(signum: int, _frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)

    return stop, restore
