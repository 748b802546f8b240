"""The soak's checks: the pool's tokens at the end against the execution log (tests/soak/task.py) and
the pilots' logs. Each check returns its problems (none: it passed), or says why it does not apply to a
backend; its docstring ends with "Fails when", the change to the pilot (or to the soak) that makes it
fail, each one run that way once while the check was built.

A check that cannot fail is a defect: when you change one, make it fail once the way its note says.
"""

from __future__ import annotations

import collections
import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from backends import FEATURES, Final
from chaos import Cancel
from runlog import Run, read_runs
from scenario import CORES, LEASE, Pilot, Scenario

CHARGED = frozenset({"failed", "timeout", "not-started"})
GUARD_GRACE = 0.25  # seconds a task of a pilot killed alone may still end by itself: the guard is at work
EXIT_CODES = frozenset({0, 7, -9})  # done or drained, black hole, killed by us
KILL_GRACE = 2.0  # task.kill_grace in the soak's config
# A cancel reaches the pilot at its next renewal (every lease / 3), which TERMs the task (KILL after the
# grace); plus two seconds for this loaded machine (renewals run late) and the soak's 0.2 s look. Counted
# from the moment `tokens cancel` returned: the cancel is in the pool by then.
CANCEL_BOUND = LEASE / 3 + KILL_GRACE + 2.0
NOT_CHARGED_ERRORS = ("cancelled", "dependency ")  # reasons of tokens in error without their failures
LEASE_SLACK = 5.0  # seconds after a freeze in which another pilot's claim still counts as taken in it
LOG_LINE = re.compile(r"^\S+ (\S+) token=(\S+) (\w+) (.*)$")


# -- what the tasks and the pilots wrote -----------------------------------------------------------


