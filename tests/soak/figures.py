"""The soak's figures: one table per backend of what happened (tokens/s, attempts by outcome, kills,
conflicts, journal replays, black-hole trips, ...), and one table of the checks with a column per
backend, so a run over every backend ends with the two side by side."""

from __future__ import annotations

import collections
import time

from checks import Analysis, codes_of
from scenario import CORES, LEASE


def figures(analysis: Analysis) -> list[tuple[str, str]]:
    scenario, args, events = analysis.scenario, analysis.args, analysis.logs.events
    elapsed = (scenario.finished or time.time()) - scenario.started
    attempts = [attempt for history in analysis.history.values() for attempt in history]
    by_outcome = collections.Counter(attempt["outcome"] for attempt in attempts)
    modes = collections.Counter(final.fields.get("mode") for final in analysis.finals.values())
    final = collections.Counter(analysis.states.values())
    successes = collections.Counter(run.token for run in analysis.runs.values() if run.code == 0)
    codes = codes_of(scenario.pilots)
    kills = collections.Counter(pilot.killed for pilot in scenario.pilots if pilot.killed)
    holes = [pilot for pilot in scenario.pilots if pilot.black_hole]
    given_back = collections.Counter(
        analysis.black_hole(a) for a in attempts if a["outcome"] == "node-unhealthy"
    )
    fresh, earlier = analysis.black_hole_charges(earlier=False), analysis.black_hole_charges(earlier=True)
    orphans = sum(
        1
        for run in analysis.runs.values()
        if run.end is not None
        and run.pilot in analysis.by_id
        and (analysis.by_id[run.pilot].ended or run.end) < run.end
    )
    down, up = scenario.outage.window
    ended = sum(run.end is not None for run in analysis.runs.values())
    exit_codes = dict(sorted(codes.items(), key=str))
    rows = [
        ("tokens", f"{len(analysis.finals)}: {modes['ok']} ok, {modes['flaky']} flaky, {modes['bad']} bad"),
        (
            "finished",
            f"{final['done']} done, {final['error']} error ({len(analysis.burnt)} burnt by the black hole, "
            f"{len(analysis.killed_burnt)} by task kills)",
        ),
        ("wall time", f"{elapsed:.0f}s to an empty pool, {len(analysis.finals) / elapsed:.1f} tokens/s"),
        ("attempts", f"{len(attempts)}: " + ", ".join(f"{n} {o}" for o, n in by_outcome.most_common())),
        ("runs", f"{len(analysis.runs)} started, {ended} ended by themselves"),
        ("tokens done twice", f"{sum(n > 1 for n in successes.values())} ran successfully more than once"),
        (
            "runs overlapping done",
            ", ".join(f"{n} {what}" for what, n in analysis.overlaps.items()) or "none",
        ),
        ("orphans", f"{orphans} runs ended after their pilot was killed (never reported)"),
        ("pilots", f"{len(scenario.pilots)} on {args.pilots} nodes; exit codes {exit_codes}"),
        (
            "kills",
            f"{kills['node']} whole nodes, {kills['pilot']} pilots alone, "
            f"{len(scenario.task_kills.done)} tasks alone (SIGKILL; {len(analysis.task_killed)} runs found)",
        ),
        (
            "freezes",
            f"{len(scenario.freezes.frozen)} pilots stopped {scenario.freezes.seconds:.0f}s (lease "
            f"{LEASE}s) while {sum(len(f.tasks) for f in scenario.freezes.frozen)} tasks ran; "
            f"{analysis.taken_in_freeze} of their runs' tokens claimed by another pilot meanwhile",
        ),
        (
            "outage",
            f"{scenario.backend.outage_kind} {down - scenario.started:.0f}s into the run "
            f"for {up - down:.0f}s",
        ),
        (
            "journal",
            f"{events['journaled']} reports journaled; {events['sent from own journal']} sent by "
            f"their pilot, {events['adopted from dead pilots']} by the next pilot on the node",
        ),
        ("conflicts", f"{events['conflicts']} reports refused: the lease had moved on"),
        (
            "leases",
            f"{events['claimed again after a lease expired']} tokens claimed again after expiry, "
            f"{events['leases lost']} leases lost",
        ),
        (
            "black hole",
            f"{len(holes)} pilots, {codes_of(holes)[7]} tripped (exit 7), {given_back[True]} "
            f"tokens given back uncharged; charged {sum(fresh.values())} tokens that had not failed "
            f"(at most {max(fresh.values(), default=0)} per pilot), {sum(earlier.values())} that had",
        ),
        (
            "other nodes",
            f"{codes_of(p for p in scenario.pilots if not p.black_hole)[7]} pilots tripped the breaker, "
            f"{given_back[False]} tokens given back uncharged",
        ),
        ("reports", ", ".join(f"{n} {what}" for what, n in analysis.reports.most_common())),
    ]
    features = scenario.features
    if "sizes" in features:
        sizes = collections.Counter(f.fields.get("cores", 1) for f in analysis.finals.values())
        peaks = analysis.core_peaks
        rows.append(
            (
                "sizes",
                "tokens of "
                + ", ".join(f"{n} x {c} cores" for c, n in sorted(sizes.items()))
                + f"; cores held at task starts: {dict(sorted(peaks.items()))}",
            )
        )
    if "after" in features:
        dag = [f for f in analysis.finals.values() if f.id.startswith("dag-")]
        states = collections.Counter(
            f.state if not f.reason.startswith("dependency") else "dependency failed" for f in dag
        )
        rows.append(
            (
                "DAG",
                f"{len(dag)} tokens in {len({f.id[:6] for f in dag})} groups (split, fan-out, merge); "
                + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
                + f"; {analysis.dag_checked} with `after` checked",
            )
        )
    if "children" in features:
        parents = [f for f in analysis.finals.values() if f.fields.get("children")]
        rows.append(
            (
                "children",
                f"{len(parents)} parents, {sum(f.state == 'done' for f in parents)} done; "
                f"{analysis.children_seen} children in the pool",
            )
        )
    if "cancel" in features and scenario.cancels is not None:
        rounds = scenario.cancels.rounds
        delays = analysis.cancel_delays
        rows.append(
            (
                "cancels",
                f"{len(rounds)} rounds: {sum(len(r.running) for r in rounds)} running, "
                f"{sum(len(r.waiting) for r in rounds)} waiting or todo; tasks gone "
                + (
                    f"{min(delays):.1f} to {max(delays):.1f}s after the cancel"
                    if delays
                    else "(none running)"
                )
                + f"; {len(analysis.open_cancelled)} left with an open attempt (their pilot was killed)",
            )
        )
    missing = [name for name in ("sizes", "after", "children", "cancel") if name not in features]
    if missing:
        rows.append(("not run here", ", ".join(scenario.backend.missing.get(m) or m for m in missing)))
    half_written = scenario.backend.half_written
    if half_written is not None:
        rows.append(
            (
                "half-written results",
                f"{len(half_written)} result tokens whose body is not a result (a PUT cut short by a kill: "
                "ToPoS keeps what arrived; pilots skip them)"
                + (f": {'; '.join(half_written[:3])}" if half_written else ""),
            )
        )
    if analysis.report_delays:
        delay = f"at most {max(analysis.report_delays):.1f}s after the run ended"
        rows.append(("unsent successes", f"{delay} (in memory until sent or journaled)"))
    return rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A plain-text table, also valid Markdown (docs/soak.md shows it as printed)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n== {title}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")


