"""The soak's checks: the pool's tokens at the end against the execution log (tests/soak/task.py) and
the pilots' logs. Each check returns its problems (none: it passed), or says why it does not apply to a
backend; its docstring ends with "Fails when", the change to the pilot (or to the soak) that makes it
fail, each one run that way once while the check was built.

A check that cannot fail is a defect: when you change one, make it fail once the way its note says.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from backends import Final
from scenario import Pilot, Scenario

CHARGED = frozenset({"failed", "timeout", "not-started"})
GUARD_GRACE = 0.25  # seconds a task of a pilot killed alone may still end by itself: the guard is at work
EXIT_CODES = frozenset({0, 7, -9})  # done or drained, black hole, killed by us
LEASE_SLACK = 5.0  # seconds after a freeze in which another pilot's claim still counts as taken in it
LOG_LINE = re.compile(r"^\S+ (\S+) token=(\S+) (\w+) (.*)$")


# -- what the tasks and the pilots wrote -----------------------------------------------------------


@dataclass
class Run:
    """One run of a task, from the execution log."""

    token: str
    attempt: int
    pilot: str
    start: float
    end: Optional[float] = None
    code: Optional[int] = None
    extra: dict[str, str] = field(default_factory=dict)  # key=value words of its S line


def read_runs(path: Path) -> dict[tuple[str, int, str], Run]:
    runs: dict[tuple[str, int, str], Run] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if parts[0] == "S" and len(parts) >= 5:
            key = (parts[1], int(parts[2]), parts[3])
            extra = dict(word.split("=", 1) for word in parts[5:] if "=" in word)
            runs[key] = Run(parts[1], int(parts[2]), parts[3], float(parts[4]), extra=extra)
        elif parts[0] == "E" and len(parts) == 7 and (parts[1], int(parts[2]), parts[3]) in runs:
            run = runs[(parts[1], int(parts[2]), parts[3])]
            run.end, run.code = float(parts[5]), int(parts[6])
    return runs


@dataclass
class Logs:
    """What the pilots said: pilot ids, and events counted from their log lines."""

    tracebacks: list[str] = field(default_factory=list)
    conflicts: set[str] = field(default_factory=set)  # tokens with a report refused as a conflict
    # (pilot, token): a failure the black-hole breaker held back whose lease ran out meanwhile
    held_lost: set[tuple[str, str]] = field(default_factory=set)
    events: collections.Counter[str] = field(default_factory=collections.Counter)


EVENTS = {
    "journaled": re.compile(r"report kept in the journal"),
    "sent from own journal": re.compile(r"sent (\d+) report\(s\) from the journal"),
    "adopted from dead pilots": re.compile(r"found (\d+) unsent report\(s\) from an earlier pilot"),
    "conflicts": re.compile(r"conflict: the lease moved to another pilot"),
    "claimed again after a lease expired": re.compile(r"claimed again: the lease of its last pilot"),
    "leases lost": re.compile(r"lease lost"),
    "breaker trips": re.compile(r"black hole: .* no more claims"),
    "server reachable again": re.compile(r"server reachable again"),
}


def read_logs(pilots: Iterable[Pilot]) -> Logs:
    logs = Logs()
    for pilot in pilots:
        text = pilot.log.read_text(errors="replace")
        if "Traceback" in text:
            logs.tracebacks.append(pilot.log.name)
        for line in text.splitlines():
            match = LOG_LINE.match(line)
            if match is None:
                continue
            pilot.pilot_id = pilot.pilot_id or match.group(1)
            message = match.group(4)
            for name, pattern in EVENTS.items():
                found = pattern.search(message)
                if found:
                    logs.events[name] += int(found.group(1)) if found.groups() else 1
            if "conflict: the lease moved" in message:
                logs.conflicts.add(match.group(2))
            if "lease lost while its failure was held back" in message:
                logs.held_lost.add((match.group(1), match.group(2)))
    return logs


# -- the checks ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """A check's result on one backend: its problems, or why it does not apply."""

    name: str
    problems: list[str]
    not_applicable: str = ""

    @property
    def status(self) -> str:
        if self.not_applicable:
            return "n/a"
        return "FAIL" if self.problems else "ok"


