"""The pilot's loop: claim, run, report, until the pool is empty, the walltime is near, or a signal says stop.

One thread, no locks. The loop sleeps in ``Signals.wait`` and wakes when a task exits (SIGCHLD), a signal
arrives, or a timer is due (a task's timeout, a lease renewal, the next look at an empty pool).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from agent import runner, template
from agent.config import Config
from agent.errors import ExitCode
from agent.identity import Identity
from agent.pools import Lease, Pool, Saved
from agent.runner import Payload, Stop
from agent.signals import Signals
from agent.token import Outcome, Report, Result, State, make_report
from agent.units import format_duration
from agent.walltime import Walltime

log = logging.getLogger(__name__)

EMPTY_POLL = 10.0  # seconds between looks at a pool that had nothing to claim
MAX_SLEEP = 60.0
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Ending:
    """Why the pilot stopped, and its exit code."""

    code: ExitCode
    reason: str


@dataclass
class Running:
    lease: Lease
    payload: Payload


@dataclass
class Tally:
    done: int = 0
    failed: int = 0
    given_back: int = 0
    conflicts: int = 0

    def __str__(self) -> str:
        text = f"{self.done} done, {self.failed} failed, {self.given_back} given back"
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
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.pool = pool
        self.identity = identity
        self.walltime = walltime
        self.environ = dict(environ)
        self.cache_paths = dict(cache_paths)
        self.signals = signals or Signals()
        self.clock = clock
        self.wallclock = wallclock
        self.folder = config.pilot.workdir / identity.pilot_id
        self.running: dict[str, Running] = {}
        self.tally = Tally()
        self.claimed = 0
        self.draining: Optional[str] = None
        self.stopping: Optional[Ending] = None
        self.killed = False
        self.idle_since: Optional[float] = None
        self.next_claim = 0.0
        self.next_renewal = 0.0

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> Ending:
        self._announce()
        with self.signals:
            try:
                while True:
                    self._heed_signals()
                    for lease in self._claim():
                        self._run(lease)
                    ending = self._ending()
                    if ending is not None:
                        return ending
                    self.signals.wait(self._sleep_time())
                    for running, result in self._finished():
                        self._report(running, result)
                    self._keep_leases()
            finally:
                self._abandon()
                self._tidy_pilot_folder()

    # -- claim -------------------------------------------------------------------------------------

    def _claim(self) -> list[Lease]:
        wanted = self._claims_wanted()
        if not wanted:
            return []
        now = self.clock()
        leases = self.pool.claim(wanted)
        self.claimed += len(leases)
        if len(leases) < wanted:
            self.next_claim = now + EMPTY_POLL
            if not leases and not self.running and self.idle_since is None:
                self.idle_since = now
        if leases:
            self.idle_since = None
            if not self.running:
                self.next_renewal = now + self.config.server.lease / 3
        return leases

    def _claims_wanted(self) -> int:
        """How many tokens to claim now: free slots, unless draining, stopping, or the pool was just empty."""
        if self.stopping or self.draining:
            return 0
        free = self.config.pilot.slots - len(self.running)
        max_tasks = self.config.pilot.max_tasks
        if max_tasks:
            if self.claimed >= max_tasks:
                self._drain(f"max_tasks ({max_tasks}) reached")
                return 0
            free = min(free, max_tasks - self.claimed)
        now = self.clock()
        if free <= 0 or now < self.next_claim:
            return 0
        verdict = self.walltime.verdict(now)
        if verdict is not None:
            self._drain(verdict)
            return 0
        return free

    # -- run ---------------------------------------------------------------------------------------

    def _run(self, lease: Lease) -> None:
        token = lease.token
        attempt_number = len(token.attempts)
        folder = self.folder / task_folder_name(token.id, attempt_number)
        values = template.token_values(token.id, token.fields, self.cache_paths)
        values.update(
            {"pilot.config_dir": str(self.config.path.resolve().parent), "pilot.task_dir": str(folder)}
        )
        try:
            argv = [template.render(word, values) for word in self.config.task.command]
        except (template.MissingField, template.UnsafeValue) as err:
            now = self.wallclock()
            self._report_now(lease, Result(Outcome.NOT_STARTED, str(err), now, now), folder)
            return
        env = {
            **self.environ,
            **self.config.task.env,
            **template.task_environment(token.id, token.fields, self.cache_paths),
            "PILOT_ID": self.identity.pilot_id,
            "PILOT_TASK_DIR": str(folder),
            "PILOT_CONFIG_DIR": values["pilot.config_dir"],
        }
        started = runner.start(
            token_id=token.id,
            argv=argv,
            env=env,
            folder=folder,
            timeout=self.config.task.timeout,
            kill_grace=self.config.task.kill_grace,
            clock=self.clock,
            wallclock=self.wallclock,
        )
        if isinstance(started, Result):
            self._report_now(lease, started, folder)
            return
        self.running[token.id] = Running(lease, started)
        log.info("started (attempt %d): %s", attempt_number, " ".join(argv), extra={"token": token.id})

    def _finished(self) -> list[tuple[Running, Result]]:
        now = self.clock()
        done = []
        for token_id, running in list(self.running.items()):
            running.payload.tick(now)
            if running.payload.poll():
                del self.running[token_id]
                done.append((running, running.payload.finish(self.config.task.log_tail, self.wallclock)))
        if done and not self.running:
            self.next_claim = 0.0  # idle now: look at the pool again before deciding it is empty
        return done

    # -- report ------------------------------------------------------------------------------------

    def _report(self, running: Running, result: Result) -> None:
        self._report_now(running.lease, result, running.payload.folder)

    def _report_now(self, lease: Lease, result: Result, folder: Path) -> None:
        report = make_report(lease.token, result, self.config.task.max_attempts)
        saved = self.pool.report(lease, report)
        self._count(lease, report, saved)
        if result.outcome in (Outcome.DONE, Outcome.FAILED) and result.duration is not None:
            self.walltime.estimator.record(result.duration)
        self._tidy_task_folder(folder, report)

    def _count(self, lease: Lease, report: Report, saved: Saved) -> None:
        token, result = lease.token, report.result
        took = f" in {format_duration(result.duration)}" if result.duration is not None else ""
        extra = {"token": token.id}
        if saved is Saved.CONFLICT:
            self.tally.conflicts += 1
            log.warning(
                "conflict: the lease moved to another pilot; our result (%s) was not saved",
                result.reason,
                extra=extra,
            )
        elif report.state is State.DONE:
            self.tally.done += 1
            log.info("done%s", took, extra=extra)
        elif result.outcome.charged:
            self.tally.failed += 1
            where = "error" if report.state is State.ERROR else "todo for another attempt"
            log.warning(
                "failed%s: %s; token to %s (failure %d of at most %d)",
                took,
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
        now = self.clock()
        if not self.running or now < self.next_renewal:
            return
        self.next_renewal = now + self.config.server.lease / 3
        renewal = self.pool.renew([running.lease for running in self.running.values()])
        for lease in renewal.renewed:
            self.running[lease.token.id].lease = lease
        for lease in renewal.lost:
            log.warning(
                "lease lost (token reset or taken by another pilot): stopping its task",
                extra={"token": lease.token.id},
            )
            self.running[lease.token.id].payload.terminate(
                Stop(Outcome.LEASE_LOST, "lease lost: the token was reset or is held by another pilot")
            )

    # -- stopping ----------------------------------------------------------------------------------

    def _heed_signals(self) -> None:
        signals = self.signals
        if signals.stop_signal is not None and self.stopping is None:
            name = signals.stop_signal.name
            code = ExitCode.INTERRUPTED if name == "SIGINT" else ExitCode.TERMINATED
            self.stopping = Ending(code, f"stopped by {name}; running tasks were given back")
            log.warning(
                "%s: stopping %d running task(s) and giving their tokens back", name, len(self.running)
            )
            for running in self.running.values():
                running.payload.terminate(Stop(Outcome.INTERRUPTED, f"interrupted: the pilot got {name}"))
        if signals.stops >= 2 and not self.killed:
            self.killed = True
            log.warning("second stop signal: killing running tasks now")
            for running in self.running.values():
                running.payload.kill_now(
                    Stop(Outcome.INTERRUPTED, "interrupted: the pilot was stopped at once")
                )
        if signals.drain_signal is not None:
            self._drain(f"drain requested by {signals.drain_signal.name}")

    def _drain(self, reason: str) -> None:
        if self.draining is None:
            self.draining = reason
            log.info("%s: no more claims; %d running task(s) may finish", reason, len(self.running))

    def _ending(self) -> Optional[Ending]:
        if self.running:
            return None
        if self.stopping is not None:
            return self.stopping
        if self.draining is not None:
            return Ending(ExitCode.OK, self.draining)
        if self.idle_since is not None and self.clock() - self.idle_since >= self.config.pilot.idle_timeout:
            return Ending(ExitCode.OK, "pool empty: nothing left to claim")
        return None

    def _sleep_time(self) -> float:
        now = self.clock()
        wake = [now + MAX_SLEEP]
        for running in self.running.values():
            event = running.payload.next_event()
            if event is not None:
                wake.append(event)
        if self.running:
            wake.append(self.next_renewal)
        if not self.stopping and not self.draining and len(self.running) < self.config.pilot.slots:
            wake.append(self.next_claim)
        if self.idle_since is not None:
            wake.append(self.idle_since + self.config.pilot.idle_timeout)
        return max(0.0, min(wake) - now)

    def _abandon(self) -> None:
        """On the way out with tasks still running (an error in the loop): kill them, give tokens back."""
        for token_id, running in list(self.running.items()):
            running.payload.kill_now(Stop(Outcome.INTERRUPTED, "interrupted: the pilot hit an error"))
            running.payload.popen.wait()
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

    # -- folders -----------------------------------------------------------------------------------

    def _tidy_task_folder(self, folder: Path, report: Report) -> None:
        keep = self.config.pilot.keep_workdirs
        if keep == "always" or (keep == "failed" and report.state is not State.DONE):
            return
        shutil.rmtree(folder, ignore_errors=True)

    def _tidy_pilot_folder(self) -> None:
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when empty: kept task folders stay

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
        log.info("%s", self.walltime.describe(self.clock()))


def task_folder_name(token_id: str, attempt: int) -> str:
    """A folder name for any token id: safe characters only, a hash when the id had to change."""
    safe = _UNSAFE_NAME.sub("_", token_id)[:80]
    if safe != token_id:
        safe += "-" + hashlib.sha256(token_id.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{safe}.{attempt}"