def checks_table(analyses: list[Analysis]) -> None:
    """One row per check, one column per backend: ok, FAIL (n problems), or n/a and why."""
    header = ["check", *(a.scenario.backend.name for a in analyses)]
    names: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for analysis in analyses:
        for result in analysis.results:
            if result.name not in names:
                names.append(result.name)
            text = result.status
            if result.status == "FAIL":
                text = f"FAIL ({len(result.problems)})"
            elif result.not_applicable:
                text = f"n/a: {result.not_applicable}"
            cells[(result.name, analysis.scenario.backend.name)] = text
    rows = [[name, *(cells.get((name, b), "") for b in header[1:])] for name in names]
    print_table("checks per backend", header, rows)


def summary_table(analyses: list[Analysis]) -> None:
    """The main figures side by side, one column per backend (what docs/soak.md shows)."""
    header = ["figure", *(a.scenario.backend.name for a in analyses)]
    columns = [summary(analysis) for analysis in analyses]
    names = [name for name, _ in columns[0]]
    rows = [[name, *(dict(column).get(name, "") for column in columns)] for name in names]
    print_table("figures per backend", header, rows)


def summary(analysis: Analysis) -> list[tuple[str, str]]:
    scenario, events = analysis.scenario, analysis.logs.events
    elapsed = (scenario.finished or time.time()) - scenario.started
    attempts = [attempt for history in analysis.history.values() for attempt in history]
    final = collections.Counter(analysis.states.values())
    kills = collections.Counter(pilot.killed for pilot in scenario.pilots if pilot.killed)
    holes = [pilot for pilot in scenario.pilots if pilot.black_hole]
    down, up = scenario.outage.window
    features = scenario.features
    cancels = scenario.cancels.rounds if scenario.cancels else []
    na = "n/a"
    return [
        ("tokens (with children)", f"{len(analysis.finals)}: {final['done']} done, {final['error']} error"),
        ("wall time", f"{elapsed:.0f} s, {len(analysis.finals) / elapsed:.1f} tokens/s"),
        ("attempts, runs", f"{len(attempts)}, {len(analysis.runs)}"),
        ("pilots", f"{len(scenario.pilots)}"),
        (
            "kills (node, pilot alone, task alone)",
            f"{kills['node']}, {kills['pilot']}, {len(analysis.task_killed)}",
        ),
        ("outage", f"{up - down:.0f} s at {down - scenario.started:.0f} s"),
        ("reports journaled, conflicts", f"{events['journaled']}, {events['conflicts']}"),
        (
            "freezes, tokens taken meanwhile",
            f"{len(scenario.freezes.frozen)}, {analysis.taken_in_freeze}",
        ),
        ("black-hole pilots, tripped", f"{len(holes)}, {codes_of(holes)[7]}"),
        (
            "cores held at starts (max)",
            f"{max(analysis.core_peaks, default=0)} of {CORES}" if "sizes" in features else na,
        ),
        ("DAG tokens checked", f"{analysis.dag_checked}" if "after" in features else na),
        ("children", f"{analysis.children_seen}" if "children" in features else na),
        (
            "cancelled (running, waiting); slowest stop",
            f"{sum(len(r.running) for r in cancels)}, {sum(len(r.waiting) for r in cancels)}; "
            f"{max(analysis.cancel_delays, default=0):.1f} s"
            if "cancel" in features
            else na,
        ),
    ]
