"""`pilot.pyz status`: the counts, what runs where, the rates and ETA, durations, and what failed."""

from __future__ import annotations

import json
from collections.abc import Iterator

from agent import stats
from agent.pools.base import Pool, SizeCount
from agent.units import format_duration, format_size


def observe(pool: Pool, now: float) -> stats.Observed:
    """One look at the pool: indexed counts and a bounded sample, never every token (see Pool)."""
    return stats.Observed(
        now=now,
        counts=pool.counts(),
        short=pool.finished_since(now - stats.SHORT),
        long=pool.finished_since(now - stats.LONG),
        running=pool.running(),
        reasons=pool.error_reasons(stats.TOP),
        recent=pool.recent(stats.SAMPLE),
        sizes=pool.todo_sizes(),
    )


def as_json(status: stats.Status) -> str:
    return json.dumps(stats.as_json(status), ensure_ascii=False)


def _rate(value: float) -> str:
    return f"{value:.1f}" if value >= 1 or value == 0 else f"{value:.2f}"


def asked(size: SizeCount) -> str:
    """What tokens of this size ask for: "4 cores, 1 GPU, 16.0GiB of memory"; a field they leave out is
    the [task] default, and is left out here too."""
    parts = []
    if size.cores is not None:
        parts.append(f"{size.cores} core{'' if size.cores == 1 else 's'}")
    if size.gpus is not None:
        parts.append(f"{size.gpus} GPU{'' if size.gpus == 1 else 's'}")
    if size.memory is not None:
        parts.append(f"{format_size(size.memory)} of memory")
    return ", ".join(parts)


def eta_text(status: stats.Status) -> str:
    if status.finished:
        return "finished"
    if status.eta is None:
        return "unknown (nothing finished in the last hour)"
    at = stats.iso(status.observed.now + status.eta)
    return f"{format_duration(status.eta)} (at {at}, at the rate of the last {status.eta_basis})"


def lines(status: stats.Status) -> Iterator[str]:
    """The text of `status`: the four counts and the total as they always were, then the figures."""
    observed = status.observed
    counts = observed.counts
    for state, number in counts.as_dict().items():
        yield f"{state:<7}{number:>9}"
    yield f"{'total':<7}{counts.total:>9}"
    yield ""
    hosts = ", ".join(f"{host} {n}" for host, n in sorted(observed.running.items()))
    yield f"running   {sum(observed.running.values())}" + (f" ({hosts})" if hosts else "")
    yield (
        f"done/min  {_rate(status.done_rate_short)} over the last 5m, "
        f"{_rate(status.done_rate_long)} over the last 60m"
    )
    yield f"eta       {eta_text(status)}"
    if status.median is not None and status.p90 is not None:
        yield (
            f"duration  median {format_duration(status.median)}, p90 {format_duration(status.p90)} "
            f"(last {status.durations} done)"
        )
    sizes = observed.sizes or []
    for number, size in enumerate(sizes[: stats.TOP]):
        yield f"{'todo size' if number == 0 else '':<10}{size.count:>6}  {asked(size)}"
    plain = counts.todo - sum(size.count for size in sizes)
    if sizes and plain > 0:
        yield f"{'':<10}{plain:>6}  the [task] size"
    for number, reason in enumerate(observed.reasons):
        label = "errors" if number == 0 else ""
        yield f"{label:<10}{reason.count:>6}  {reason.reason or '(no reason)'}  (e.g. {reason.example})"
    for number, host in enumerate(status.hosts):
        label = "hosts" if number == 0 else ""
        yield (
            f"{label:<10}{host.failures:>6}  {host.host} "
            f"({host.failures} of its {host.attempts} recent attempts failed)"
        )