class Analysis:
    """The tokens' histories against the execution log and the pilots' logs: the checks and the figures."""

    def __init__(self, scenario: Scenario, finals: dict[str, Final]) -> None:
        self.scenario = scenario
        self.args = scenario.args
        self.finals = finals
        self.runs = read_runs(scenario.runs_log)
        self.logs = read_logs(scenario.pilots)
        self.by_id = {pilot.pilot_id: pilot for pilot in scenario.pilots if pilot.pilot_id}
        self.history = {token_id: final.attempts for token_id, final in finals.items()}
        self.states = {token_id: final.state for token_id, final in finals.items()}
        self.results: list[Outcome] = []
        self.burnt: list[str] = []  # working tokens the black hole sent to error
        self.handouts = scenario.backend.counts_every_handout
        # working tokens sent to error by hand-outs that were not failures (ToPoS counts every one)
        self.handout_burnt: list[str] = []
        self.overlaps: collections.Counter[str] = collections.Counter()
        self.reports: collections.Counter[str] = collections.Counter()
        self.report_delays: list[float] = []
        self.taken_in_freeze = 0  # runs of frozen pilots whose token another pilot claimed meanwhile

    def checks(self) -> list[tuple[str, Callable[[], list[str]], Optional[str]]]:
        """(name, check, the feature it needs or None), in the order they are printed."""
        k, max_attempts = self.args.black_hole_failures, self.args.max_attempts
        return [
            (
                f"every token done once, or in error after {max_attempts} charged failures",
                self.finished,
                None,
            ),
            ("bad tokens in error, working ones done (unless burnt by the black hole)", self.modes, None),
            ("no token executed after it was reported done", self.nothing_after_done, None),
            ("no report lost", self.no_report_lost, None),
            ("tasks die with their pilot", self.tasks_die_with_their_pilot, None),
            ("no result without its run, no attempt run by two pilots", self.no_phantoms, None),
            ("a lease that expired in a freeze: the newer attempt kept", self.newer_attempt_kept, None),
            (f"the black hole burnt at most K = {k} tokens per pilot", self.black_hole_bounded, None),
            ("pilots exit 0, 7 or killed, no tracebacks, the soak ran to its end", self.endings, None),
        ]

    def check(self) -> None:
        backend = self.scenario.backend
        for name, check, feature in self.checks():
            if feature is not None and feature not in backend.features:
                self.results.append(Outcome(name, [], backend.missing.get(feature, "not on this backend")))
            else:
                self.results.append(Outcome(name, check()))

    @property
    def ok(self) -> bool:
        return all(result.status != "FAIL" for result in self.results)

    def print_checks(self) -> None:
        print(f"\n== checks ({self.scenario.backend.name})")
        for result in self.results:
            print(
                f"  {result.status:<4}  {result.name}"
                + (f": {result.not_applicable}" * bool(result.not_applicable))
            )
            for problem in result.problems[:10]:
                print(f"          {problem}")
            if len(result.problems) > 10:
                print(f"          ... and {len(result.problems) - 10} more")

    # -- the checks --------------------------------------------------------------------------------

    def finished(self) -> list[str]:
        """Every token is done, with exactly one done attempt and that one last, or in error with its
        max_attempts charged failures; every attempt on every token is closed.

        Fails when: the report of a success leaves the token locked, or a failure is not charged
        (next_state returning failures unchanged for FAILED); or CouchDB's report stops appending to the
        PiCaS error list."""
        problems = []
        for token_id, final in sorted(self.finals.items()):
            outcomes = [attempt["outcome"] for attempt in final.attempts]
            charged = sum(outcome in CHARGED for outcome in outcomes)
            if self.handouts:  # ToPoS: every hand-out is an attempt against max_attempts
                charged = sum(outcome != "done" for outcome in outcomes)
            if None in outcomes:
                problems.append(f"{token_id}: an attempt was never closed: {outcomes}")
            if final.state == "done" and (outcomes.count("done") != 1 or outcomes[-1] != "done"):
                problems.append(f"{token_id}: done, but its attempts are {outcomes}")
            elif final.state == "error" and not charged == final.failures == self.args.max_attempts:
                problems.append(f"{token_id}: error after {charged} charged failures: {outcomes}")
            elif final.state not in ("done", "error"):
                problems.append(f"{token_id}: still {final.state}")
            picas_errors = final.extra.get("picas_errors")
            if picas_errors is not None and picas_errors != charged:
                problems.append(f"{token_id}: {charged} charged failures, {picas_errors} PiCaS error entries")
        return problems

    def modes(self) -> list[str]:
        """Bad tokens end in error; ok and flaky ones done, unless the black hole charged them.

        Fails when: task.py's flaky tokens fail every attempt (the retry never works), or max_attempts
        in the soak's config is 1 (flaky tokens go to error)."""
        problems = []
        for token_id, final in sorted(self.finals.items()):
            mode, state = final.fields["mode"], final.state
            if mode == "bad" and state != "error":
                problems.append(f"{token_id}: bad, but {state}")
            elif mode != "bad" and state == "error":
                charged = [a for a in final.attempts if a["outcome"] in CHARGED]
                if any(self.black_hole(attempt) for attempt in charged):
                    self.burnt.append(token_id)
                elif self.handouts and len(charged) < len(final.attempts):
                    self.handout_burnt.append(token_id)  # counted and printed: ToPoS cannot promise it
                else:
                    problems.append(f"{token_id}: {mode}, but in error")
        return problems

    def nothing_after_done(self) -> list[str]:
        """No run starts after the done attempt ended (the time the pilot saw the task exit, before its
        report reached the server). Runs that started before and ended after (or were killed after) are
        counted: orphans of pilots killed alone, and runs whose lease ran out. Tokens are run at least
        once, not exactly once.

        Fails when: claims also take done tokens (the local pool's claim query without its
        ``state = 'todo'`` condition), or a report of done leaves the lock expiring (claimable again)."""
        problems = []
        for run in self.runs.values():
            history = self.history.get(run.token, [])
            if self.states.get(run.token) != "done" or run.attempt == len(history):
                continue
            done = history[-1]["ended"]
            pilot = self.by_id.get(run.pilot)
            # A run without an end died with its node, when its pilot was killed.
            end = run.end if run.end is not None or pilot is None else pilot.ended
            if run.start > done:
                problems.append(f"{run.token}: run {run.attempt} by {run.pilot} started after it was done")
            elif pilot is not None and (end is None or end > done):
                if pilot.killed == "pilot" and (pilot.ended or 0) <= done:
                    self.overlaps["orphans of pilots killed alone"] += 1
                elif pilot.killed == "node" and run.end is None:
                    self.overlaps["killed with their node after the token was done elsewhere"] += 1
                else:
                    self.overlaps["runs whose lease ran out while they ran"] += 1
        return problems

    def tasks_die_with_their_pilot(self) -> list[str]:
        """No run of a pilot killed alone ends by itself more than GUARD_GRACE after the kill (its guard
        kills them; without it they ran on, unseen, while another pilot ran the token).

        Fails when: the pilot starts no guard process (agent/guard.py), so its tasks outlive it."""
        problems = []
        for run in self.runs.values():
            pilot = self.by_id.get(run.pilot)
            if pilot is None or pilot.killed != "pilot" or run.end is None or pilot.ended is None:
                continue
            if run.end > pilot.ended + GUARD_GRACE:
                late = run.end - pilot.ended
                problems.append(f"{run.token} run {run.attempt}: ended {late:.2f}s after its pilot's kill")
        return problems

    def no_report_lost(self) -> list[str]:
        """Every run that ended while its pilot lived is on the token's history with its outcome, or its
        attempt was closed as lease-expired and that is explained: the pilot was killed before its report
        got out (a success still in memory, in the seconds of HTTP retries before it goes to the journal;
        a failure held by the black-hole breaker), or a failure the breaker held lost its lease (the
        pilot logs it: renewals failed through the outage), or the report (from a journal, after the
        outage) met a newer attempt: a conflict, rightly not forced over it.

        Fails when: the pilot drops a report the server did not take (no journal: Reporter's
        ServerUnreachable branch returning without keeping it), or a journal is never replayed."""
        problems = []
        for run in self.runs.values():
            pilot = self.by_id.get(run.pilot)
            if run.end is None or pilot is None or (pilot.ended is not None and pilot.ended < run.end):
                continue  # killed with its node, or ended after its pilot died: nobody could report it
            history = self.history.get(run.token, [])
            attempt = history[run.attempt - 1] if run.attempt <= len(history) else None
            # ToPoS: a hand-out nobody reported is listed without its pilot ("?"), as lease-expired
            unnamed = self.handouts and attempt is not None and attempt["pilot"] == "?"
            if attempt is None or (attempt["pilot"] != run.pilot and not unnamed):
                problems.append(f"{run.token} attempt {run.attempt} by {run.pilot}: not on the token")
                continue
            outcome = attempt["outcome"]
            if outcome in (("done",) if run.code == 0 else ("failed", "node-unhealthy")):
                self.reports["reported"] += 1
            elif outcome == "lease-expired" and run.token in self.logs.conflicts:
                self.reports["refused as conflicts (the lease moved on while the report waited)"] += 1
            elif outcome == "lease-expired" and (run.pilot, run.token) in self.logs.held_lost:
                self.reports["failures held by the breaker while their lease ran out (outage)"] += 1
            elif outcome == "lease-expired" and pilot.killed and run.code:
                self.reports["failures held by the breaker when their pilot was killed"] += 1
            elif outcome == "lease-expired" and pilot.killed:
                self.reports["successes not yet sent when their pilot was killed"] += 1
                self.report_delays.append((pilot.ended or run.end) - run.end)
            elif outcome == "lease-lost":
                self.reports["stopped by their pilot: lease lost"] += 1
            else:
                problems.append(
                    f"{run.token} attempt {run.attempt} by {run.pilot}: exit {run.code}, {outcome}"
                )
        return problems

    def no_phantoms(self) -> list[str]:
        """Every closed attempt with an outcome from a run has that run in the log; no attempt number of
        a token was run by two pilots (claims are exclusive).

        Fails when: the local pool's claim drops ``BEGIN IMMEDIATE`` (two pilots read a token free), or
        CouchDB's claim writes without the document's revision."""
        problems = []
        for token_id, history in self.history.items():
            for number, attempt in enumerate(history, start=1):
                if attempt["outcome"] not in ("done", "failed", "node-unhealthy"):
                    continue
                run = self.runs.get((token_id, number, attempt["pilot"]))
                if run is None or run.code is None or (run.code == 0) != (attempt["outcome"] == "done"):
                    problems.append(f"{token_id} attempt {number}: {attempt['outcome']} without such a run")
        claims = collections.Counter((run.token, run.attempt) for run in self.runs.values())
        problems += [
            f"{token} attempt {n}: run by {count} pilots" for (token, n), count in claims.items() if count > 1
        ]
        return problems

    def newer_attempt_kept(self) -> list[str]:
        """A run of a frozen pilot whose token another pilot claimed during the freeze (the lease had
        expired) is never on the token as done or failed: the newer attempt closed it as lease-expired
        and the frozen pilot's report, when it woke, was refused as a conflict (or its task stopped as
        lease-lost). ``self.taken_in_freeze`` counts those runs, so the figure shows the check bit.

        Fails when: a report is not conditional on its lease (the local pool's report without
        ``AND lease_id = ?``, CouchDB's without the lease check before its write), so the stale pilot's
        report overwrites the newer attempt."""
        problems = []
        self.taken_in_freeze = 0
        for run in self.runs.values():
            pilot = self.by_id.get(run.pilot)
            if pilot is None or not pilot.frozen:
                continue
            history = self.history.get(run.token, [])
            for stopped, until in pilot.frozen:
                if run.start > stopped or (run.end is not None and run.end < stopped):
                    continue  # not running when the pilot was stopped
                later = [
                    a
                    for a in history[run.attempt :]
                    if a["pilot"] != run.pilot and stopped <= a["claimed"] <= until + LEASE_SLACK
                ]
                if not later:
                    continue
                self.taken_in_freeze += 1
                mine = history[run.attempt - 1] if run.attempt <= len(history) else None
                if mine is not None and mine["outcome"] in ("done", "failed"):
                    problems.append(
                        f"{run.token} attempt {run.attempt} by frozen {run.pilot}: {mine['outcome']}, "
                        "though a later attempt claimed it during the freeze"
                    )
        return problems

    def black_hole_bounded(self) -> list[str]:
        """A black-hole pilot gives tokens back uncharged; it may charge a token that failed before where
        tasks worked (that token is bad), and at most K others (failures it held when the pool ran dry),
        and sends at most K working tokens to error.

        Fails when: the breaker (agent/breaker.py) never trips, or the pilot charges the failures it
        holds when it trips (outcome FAILED instead of UNHEALTHY)."""
        k = self.args.black_hole_failures
        fresh = self.black_hole_charges(earlier=False)
        burnt: collections.Counter[str] = collections.Counter()  # working tokens sent to error, per pilot
        for token_id in self.burnt:
            charged = self.history[token_id]
            burnt.update({a["pilot"] for a in charged if a["outcome"] in CHARGED and self.black_hole(a)})
        problems = [
            f"black-hole pilot {p} charged {n} tokens that had not failed" for p, n in fresh.items() if n > k
        ]
        return problems + [
            f"black-hole pilot {p} burnt {n} working tokens" for p, n in burnt.items() if n > k
        ]

    def black_hole_charges(self, *, earlier: bool) -> collections.Counter[str]:
        """Charged failures by black-hole pilots, per pilot, of tokens that had (or had not) failed before."""
        found: collections.Counter[str] = collections.Counter()
        for history in self.history.values():
            for number, attempt in enumerate(history):
                if attempt["outcome"] in CHARGED and self.black_hole(attempt):
                    before = any(a["outcome"] in CHARGED for a in history[:number])
                    if before == earlier:
                        found[attempt["pilot"]] += 1
        return found

    def endings(self) -> list[str]:
        """Pilots exit 0, 7, or were killed (-9); no traceback in any pilot's log; the soak ended in time.

        Fails when: a pilot meets the outage with a traceback (an uncaught OSError in a claim), or its
        max_outage is shorter than the outage (exit 4)."""
        codes = codes_of(self.scenario.pilots)
        problems = [f"{n} pilot(s) exited {code}" for code, n in codes.items() if code not in EXIT_CODES]
        return problems + [f"traceback in {name}" for name in self.logs.tracebacks] + self.scenario.problems

    def black_hole(self, attempt: dict[str, Any]) -> bool:
        pilot = self.by_id.get(attempt["pilot"])
        return pilot is not None and pilot.black_hole


def codes_of(pilots: Iterable[Pilot]) -> collections.Counter[Optional[int]]:
    return collections.Counter(pilot.code for pilot in pilots)