@dataclass
class Logs:
    """What the pilots said: pilot ids, and events counted from their log lines."""

    tracebacks: list[str] = field(default_factory=list)
    conflicts: set[str] = field(default_factory=set)  # tokens with a report refused as a conflict
    # (pilot, token): a failure the black-hole breaker held back whose lease ran out meanwhile
    held_lost: set[tuple[str, str]] = field(default_factory=set)
    # (pilot, token): the pilot found the lease lost and stopped (or dropped the result of) its task
    lease_lost: set[tuple[str, str]] = field(default_factory=set)
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
            if "lease lost (token reset or taken by another pilot)" in message:
                logs.lease_lost.add((match.group(1), match.group(2)))
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
        self.task_killed = self.killed_alone(scenario)
        self.killed_burnt: list[str] = []  # working tokens those kills sent to error
        self.unnamed_handouts = scenario.backend.unnamed_handouts
        self.overlaps: collections.Counter[str] = collections.Counter()
        self.reports: collections.Counter[str] = collections.Counter()
        self.report_delays: list[float] = []
        self.taken_in_freeze = 0  # runs of frozen pilots whose token another pilot claimed meanwhile
        self.core_peaks: collections.Counter[int] = collections.Counter()  # cores held at a start: times
        self.dag_checked = 0
        self.children_seen = 0
        self.cancel_delays: list[float] = []
        self.open_cancelled: set[str] = set()  # cancelled while running, its pilot killed: attempt open

    def killed_alone(self, scenario: Scenario) -> list[Run]:
        """The runs SIGKILLed alone (chaos.TaskKills), found by pid and time, given the kill's end and
        code. A run that logged its end (exit 0, say) just before the kill reached it, and was reported
        failed, ended by the kill: its exit status was the kill's. The checks then hold these runs to a
        failed attempt: a pilot that reported a task killed under it as done fails "no result without its
        run", since the run's code is the kill's (not sabotaged; the first soak with task kills failed that
        check for kills that came before a task's start line, which chaos.TaskKills now waits for)."""
        killed = {kill.pid: kill.at for kill in scenario.task_kills.done}
        found = []
        for run in self.runs.values():
            at = killed.get(run.pid)
            if at is None or run.start > at or run.terminated is not None:
                continue
            if run.end is None:
                run.end, run.code = at, -signal.SIGKILL
            elif at - run.end < 1.0 and self.outcome(run) == "failed":
                run.code = -signal.SIGKILL
            else:
                continue
            found.append(run)
        return found

    def outcome(self, run: Run) -> Optional[str]:
        history = self.history.get(run.token, [])
        return history[run.attempt - 1]["outcome"] if run.attempt <= len(history) else None

    def checks(self) -> list[tuple[str, Callable[[], list[str]], Optional[str]]]:
        """(name, check, the feature it needs or None), in the order they are printed."""
        k, max_attempts = self.args.black_hole_failures, self.args.max_attempts
        return [
            (
                f"every token done once, or in error after {max_attempts} charged failures",
                self.finished,
                None,
            ),
            (
                "bad tokens in error, working ones done (unless the black hole or task kills burnt them)",
                self.modes,
                None,
            ),
            ("no token executed after it was reported done", self.nothing_after_done, None),
            ("no report lost", self.no_report_lost, None),
            ("tasks die with their pilot", self.tasks_die_with_their_pilot, None),
            ("no result without its run, no attempt run by two pilots", self.no_phantoms, None),
            ("a lease that expired in a freeze: the newer attempt kept", self.newer_attempt_kept, None),
            (f"the black hole burnt at most K = {k} tokens per pilot", self.black_hole_bounded, None),
            ("pilots exit 0, 7 or killed, no tracebacks, the soak ran to its end", self.endings, None),
            (
                f"no pilot's running tasks held more than its {CORES} cores, or two tasks one CPU",
                self.cores_held,
                "sizes",
            ),
            ("no dependent started before every dependency ended done", self.dependencies_first, "after"),
            ("every task that succeeded added its children exactly once", self.children_once, "children"),
            (
                f"every cancelled token's processes gone within {CANCEL_BOUND:.1f}s, never run again",
                self.cancels_heeded,
                "cancel",
            ),
        ]

    def check(self) -> None:
        backend = self.scenario.backend
        for name, check, feature in self.checks():
            if feature is not None and feature not in self.scenario.features:
                why = backend.missing.get(feature) or f"not in this pilot.pyz (no agent/{FEATURES[feature]})"
                self.results.append(Outcome(name, [], why))
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
        max_attempts charged failures; every attempt on every token is closed. ToPoS too: its pilots
        count the charged failures from the records of earlier hand-outs, not the lease count.

        Fails when: the report of a success leaves the token locked, or a failure is not charged
        (next_state returning failures unchanged for FAILED); or CouchDB's report stops appending to the
        PiCaS error list; or a report that meets a cancel sets the token done (the cancel's PiCaS entry
        on a done token: `long-20` before the cancel won)."""
        problems = []
        for token_id, final in sorted(self.finals.items()):
            outcomes = [attempt["outcome"] for attempt in final.attempts]
            charged = sum(outcome in CHARGED for outcome in outcomes)
            open_cancelled = (
                final.reason == "cancelled" and outcomes[-1:] == [None] and self.died_holding(final)
            )
            if None in outcomes and not open_cancelled:
                problems.append(f"{token_id}: an attempt was never closed: {outcomes}")
            if final.state == "done" and (outcomes.count("done") != 1 or outcomes[-1] != "done"):
                problems.append(f"{token_id}: done, but its attempts are {outcomes}")
            elif final.state == "error" and final.reason.startswith(NOT_CHARGED_ERRORS):
                pass  # cancelled, or a dependency failed: the DAG and cancel checks look at those
            elif final.state == "error" and not charged == final.failures == self.args.max_attempts:
                problems.append(f"{token_id}: error after {charged} charged failures: {outcomes}")
            elif final.state not in ("done", "error"):
                problems.append(f"{token_id}: still {final.state}")
            picas_errors = final.extra.get("picas_errors")
            charged += final.state == "error" and final.reason.startswith(NOT_CHARGED_ERRORS)  # its entry
            if picas_errors is not None and picas_errors != charged:
                problems.append(f"{token_id}: {charged} charged failures, {picas_errors} PiCaS error entries")
        return problems

    def died_holding(self, final: Final) -> bool:
        """Its last attempt's pilot was killed: a cancelled token keeps that attempt open (nobody claims
        an error token to close it as lease-expired); counted in the figures."""
        pilot = self.by_id.get(final.attempts[-1]["pilot"]) if final.attempts else None
        if pilot is not None and pilot.killed:
            self.open_cancelled.add(final.id)
            return True
        return False

    def modes(self) -> list[str]:
        """Bad tokens end in error; ok and flaky ones done, unless the black hole charged them or a run
        of theirs was SIGKILLed alone (a charged failure, as on a real node).

        Fails when: task.py's flaky tokens fail every attempt (the retry never works), or max_attempts
        in the soak's config is 1 (flaky tokens go to error)."""
        problems = []
        for token_id, final in sorted(self.finals.items()):
            mode, state = final.fields["mode"], final.state
            if mode == "bad" and state != "error" and not final.reason.startswith(NOT_CHARGED_ERRORS):
                problems.append(f"{token_id}: bad, but {state}")
            elif final.reason.startswith(NOT_CHARGED_ERRORS):
                continue  # the DAG and cancel checks look at those
            elif mode != "bad" and state == "error":
                charged = [a for a in final.attempts if a["outcome"] in CHARGED]
                if any(self.black_hole(attempt) for attempt in charged):
                    self.burnt.append(token_id)
                elif any(run.token == token_id for run in self.task_killed):
                    self.killed_burnt.append(token_id)  # a flaky token killed at its last attempts
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
        pilot logs it: renewals failed through the outage), or the run ended while its pilot could not
        reach the pool (blocked on the local pool's lock, or frozen) until the lease had run out and the
        token was claimed again (the pilot logs "lease lost"), or the report (from a journal, after the
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
            unnamed = self.unnamed_handouts and attempt is not None and attempt["pilot"] == "?"
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
            elif outcome == "cancelled" and self.cancelled(run.token):
                self.reports["stopped or discarded by a cancel"] += 1
            elif outcome == "lease-lost":
                self.reports["stopped by their pilot: lease lost"] += 1
            elif outcome == "lease-expired" and (run.pilot, run.token) in self.logs.lease_lost:
                # ended, but before its pilot could report (blocked on the pool through the outage, or
                # frozen) the lease ran out and the token was claimed again: the pilot logs it, lost
                self.reports[
                    "ended while the pool was out of reach; the lease ran out before the report"
                ] += 1
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
        report overwrites the newer attempt (run while building: ``AND (lease_id = ? OR 1)``)."""
        problems = []
        self.taken_in_freeze = 0
        runs_of: dict[str, list[Run]] = collections.defaultdict(list)
        for run in self.runs.values():
            runs_of[run.token].append(run)
        for run in self.runs.values():
            pilot = self.by_id.get(run.pilot)
            if pilot is None or not pilot.frozen:
                continue
            history = self.history.get(run.token, [])
            for stopped, until in pilot.frozen:
                if run.start > stopped or (run.end is not None and run.end < stopped):
                    continue  # not running when the pilot was stopped
                later = [  # from the execution log: a report over them may have erased them from history
                    other
                    for other in runs_of[run.token]
                    if other.attempt > run.attempt
                    and other.pilot != run.pilot
                    and stopped <= other.start <= until + LEASE_SLACK
                ]
                if not later:
                    continue
                self.taken_in_freeze += 1
                mine = history[run.attempt - 1] if run.attempt <= len(history) else None
                # A report sent before the stop is fine (it closed the attempt before the next claim);
                # one of a run the pilot saw end only after it woke came after the newer claim.
                late = mine is not None and (mine.get("ended") or 0) > stopped
                if mine is not None and mine["outcome"] in ("done", "failed") and late:
                    problems.append(
                        f"{run.token} attempt {run.attempt} by frozen {run.pilot}: {mine['outcome']}, "
                        "though a later attempt claimed it during the freeze"
                    )
        return problems

    def black_hole_bounded(self) -> list[str]:
        """A black-hole pilot gives tokens back uncharged; it may charge a token that failed before where
        tasks worked (that token is bad), and at most K others (failures it held when the pool ran dry),
        and sends at most K working tokens to error. ToPoS too, since its pilots take only the charged
        failures of earlier hand-outs (their records) for failures, not the lease count.

        Fails when: the breaker (agent/breaker.py) never trips, or the pilot charges the failures it
        holds when it trips (outcome FAILED instead of UNHEALTHY); on ToPoS, when a token's failures
        come from its lease count again (a black-hole pilot then charges tokens only handed out before)."""
        k = self.args.black_hole_failures
        fresh = self.black_hole_charges(earlier=False)
        burnt: collections.Counter[str] = collections.Counter()  # working tokens sent to error, per pilot
        for token_id in self.burnt:
            history = self.history[token_id]
            burnt.update({a["pilot"] for a in history if a["outcome"] in CHARGED and self.black_hole(a)})
        problems = [
            f"black-hole pilot {p} charged {n} tokens that had not failed" for p, n in fresh.items() if n > k
        ]
        problems += [f"black-hole pilot {p} burnt {n} working tokens" for p, n in burnt.items() if n > k]
        return problems

    def black_hole_charges(self, *, earlier: bool) -> collections.Counter[str]:
        """Charged failures by black-hole pilots, per pilot, of tokens that had (or had not) failed
        before."""
        found: collections.Counter[str] = collections.Counter()
        for history in self.history.values():
            for number, attempt in enumerate(history):
                if attempt["outcome"] in CHARGED and self.black_hole(attempt):
                    before = any(a["outcome"] in CHARGED for a in history[:number])
                    if before == earlier:
                        found[attempt["pilot"]] += 1
        return found

    def run_end(self, run: Run) -> Optional[float]:
        """When a run ended: by itself, by its pilot's SIGTERM, or with its node; None when unknown."""
        if run.end is not None or run.terminated is not None:
            return run.end if run.end is not None else run.terminated
        pilot = self.by_id.get(run.pilot)
        return pilot.ended if pilot is not None and pilot.killed == "node" else None

    def cores_held(self) -> list[str]:
        """At no instant did a pilot's running tasks hold more than its CORES declared cores, or two of
        them one CPU ($PILOT_CPUS), and every task got the cores its token asked for. Each run's span is
        from its own S to E (or T) line, inside the span the pilot holds its cores: no false overlap.
        A run whose end is unknown (a task killed with SIGKILL alone) counts until its pilot ended.

        Fails when: claims ignore the token's request (Book.fit not passed to the pool, so a pilot takes
        tokens as if each were one core), or Book.release frees a task's CPUs before it is reaped. Run
        while building: Book.grant without ``del self.free_cpus[:take]`` held up to 13 cores at once,
        tasks of 2 and 3 cores on CPU 0 alone."""
        problems = []
        by_pilot: dict[str, list[Run]] = collections.defaultdict(list)
        for run in self.runs.values():
            if run.cores is not None:
                by_pilot[run.pilot].append(run)
            asked = self.finals.get(run.token)
            wanted = asked.fields.get("cores", 1) if asked else None
            if run.cores is not None and wanted is not None and run.cores != wanted:
                problems.append(f"{run.token} run {run.attempt}: {run.cores} cores, asked {wanted}")
            if run.cpus is not None and run.cores is not None and len(run.cpus) != run.cores:
                problems.append(
                    f"{run.token} run {run.attempt}: {run.cores} cores on CPUs {sorted(run.cpus)}"
                )
        self.core_peaks: collections.Counter[int] = collections.Counter()
        for pilot_id, runs in by_pilot.items():
            pilot = self.by_id.get(pilot_id)
            last = pilot.ended if pilot is not None and pilot.ended else float("inf")
            spans = sorted((run.start, self.run_end(run) or last, run) for run in runs)
            active: list[tuple[float, Run]] = []
            for start, end, run in spans:
                active = [(e, r) for e, r in active if e > start]
                held = sum(r.cores or 0 for _, r in active) + (run.cores or 0)
                self.core_peaks[held] += 1
                if held > CORES:
                    problems.append(f"{pilot_id}: {held} cores held when {run.token} started")
                for _, other in active:
                    shared = (run.cpus or frozenset()) & (other.cpus or frozenset())
                    if shared:
                        problems.append(
                            f"{pilot_id}: {run.token} and {other.token} both on CPUs {sorted(shared)}"
                        )
                active.append((end, run))
        return problems

    def dependencies_first(self) -> list[str]:
        """No run of a token with `after` started before every token it names ended done (the done
        attempt's end, as its pilot saw the task exit); a token whose dependency ended in error never
        ran, and is in error naming a dependency.

        Fails when: `after` is not kept at add (tokens add dropping it: every merge is claimable at
        once), or CouchDB releases the dependents in the report's own _bulk_docs (a report that then
        conflicts leaves them running before their dependency is done). Run while building: the local
        pool's _insert writing ``waiting = 0``: 59 problems, maps started before their split ended,
        merges before their maps."""
        problems = []
        self.dag_checked = 0
        runs_of: dict[str, list[Run]] = collections.defaultdict(list)
        for run in self.runs.values():
            runs_of[run.token].append(run)
        for token_id, final in sorted(self.finals.items()):
            after = final.fields.get("after") or []
            if not after:
                continue
            self.dag_checked += 1
            ends = []
            for dep in after:
                other = self.finals.get(dep)
                done = other is not None and other.state == "done" and other.attempts
                ends.append(other.attempts[-1]["ended"] if done else None)
            for run in runs_of[token_id]:
                if None in ends:
                    problems.append(f"{token_id} run {run.attempt}: started though a dependency is not done")
                elif run.start < max(ends):
                    late = max(ends) - run.start
                    problems.append(
                        f"{token_id} run {run.attempt}: started {late:.2f}s before a dependency ended"
                    )
            if None in ends and not (final.state == "error" and final.reason.startswith(NOT_CHARGED_ERRORS)):
                problems.append(
                    f"{token_id}: a dependency did not end done, yet {final.state} ({final.reason!r})"
                )
        return problems

    def children_once(self) -> list[str]:
        """Every parent that ended done has exactly its `children` child tokens (fields.parent names it,
        ids <parent>.<line>), and a parent that did not end done has none; each child ran like any token.

        Fails when: children.py names children with a fresh uuid instead of <token id>.<line> (a report
        sent twice, replayed from a journal after the outage, adds them twice), or the pilot adds the
        children of a task that failed. Run while building: children.read returning each child twice,
        the copy under a fresh suffix: every done parent had 10 children."""
        problems = []
        kids: dict[str, list[str]] = collections.defaultdict(list)
        for token_id, final in self.finals.items():
            parent = final.fields.get("parent")
            if parent:
                kids[str(parent)].append(token_id)
        self.children_seen = sum(len(v) for v in kids.values())
        for token_id, final in sorted(self.finals.items()):
            wanted = final.fields.get("children")
            if not wanted:
                continue
            found = sorted(kids.get(token_id, []))
            if final.state == "done":
                expected = sorted(f"{token_id}.{line}" for line in range(1, int(wanted) + 1))
                if found != expected:
                    problems.append(f"{token_id}: done with children {found}, expected {expected}")
            elif found:
                problems.append(f"{token_id}: {final.state}, yet children {found}")
        return problems

    def cancels_heeded(self) -> list[str]:
        """Every token cancelled is in error as cancelled, or done by a run that ended before the cancel
        was in the pool (a report that won the race), or in error because a dependency had failed; a
        run of it that was running is gone (its process group) within CANCEL_BOUND, besides the time its
        pilot spent frozen; no attempt of it is claimed once `tokens cancel` has returned.

        Fails when: the pilot ignores Renewal.cancelled (the task runs to its end), or the pool's cancel
        leaves a waiting token claimable, or a report that meets the cancel overwrites it (done, or back
        to todo). Run while building: the pilot's renewal skipping ``renewal.cancelled``: a long task
        gone 13.9 s after the cancel."""
        problems = []
        cancels = self.scenario.cancels
        self.cancel_delays: list[float] = []
        for round_ in cancels.rounds if cancels else []:
            problems += self.cancel_round(round_)
        return problems

    def cancel_round(self, round_: Cancel) -> list[str]:
        problems = []
        for token_id in round_.running + round_.waiting:
            final = self.finals.get(token_id)
            if final is None:
                problems.append(f"{token_id}: cancelled, and gone from the pool")
                continue
            # A run that ended before the cancel may be done, or in error after its last charged
            # failure (its report won the race; a report after the cancel leaves it cancelled); a token
            # whose dependency had failed before stays in error for that; nothing is claimed after.
            last_ended = (final.attempts[-1]["ended"] or 0) if final.attempts else 0
            ended_before = final.state in ("done", "error") and 0 < last_ended <= round_.at
            failed_before = final.state == "error" and self.dependency_failed_by(final, round_.at)
            cancelled = final.state == "error" and final.reason == "cancelled"
            if not (cancelled or ended_before or failed_before):
                problems.append(f"{token_id}: cancelled, but {final.state} ({final.reason!r})")
            for number, attempt in enumerate(final.attempts, start=1):
                if attempt["claimed"] > round_.at:
                    problems.append(f"{token_id}: attempt {number} claimed after the cancel")
            if cancelled and final.attempts and final.attempts[-1]["outcome"] is None:
                self.open_cancelled.add(token_id)
        for run in self.runs.values():  # running when the cancel was in: stopped within the bound
            history = self.history.get(run.token, [])
            claimed = history[run.attempt - 1]["claimed"] if run.attempt <= len(history) else run.start
            if run.token not in round_.running + round_.waiting or claimed > round_.at:
                continue
            end = self.run_end(run)
            if end is not None and end > round_.at + CANCEL_BOUND and run.pid not in round_.pids:
                problems.append(
                    f"{run.token} run {run.attempt}: ran on {end - round_.at:.1f}s after the cancel"
                )
        for pid, token_id in round_.pids.items():
            gone = round_.gone.get(pid)
            if gone is None:
                problems.append(f"{token_id}: task {pid} still there at the end")
                continue
            self.cancel_delays.append(gone - round_.at)
            stopped = self.frozen_during(pid, round_.at, gone)
            if gone - round_.at - stopped > CANCEL_BOUND:
                frozen = f" ({stopped:.1f}s of it with its pilot frozen)" if stopped else ""
                late = f"{gone - round_.at:.1f}s after the cancel{frozen}"
                problems.append(f"{token_id}: task {pid} gone {late}")
        return problems

    def frozen_during(self, pid: int, start: float, end: float) -> float:
        """Seconds between ``start`` and ``end`` that the pilot of the task ``pid`` spent stopped (SIGSTOP):
        it could neither hear of a cancel nor reap its task then. A cancel that came just before a freeze
        was heeded 1.2 s after the pilot woke, 16.4 s after the cancel (a soak of 5071ba4)."""
        for run in self.runs.values():
            pilot = self.by_id.get(run.pilot) if run.pid == pid else None
            if pilot is not None:
                return sum(max(0.0, min(end, until) - max(start, since)) for since, until in pilot.frozen)
        return 0.0

    def cancelled(self, token_id: str) -> bool:
        rounds = self.scenario.cancels.rounds if self.scenario.cancels else []
        return any(token_id in r.running + r.waiting for r in rounds)

    def dependency_failed_by(self, final: Final, when: float) -> bool:
        """In error because a dependency failed, and that one ended in error by ``when``."""
        if not final.reason.startswith("dependency "):
            return False
        dep = self.finals.get(final.reason.split()[1])
        if dep is None or dep.state != "error":
            return False
        ended = [a.get("ended") or 0 for a in dep.attempts]
        return (
            dep.reason == "cancelled"
            or dep.reason.startswith("dependency ")
            or max(ended, default=0) <= when + 1
        )

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
