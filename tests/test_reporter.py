"""A report that went in while the claim made along with it found the server away (the two-call
``report_and_claim`` that ToPoS uses): an outage, never an empty pool.

The pool here is the real local pool with one fault added: its claim fails as if the server had gone
away between the report and the claim. No server can be made to fail at exactly that moment on demand
(the ToPoS tests stop the real Apache between two requests of one claim, tests/pools/test_topos_outage.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from conftest import local_config, to_toml

from agent.config import load
from agent.errors import ExitCode, ServerUnreachable
from agent.identity import Identity
from agent.journal import Journal
from agent.outage import Outage
from agent.pilot import Pilot
from agent.pools import Lease, NewToken, Pool, Saved
from agent.pools.local import LocalPool
from agent.reporter import Reporter
from agent.resources import Fit
from agent.token import Outcome, Report, Result, make_report
from agent.walltime import End, Walltime


class ClaimAwayOnce(LocalPool):
    """The local pool with the default two-call report_and_claim, whose ``fail``-th claim finds the
    server away (the fault; everything else is the real pool)."""

    fail = 2

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.claims = 0

    def claim(self, n: int, fit: Optional[Fit] = None) -> list[Lease]:
        self.claims += 1
        if self.claims == self.fail:
            raise ServerUnreachable(self.where, "connection refused")
        return super().claim(n, fit)

    def report_and_claim(
        self, lease: Lease, report: Report, n: int, fit: Optional[Fit] = None
    ) -> tuple[Saved, list[Lease]]:
        return Pool.report_and_claim(self, lease, report, n, fit)


def done(lease: Lease) -> Report:
    return make_report(lease.token, Result(Outcome.DONE, "exit code 0", 1.0, 2.0, 0), 1)


def test_a_report_in_and_a_claim_cut_off_is_an_outage_with_no_leases_not_an_empty_pool(
    tmp_path: Path,
) -> None:
    pool = ClaimAwayOnce(tmp_path / "pool.db", Identity("p1", "node", None), 600, create=True)
    pool.add([NewToken("a", {}), NewToken("b", {})])
    [lease] = pool.claim(1)
    outage = Outage(60)
    journal = Journal(tmp_path / "journal", "p1")
    saved, leases = Reporter(pool, journal, outage, time.monotonic).send(lease, done(lease), claim=1)
    assert saved is Saved.SAVED  # the report went in ...
    assert leases is None  # ... and the claim did not happen: no answer, rather than "nothing left"
    assert outage.down  # the pilot waits for the server before it claims again
    assert len(journal) == 0  # and does not send the report a second time
    assert pool.get("a").state.value == "done"
    assert pool.counts().todo == 1


@pytest.fixture
def pilot(tmp_path: Path) -> Iterator[Pilot]:
    sections = local_config(tmp_path, ["/bin/true"], pilot={"slots": 1})
    (tmp_path / "site.toml").write_text(to_toml(sections))
    config = load(tmp_path / "site.toml", {})
    identity = Identity(pilot_id="test-pilot", host="testhost", batch_job=None)
    pool = ClaimAwayOnce(config.server.local.path, identity, 30, create=True)  # type: ignore[union-attr]
    pool.add([NewToken("a", {}), NewToken("b", {})])
    walltime = Walltime(End(None, "test"), config.walltime)
    yield Pilot(config, pool, identity, walltime, environ={}, cache_paths={}, clock=time.monotonic)
    pool.close()


def test_a_pilot_whose_last_task_reported_as_the_server_went_away_does_not_end_as_if_the_pool_were_empty(
    pilot: Pilot,
) -> None:
    """slots = 1: the task of "a" ends, its report goes in, the claim made with it finds the server away.
    Nothing runs then; the pilot must wait for the server and run "b", not end with "pool empty"."""
    ending = pilot.run()
    assert ending.code is ExitCode.OK
    assert ending.reason == "pool empty: nothing left to claim"
    assert pilot.pool.counts().as_dict()["done"] == 2  # "b" ran too
    assert pilot.pool.counts().todo == 0
