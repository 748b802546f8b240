"""Reports to the pool, or to the journal while the server is away; nothing is lost either way.

While the journal holds anything, new reports queue behind it so results reach the server in the order
they finished. A report the server refuses because the lease moved on is a conflict: logged, never forced
over the newer attempt.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Optional, TypeVar, cast

from agent.errors import ClaimUnreachable, DependencyError, PilotError, ServerUnreachable, TokenError
from agent.journal import Journal, orphans
from agent.outage import Outage
from agent.pools import Lease, Pool, Saved
from agent.resources import Fit
from agent.token import Report

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Called for every report the server took: the lease, the report and whether it was saved.
Delivered = Callable[[Lease, Report, Saved], None]
#: The report to send instead of one whose children (tokens the task added) the pool refused.
Refused = Callable[[Lease, Report, PilotError], Report]


class Reporter:
    def __init__(
        self,
        pool: Pool,
        journal: Journal,
        outage: Outage,
        clock: Callable[[], float],
        refused: Optional[Refused] = None,
    ) -> None:
        self.pool = pool
        self.journal = journal
        self.outage = outage
        self.clock = clock
        self.refused = refused

    def send(
        self, lease: Lease, report: Report, claim: int = 0, fit: Optional[Fit] = None
    ) -> tuple[Optional[Saved], Optional[list[Lease]]]:
        """Report now, and claim up to ``claim`` tokens in the same round trip. When the server is away,
        or older reports wait in the journal, the report joins the journal (None) and nothing is claimed.
        Leases are None when the report went in but the server went away before the claim: not an empty
        pool."""
        if self.outage.down or len(self.journal):
            self._keep(lease, report)
            return None, []
        try:
            if claim:
                saved, leases = self.pool.report_and_claim(lease, report, claim, fit)
            else:
                saved, leases = self.pool.report(lease, report), []
        except ClaimUnreachable as err:
            self.unreachable(err)
            return cast(Saved, err.saved), None
        except ServerUnreachable as err:
            self.unreachable(err)
            self._keep(lease, report)
            return None, []
        self.reachable()
        return saved, leases

    def refusing(self, lease: Lease, report: Report, send: Callable[[Report], T]) -> tuple[Report, T]:
        """``send(report)``, or, when the pool refuses the tokens the task added (an id it has already,
        an `after` naming a token that exists nowhere; nothing was written), ``send`` of the report
        ``refused`` makes instead: a failed attempt. Returns the report sent and what ``send`` gave."""
        try:
            return report, send(report)
        except (DependencyError, TokenError) as err:
            if not report.children or self.refused is None:
                raise
            log.warning("%s", err, extra={"token": lease.token.id})
            report = self.refused(lease, report, err)
            return report, send(report)

    def flush(self, delivered: Delivered) -> int:
        """Send what the journal holds, oldest first, when the backoff allows; returns how many left."""
        if not len(self.journal) or not self.outage.may_try(self.clock()):
            return len(self.journal)
        sent = 0
        try:
            for entry in self.journal.entries:
                lease = entry.lease
                report, saved = self.refusing(lease, entry.report, functools.partial(self.pool.report, lease))
                delivered(lease, report, saved)
                sent += 1
        except ServerUnreachable as err:
            self.unreachable(err)
        else:
            self.reachable()
        finally:
            if sent:
                self.journal.sent(sent)
                log.info("sent %d report(s) from the journal, %d left", sent, len(self.journal))
        return len(self.journal)

    def adopt_orphans(self, delivered: Delivered) -> int:
        """Send the reports that pilots which died on this node left in their journals; returns how many.

        A journal is deleted once every report in it reached the server; one the server could not take
        stays for the next pilot (or this one's own journal takes them, if the server went away now)."""
        adopted = 0
        with orphans(self.journal.folder, self.journal.path) as found:
            for path, entries in found:
                log.info("found %d unsent report(s) from an earlier pilot in %s", len(entries), path)
                for entry in entries:
                    lease = entry.lease
                    send = functools.partial(self.send, lease)
                    report, (saved, _) = self.refusing(lease, entry.report, send)
                    if saved is not None:
                        delivered(lease, report, saved)
                    adopted += 1
                path.unlink(missing_ok=True)
        return adopted

    def unreachable(self, err: ServerUnreachable) -> None:
        now = self.clock()
        first = not self.outage.down
        self.outage.failed(now, err.problem, err.retry_after)
        if first:
            log.warning("%s: running tasks go on, reports go to the journal, no new claims", err)

    def reachable(self) -> None:
        away = self.outage.ok(self.clock())
        if away is not None:
            log.info("server reachable again after %.0fs", away)

    def _keep(self, lease: Lease, report: Report) -> None:
        self.journal.add(lease, report)
        log.warning(
            "report kept in the journal %s until the server answers (%s)",
            self.journal.path,
            report.result.reason,
            extra={"token": lease.token.id},
        )
