"""The run report as one self-contained HTML page: inline CSS and SVG, no script, nothing from the network.

Elements a reader (or a test) counts carry stable ids and data attributes: ``#summary td[data-key]``,
``#legend li[data-outcome][data-count]``, ``#timeline rect.bar[data-outcome]`` (or ``rect.cell
[data-attempts]`` when the attempts are too many for a bar each), ``#timeline[data-bars][data-aggregated]``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Optional

from agent.stats import iso
from agent.units import format_duration
from agent.views import figures
from agent.views.figures import Report

COLOURS = {
    "done": "#2e7d32",
    "failed": "#c62828",
    "timeout": "#ef6c00",
    "not-started": "#6a1b9a",
    "interrupted": "#1565c0",
    "lease-lost": "#00838f",
    "lease-expired": "#795548",
    "node-unhealthy": "#ad1457",
    "reset": "#757575",
    "cancelled": "#37474f",
    "memory": "#827717",
    figures.RUNNING: "#f9a825",
}
OTHER = "#9e9e9e"
LABEL = 230  # px of the timeline's row labels
PLOT = 880  # px of a chart's plot area

CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #212121;
       max-width: 1160px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta, .note { color: #616161; margin: 4px 0; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: left; }
#summary th { font-weight: normal; color: #616161; } #summary td { font-weight: 600; }
table.list td, table.list th { border-bottom: 1px solid #eee; } table.list td.n { text-align: right; }
#legend { list-style: none; padding: 0; margin: 6px 0; display: flex; flex-wrap: wrap; gap: 14px; }
#legend span { display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -1px; }
.pair { display: flex; flex-wrap: wrap; gap: 24px; } svg { display: block; }
svg text { font: 11px system-ui, sans-serif; fill: #424242; }
"""


def colour(outcome: str) -> str:
    return COLOURS.get(outcome, OTHER)


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _time_axis(start: float, end: float, x0: float, width: float, y: float) -> str:
    """Six ticks across [start, end]: the start's UTC time, then the time since it; faint grid lines."""
    span = max(end - start, 1e-9)
    parts = []
    for i in range(7):
        x = x0 + width * i / 6
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{y:.1f}" stroke="#eeeeee"/>')
        label = (iso(start) or "")[11:19] + " UTC" if i == 0 else "+" + _duration(span * i / 6)
        anchor = "start" if i == 0 else "end" if i == 6 else "middle"
        parts.append(f'<text x="{x:.1f}" y="{y + 14:.1f}" text-anchor="{anchor}">{label}</text>')
    return "".join(parts)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else format_duration(seconds)


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}"


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


# -- sections --------------------------------------------------------------------------------------


def summary(report: Report) -> str:
    data = report.summary()
    rows = [
        ("tokens", data["tokens"], str(data["tokens"])),
        ("done", data["done"], str(data["done"])),
        ("error", data["error"], str(data["error"])),
        ("todo", data["todo"], str(data["todo"])),
        ("locked", data["locked"], str(data["locked"])),
        ("attempts", data["attempts"], str(data["attempts"])),
        ("makespan", round(data["makespan"], 3), _duration(data["makespan"])),
        ("median_duration", data["median_duration"], _duration(data["median_duration"])),
        ("pilots", data["pilots"], str(data["pilots"])),
        ("hosts", data["hosts"], str(data["hosts"])),
        ("utilisation", data["utilisation"], _percent(data["utilisation"])),
    ]
    if data["waiting"]:
        rows.insert(5, ("waiting", data["waiting"], str(data["waiting"])))
    if "core_hours_asked" in data:  # attempts that recorded their cores and CPU times (resources.md)
        rows += [
            ("core_hours_asked", data["core_hours_asked"], f"{data['core_hours_asked']:.3f}"),
            ("core_hours_used", data["core_hours_used"], f"{data['core_hours_used']:.3f}"),
            ("cpu_efficiency", data["cpu_efficiency"], _percent(data["cpu_efficiency"])),
        ]
    cells = "".join(
        f'<tr><th>{esc(key.replace("_", " "))}</th><td id="summary-{esc(key)}" data-key="{esc(key)}" '
        f'data-value="{esc("" if value is None else value)}">{esc(text)}</td></tr>'
        for key, value, text in rows
    )
    period = ""
    if report.spans:
        period = f'<p class="meta">from {esc(iso(report.start))} to {esc(iso(report.end))}</p>'
    return f'<h2>Summary</h2><table id="summary">{cells}</table>{period}'


