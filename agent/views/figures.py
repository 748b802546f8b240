"""The figures of the run report: pure functions of the tokens' attempt histories and the clock.

Every attempt is a span from its start (``started``, or ``claimed`` when it never started) to its end
(``ended``; ``now`` for one still running). The pool does not record a pilot's slots or its life, so both
are read from its attempts: a pilot lives from its first claim to its last end, and has as many slots as it
ran attempts at once (the lanes its spans pack into). Utilisation is busy slot-time over that.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

from agent.stats import FAILED, iso
from agent.token import Token

RUNNING = "running"  # the outcome shown for an attempt still under way
MAX_ROWS = 60  # timeline rows, one per pilot slot; more and there is one row per host
MAX_BARS = 10_000  # more attempts than this are drawn as cells of a grid, not one bar each
COLUMNS = 400  # ... time columns of that grid
BUCKETS = 120  # points of the concurrency and throughput curves
BINS = 30  # bars of the duration histogram
TOP = 10  # reasons and hosts in the failure charts


class Span(NamedTuple):  # a tuple: made once per attempt, 100,000 times for a big run
    token: str
    pilot: str
    host: str
    start: float
    end: float
    outcome: str
    reason: str
    claimed: float

    @property
    def busy(self) -> float:
        return max(0.0, self.end - self.start)


#: a token as the report reads it: its id, its state and its attempts as stored (JSON objects)
History = tuple[str, str, Sequence[Mapping[str, Any]]]


def history_of(token: Token) -> History:
    return token.id, token.state.value, [attempt.to_json() for attempt in token.attempts]


def spans_of(token_id: str, attempts: Sequence[Mapping[str, Any]], now: float) -> list[Span]:
    found = []
    for attempt in attempts:
        claimed = attempt.get("claimed") or 0.0
        started = attempt.get("started")
        start = claimed if started is None else started
        outcome = attempt.get("outcome")
        if outcome is None:
            end, outcome = max(now, start), RUNNING
        else:
            ended = attempt.get("ended")
            end = start if ended is None else ended
        found.append(
            Span(
                token_id,
                attempt.get("pilot", "?"),
                attempt.get("host", "?"),
                start,
                end,
                outcome,
                attempt.get("reason", ""),
                claimed,
            )
        )
    return found


def lanes(spans: Sequence[Span]) -> list[int]:
    """The lane of each span (in the order given) when each pilot's spans are packed into as few lanes as
    possible: a lane is free again once its last span has ended."""
    lane_of = [0] * len(spans)
    by_pilot: dict[str, list[int]] = {}
    for index, span in enumerate(spans):
        by_pilot.setdefault(span.pilot, []).append(index)
    for indexes in by_pilot.values():
        indexes.sort(key=lambda i: (spans[i].start, spans[i].end))
        free: list[tuple[float, int]] = []  # (end, lane) of busy lanes
        for index in indexes:
            start, end = spans[index].start, spans[index].end
            if free and free[0][0] <= start:
                lane = free[0][1]
                heapq.heapreplace(free, (end, lane))
            else:
                lane = len(free)
                heapq.heappush(free, (end, lane))
            lane_of[index] = lane
    return lane_of


@dataclass(frozen=True)
class Row:
    label: str
    pilot: Optional[str]  # None for a host row
    host: str
    lane: int


@dataclass(frozen=True)
class Timeline:
    rows: list[Row]
    row_of: list[int]  # the row of each span
    aggregated: bool
    per_host: bool


def timeline(spans: Sequence[Span], lane_of: Sequence[int]) -> Timeline:
    slots = sorted({(s.host, s.pilot, lane) for s, lane in zip(spans, lane_of)})
    if len(slots) <= MAX_ROWS:
        index = {slot: number for number, slot in enumerate(slots)}
        rows = [Row(f"{host} {pilot} #{lane + 1}", pilot, host, lane) for host, pilot, lane in slots]
        row_of = [index[(s.host, s.pilot, lane)] for s, lane in zip(spans, lane_of)]
        per_host = False
    else:
        hosts = sorted({s.host for s in spans})
        index = {host: number for number, host in enumerate(hosts)}
        rows = [Row(host, None, host, 0) for host in hosts]
        row_of = [index[s.host] for s in spans]
        per_host = True
    return Timeline(rows, row_of, len(spans) > MAX_BARS, per_host)


@dataclass(frozen=True)
class Cell:
    row: int
    column: int
    attempts: int  # attempts that start in it
    busy: float  # slot-seconds in it
    outcome: str  # the outcome with the most busy time in it


class Spread:
    """Seconds of spans in each of ``steps`` equal steps from ``origin``: a span adds its part to the two
    steps it starts and ends in and marks the whole steps between in a difference array, so a long span
    costs as little as a short one."""

    def __init__(self, origin: float, end: float, steps: int) -> None:
        self.origin = origin
        self.steps = steps
        self.width = max(end - origin, 1e-9) / steps
        self.partial = [0.0] * steps
        self.whole = [0] * (steps + 1)

    def step(self, moment: float) -> int:
        return min(self.steps - 1, max(0, int((moment - self.origin) / self.width)))

    def add(self, start: float, end: float) -> None:
        # step() written out twice: this runs for every attempt, twice per report.
        origin, width, top = self.origin, self.width, self.steps - 1
        first = min(top, max(0, int((start - origin) / width)))
        last = min(top, max(0, int((end - origin) / width)))
        if first == last:
            self.partial[first] += max(0.0, end - start)
            return
        self.partial[first] += origin + (first + 1) * width - start
        self.partial[last] += end - (origin + last * width)
        if last > first + 1:
            self.whole[first + 1] += 1
            self.whole[last] -= 1

    def seconds(self) -> list[float]:
        found, running = [], 0
        for partial, change in zip(self.partial, self.whole):
            running += change
            found.append(partial + running * self.width)
        return found


def cells(spans: Sequence[Span], row_of: Sequence[int], start: float, end: float) -> list[Cell]:
    """The timeline as a grid of COLUMNS time columns per row, for runs with more attempts than bars."""
    spreads: dict[tuple[int, str], Spread] = {}
    starts: dict[tuple[int, int], int] = {}
    for span, row in zip(spans, row_of):
        spread = spreads.get((row, span.outcome))
        if spread is None:
            spread = spreads[(row, span.outcome)] = Spread(start, end, COLUMNS)
        spread.add(span.start, span.end)
        key = (row, spread.step(span.start))
        starts[key] = starts.get(key, 0) + 1
    busy: dict[tuple[int, int], dict[str, float]] = {}
    for (row, outcome), spread in spreads.items():
        for column, seconds in enumerate(spread.seconds()):
            if seconds > 0 or (row, column) in starts:
                busy.setdefault((row, column), {})[outcome] = seconds
    return [
        Cell(
            row, column, starts.get((row, column), 0), sum(found.values()), max(found, key=found.__getitem__)
        )
        for (row, column), found in sorted(busy.items())
    ]


def curves(spans: Sequence[Span], start: float, end: float) -> dict[str, list[float]]:
    """Concurrency (mean attempts running) and throughput (attempts ended per minute, done and failed)
    in BUCKETS equal steps from ``start`` to ``end``."""
    running = Spread(start, end, BUCKETS)
    done = [0.0] * BUCKETS
    failed = [0.0] * BUCKETS
    per_minute = 60.0 / running.width
    for span in spans:
        running.add(span.start, span.end)
        if span.outcome == "done":
            done[running.step(span.end)] += per_minute
        elif span.outcome in FAILED:
            failed[running.step(span.end)] += per_minute
    concurrency = [seconds / running.width for seconds in running.seconds()]
    return {"concurrency": concurrency, "done_per_minute": done, "failed_per_minute": failed}


def histogram(values: Sequence[float], bins: int = BINS) -> dict[str, Any]:
    if not values:
        return {"edges": [], "counts": []}
    top = max(values) or 1.0
    width = top / bins
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int(value / width))] += 1
    return {"edges": [i * width for i in range(bins + 1)], "counts": counts}


def ranked(counts: dict[str, int], limit: int = TOP) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]


@dataclass(frozen=True)
class Pilot:
    pilot: str
    host: str
    slots: int
    attempts: int
    busy: float
    life: float  # first claim to last end

    @property
    def utilisation(self) -> Optional[float]:
        available = self.slots * self.life
        return self.busy / available if available > 0 else None


def pilots(spans: Sequence[Span], lane_of: Sequence[int]) -> list[Pilot]:
    found: dict[str, dict[str, Any]] = {}
    for span, lane in zip(spans, lane_of):
        entry = found.setdefault(
            span.pilot,
            {
                "host": span.host,
                "slots": 0,
                "attempts": 0,
                "busy": 0.0,
                "first": span.claimed,
                "last": span.end,
            },
        )
        entry["slots"] = max(entry["slots"], lane + 1)
        entry["attempts"] += 1
        entry["busy"] += span.busy
        entry["first"] = min(entry["first"], span.claimed, span.start)
        entry["last"] = max(entry["last"], span.end)
    return [
        Pilot(name, e["host"], e["slots"], e["attempts"], e["busy"], e["last"] - e["first"])
        for name, e in sorted(found.items())
    ]


@dataclass
class Report:
    """Everything the page shows, also written as JSON by `report --json`."""

    now: float
    counts: dict[str, int]
    tokens: int
    spans: list[Span]
    timeline: Timeline
    start: float
    end: float
    attempts_per_token: dict[int, int]
    pilots: list[Pilot]
    durations: list[float] = field(default_factory=list)
    cores: Optional[CoreHours] = None  # what the attempts asked and used, where they recorded it
    _curves: Optional[dict[str, list[float]]] = field(default=None, repr=False)

    def curves(self) -> dict[str, list[float]]:
        """Concurrency and throughput (see ``curves``), computed once for the page and the JSON."""
        if self._curves is None:
            self._curves = curves(self.spans, self.start, self.end)
        return self._curves

    @property
    def makespan(self) -> float:
        return max(0.0, self.end - self.start)

    def outcomes(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for span in self.spans:
            found[span.outcome] = found.get(span.outcome, 0) + 1
        return dict(sorted(found.items(), key=lambda item: (-item[1], item[0])))

    def failures_by(self, key: str) -> list[tuple[str, int]]:
        found: dict[str, int] = {}
        for span in self.spans:
            if span.outcome in FAILED:
                name = getattr(span, key) or "(no reason)"
                found[name] = found.get(name, 0) + 1
        return ranked(found)

    def utilisation(self) -> Optional[float]:
        available = sum(p.slots * p.life for p in self.pilots)
        return sum(p.busy for p in self.pilots) / available if available > 0 else None

    def summary(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            **self.counts,
            "attempts": len(self.spans),
            "makespan": self.makespan,
            "start": self.start if self.spans else None,
            "start_iso": iso(self.start) if self.spans else None,
            "end": self.end if self.spans else None,
            "end_iso": iso(self.end) if self.spans else None,
            "median_duration": statistics.median(self.durations) if self.durations else None,
            "pilots": len(self.pilots),
            "hosts": len({p.host for p in self.pilots}),
            "utilisation": self.utilisation(),
            **(self.cores.as_json() if self.cores is not None else {}),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "generated": self.now,
            "generated_iso": iso(self.now),
            "summary": self.summary(),
            "outcomes": self.outcomes(),
            "curves": {
                "start": self.start,
                "end": self.end,
                "buckets": BUCKETS,
                **self.curves(),
            },
            "durations": histogram(self.durations),
            "failures_by_reason": [{"reason": r, "count": n} for r, n in self.failures_by("reason")],
            "failures_by_host": [{"host": h, "count": n} for h, n in self.failures_by("host")],
            "attempts_per_token": {str(k): v for k, v in sorted(self.attempts_per_token.items())},
            "pilots": [
                {
                    "pilot": p.pilot,
                    "host": p.host,
                    "slots": p.slots,
                    "attempts": p.attempts,
                    "busy": p.busy,
                    "life": p.life,
                    "utilisation": p.utilisation,
                }
                for p in self.pilots
            ],
            "timeline": {
                "rows": len(self.timeline.rows),
                "per_host": self.timeline.per_host,
                "aggregated": self.timeline.aggregated,
            },
        }


@dataclass
class CoreHours:
    """Core-hours asked (cores given times the attempt's wall time) against used (the CPU seconds the
    kernel counted for the task's processes), over the attempts that recorded both (resources.md)."""

    asked: float = 0.0  # core-seconds
    used: float = 0.0  # CPU seconds
    attempts: int = 0

    def add(self, attempt: Mapping[str, Any], span: Span) -> None:
        cores, user, system = attempt.get("cores"), attempt.get("cpu_user"), attempt.get("cpu_system")
        if isinstance(cores, int) and isinstance(user, (int, float)) and isinstance(system, (int, float)):
            self.asked += cores * span.busy
            self.used += user + system
            self.attempts += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "core_hours_asked": round(self.asked / 3600, 4),
            "core_hours_used": round(self.used / 3600, 4),
            "cpu_efficiency": round(self.used / self.asked, 4) if self.asked > 0 else None,
        }


def build(histories: Iterable[History], now: float) -> Report:
    """The report of these tokens (read once, in one pass: ``histories`` may stream a million)."""
    spans: list[Span] = []
    counts = {"todo": 0, "locked": 0, "done": 0, "error": 0, "waiting": 0}
    cores = CoreHours()
    per_token: dict[int, int] = {}
    durations: list[float] = []
    total = 0
    for token_id, state, attempts in histories:
        total += 1
        counts[state] += 1
        per_token[len(attempts)] = per_token.get(len(attempts), 0) + 1
        for attempt, span in zip(attempts, spans_of(token_id, attempts, now)):
            spans.append(span)
            cores.add(attempt, span)
            if span.outcome == "done":
                durations.append(span.busy)
    start = min((s.start for s in spans), default=now)
    end = max((s.end for s in spans), default=now)
    lane_of = lanes(spans)
    line = timeline(spans, lane_of)
    return Report(
        now=now,
        counts=counts,
        tokens=total,
        spans=spans,
        timeline=line,
        start=start,
        end=end,
        attempts_per_token=per_token,
        pilots=pilots(spans, lane_of),
        durations=durations,
        cores=cores if cores.attempts else None,
    )
