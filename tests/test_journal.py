"""The journal of unsent reports: survives the pilot, is adopted by the next pilot on the node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.identity import Identity
from agent.journal import Journal, entry_from_json, entry_to_json, orphans, read
from agent.outage import Outage
from agent.pools import Lease, NewToken, Saved
from agent.pools.local import LocalPool
from agent.reporter import Reporter
from agent.token import Outcome, Report, Result, State, make_report

REPO = Path(__file__).resolve().parent.parent


def claimed(tmp_path: Path, n: int = 1) -> tuple[LocalPool, list]:
    pool = LocalPool(tmp_path / "pool.db", Identity("p1", "node", None), 600, create=True)
    pool.add(NewToken(f"t{i}", {"input": f"caf\udce9 {i}"}) for i in range(n))
    return pool, pool.claim(n)


def done(lease: Lease) -> Report:
    result = Result(Outcome.DONE, "exit code 0", 1.0, 2.0, 0, None, b"\xffout", b"err")
    return make_report(lease.token, result, 1)


def test_an_entry_survives_the_round_trip_through_json(tmp_path: Path) -> None:
    _, (lease,) = claimed(tmp_path)
    journal = Journal(tmp_path / "journal", "p1")
    journal.add(lease, done(lease))
    (entry,) = read(journal.path)
    assert entry_to_json(entry) == entry_to_json(journal.entries[0])
    assert entry.report.result.stdout_tail == b"\xffout"
    assert entry_from_json(entry_to_json(entry)).lease.token.fields["input"] == "caf\udce9 0"
    journal.close()


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    _, leases = claimed(tmp_path, 2)
    journal = Journal(tmp_path / "journal", "p1")
    for lease in leases:
        journal.add(lease, done(lease))
    journal.close()
    text = journal.path.read_text()
    journal.path.write_text(text[: len(text) - 20])
    assert [e.lease.token.id for e in read(journal.path)] == ["t0"]


DEAD_PILOT = """
import sys
from pathlib import Path
from agent.identity import Identity
from agent.journal import Journal
from agent.pools.local import LocalPool
from agent.token import Outcome, Result, make_report
pool = LocalPool(Path(sys.argv[1]) / "pool.db", Identity("dead", "node", None), 600)
journal = Journal(Path(sys.argv[1]) / "journal", "dead")
for lease in pool.claim(3):
    journal.add(lease, make_report(lease.token, Result(Outcome.DONE, "exit code 0", 1.0, 2.0, 0), 1))
"""


def test_the_next_pilot_sends_what_a_dead_pilot_left_in_its_journal(tmp_path: Path) -> None:
    pool, _ = claimed(tmp_path, 0)
    pool.add(NewToken(f"t{i}", {}) for i in range(3))
    subprocess.run([sys.executable, "-c", DEAD_PILOT, str(tmp_path)], check=True, cwd=REPO)
    assert pool.counts().locked == 3
    journal = Journal(tmp_path / "journal", "p2")
    reporter = Reporter(pool, journal, Outage(60), lambda: 0.0)
    delivered = []
    assert reporter.adopt_orphans(lambda lease, report, saved: delivered.append(saved)) == 3
    assert delivered == [Saved.SAVED] * 3
    assert pool.counts().done == 3
    assert not list((tmp_path / "journal").glob("*.jsonl"))


def test_a_living_pilots_journal_is_left_alone(tmp_path: Path) -> None:
    _, (lease,) = claimed(tmp_path)
    alive = Journal(tmp_path / "journal", "alive")
    alive.add(lease, done(lease))
    with orphans(tmp_path / "journal", tmp_path / "journal" / "me.jsonl") as found:
        assert found == []
    alive.close()
    with orphans(tmp_path / "journal", tmp_path / "journal" / "me.jsonl") as found:
        assert [path.name for path, _ in found] == ["alive.jsonl"]


def test_a_report_whose_lease_moved_on_is_a_conflict_not_an_overwrite(tmp_path: Path) -> None:
    clock = [1000.0]
    pool = LocalPool(tmp_path / "pool.db", Identity("p1", "n", None), 10, create=True, clock=lambda: clock[0])
    pool.add([NewToken("t0", {})])
    (old,) = pool.claim(1)
    journal = Journal(tmp_path / "journal", "p1")
    journal.add(old, done(old))  # the server was away when the task finished
    clock[0] += 60
    other = LocalPool(tmp_path / "pool.db", Identity("p2", "n", None), 10, clock=lambda: clock[0])
    assert other.claim(1)  # the lease expired and another pilot took the token
    reporter = Reporter(pool, journal, Outage(60), lambda: 0.0)
    delivered = []
    assert reporter.flush(lambda lease, report, saved: delivered.append(saved)) == 0
    assert delivered == [Saved.CONFLICT]
    token = pool.get("t0")
    assert token.state is State.LOCKED and token.attempts[-1].pilot == "p2"
    journal.close()