def legend(report: Report) -> str:
    items = "".join(
        f'<li data-outcome="{esc(outcome)}" data-count="{count}"><span style="background:{colour(outcome)}">'
        f"</span>{esc(outcome)} {count}</li>"
        for outcome, count in report.outcomes().items()
    )
    return f'<ul id="legend">{items}</ul>'


def _cells(report: Report, height: int) -> list[str]:
    """The timeline as a grid: each cell coloured by the outcome that took most of its time, darker the
    busier its row's slots were in it."""
    line = report.timeline
    span = max(report.makespan, 1e-9)
    width = PLOT / figures.COLUMNS
    per_row = dict.fromkeys(range(len(line.rows)), 1)
    if line.per_host:  # a host row holds all its pilots' slots: shade against that many
        slots: dict[str, int] = {}
        for pilot in report.pilots:
            slots[pilot.host] = slots.get(pilot.host, 0) + pilot.slots
        per_row = {number: slots.get(row.host, 1) for number, row in enumerate(line.rows)}
    column_seconds = span / figures.COLUMNS
    parts = []
    for cell in figures.cells(report.spans, line.row_of, report.start, report.end):
        share = min(1.0, cell.busy / (column_seconds * per_row[cell.row]))
        parts.append(
            f'<rect class="cell" data-attempts="{cell.attempts}" data-outcome="{esc(cell.outcome)}" '
            f'x="{LABEL + cell.column * width:.1f}" y="{cell.row * height + 1}" width="{width:.2f}" '
            f'height="{height - 2}" fill="{colour(cell.outcome)}" '
            f'fill-opacity="{0.25 + 0.75 * share:.2f}"/>'
        )
    return parts


def _bars(report: Report, height: int) -> list[str]:
    """One bar per attempt, with its token, host, outcome, duration and reason as a tooltip."""
    line = report.timeline
    scale = PLOT / max(report.makespan, 1e-9)
    opacity = ' fill-opacity="0.6"' if line.per_host else ""
    parts = []
    for span, row in zip(report.spans, line.row_of):
        x = LABEL + (span.start - report.start) * scale
        w = max(0.8, span.busy * scale)
        tip = f"{span.token} · {span.host} · {span.outcome} · {_duration(span.busy)}"
        if span.reason:
            tip += f" · {span.reason}"
        parts.append(
            f'<rect class="bar" data-outcome="{esc(span.outcome)}" data-token="{esc(span.token)}" '
            f'x="{x:.1f}" y="{row * height + 1}" width="{w:.1f}" height="{height - 2}" '
            f'fill="{colour(span.outcome)}"{opacity}><title>{esc(tip)}</title></rect>'
        )
    return parts


