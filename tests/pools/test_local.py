"""The embedded SQLite pool: atomic claims across processes, leases with an injected clock, history."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import PoolError, TokenError
from agent.identity import Identity
from agent.pools import NewToken, Saved, local
from agent.pools.local import LocalPool
from agent.resources import Fit, Request
from agent.token import Outcome, Result, State, make_report

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pool_for(path: Path, name: str, clock: Clock, lease: float = 10.0) -> LocalPool:
    return LocalPool(path, Identity(name, "node1", "slurm:42"), lease, create=True, clock=clock)


def result(outcome: Outcome, code: int | None = 0) -> Result:
    return Result(outcome, f"exit code {code}", 1.0, 2.0, code, None, b"out", b"err")


def test_claims_hand_out_tokens_in_order_and_record_who_claimed(tmp_path: Path) -> None:
    clock = Clock()
    with pool_for(tmp_path / "p.db", "pilot-a", clock) as pool:
        pool.add(NewToken(f"t{i}", {"input": i}) for i in range(3))
        leases = pool.claim(2)
        assert [lease.token.id for lease in leases] == ["t0", "t1"]
        attempt = leases[0].token.attempts[-1]
        assert (attempt.pilot, attempt.host, attempt.batch_job, attempt.claimed) == (
            "pilot-a",
            "node1",
            "slurm:42",
            clock.now,
        )
        assert pool.counts().as_dict() == {"todo": 1, "locked": 2, "done": 0, "error": 0, "waiting": 0}
        assert pool.locked_left() == 2
        pool.report(leases[0], make_report(leases[0].token, result(Outcome.DONE), 1))
        assert pool.locked_left() == 1


def test_report_closes_the_attempt_and_keeps_the_tails(tmp_path: Path) -> None:
    clock = Clock()
    with pool_for(tmp_path / "p.db", "pilot-a", clock) as pool:
        pool.add([NewToken("t0", {"input": "x"})])
        (lease,) = pool.claim(1)
        assert pool.report(lease, make_report(lease.token, result(Outcome.DONE), 1)) is Saved.SAVED
        token = pool.get("t0")
        assert token.state is State.DONE
        assert token.attempts[-1].outcome == "done" and token.attempts[-1].exit_code == 0
        assert pool.tails("t0") == (b"out", b"err")


def test_expired_lease_is_claimable_and_the_late_report_is_a_conflict(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "p.db"
    with pool_for(path, "pilot-a", clock) as first, pool_for(path, "pilot-b", clock) as second:
        first.add([NewToken("t0", {"input": "x"})])
        (old,) = first.claim(1)
        clock.now += 9
        assert second.claim(1) == []  # still leased
        clock.now += 2
        (new,) = second.claim(1)
        history = new.token.attempts
        assert [a.pilot for a in history] == ["pilot-a", "pilot-b"]
        assert history[0].outcome == "lease-expired"
        assert first.renew([old]).lost == [old]
        assert first.report(old, make_report(old.token, result(Outcome.DONE), 1)) is Saved.CONFLICT
        assert second.report(new, make_report(new.token, result(Outcome.FAILED, 3), 1)) is Saved.SAVED
        token = second.get("t0")
        assert token.state is State.ERROR and token.attempts[-1].pilot == "pilot-b"


def test_renewal_keeps_the_token_ours(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "p.db"
    with pool_for(path, "pilot-a", clock) as first, pool_for(path, "pilot-b", clock) as second:
        first.add([NewToken("t0", {})])
        (lease,) = first.claim(1)
        for _ in range(5):
            clock.now += 8
            (lease,) = first.renew([lease]).renewed
            assert second.claim(1) == []
        assert lease.expires == clock.now + 10


def test_failures_are_charged_until_max_attempts_and_reset_gives_a_fresh_budget(tmp_path: Path) -> None:
    clock = Clock()
    with pool_for(tmp_path / "p.db", "pilot-a", clock) as pool:
        pool.add([NewToken("t0", {})])
        for expected in (State.TODO, State.ERROR):
            (lease,) = pool.claim(1)
            pool.report(lease, make_report(lease.token, result(Outcome.FAILED, 1), 2))
            assert pool.get("t0").state is expected
        assert pool.reset(locked=False, errors=True) == 1
        token = pool.get("t0")
        assert (token.state, token.failures, len(token.attempts)) == (State.TODO, 0, 2)


def test_reset_locked_closes_the_open_attempt(tmp_path: Path) -> None:
    with pool_for(tmp_path / "p.db", "pilot-a", Clock()) as pool:
        pool.add([NewToken("t0", {})])
        pool.claim(1)
        assert pool.reset(locked=True, errors=False) == 1
        assert pool.get("t0").attempts[-1].outcome == "reset"


def test_a_duplicate_id_adds_nothing_and_names_the_id(tmp_path: Path) -> None:
    with pool_for(tmp_path / "p.db", "pilot-a", Clock()) as pool:
        pool.add([NewToken("a", {})])
        with pytest.raises(TokenError, match="'a': already in the pool; nothing was added"):
            pool.add([NewToken("b", {}), NewToken("a", {})])
        assert pool.counts().total == 1


def test_an_unknown_id_says_how_to_find_the_ids(tmp_path: Path) -> None:
    with pool_for(tmp_path / "p.db", "pilot-a", Clock()) as pool:
        pool.add([NewToken("inputs-1", {})])
        for call in (lambda: pool.get("inputs-9"), lambda: pool.cancel(["inputs-9"], all_todo=False)):
            with pytest.raises(TokenError) as caught:
                call()
            assert str(caught.value).startswith(f"token 'inputs-9': not in the pool {pool.where}")
            assert str(caught.value).endswith(
                "`pilot.pyz tokens list` shows the ids (a file's tokens are <file name>-<line number>)"
            )


def test_missing_pool_file_is_an_error_when_not_creating(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="no such pool file"):
        LocalPool(tmp_path / "none.db", Identity("p", "h", None), 10)


def test_corrupt_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    path.write_bytes(b"this is not sqlite at all\n" * 100)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(PoolError, match="not a usable pool file"):
        LocalPool(path, Identity("p", "h", None), 10, create=True)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_someone_elses_sqlite_file_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE results (x)")
    before = path.read_bytes()
    with pytest.raises(PoolError, match="not a pilot pool"):
        LocalPool(path, Identity("p", "h", None), 10, create=True)
    assert path.read_bytes() == before


CLAIMER = """
import json, sys
from agent.identity import Identity
from agent.pools import local
from agent.pools.local import LocalPool
from agent.resources import Fit, Request
from agent.pools import NewToken
from agent.token import Outcome, Result, make_report
pool = LocalPool(sys.argv[1], Identity(sys.argv[2], "h", None), 600)
got = []
while True:
    leases = pool.claim(int(sys.argv[3]))
    if not leases:
        break
    for lease in leases:
        got.append(lease.token.id)
        pool.report(lease, make_report(lease.token, Result(Outcome.DONE, "ok", 0, 0, 0), 1))
