"""Tasks of different sizes on one node, end to end through pilot.pyz on the local pool: packing, binding,
GPUs, tokens too big for the node, no starvation, memory enforcement and what each task used."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, Site, local_config, pool_rows, to_toml
from sized_tasks import check_packing, mixed_tokens, overlapping, read_records, sized_command

from agent.config import load
from agent.identity import Identity
from agent.pilot import Pilot
from agent.pools import Lease, NewToken, open_pool
from agent.pools.local import LocalPool
from agent.resources import Request
from agent.token import Outcome, Result, make_report
from agent.walltime import End, Walltime

BURN = REPO / "tests" / "tasks" / "burn.py"
CPUS = sorted(os.sched_getaffinity(0))


def run_pilot(site: Site) -> str:
    done = site.run("run", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_mixed_sizes_on_four_declared_cores_never_oversubscribe_and_run_once(site: Site) -> None:
    # This machine has 2 CPUs: 4 declared cores are handed out as logical CPUs 0-3, unbound.
    records = site.folder / "records"
    records.mkdir()
    tokens = mixed_tokens(24)
    site.write(
        local_config(site.folder, sized_command(records), pilot={"cores": 4, "bind": False, "slots": 8})
    )
    site.add_tokens(tokens)
    log = run_pilot(site)
    assert "node: cores: 4 (pilot.cores), not bound (pilot.bind = false)" in log
    ran = read_records(records)
    assert check_packing(ran, tokens, 4, bound=False) > 2  # tasks really ran side by side
    assert site.status()["done"] == 24


def test_tasks_are_bound_to_their_own_real_cpus(site: Site) -> None:
    records = site.folder / "records"
    records.mkdir()
    cores = len(CPUS)
    tokens = [{"id": f"t{i:03d}", "cores": 1 + (i % 3 == 2) * (cores - 1), "seconds": 0.3} for i in range(12)]
    site.write(local_config(site.folder, sized_command(records), pilot={"slots": cores}))  # cores = "auto"
    site.add_tokens(tokens)
    log = run_pilot(site)
    assert f"node: cores: {cores} (CPU affinity {cores}" in log
    ran = read_records(records)
    check_packing(ran, tokens, cores, bound=True)
    if cores > 1:
        assert overlapping(ran), "one-core tasks should have run side by side"


def test_a_whole_node_token_among_one_core_tokens_runs_before_the_pool_is_empty(site: Site) -> None:
    records = site.folder / "records"
    records.mkdir()
    ones = [{"id": f"one-{i:03d}", "cores": 1, "seconds": round(0.2 + 0.07 * (i % 5), 2)} for i in range(60)]
    tokens = [*ones[:3], {"id": "whole", "cores": 4, "seconds": 0.2}, *ones[3:]]
    site.write(
        local_config(
            site.folder,
            sized_command(records),
            pilot={"cores": 4, "bind": False, "slots": 8},
            walltime={"expected": "1s"},  # the patience of a held token: one expected duration
        )
    )
    site.add_tokens(tokens)
    log = run_pilot(site)
    ran = read_records(records)
    check_packing(ran, tokens, 4, bound=False)
    whole = next(record for record in ran if record["token"] == "whole")
    after = [record for record in ran if record["start"] >= whole["end"]]
    assert len(after) >= 20, f"only {len(after)} one-core tasks started after the whole-node one"
    assert "token=whole INFO held until it fits: 4 core(s)" in log


def test_declared_gpus_each_task_sees_only_its_own(site: Site) -> None:
    records = site.folder / "records"
    records.mkdir()
    tokens = [{"id": f"g{i:02d}", "gpus": [1, 0, 2][i % 3], "cores": 1, "seconds": 0.3} for i in range(9)]
    site.write(
        local_config(
            site.folder,
            sized_command(records),
            pilot={"cores": 4, "bind": False, "gpus": ["0", "1", "2"], "slots": 8},
        )
    )
    site.add_tokens(tokens)
    log = run_pilot(site)
    assert "node: GPUs: 0, 1, 2 (pilot.gpus)" in log
    ran = read_records(records)
    asked = {token["id"]: token["gpus"] for token in tokens}
    for record in ran:
        env = record["env"]
        seen = [gpu for gpu in env["CUDA_VISIBLE_DEVICES"].split(",") if gpu]
        assert len(seen) == asked[record["token"]], record
        assert env["CUDA_VISIBLE_DEVICES"] == env["ROCR_VISIBLE_DEVICES"] == env["PILOT_GPUS"]
        assert set(seen) <= {"0", "1", "2"}
    for a, b in overlapping(ran):
        first, second = (set(filter(None, r["env"]["CUDA_VISIBLE_DEVICES"].split(","))) for r in (a, b))
        assert not first & second, f"{a['token']} and {b['token']} shared GPUs {first & second}"
    assert len(ran) == 9


def test_a_token_bigger_than_the_node_stays_todo_and_the_pilot_says_so(site: Site) -> None:
    records = site.folder / "records"
    records.mkdir()
    tokens = [
        {"id": "fits", "cores": 2, "seconds": 0.1},
        {"id": "too-big", "cores": 5, "seconds": 0.1},
        {"id": "too-many-gpus", "gpus": 1, "seconds": 0.1},
    ]
    site.write(
        local_config(site.folder, sized_command(records), pilot={"cores": 4, "bind": False, "gpus": 0})
    )
    site.add_tokens(tokens)
    log = run_pilot(site)
    assert "2 todo token(s) left for a bigger node: none fits this one (4 core(s), 0 GPU(s)" in log
    assert "pilot ends (exit 0): pool empty: nothing left to claim; 2 todo token(s) left" in log
    rows = {row["id"]: row for row in pool_rows(site.folder / "pool.db")}
    assert rows["fits"]["state"] == "done"
    for name in ("too-big", "too-many-gpus"):
        assert rows[name]["state"] == "todo" and rows[name]["attempts"] == []  # never claimed


def test_memory_enforcement_kills_the_task_over_its_request_and_nothing_else(site: Site) -> None:
    command = [sys.executable, str(BURN), "{mb}", "0", "{seconds}"]
    site.write(
        local_config(
            site.folder,
            command,
            task={"memory": "120MB", "enforce_memory": True},
            pilot={"slots": 2, "cores": 2, "bind": False},
        )
    )
    site.add_tokens([{"id": "within", "mb": 40, "seconds": 2}, {"id": "over", "mb": 400, "seconds": 5}])
    log = run_pilot(site)
    rows = {row["id"]: row for row in pool_rows(site.folder / "pool.db")}
    assert rows["within"]["state"] == "done"
    assert rows["over"]["state"] == "error"
    attempt = rows["over"]["attempts"][-1]
    assert attempt["outcome"] == "memory"
    assert attempt["reason"].startswith("memory: ") and "over its request of 114.4MiB" in attempt["reason"]
    assert attempt["ended"] - attempt["started"] < 4  # killed within its 5 s, not at its end
    assert "token=over WARNING memory:" in log


def test_each_attempt_records_cpu_seconds_and_peak_rss(site: Site) -> None:
    command = [sys.executable, str(BURN), "200", "1.0"]
    site.write(local_config(site.folder, command))
    site.add_tokens([{"id": "burner"}])
    run_pilot(site)
    (row,) = pool_rows(site.folder / "pool.db")
    attempt = row["attempts"][-1]
    assert attempt["cpu_user"] + attempt["cpu_system"] >= 0.95  # process_time: user and system
    assert attempt["cpu_user"] + attempt["cpu_system"] < 5
    assert 200 * 2**20 <= attempt["max_rss"] < 400 * 2**20
    assert attempt["cores"] == 1
    shown = site.run("tokens", "show", "burner")
    assert '"cpu_user":' in shown.stdout and '"max_rss":' in shown.stdout


# -- in this process, with the clocks injected ------------------------------------------------------


def waiting_pilot(tmp_path: Path, how: str, stopped: float) -> tuple[Pilot, Lease]:
    """A pilot with cores = 4 whose clock is ``stopped`` seconds ahead of the pool's, holding a
    whole-node token it claimed: ``held`` for room while a task ran (it ended since), or ``early``,
    claimed with a report and about to start."""
    tmp_path.mkdir(exist_ok=True)  # one per pilot
    sections = local_config(tmp_path, ["/bin/true"], pilot={"cores": 4, "bind": False})
    (tmp_path / "site.toml").write_text(to_toml(sections))
    config = load(tmp_path / "site.toml", {})
    pool = open_pool(config.server, Identity("a", "node", None), create=True)
    pool.add([NewToken("whole", {"cores": 4})])
    walltime = Walltime(End(None, "test"), config.walltime)
    pilot = Pilot(config, pool, Identity("a", "node", None), walltime, environ={}, cache_paths={})
    pilot.wallclock = lambda: time.time() + stopped
    [lease] = pool.claim(1)
    if how == "held":
        pilot.book.grant("small", Request())  # a task runs: the whole-node token waits
        assert pilot.book.place("whole", lease.token.fields, lease, 0.0).grant is None
        pilot.book.release("small")
    else:
        assert pilot.book.place("whole", lease.token.fields, lease, 0.0).grant is not None
        pilot.claimed_early.append(lease)
    return pilot, lease


@pytest.mark.parametrize("how", ["held", "early"])
def test_a_token_whose_lease_ran_out_before_its_task_started_is_not_started(tmp_path: Path, how: str) -> None:
    # A pilot stopped (SIGSTOP) while it held a token for room (its running tasks ended meanwhile, and
    # renewals were made only while tasks ran), or while its report claimed the next token: the lease
    # ran out, another pilot ran the token to done, and the woken pilot started it (the soak's "run 1
    # ... started after it was done" on CouchDB). Such a lease is renewed first: lost, nothing starts.
    pilot, _ = waiting_pilot(tmp_path, how, stopped=35.0)  # the lease is 30 s
    other = LocalPool(
        tmp_path / "pool.db", Identity("b", "node", None), 30.0, clock=lambda: time.time() + 31.0
    )
    [taken] = other.claim(1)  # the lease ran out: another pilot takes the token and runs it
    now = time.time()
    other.report(taken, make_report(taken.token, Result(Outcome.DONE, "exit code 0", now, now, 0), 3))
    for claimed in pilot._claim():
        pilot._run(claimed)
    assert not pilot.running and pilot.book.held is None and not pilot.book.grants
    assert [a.outcome for a in pilot.pool.get("whole").attempts] == ["lease-expired", "done"]
    pilot.pool.close()
    other.close()


@pytest.mark.parametrize("how", ["held", "early"])
def test_a_token_whose_lease_is_fresh_starts_and_one_still_ours_is_renewed_first(
    tmp_path: Path, how: str
) -> None:
    for stopped, renewed in ((0.0, False), (25.0, True)):  # 25 s: stopped, but nobody took the token
        pilot, lease = waiting_pilot(tmp_path / str(stopped), how, stopped)
        [claimed] = pilot._claim()
        pilot._run(claimed)
        started = pilot.running["whole"]
        started.payload.process.wait()
        assert started.lease.lease_id == lease.lease_id
        assert (started.lease.expires > lease.expires) is renewed
        pilot.pool.close()


def test_a_token_claimed_again_while_its_run_goes_on_here_is_given_back_and_runs_once(tmp_path: Path) -> None:
    # The soak's KeyError: a pilot stopped past its task's lease; woken, its next claim got the same token
    # back (its lease had run out and nobody else took it) and placed it over the running task's grant.
    # The old task's end then freed the new grant, and the loop's look at it raised KeyError.
    sections = local_config(tmp_path, ["sleep", "30"], pilot={"cores": 2, "bind": False})
    (tmp_path / "site.toml").write_text(to_toml(sections))
    config = load(tmp_path / "site.toml", {})
    ahead = [0.0]  # how far the pool's clock is past the pilot's stop
    pool = LocalPool(
        tmp_path / "pool.db",
        Identity("a", "node", None),
        30.0,
        create=True,
        clock=lambda: time.time() + ahead[0],
    )
    pool.add([NewToken("long", {})])
    walltime = Walltime(End(None, "test"), config.walltime)
    pilot = Pilot(config, pool, Identity("a", "node", None), walltime, environ={}, cache_paths={})
    [lease] = pilot._claim()
    pilot._run(lease)
    first = pilot.running["long"]
    cpus = pilot.book.grants["long"].cpus
    try:
        ahead[0] = 31.0  # stopped past the lease: the next claim hands the token out again
        pilot.next_claim = 0.0  # the pool was empty at the last claim: claim again now, not after a poll
        again = pilot._claim()
        assert again == []  # given back, not started beside its first run
        assert list(pilot.running) == ["long"] and pilot.running["long"] is first
        assert pilot.book.grants["long"].cpus == cpus and len(pilot.book.free_cpus) == 1
        token = pool.get("long")
        assert token.state.value == "todo"
        assert [a.outcome for a in token.attempts][-1:] == ["interrupted"]
        assert "claimed again while its earlier run on this pilot went on" in token.attempts[-1].reason
    finally:
        os.kill(first.payload.process.pid, signal.SIGKILL)
        first.payload.process.wait()
    pilot._report_all(pilot._finished())
    assert not pilot.running and not pilot.book.grants and list(pilot.suspects) == ["long"]
    pilot._release_suspects(["long"])  # the breaker held the killed run; its report is refused
    assert pilot.tally.conflicts == 1
    assert pool.get("long").state.value == "todo"
    pool.close()


def test_an_idle_pilot_beside_tokens_too_big_for_it_looks_at_the_pool_less_and_less_often(
    tmp_path: Path,
) -> None:
    # Each look of a pilot with the node free tests every todo token against its fit, on the server: a
    # pilot waiting (idle_timeout) beside tokens none of its claims can take backs off, up to 8 polls.
    sections = local_config(tmp_path, ["/bin/true"], pilot={"cores": 4, "bind": False, "idle_timeout": "1h"})
    (tmp_path / "site.toml").write_text(to_toml(sections))
    config = load(tmp_path / "site.toml", {})
    pool = open_pool(config.server, Identity("a", "node", None), create=True)
    pool.add([NewToken("held", {"cores": 1}), NewToken("big", {"cores": 8})])
    other = LocalPool(tmp_path / "pool.db", Identity("b", "node", None), 600.0)
    [held] = other.claim(1, None)
    assert held.token.id == "held"  # locked by another pilot: worth waiting for
    now = [0.0]
    walltime = Walltime(End(None, "test"), config.walltime)
    identity = Identity("a", "node", None)
    pilot = Pilot(config, pool, identity, walltime, environ={}, cache_paths={}, clock=lambda: now[0])
    pilot.next_claim = 0.0  # no start jitter
    looks: list[float] = []
    claim = pool.claim

    def counted(wanted: int, fit: object = None) -> list[Lease]:
        looks.append(now[0])
        return claim(wanted, fit)

    pool.claim = counted  # type: ignore[method-assign]
    for second in range(400):
        now[0] = float(second)
        assert pilot._claim() == []
    assert pilot.empty_poll == 10.0
    assert looks == [0.0, 10.0, 30.0, 70.0, 150.0, 230.0, 310.0, 390.0]
    assert pilot.idle.left_behind == 1 and pilot.idle.locked_elsewhere == 1
    assert pilot.idle.ending(now[0]) is None  # still waiting for "held", within its hour
