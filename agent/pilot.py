"""The pilot's loop: claim, run, report, until the pool is empty, the walltime is near, or a signal says stop.

One thread, no locks. The loop sleeps in ``Signals.wait`` and wakes when a task exits (SIGCHLD), a signal
arrives, or a timer is due (a task's timeout, a lease renewal, the next look at an empty pool).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Callable, Optional

from agent import children, runner, template
from agent import leases as keeping
from agent.breaker import BLACK_HOLE_HINT, Breaker
from agent.config import Config
from agent.errors import CERTIFICATE_FAILED, ExitCode, PilotError, ServerUnreachable
from agent.guard import Guard
from agent.identity import Identity
from agent.idle import Idle
from agent.journal import Journal
from agent.leases import Act, Holder
from agent.memory import MemoryWatch
from agent.outage import OUTAGE_HINT, Outage, first_claim_delay
from agent.pools import Lease, Pool, Renewal, Saved
from agent.reporter import Reporter
from agent.resources import Book, Fit, Node, detect, probe_interval
from agent.runner import Stop
from agent.signals import Signals
from agent.tasks import Running, Tasks
from agent.token import NewToken, Outcome, Report, Result, State, make_report
from agent.units import format_duration
from agent.walltime import TOKEN_ESTIMATE, Walltime, token_estimate

log = logging.getLogger(__name__)

Children = tuple[NewToken, ...]  # tokens a task added, sent with its report
EMPTY_POLL = 10.0  # at most this many seconds between looks at a pool that had nothing to claim
MAX_SLEEP = 60.0


@dataclass(frozen=True)
class Ending:
    """Why the pilot stopped, and its exit code."""

    code: ExitCode
    reason: str


@dataclass
class Suspect:
    """A failure held back while the breaker decides whether the token or the node is to blame."""

    lease: Lease
    result: Result
    folder: str


@dataclass
class Tally:
    done: int = 0
    failed: int = 0
    given_back: int = 0
    conflicts: int = 0
    cancelled: int = 0

    def __str__(self) -> str:
        text = f"{self.done} done, {self.failed} failed, {self.given_back} given back"
        text += f", {self.cancelled} cancelled" if self.cancelled else ""
        return text + (f", {self.conflicts} conflicts" if self.conflicts else "")


class Pilot:
    def __init__(
        self,
        config: Config,
        pool: Pool,
        identity: Identity,
        walltime: Walltime,
        *,
        environ: Mapping[str, str],
        cache_paths: Mapping[str, str],
        signals: Optional[Signals] = None,
        guard: Optional[Guard] = None,
        node: Optional[Node] = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.pool = pool
        self.identity = identity
        self.walltime = walltime
        self.cache_paths = dict(cache_paths)
        self.signals = signals or Signals()
        self.guard = guard  # kills the tasks if this process dies without stopping them
        self.clock = clock
        self.wallclock = wallclock
        self.folder = config.pilot.workdir / identity.pilot_id
        self.config_dir = str(config.path.resolve().parent)
        # What every task's environment starts from; the token's fields are added per task.
        self.base_env = {
            **environ,
            **config.task.env,
            "PILOT_ID": identity.pilot_id,
            "PILOT_CONFIG_DIR": self.config_dir,
        }
        pilot = config.pilot
        self.tasks = Tasks(self.folder, pilot.keep_workdirs, pilot.slots, pilot.kill_leftovers_after)
        self.running = self.tasks.running  # token id: Running
        self.claimed_early: list[Lease] = []  # claimed with a report, not started yet
        # Which task holds which cores, GPUs and memory, and what a claim may take (resources.py).
        node = node or detect(pilot.node, environ, slots=pilot.slots)
        self.book = Book(node, config.task.request, pilot.slots)
        self.claim_fit: Optional[Fit] = None  # what the claims about to be made may take
        self.short_fit: Optional[Fit] = None  # what the last claim that came back short could take
        self.next_probe = 0.0  # when to look for a token bigger than what is free (see _probe)
        self.memory_watch = MemoryWatch(config.task.enforce_memory)
        self.outage = Outage(config.server.max_outage)
        self.journal = Journal(config.pilot.workdir / "journal", identity.pilot_id)
        self.reporter = Reporter(pool, self.journal, self.outage, clock, self._children_refused)
        self.breaker = Breaker(config.pilot.black_hole_failures, config.pilot.black_hole_window)
        self.suspects: dict[str, Suspect] = {}
        self.black_hole = ""  # why the breaker tripped, once it has
        self.black_hole_hint = ""  # what to do about it, for the last line
        self.tally = Tally()
        self.claimed = 0
        self.draining: Optional[str] = None
        self.stopping: Optional[Ending] = None
        self.killed = False
        self.idle = Idle(config.pilot.idle_timeout)  # when a pilot with nothing to do stops
        # A dead pilot's token comes back after one lease: look again at least twice per lease.
        self.empty_poll = min(EMPTY_POLL, config.server.lease / 2)
        self.next_claim = clock() + first_claim_delay(config.pilot.start_jitter)
        self.renewals = keeping.Schedule.for_lease(config.server.lease)

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> Ending:
        self._announce()
        self.reporter.adopt_orphans(self._count)  # results a dead pilot on this node could not send
        with self.signals:
            try:
                while True:
                    self._heed_signals()
                    self._heed_server()
                    for lease in self._claim():
                        if self._fits(lease):
                            self._run(lease)
                    ending = self._ending()
                    if ending is not None:
                        return ending
                    self.signals.wait(self._sleep_time())
                    self._heed_signals()  # before reaping: a task killed along with us is interrupted
                    self._report_all(self._finished())
                    if self.memory_watch.enabled:  # most pilots: not even the list of tasks
                        self.memory_watch.enforce(self.clock(), [task.payload for task in self.tasks])
                    if self.guard is not None:
                        self.guard.check()
                    self._heed_suspects()
                    self._keep_leases()
                    self.tasks.sweep(self.clock())
            finally:
                self._abandon()
                self.tasks.sweep(self.clock(), final=True)
                self.journal.close()
                self.tasks.tidy_pilot_folder()
                log.info("tasks: %s", self.tally)

    # -- claim -------------------------------------------------------------------------------------

    def _claim(self) -> list[Lease]:
        held = self.book.held
        if held is not None and self.book.take_held(held.item.token.id) is not None:
            self.claimed_early.append(held.item)  # the token waiting for room has it now: first
        if self.claimed_early:
            return self._early_claims()
        wanted = self._claims_wanted()
        if not wanted:
            return []
        leases = self._probe(wanted)
        return leases + self._claim_from_pool(wanted, self.claim_fit)

    def _claim_from_pool(self, wanted: int, fit: Optional[Fit]) -> list[Lease]:
        try:
            leases = self.pool.claim(wanted, fit)
        except ServerUnreachable as err:
            self.reporter.unreachable(err)
            return []
        self.reporter.reachable()
        self._claimed(wanted, leases)
        return self._placed(leases)

    def _probe(self, wanted: int) -> list[Lease]:
        """Now and then, while tasks run and some cores are free, claim a token that fits the node but not
        what is free: it is held until it fits, so claims of what fits now do not pass it over for ever.
        Called where a claim is about to be made (walltime, max_tasks and the like allow one)."""
        now = self.clock()
        fit = self.book.probe_fit(now, self._patience()) if now >= self.next_probe else None
        max_tasks = self.config.pilot.max_tasks
        if fit is None or (max_tasks and self.claimed + wanted >= max_tasks):
            return []
        self.next_probe = now + probe_interval(self._patience())
        try:
            leases = self.pool.claim(1, fit)
        except ServerUnreachable as err:
            self.reporter.unreachable(err)
            return []
        self.claimed += len(leases)
        return self._placed(leases)

    def _placed(self, leases: list[Lease]) -> list[Lease]:
        """Claimed tokens that got their cores, GPUs and memory; the others are held or given back."""
        ready = []
        for lease in leases:
            token = lease.token
            if self._here(token.id):
                self._give_back_again(lease)
                continue
            placed = self.book.place(token.id, token.fields, lease, self.clock())
            if placed.grant is not None:
                ready.append(lease)
            elif placed.charged:
                folder = self.tasks.folder_for(token.id, len(token.attempts))
                now = self.wallclock()
                self._report_now(lease, Result(Outcome.NOT_STARTED, placed.reason, now, now), folder)
            elif placed.reason:
                self._give_back(lease, placed.reason)
            elif log.isEnabledFor(logging.INFO):
                log.info("held until it fits: %s", placed.request, extra={"token": token.id})
        return ready

    def _here(self, token_id: str) -> bool:
        """The token runs, waits for room or is held by the breaker on this pilot already."""
        held = self.book.held
        waiting = held.item.token.id if held is not None else None
        found = keeping.holder_of(token_id, waiting=waiting, suspects=self.suspects, running=self.book.grants)
        return found is not None

    def _give_back_again(self, lease: Lease) -> None:
        """A claim handed out again a token this pilot has (its lease ran out while the pilot was stopped,
        and nobody else took it): one run at a time. The new lease goes back uncharged, which ends the
        old one: its report is refused and its next renewal stops its task. The book is left alone, as
        its grant is the first run's."""
        self._unstarted(lease, Outcome.INTERRUPTED, keeping.CLAIMED_AGAIN)

    def _patience(self) -> float:
        """How long a held token lets smaller ones start beside it: one expected task duration."""
        return self.walltime.estimator.expected()

    def _claims_stopped(self) -> bool:
        return bool(self.stopping or self.draining or self.breaker.tripped or len(self.journal))

    def _early_claims(self) -> list[Lease]:
        """Tokens claimed along with the last reports. They passed max_tasks and the walltime when claimed;
        a stop, a drain signal or a tripped breaker since then gives them back unstarted."""
        if self.stopping is None and self.signals.drain_signal is None and not self.breaker.tripped:
            leases, self.claimed_early = self.claimed_early, []
            return leases
        self._give_back_early("not started: the pilot stopped claiming")
        return []

    def _give_back_early(self, reason: str) -> None:
        leases, self.claimed_early = self.claimed_early, []
        held = self.book.drop_held()
        for lease in [*leases, *([held] if held is not None else [])]:
            self._give_back(lease, reason)

    def _claimed(self, wanted: int, leases: list[Lease]) -> None:
        now = self.clock()
        self.claimed += len(leases)
        if len(leases) < wanted:
            self.next_claim = now + self.empty_poll
            # Room was left that nothing in the pool fits: claim again before empty_poll only when
            # more than that is free.
            fit = self.claim_fit
            self.short_fit = None if fit is None else fit.after([lease.token.fields for lease in leases])
            if not leases and not self.running and not self.book.grants:
                self._note_idle(now)
                self.next_claim = now + self.idle.next_look(self.empty_poll)
        if leases:
            self.idle.busy()
            if not self.running:
                self.renewals = self.renewals.after(now)

    def _note_idle(self, now: float) -> None:
        """Nothing to claim and nothing running: what is left in the pool, for ``Idle.ending``."""
        self.idle.began(now)
        if self.idle.left_behind is None:
            self._note_left_behind()
        if not self.idle.waits:
            return
        try:
            elsewhere = self.pool.locked_left() - len(self.suspects)  # ours are not elsewhere
            self.idle.locked_elsewhere = elsewhere
        except ServerUnreachable as err:
            self.reporter.unreachable(err)

    def _note_left_behind(self) -> None:
        """Idle with everything free: the todo tokens left are ones no claim of this pilot can take."""
        try:
            self.idle.left_behind = self.pool.todo_left()
        except ServerUnreachable as err:
            self.reporter.unreachable(err)
            return
        if self.idle.left_behind:
            log.warning(
                "%d todo token(s) left for a bigger node: none fits this one (%s)",
                self.idle.left_behind,
                self.book.node,
            )

    def _claims_wanted(self) -> int:
        """How many tokens to claim now: what fits in the free cores (see Book.fit), unless draining,
        stopping, or the pool was just empty. Sets ``claim_fit``, what they may take."""
        if self._claims_stopped():
            return 0  # a journal to send means the server was away: results first, then new work
        self.claim_fit = self.book.fit(self.clock(), self._patience())
        free = 0 if self.claim_fit is None else self.claim_fit.tasks
        max_tasks = self.config.pilot.max_tasks
        if max_tasks:
            if self.claimed >= max_tasks:
                self._drain(f"max_tasks ({max_tasks}) reached")
                return 0
            free = min(free, max_tasks - self.claimed)
        now = self.clock()
        # Fewer than wanted means nothing more fits now; what is freed since may fit what did not.
        waiting = now < self.next_claim and not (self.claim_fit and self.claim_fit.exceeds(self.short_fit))
        if free <= 0 or waiting or not self.outage.may_try(now):
            return 0
        verdict = self.walltime.verdict(now)
        if verdict is not None:
            self._drain(verdict)
            return 0
        return free

    # -- walltime: a token's own estimate -----------------------------------------------------------

    def _fits(self, lease: Lease) -> bool:
        """False for a token whose own estimate (field ``expected_duration``), else what tasks of its size
        took here, does not fit before the job's end: it goes back to todo uncharged, for a pilot with
        more time, and this pilot drains."""
        token = lease.token
        try:
            estimate = token_estimate(token.fields)
        except ValueError as err:
            log.warning("ignoring the token's %s: %s", TOKEN_ESTIMATE, err, extra={"token": token.id})
            return True
        basis = TOKEN_ESTIMATE
        if estimate is None:  # tasks of its size may have been measured
            estimate, basis = self.walltime.size_estimate(len(self.book.grants[token.id].cpus)) or (None, "")
        verdict = None if estimate is None else self.walltime.verdict(self.clock(), estimate, basis)
        if verdict is None:
            return True
        self._give_back(lease, f"not started: {verdict}")
        self._drain(verdict)
        return False

    def _give_back(self, lease: Lease, reason: str) -> None:
        """A claimed token this pilot will not start: back to todo, not charged."""
        self.book.release(lease.token.id)
        self._unstarted(lease, Outcome.INTERRUPTED, reason)

    def _unstarted(self, lease: Lease, outcome: Outcome, reason: str) -> None:
        """Report the attempt of a claimed token whose task never started."""
        folder = self.tasks.folder_for(lease.token.id, len(lease.token.attempts))
        self._deliver(lease, Result(outcome, reason, None, self.wallclock()), folder)

    # -- run ---------------------------------------------------------------------------------------

    def _run(self, lease: Lease) -> None:
        token = lease.token
        grant = self.book.grants[token.id]
        attempt_number = len(token.attempts)
        folder = self.tasks.folder_for(token.id, attempt_number)
        texts = template.field_texts(token.fields)
        values = template.token_values(token.id, token.fields, self.cache_paths, texts)
        values.update({"pilot.config_dir": self.config_dir, "pilot.task_dir": folder})
        try:
            argv = [template.render(word, values) for word in self.config.task.command]
        except (template.MissingField, template.UnsafeValue) as err:
            self.book.release(token.id)
            now = self.wallclock()
            self._report_now(lease, Result(Outcome.NOT_STARTED, str(err), now, now), folder)
            return
        env = {
            **self.base_env,
            **template.task_environment(token.id, token.fields, self.cache_paths, texts),
            "PILOT_TASK_DIR": folder,
            children.ENV: children.path_in(folder),
            **grant.environment(self.config.task.env),
        }
        if self.guard is not None:
            self.guard.start()  # once, before the first task: a pilot with nothing to do never needs one
        fresh = self._still_ours([lease])  # the last look before it starts: stopped since the claim?
        if not fresh:
            return
        lease = fresh[0]
        started = runner.start(
            token_id=token.id,
            argv=argv,
            env=env,
            folder=folder,
            timeout=self.config.task.timeout,
            kill_grace=self.config.task.kill_grace,
            clock=self.clock,
            wallclock=self.wallclock,
            spare=self.tasks.spare_for(),
            cpus=grant.cpus if self.book.node.bind else None,
            cores=len(grant.cpus),
            memory=grant.memory,
        )
        if isinstance(started, Result):
            self.book.release(token.id)
            self._report_now(lease, started, folder)
            return
        self.tasks.add(Running(lease, started))
        if log.isEnabledFor(logging.INFO):
            log.info("started (attempt %d): %s", attempt_number, " ".join(argv), extra={"token": token.id})

    def _still_ours(self, leases: list[Lease]) -> list[Lease]:
        """The leases whose tasks may start. One with less than a third of it left was claimed, held or
        waiting to start when the pilot stopped (SIGSTOP, a stalled machine) or the server went away, and
        may have run out while another pilot ran its token: renewed first; lost, cancelled or not renewed,
        its task does not start."""
        now = self.wallclock()
        lapsing = keeping.lapsing_leases(leases, now, self.config.server.lease)
        if not lapsing:
            return leases
        try:
            renewal: Optional[Renewal] = self.pool.renew(lapsing)
        except ServerUnreachable as err:
            self.reporter.unreachable(err)
            renewal = None
        start = keeping.start_check(leases, lapsing, renewal)
        for lease in start.lost:
            self.book.release(lease.token.id)
            log.warning(keeping.NOT_STARTED, extra={"token": lease.token.id})
        for lease in start.cancelled:
            self.book.release(lease.token.id)
            self._unstarted(lease, Outcome.CANCELLED, Outcome.CANCELLED.value)
        return start.startable

    def _finished(self) -> list[tuple[Running, Result]]:
        done = self.tasks.finished(self.clock(), self.config.task.log_tail, self.wallclock)
        if done and not self.running:
            self.next_claim = 0.0  # idle now: look at the pool again before deciding it is empty
        return done

    # -- report ------------------------------------------------------------------------------------

    def _report_all(self, finished: list[tuple[Running, Result]]) -> None:
        """The tasks that ended since the last turn, reported in one write where the pool can: one commit
        for all, not one each (their successors start after it, in the next claim step)."""
        with self.pool.batch() if len(finished) > 1 else contextlib.nullcontext():
            for running, result in finished:
                self._report(running, result)

    def _report(self, running: Running, result: Result) -> None:
        """A task ended: report it with the tokens it added; claim its successor in the same round trip."""
        self.book.release(running.lease.token.id)
        result, new = children.collect(result, running.payload.folder, running.lease.token)
        self._report_now(running.lease, result, running.payload.folder, claim=True, new=new)

    def _report_now(
        self, lease: Lease, result: Result, folder: str, *, claim: bool = False, new: Children = ()
    ) -> None:
        """Report, except a failure while the black-hole breaker cannot yet tell whether the token or the
        node is at fault: that one is held (its lease kept) until a success or the window says token."""
        # A token that already failed (charged) where tasks worked is at fault itself, not this node: its
        # failure is charged now and neither trips nor resets the breaker. Else the last tokens of a pool,
        # the bad ones, trip every working node and are given back uncharged forever.
        if result.outcome.charged and self.breaker.limit and not lease.token.failures:
            if not self.breaker.tripped:
                self.suspects[lease.token.id] = Suspect(lease, result, folder)
                if self.breaker.failure(lease.token.id, self.clock()):
                    self._trip()
                return
            result = self._absolved(result)
        elif result.outcome is Outcome.DONE:
            self._release_suspects(self.breaker.success())
        self._deliver(lease, result, folder, claim=claim, new=new)

    def _deliver(
        self, lease: Lease, result: Result, folder: str, *, claim: bool = False, new: Children = ()
    ) -> None:
        report = make_report(lease.token, result, self.config.task.max_attempts, new)
        wanted = self._claims_wanted() if claim else 0
        if wanted:
            self.claimed_early += self._probe(wanted)
            self.claim_fit = self.book.fit(self.clock(), self._patience())  # what the held one leaves
        report, (saved, leases) = self.reporter.refusing(
            lease, report, lambda sent: self.reporter.send(lease, sent, wanted, self.claim_fit)
        )
        if saved is not None:
            self._count(lease, report, saved)
        if wanted and saved is not None and leases is not None:  # None: the claim met an outage
            self._claimed(wanted, leases)
            self.claimed_early += self._placed(leases)  # started by the loop's next claim step
        if result.outcome in (Outcome.DONE, Outcome.FAILED) and result.duration is not None:
            self.walltime.record(result.duration, result.cores)
        self.tasks.tidy_folder(folder, report)

    def _children_refused(self, lease: Lease, report: Report, err: PilotError) -> Report:
        return children.refused(lease.token, report, err, self.config.task.max_attempts)

    # -- black holes -------------------------------------------------------------------------------

    def _trip(self) -> None:
        needed, window = self.breaker.needed, format_duration(self.breaker.window)
        self.black_hole = (
            f"black hole: {needed} different tokens failed in a row within {window} on this node; "
            "their tokens were given back uncharged"
        )
        log.error("%s; no more claims", self.black_hole)
        first = next(iter(self.suspects), None)
        if first is not None:  # said once, at the end: what the user does about it
            self.black_hole_hint = BLACK_HOLE_HINT.format(token_id=first)
        for token_id in list(self.suspects):
            suspect = self.suspects.pop(token_id)
            self._deliver(suspect.lease, self._absolved(suspect.result), suspect.folder)

    def _absolved(self, result: Result) -> Result:
        """A failure blamed on the node: given back to todo, not charged to the token."""
        return replace(
            result, outcome=Outcome.UNHEALTHY, reason=f"not charged, {self.black_hole}: {result.reason}"
        )

    def _release_suspects(self, token_ids: list[str]) -> None:
        """These failures were the tokens' own: report them, charged."""
        for token_id in token_ids:
            suspect = self.suspects.pop(token_id, None)
            if suspect is not None:
                self._deliver(suspect.lease, suspect.result, suspect.folder)

    def _heed_suspects(self) -> None:
        if self.suspects:
            self._release_suspects(self.breaker.expire(self.clock()))

    # -- the server --------------------------------------------------------------------------------

    def _heed_server(self) -> None:
        """Send what the journal holds; stop when the server is gone for good (see ``_server_gone``)."""
        self.reporter.flush(self._count)
        reason = None if self.stopping is not None else self._server_gone(self.clock())
        if reason is not None:
            log.error("%s", reason)
            self._stop(Ending(ExitCode.SERVER_UNREACHABLE, reason), "the pool server stayed unreachable")

    def _server_gone(self, now: float) -> Optional[str]:
        """Why to give up on the server: away longer than max_outage, or, at once, never reached for a
        reason waiting will not change (see Outage.hopeless)."""
        if self.outage.hopeless():
            cause = self.outage.cause
            hint = "check server.url"
            if cause == CERTIFICATE_FAILED:
                hint = "trust its certificate with server.ca_bundle"
            return f"pool {self.pool.where}: {cause}, and it never answered this pilot: {hint}"
        if self.outage.exceeded(now):
            limit = format_duration(self.config.server.max_outage)
            return (
                f"{self.outage.describe(now)}, longer than server.max_outage ({limit}); unsent reports stay "
                f"in {self.journal.folder} for the next pilot on this node, leases are left to expire; "
                + OUTAGE_HINT
            )
        return None

    def _count(self, lease: Lease, report: Report, saved: Saved) -> None:
        token, result = lease.token, report.result
        extra = {"token": token.id}
        if saved is Saved.CONFLICT:
            self.tally.conflicts += 1
            log.warning(
                "conflict: the lease moved to another pilot; our result (%s) was not saved",
                result.reason,
                extra=extra,
            )
        elif saved is Saved.CANCELLED and result.outcome is not Outcome.CANCELLED:
            self.tally.cancelled += 1
            log.warning(
                "cancelled while it ran; the task ended first (%s), the token stays cancelled",
                result.reason,
                extra=extra,
            )
        elif report.state is State.DONE:
            self.tally.done += 1
            if log.isEnabledFor(logging.INFO):
                log.info("done%s", _took(result), extra=extra)
        elif result.outcome is Outcome.CANCELLED:
            self.tally.cancelled += 1
            log.warning("cancelled: the token is in error until `pilot.pyz reset --errors`", extra=extra)
        elif result.outcome.charged:
            self.tally.failed += 1
            where = "error" if report.state is State.ERROR else "todo for another attempt"
            log.warning(
                "failed%s: %s; token to %s (failure %d of at most %d)",
                _took(result),
                result.reason,
                where,
                report.failures,
                self.config.task.max_attempts,
                extra=extra,
            )
        else:
            self.tally.given_back += 1
            log.warning("given back to todo: %s", result.reason, extra=extra)

    # -- leases ------------------------------------------------------------------------------------

    def _keep_leases(self) -> None:
        """Every third of a lease while something is held: renew, then act on what came back."""
        now = self.clock()
        waiting = self.book.held
        if not (self.running or self.suspects or waiting) or not self.renewals.due(now):
            return
        self.renewals = self.renewals.after(now)
        held = keeping.to_renew(
            [running.lease for running in self.running.values()],
            [suspect.lease for suspect in self.suspects.values()],
            waiting.item if waiting is not None else None,
        )
        try:
            renewal = self.pool.renew(held)
        except ServerUnreachable as err:
            self.reporter.unreachable(err)
            return
        self.reporter.reachable()
        waiting_id = waiting.item.token.id if waiting is not None else None
        for action in keeping.renewal_actions(renewal, waiting=waiting_id, suspects=self.suspects):
            lease = action.lease
            if action.act is Act.RENEWED and action.holder is Holder.HELD and waiting is not None:
                waiting.item = lease
            elif action.act is Act.RENEWED:
                (self.running.get(lease.token.id) or self.suspects[lease.token.id]).lease = lease
            elif action.act is Act.LOST:
                self._lost(action)
            else:
                self._cancelled(action)

    def _lost(self, action: keeping.Action) -> None:
        """Reset or taken by another pilot: let go of it, stop its task; nothing is reported."""
        token_id, holder = action.lease.token.id, action.holder
        if holder is Holder.HELD:
            self.book.drop_held()
        elif holder is Holder.SUSPECT:
            del self.suspects[token_id]
        log.warning(keeping.LOST[holder], extra={"token": token_id})
        if holder is Holder.RUNNING:
            self.running[token_id].payload.terminate(Stop(Outcome.LEASE_LOST, keeping.LOST_REASON))

    def _cancelled(self, action: keeping.Action) -> None:
        """`tokens cancel` took a token we hold: stop its task (TERM, grace, KILL) and report the attempt
        as cancelled. A failure held back for the breaker, or a token held until it fits, is reported as
        cancelled at once."""
        lease, holder = action.lease, action.holder
        if holder is Holder.SUSPECT:
            suspect = self.suspects.pop(lease.token.id)
            cancelled = replace(suspect.result, outcome=Outcome.CANCELLED, reason=Outcome.CANCELLED.value)
            self._deliver(suspect.lease, cancelled, suspect.folder)
            return
        if holder is Holder.HELD:  # claimed, waiting for room
            self.book.drop_held()
        log.warning(keeping.CANCELLED[holder], extra={"token": lease.token.id})
        if holder is Holder.RUNNING:
            self.running[lease.token.id].payload.terminate(Stop(Outcome.CANCELLED, Outcome.CANCELLED.value))
            return
        self._unstarted(lease, Outcome.CANCELLED, Outcome.CANCELLED.value)

    # -- stopping ----------------------------------------------------------------------------------

    def _heed_signals(self) -> None:
        signals = self.signals
        if signals.stop_signal is not None and self.stopping is None:
            name = signals.stop_signal.name
            code = ExitCode.INTERRUPTED if name == "SIGINT" else ExitCode.TERMINATED
            log.warning(
                "%s: stopping %d running task(s) and giving their tokens back", name, len(self.running)
            )
            self._stop(
                Ending(code, f"stopped by {name}; running tasks were given back"), f"the pilot got {name}"
            )
        if signals.stops >= 2 and not self.killed:
            self.killed = True
            log.warning("second stop signal: killing running tasks now")
            for running in self.running.values():
                running.payload.kill_now(
                    Stop(Outcome.INTERRUPTED, "interrupted: the pilot was stopped at once")
                )
        if signals.drain_signal is not None:
            self._drain(f"drain requested by {signals.drain_signal.name}")

    def _stop(self, ending: Ending, why: str) -> None:
        """End soon: TERM every running task (KILL after the grace), report held failures as they are."""
        self.stopping = ending
        for running in self.running.values():
            running.payload.terminate(Stop(Outcome.INTERRUPTED, f"interrupted: {why}"))
        self._release_suspects(list(self.suspects))

    def _drain(self, reason: str) -> None:
        if self.draining is None:
            self.draining = reason
            log.info("%s: no more claims; %d running task(s) may finish", reason, len(self.running))

    def _ending(self) -> Optional[Ending]:
        if self.stopping is not None and not self.running:
            return self.stopping
        if self.running or len(self.journal):
            return None  # results first: wait for the server, at most server.max_outage
        if self.breaker.tripped:
            return Ending(ExitCode.BLACK_HOLE, self.black_hole + self.black_hole_hint)
        reason = self.draining if self.draining is not None else self.idle.ending(self.clock())
        ending = None if reason is None else Ending(ExitCode.OK, reason)
        if ending is not None and self.suspects:
            self._release_suspects(list(self.suspects))  # nothing left to compare with: real failures
            return None
        return ending

    def _sleep_time(self) -> float:
        now = self.clock()
        wake = [now + MAX_SLEEP]
        for running in self.running.values():
            event = running.payload.next_event()
            if event is not None:
                wake.append(event)
        if self.running or self.suspects:  # held failures keep their leases too
            wake.append(self.renewals.next)
        if not self.stopping and not self.draining and self.book.fit(now, self._patience()) is not None:
            wake.append(self.next_claim)
        if self.running and self.book.held is None and self.book.fit(now, self._patience()) is not None:
            wake.append(self.next_probe)
        idle_up = self.idle.wake()
        if idle_up is not None:
            wake.append(idle_up)
        if self.outage.down or len(self.journal):
            wake.append(self.outage.next_try)
        if self.breaker.streak:
            wake.append(self.breaker.streak[0][1] + self.breaker.window)
        look = self.memory_watch.due(now, [task.payload for task in self.tasks])
        if look is not None:
            wake.append(look)
        if self.tasks.sweep_due is not None:
            wake.append(self.tasks.sweep_due)
        return max(0.0, min(wake) - now)

    def _abandon(self) -> None:
        """On the way out with tasks still running (an error in the loop): kill them, give tokens back."""
        self._release_suspects(list(self.suspects))
        self._give_back_early("not started: the pilot hit an error")
        for token_id, running in list(self.running.items()):
            running.payload.kill_now(Stop(Outcome.INTERRUPTED, "interrupted: the pilot hit an error"))
            running.payload.process.wait()
            running.payload.poll()
            result = running.payload.finish(self.config.task.log_tail, self.wallclock)
            del self.running[token_id]
            try:
                self._report(running, result)
            except Exception as err:  # noqa: BLE001 - already failing; the lease will expire on its own
                log.error(
                    "could not give the token back (%s); its lease will expire",
                    err,
                    extra={"token": token_id},
                )

    def _announce(self) -> None:
        ident = self.identity
        job = f", batch job {ident.batch_job}" if ident.batch_job else ""
        log.info(
            "pilot %s on %s%s: pool %s (%s), %d slot(s), workdir %s",
            ident.pilot_id,
            ident.host,
            job,
            self.pool.where,
            self.config.server.backend,
            self.config.pilot.slots,
            self.folder,
        )
        for line in self.book.node.found:
            log.info("node: %s", line)
        log.info("%s", self.walltime.describe(self.clock()))


def _took(result: Result) -> str:
    return f" in {format_duration(result.duration)}" if result.duration is not None else ""
