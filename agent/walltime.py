"""When the batch job ends, how long a task takes, and whether another task still fits.

Pure logic with the clock passed in: ``Walltime.verdict(now)`` answers before each claim. Where the end
comes from is decided once at start (``find_end``), never once per task.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from agent.config import WalltimeConfig
from agent.units import format_duration


@dataclass(frozen=True)
class End:
    """The job's end as a monotonic time, and where we learned it; ``at`` None means no known limit."""

    at: Optional[float]
    source: str


class Estimator:
    """What a task is expected to take: the configured value until ``min_samples`` tasks were measured
    on this node, then a high percentile of the recent durations times a safety factor."""

    def __init__(
        self,
        configured: float,
        *,
        percentile: float = 0.9,
        factor: float = 1.2,
        min_samples: int = 3,
        window: int = 50,
    ) -> None:
        self.configured = configured
        self.percentile = percentile
        self.factor = factor
        self.min_samples = min_samples
        self.durations: deque[float] = deque(maxlen=window)

    def record(self, seconds: float) -> None:
        self.durations.append(max(0.0, seconds))

    def expected(self) -> float:
        if len(self.durations) < self.min_samples:
            return self.configured
        ordered = sorted(self.durations)
        index = min(len(ordered) - 1, math.ceil(self.percentile * len(ordered)) - 1)
        return ordered[index] * self.factor

    def describe(self) -> str:
        if len(self.durations) < self.min_samples:
            return f"about {format_duration(self.expected())} (configured)"
        return f"about {format_duration(self.expected())} (measured, {len(self.durations)} tasks)"


class Walltime:
    def __init__(self, end: End, config: WalltimeConfig) -> None:
        self.end = end
        self.margin = config.margin
        self.estimator = Estimator(config.expected)

    def left(self, now: float) -> Optional[float]:
        """Seconds until the job's end, or None when there is no known limit."""
        return None if self.end.at is None else self.end.at - now

    def verdict(self, now: float, estimate: Optional[float] = None) -> Optional[str]:
        """None when a task of ``estimate`` seconds (default: the expected duration) fits before the end
        minus the margin; otherwise the reason to drain, as it goes into the log."""
        left = self.left(now)
        if left is None:
            return None
        expected = self.estimator.expected() if estimate is None else estimate
        if left - self.margin >= expected:
            return None
        return (
            f"drain: {format_duration(max(0.0, left))} left, tasks take about {format_duration(expected)} "
            f"and {format_duration(self.margin)} are kept for cleanup"
        )

    def describe(self, now: float) -> str:
        left = self.left(now)
        if left is None:
            return f"walltime: no limit known ({self.end.source}); tasks run until the pool is empty"
        return (
            f"walltime: {format_duration(left)} left (from {self.end.source}), margin "
            f"{format_duration(self.margin)}, tasks expected to take {self.estimator.describe()}"
        )


def find_end(config: WalltimeConfig, environ: Mapping[str, str], now_epoch: float, now_mono: float) -> End:
    """The job's end, first source that answers: the configured limit (or --walltime), then the batch
    system. Called once at start."""
    if config.limit is not None:
        return End(now_mono + config.limit, f"limit {format_duration(config.limit)} from the pilot's start")
    del environ, now_epoch  # batch-system sources come with the walltime issue
    return End(None, "no --walltime, no walltime.limit, no batch system limit found")