def timeline(report: Report) -> str:
    line = report.timeline
    rows = line.rows
    if not report.spans:
        return '<h2>Timeline</h2><p class="note" id="timeline-note">No attempts yet.</p>'
    height = 16 if len(rows) <= 30 else max(6, min(16, 600 // len(rows)))
    plot_height = height * len(rows)
    start = report.start
    parts = []
    for number, row in enumerate(rows):
        y = number * height
        if number % 2:
            parts.append(f'<rect x="{LABEL}" y="{y}" width="{PLOT}" height="{height}" fill="#fafafa"/>')
        if height >= 10:
            parts.append(
                f'<text x="{LABEL - 6}" y="{y + height - 4}" text-anchor="end">{esc(row.label)}</text>'
            )
    if line.aggregated:
        bars = 0
        parts += _cells(report, height)
    else:
        bars = len(report.spans)
        parts += _bars(report, height)
    axis = _time_axis(start, report.end, LABEL, PLOT, plot_height)
    total = LABEL + PLOT + 10
    svg = (
        f'<svg id="timeline" data-bars="{bars}" data-rows="{len(rows)}" '
        f'data-aggregated="{str(line.aggregated).lower()}" width="{total}" height="{plot_height + 32}" '
        f'viewBox="0 0 {total} {plot_height + 32}" xmlns="http://www.w3.org/2000/svg">'
        f"{axis}{''.join(parts)}</svg>"
    )
    what = "host" if line.per_host else "pilot slot"
    note = f"One row per {what}"
    if line.per_host:
        note += f" (more than {figures.MAX_ROWS} pilot slots)"
    if line.aggregated:
        note += (
            f"; {len(report.spans):,} attempts are more than a browser draws comfortably as bars "
            f"({figures.MAX_BARS:,}), so they are aggregated: each cell is 1/{figures.COLUMNS} of the run, "
            "coloured by the outcome that took most of its time, darker the busier it was"
        )
    else:
        note += ", one bar per attempt from its start to its end, coloured by outcome (hover for details)"
    return f'<h2>Timeline</h2><p class="note" id="timeline-note">{esc(note)}.</p>{legend(report)}{svg}'


def _line_chart(
    chart_id: str, series: Sequence[tuple[str, Sequence[float], str]], report: Report, unit: str
) -> str:
    height, left = 160, 50
    top = max((max(values, default=0) for _, values, _ in series), default=0) or 1.0
    parts = [_time_axis(report.start, report.end, left, PLOT, height)]
    for fraction in (0.0, 0.5, 1.0):
        y = height - fraction * height
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(top * fraction)}</text>'
        )
    for name, values, tint in series:
        if not values:
            continue
        step = PLOT / len(values)
        points = " ".join(
            f"{left + step * (i + 0.5):.1f},{height - v / top * height:.1f}" for i, v in enumerate(values)
        )
        parts.append(
            f'<polyline data-series="{esc(name)}" points="{points}" fill="none" stroke="{tint}" '
            'stroke-width="1.6"/>'
        )
    keys = " · ".join(f'<tspan fill="{tint}">{esc(name)}</tspan>' for name, _, tint in series)
    parts.append(f'<text x="{left}" y="-4">{keys} ({esc(unit)})</text>')
    width = left + PLOT + 10
    return (
        f'<svg id="{chart_id}" width="{width}" height="{height + 40}" viewBox="0 -14 {width} {height + 54}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


def curves(report: Report) -> str:
    if not report.spans:
        return ""
    found = report.curves()
    concurrency = _line_chart(
        "concurrency", [("running", found["concurrency"], "#1565c0")], report, "attempts at once"
    )
    throughput = _line_chart(
        "throughput",
        [
            ("done", found["done_per_minute"], COLOURS["done"]),
            ("failed", found["failed_per_minute"], COLOURS["failed"]),
        ],
        report,
        "attempts ended per minute",
    )
    return f"<h2>Concurrency and throughput</h2>{concurrency}{throughput}"


def _hbars(chart_id: str, items: Sequence[tuple[str, int]], tint: str, width: int = 540) -> str:
    if not items:
        return f'<p class="note" id="{chart_id}">None.</p>'
    label, row = 230, 20
    top = max(count for _, count in items) or 1
    plot = width - label - 50
    parts = []
    for number, (name, count) in enumerate(items):
        y = number * row
        short = name if len(name) <= 38 else name[:37] + "…"
        parts.append(
            f'<text x="{label - 6}" y="{y + 14}" text-anchor="end"><title>{esc(name)}</title>'
            f"{esc(short)}</text>"
        )
        w = max(1.0, count / top * plot)
        parts.append(
            f'<rect class="item" data-label="{esc(name)}" data-count="{count}" x="{label}" y="{y + 3}" '
            f'width="{w:.1f}" height="{row - 6}" fill="{tint}"/>'
        )
        parts.append(f'<text x="{label + w + 4:.1f}" y="{y + 14}">{count}</text>')
    height = row * len(items)
    return (
        f'<svg id="{chart_id}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


def durations(report: Report) -> str:
    found = figures.histogram(report.durations)
    if not found["counts"]:
        return '<h2>Task durations</h2><p class="note">No finished tasks yet.</p>'
    counts, edges = found["counts"], found["edges"]
    height, left = 150, 50
    top = max(counts) or 1
    step = PLOT / len(counts)
    parts = []
    for i, count in enumerate(counts):
        h = count / top * height
        parts.append(
            f'<rect class="bin" data-count="{count}" x="{left + i * step + 1:.1f}" y="{height - h:.1f}" '
            f'width="{step - 2:.1f}" height="{h:.1f}" fill="{COLOURS["done"]}">'
            f"<title>{_duration(edges[i])} to {_duration(edges[i + 1])}: {count}</title></rect>"
        )
    for i in range(0, len(edges), 5):
        parts.append(
            f'<text x="{left + i * step:.1f}" y="{height + 14}" text-anchor="middle">'
            f"{_duration(edges[i])}</text>"
        )
    parts.append(f'<text x="{left - 6}" y="10" text-anchor="end">{top}</text>')
    width = left + PLOT + 30
    svg = (
        f'<svg id="durations" width="{width}" height="{height + 24}" viewBox="0 0 {width} {height + 24}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )
    note = f'<p class="note">Successful attempts, {len(report.durations)} of them.</p>'
    return f"<h2>Task durations</h2>{note}{svg}"


def failures(report: Report) -> str:
    by_reason = _hbars("failures-by-reason", report.failures_by("reason"), COLOURS["failed"])
    by_host = _hbars("failures-by-host", report.failures_by("host"), COLOURS["node-unhealthy"])
    return (
        '<h2>Failures</h2><p class="note">Failed attempts (failed, timeout, not-started, memory, '
        "node-unhealthy), by reason and by host.</p>"
        f'<div class="pair"><div><h3>by reason</h3>{by_reason}</div>'
        f"<div><h3>by host</h3>{by_host}</div></div>"
    )


def attempts(report: Report) -> str:
    items = [(f"{k} attempt{'s' if k != 1 else ''}", n) for k, n in sorted(report.attempts_per_token.items())]
    return f"<h2>Attempts per token</h2>{_hbars('attempts-per-token', items, '#1565c0')}"


def utilisation(report: Report) -> str:
    shown = sorted(report.pilots, key=lambda p: (p.utilisation is None, p.utilisation or 0.0, p.pilot))
    rows = "".join(
        f'<tr data-pilot="{esc(p.pilot)}"><td>{esc(p.pilot)}</td><td>{esc(p.host)}</td>'
        f'<td class="n">{p.slots}</td><td class="n">{p.attempts}</td><td class="n">{_duration(p.busy)}</td>'
        f'<td class="n">{_duration(p.life)}</td><td class="n">{_percent(p.utilisation)}</td></tr>'
        for p in shown[:100]
    )
    more = (
        f'<p class="note">and {len(shown) - 100} more pilots (all in --json).</p>' if len(shown) > 100 else ""
    )
    return (
        f'<h2>Utilisation</h2><p class="note">Busy slot-time over available slot-time: '
        f"{_percent(report.utilisation())} over the whole run. A pilot's slots are the most attempts it ran "
        "at once, its life from its first claim to its last report (the pool does not record more); the "
        "least used pilots first.</p>"
        '<table class="list" id="utilisation"><tr><th>pilot</th><th>host</th><th>slots</th><th>attempts</th>'
        f"<th>busy</th><th>life</th><th>utilisation</th></tr>{rows}</table>{more}"
    )


def page(report: Report, where: str) -> str:
    body = "".join(
        (
            "<h1>pilot run report</h1>",
            f'<p class="meta">pool {esc(where)} · generated {esc(iso(report.now))}</p>',
            summary(report),
            timeline(report),
            curves(report),
            durations(report),
            failures(report),
            attempts(report),
            utilisation(report),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>pilot run report: {esc(where)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