print(json.dumps(got))
"""


def test_many_processes_claiming_at_once_never_share_a_token(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with pool_for(path, "setup", Clock()) as pool:
        pool.add(NewToken(f"t{i}", {}) for i in range(2000))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(path), f"p{n}", str(1 + n % 3)],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        for n in range(8)
    ]
    claimed = [json.loads(p.communicate(timeout=120)[0]) for p in processes]
    every = [token for got in claimed for token in got]
    assert len(every) == len(set(every)) == 2000
    assert sum(1 for got in claimed if got) > 1  # they really competed


# -- claims that fit ------------------------------------------------------------------------------

# The tokens table as pilot.pyz wrote it before tokens had resource requests (schema version 1).
PRE_RESOURCES_SCHEMA = """
CREATE TABLE tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('todo', 'locked', 'done', 'error')), fields TEXT NOT NULL,
    attempts TEXT NOT NULL DEFAULT '[]', failures INTEGER NOT NULL DEFAULT 0, lease_id TEXT,
    lease_expires REAL, exit_code INTEGER, reason TEXT, stdout_tail BLOB, stderr_tail BLOB, updated REAL
);
CREATE INDEX tokens_state ON tokens (state, seq);
"""


def fit(cores: int, gpus: int = 0, memory: int | None = None, tasks: int = 10, default_cores: int = 1) -> Fit:
    return Fit(cores, gpus, memory, Request(default_cores, default_cores, 0, 0), tasks)


def test_claims_take_only_tokens_that_fit_together(tmp_path: Path) -> None:
    with pool_for(tmp_path / "p.db", "pilot-a", Clock()) as pool:
        pool.add(
            [
                NewToken("big", {"cores": 8}),
                NewToken("four", {"cores": "4-16"}),
                NewToken("plain", {}),
                NewToken("gpu", {"gpus": 1}),
                NewToken("mem", {"memory": "2GB"}),
                NewToken("two", {"cores": 2}),
            ]
        )
        assert [lease.token.id for lease in pool.claim(10, fit(4, memory=10**9))] == ["four"]
        assert [lease.token.id for lease in pool.claim(10, fit(3, memory=10**9))] == ["plain", "two"]
        assert [lease.token.id for lease in pool.claim(1, fit(8, gpus=1, memory=10**10))] == ["big"]
        assert pool.claim(10, fit(1, memory=10**9)) == []  # gpu needs a GPU, mem 2 GB
        assert [lease.token.id for lease in pool.claim(10, fit(2, 1, 3 * 10**9))] == ["gpu", "mem"]


def test_a_probe_takes_the_oldest_token_that_fits_the_node_but_not_what_is_free(tmp_path: Path) -> None:
    with pool_for(tmp_path / "p.db", "pilot-a", Clock()) as pool:
        pool.add([NewToken("one", {}), NewToken("too-big", {"cores": 9}), NewToken("four", {"cores": 4})])
        probe = Fit(8, 0, None, Request(), 1, beyond=fit(2))
        assert [lease.token.id for lease in pool.claim(1, probe)] == ["four"]
        assert pool.claim(1, probe) == []


def test_a_probe_on_a_big_pool_looks_through_a_stretch_of_tokens_at_a_time_round_and_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite tests every todo row of a probe's range in the write transaction all pilots wait on: on a
    # pool of more than PROBE_ROWS tokens each probe takes the next stretch, so that it costs what a small
    # pool's does and a round of probes still finds the oldest big token of each stretch.
    monkeypatch.setattr(local, "PROBE_ROWS", 10)
    with pool_for(tmp_path / "p.db", "pilot-a", Clock()) as pool:
        pool.add([*(NewToken(f"one-{i:02d}", {}) for i in range(35)), NewToken("whole", {"cores": 8})])
        probe = Fit(8, 0, None, Request(), 1, beyond=fit(2))
        found = [[lease.token.id for lease in pool.claim(1, probe)] for _ in range(5)]
        assert found == [[], [], [], ["whole"], []]  # seq 36 is in the fourth stretch, 30 to 39
        pool.add([NewToken("later-big", {"cores": 4})])  # seq 37: on from 10, the stretch from 30 is third
        assert [[lease.token.id for lease in pool.claim(1, probe)] for _ in range(3)] == [
            [],
            [],
            ["later-big"],
        ]


def test_a_claim_beside_running_tasks_looks_through_the_first_tokens_then_a_stretch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claim made while tasks run is made again as they end: it tests the first BESIDE_ROWS todo tokens,
    # then the next stretch of seqs, not a million that do not fit what is free in the write transaction.
    monkeypatch.setattr(local, "BESIDE_ROWS", 10)
    monkeypatch.setattr(local, "PROBE_ROWS", 10)
    with pool_for(tmp_path / "p.db", "pilot-a", Clock()) as pool:
        pool.add([*(NewToken(f"big-{i:02d}", {"cores": 8}) for i in range(25)), NewToken("small", {})])
        beside = dataclasses.replace(fit(2, tasks=1), partial=True)
        found = [[lease.token.id for lease in pool.claim(1, beside)] for _ in range(3)]
        assert found == [[], [], ["small"]]  # seq 26: in neither the first ten nor stretches 0-9, 10-19
        pool.add([NewToken("early", {"cores": 2})])  # seq 27
        assert [lease.token.id for lease in pool.claim(1, fit(2, tasks=1))] == ["early"]  # node wholly free
    with pool_for(tmp_path / "q.db", "pilot-a", Clock()) as pool:
        pool.add([NewToken("big", {"cores": 8}), NewToken("a", {}), NewToken("b", {}), NewToken("c", {})])
        beside = dataclasses.replace(fit(2, tasks=2), partial=True)
        assert [lease.token.id for lease in pool.claim(2, beside)] == ["a", "b"]  # in claim order


def test_tokens_without_fields_ask_the_pilots_default(tmp_path: Path) -> None:
    with pool_for(tmp_path / "p.db", "pilot-a", Clock()) as pool:
        pool.add([NewToken("plain", {}), NewToken("one", {"cores": 1})])
        assert [lease.token.id for lease in pool.claim(5, fit(1, default_cores=2))] == ["one"]
        assert [lease.token.id for lease in pool.claim(5, fit(2, default_cores=2))] == ["plain"]


def test_a_token_with_a_wrong_request_is_refused_naming_the_field(tmp_path: Path) -> None:
    with (
        pool_for(tmp_path / "p.db", "pilot-a", Clock()) as pool,
        pytest.raises(TokenError, match=r"bad.*field cores"),
    ):
        pool.add([NewToken("bad", {"cores": "many"})])


def test_a_pool_made_before_resource_requests_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(str(path))
    db.executescript(PRE_RESOURCES_SCHEMA)
    db.execute("PRAGMA user_version = 1")
    for token_id, fields in (("a", {"cores": 4}), ("b", {"input": 1}), ("c", {"memory": "1KB", "gpus": 1})):
        db.execute(
            "INSERT INTO tokens (id, state, fields) VALUES (?, 'todo', ?)", (token_id, json.dumps(fields))
        )
    db.commit()
    db.close()
    with pool_for(path, "pilot-a", Clock()) as pool:
        assert pool.counts().todo == 3
        assert [lease.token.id for lease in pool.claim(5, fit(3, gpus=1, memory=10**6))] == ["b", "c"]
        assert [lease.token.id for lease in pool.claim(5, fit(4))] == ["a"]
    with pool_for(path, "pilot-b", Clock()) as pool:  # opened again: nothing to migrate, still works
        pool.add([NewToken("d", {})])
        assert [lease.token.id for lease in pool.claim(5)] == ["d"]
    columns = [row[1] for row in sqlite3.connect(str(path)).execute("PRAGMA table_info(tokens)")]
    assert columns[-3:] == ["need_cores", "need_gpus", "need_memory"]


def test_a_report_that_beats_the_pilots_stop_keeps_the_token_cancelled(tmp_path: Path) -> None:
    """Cancel keeps a running token's lease (its pilot learns at the renewal); a failure with attempts
    left reported before the pilot stopped the task is saved, but the token stays cancelled instead of
    going back to todo to run again (the soak found it). So does a success: the cancel came first."""
    clock = Clock()
    with pool_for(tmp_path / "p.db", "pilot-a", clock) as pool:
        pool.add([NewToken("failing", {}), NewToken("finishing", {})])
        failing, finishing = pool.claim(2)
        assert pool.cancel(["failing", "finishing"], all_todo=False) == 2
        report = make_report(failing.token, result(Outcome.FAILED, 1), 3)
        assert report.state is State.TODO  # attempts left: a retry, were it not cancelled
        assert pool.report(failing, report) is Saved.CANCELLED
        token = pool.get("failing")
        assert (token.state, token.reason) == (State.ERROR, "cancelled")
        assert token.attempts[-1].outcome == "failed"  # the attempt as it ended
        assert pool.claim(2) == []
        assert (
            pool.report(finishing, make_report(finishing.token, result(Outcome.DONE), 3)) is Saved.CANCELLED
        )
        token = pool.get("finishing")
        assert (token.state, token.reason, token.attempts[-1].outcome) == (State.ERROR, "cancelled", "done")


def test_reports_in_a_batch_are_one_commit_and_a_refused_one_is_undone_alone(tmp_path: Path) -> None:
    """A turn's reports go in one transaction (pilot._report_all); a write that fails inside it, here
    children the pool refuses, is rolled back to its savepoint, and the others are committed."""
    clock = Clock()
    path = tmp_path / "p.db"
    with pool_for(path, "pilot-a", clock) as pool:
        pool.add([NewToken(f"t{n}", {"input": str(n)}) for n in range(4)] + [NewToken("taken", {})])
        leases = pool.claim(3)
        statements: list[str] = []
        pool._db.set_trace_callback(statements.append)
        with pool.batch():
            first, second, third = leases
            assert pool.report(first, make_report(first.token, result(Outcome.DONE), 1)) is Saved.SAVED
            refused = make_report(second.token, result(Outcome.DONE), 1, (NewToken("taken", {}),))
            with pytest.raises(TokenError):
                pool.report_and_claim(second, refused, 1)
            saved, claimed = pool.report_and_claim(
                third, make_report(third.token, result(Outcome.DONE), 1), 1
            )
            assert saved is Saved.SAVED and [lease.token.id for lease in claimed] == ["t3"]
        pool._db.set_trace_callback(None)
        assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    with pool_for(path, "pilot-b", clock) as other:  # what another process sees: committed
        states = {token_id: other.get(token_id).state for token_id in ("t0", "t1", "t2", "t3")}
        assert states == {"t0": State.DONE, "t1": State.LOCKED, "t2": State.DONE, "t3": State.LOCKED}
        assert other.get("t1").attempts[-1].outcome is None  # its refused report left nothing behind


def test_a_batch_commits_what_went_through_when_its_body_fails(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "p.db"
    with pool_for(path, "pilot-a", clock) as pool:
        pool.add([NewToken("t0", {})])
        (lease,) = pool.claim(1)
        with pytest.raises(RuntimeError), pool.batch():
            pool.report(lease, make_report(lease.token, result(Outcome.DONE), 1))
            raise RuntimeError("the loop failed after one report")
    with pool_for(path, "pilot-b", clock) as other:
        assert other.get("t0").state is State.DONE


@pytest.mark.parametrize(
    "value",
    [
        {"input": "/data/sample-0000001.fastq.gz"},
        {"input": "caf\u00e9 \U0001f600 \udcff", "n": -12, "big": 10**30, "x": 1.5e-300, "none": None},
        {"nested": [{"a": [1, 2.0, True, False]}, []], "": "", "quote": '"\\\n\t'},
        [float("nan"), float("inf"), -float("inf"), 0.1],
        "a string alone",
    ],
)
def test_the_stored_json_is_what_the_standard_encoder_writes(value: object) -> None:
    """The local pool's encoder, made once, writes what json's compact ASCII encoder writes."""
    from agent.pools.local import _dumps

    expected = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode(value)
    assert _dumps(value) == expected


def test_a_field_that_json_cannot_write_is_refused_as_json_refuses_it() -> None:
    from agent.pools.local import _dumps

    with pytest.raises(TypeError, match="not JSON serializable"):
        _dumps({"when": object()})
