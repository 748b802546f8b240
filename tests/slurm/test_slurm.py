"""Pilots inside real Slurm jobs on a single-node Slurm started for the session (see slurm_cluster.py).

Each job runs the built pilot.pyz with the test's site.toml (absolute paths: Slurm runs a copy of the
script). Slurm's --time counts in minutes and its signals come on a 30-second beat, so the tasks are a
few seconds long and each test takes about a minute. If Slurm cannot start, these tests fail with the
reason; they never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, Site, alive, local_config, pool_rows, wait_for
from slurm_cluster import SlurmCluster, start_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

RECORD = REPO / "tests" / "tasks" / "record.py"
EXAMPLE = REPO / "site-configs" / "slurm.sbatch"


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    try:
        cluster = start_cluster()
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.folder, ignore_errors=True)


def pilot_job(site: Site) -> Path:
    """A batch script that becomes the pilot (exec), as site-configs/slurm.sbatch does."""
    script = site.folder / "pilot.sbatch"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{site.pyz.resolve()}" --config "{site.config}"\n')
    return script


def prepare(site: Site, tokens: int, seconds: float, slots: int = 1, **walltime: str) -> None:
    """A site.toml whose tasks append their token id to ran.log after ``seconds``, and its tokens."""
    command = [sys.executable, str(RECORD), str(site.folder / "ran.log"), "{id}", str(seconds)]
    site.write(local_config(site.folder, command, pilot={"slots": slots}, walltime=walltime))
    assert site.run("tokens", "add", "--range", str(tokens)).returncode == 0


def ran(site: Site) -> list[str]:
    path = site.folder / "ran.log"
    return path.read_text().split() if path.exists() else []


def start_two_tasks(slurm: SlurmCluster, site: Site) -> tuple[str, Path, list[int]]:
    """Submit a 5-minute pilot job with two slots; return the job id, its log and its two tasks' pids."""
    log = site.folder / "job.log"
    job = slurm.sbatch("--time=5", "--cpus-per-task=2", f"--output={log}", str(pilot_job(site)), env=site.env)
    found = wait_for(lambda: running_tasks(site, 2), 60, what=f"two tasks running in job {job}")
    return job, log, [int(wait_for(path.read_text, 5, what="a task's pid")) for path in found]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # state, ppid, ...


def running_tasks(site: Site, count: int) -> list[Path]:
    """The pid files of the running tasks once there are ``count`` of them (record.py writes them)."""
    found = list((site.folder / "work").glob("*/*/pid"))
    return found if len(found) == count else []


def test_job_time_leaves_room_for_part_of_the_pool_pilot_drains_in_time(
    slurm: SlurmCluster, site: Site
) -> None:
    # 60 s of job, 8 s tasks, 5 s margin: about six tasks fit; the rest must stay todo, untouched.
    prepare(site, 12, 8, margin="5s", expected="10s")
    log = site.folder / "job.log"
    job = slurm.sbatch("--time=1", f"--output={log}", str(pilot_job(site)), env=site.env)
    assert slurm.wait_done(job, timeout=150) == ["COMPLETED"], log.read_text()
    assert slurm.job(job)["ExitCode"] == "0:0"
    text = log.read_text()
    assert f"(Slurm job {job}: squeue says it ends " in text, text  # 22.05 sets no SLURM_JOB_END_TIME
    assert "drain: " in text and " left, tasks take about " in text, text
    assert "pilot ends (exit 0): drain: " in text, text
    rows = {row["id"]: row for row in pool_rows(site.folder / "pool.db")}
    done = sorted(token for token, row in rows.items() if row["state"] == "done")
    todo = sorted(token for token, row in rows.items() if row["state"] == "todo")
    assert len(done) >= 3 and len(todo) >= 3 and len(done) + len(todo) == 12, rows
    assert sorted(ran(site)) == done  # every task that started finished: none was cut off
    for token in done:
        assert [a["outcome"] for a in rows[token]["attempts"]] == ["done"]
        assert rows[token]["attempts"][0]["batch_job"] == f"slurm:{job}"
    for token in todo:
        assert rows[token]["attempts"] == [], "a token the pilot could not finish must not be started"


def test_scancel_mid_task_gives_the_tokens_back_as_interrupted(slurm: SlurmCluster, site: Site) -> None:
    prepare(site, 4, 300, slots=2, margin="10s", expected="30s")
    job, log, task_pids = start_two_tasks(slurm, site)
    slurm.run("scancel", job)
    # TERM went to the pilot and its tasks; KILL would follow after KillWait (30 s), and a killed pilot gives
    # nothing back: tokens in todo before then came through the pilot's TERM path. (10 s was too short
    # once in a fresh CI run after the resources merge; the cause is not found: see the closing note.)
    wait_for(lambda: site.status()["todo"] == 4, 25, what="both tokens back in todo")
    assert slurm.wait_done(job, timeout=40) == ["CANCELLED"]
    assert not any(alive(pid) for pid in task_pids)
    assert ran(site) == []
    started = [row for row in pool_rows(site.folder / "pool.db") if row["attempts"]]
    assert len(started) == 2
    for row in started:
        assert row["state"] == "todo" and row["failures"] == 0, row
        [attempt] = row["attempts"]
        assert attempt["outcome"] == "interrupted", attempt
        assert attempt["reason"] == "interrupted: the pilot got SIGTERM"
    text = log.read_text()
    assert "SIGTERM: stopping 2 running task(s) and giving their tokens back" in text, text
    assert "pilot ends (exit 143): stopped by SIGTERM" in text, text


def test_example_array_drains_on_slurms_usr1_warning(slurm: SlurmCluster, site: Site) -> None:
    # site-configs/slurm.sbatch as shipped, two pilots. Slurm sends USR1 on its 30 s beat once the
    # end is less than 80 s (+ up to 30 s) away: 10 to 40 s into this 2-minute job, long before the
    # walltime itself would make the pilots drain.
    prepare(site, 40, 4, margin="5s", expected="5s")
    env = {
        **site.env,
        "PILOT_PYZ": str(site.pyz.resolve()),
        "PILOT_CONFIG": str(site.config),
        "PILOT_PYTHON": sys.executable,
    }
    job = slurm.sbatch(
        "--array=1-2",
        "--time=2",
        "--signal=B:USR1@80",
        f"--output={site.folder}/pilot-%A_%a.log",
        str(EXAMPLE),
        env=env,
    )
    assert slurm.wait_done(job, timeout=150) == ["COMPLETED", "COMPLETED"]
    logs = sorted(site.folder.glob(f"pilot-{job}_*.log"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        assert "squeue says it ends" in text, text
        assert "drain requested by SIGUSR1: no more claims" in text, text
        assert "pilot ends (exit 0): drain requested by SIGUSR1" in text, text
    rows = pool_rows(site.folder / "pool.db")
    done = [row for row in rows if row["state"] == "done"]
    assert len(done) == len(ran(site)) and 0 < len(done) < 40
    assert {row["state"] for row in rows} == {"done", "todo"}
    assert all([a["outcome"] for a in row["attempts"]] in (["done"], []) for row in rows)


def test_second_term_kills_tasks_that_ignore_the_first_at_once(slurm: SlurmCluster, site: Site) -> None:
    # The tasks ignore TERM and the grace is long: only the second TERM gets them killed in time.
    stubborn = ["/bin/sh", "-c", "trap '' TERM; echo $$ > pid; exec sleep 300"]
    site.write(
        local_config(
            site.folder,
            stubborn,
            pilot={"slots": 2},
            task={"kill_grace": "25s"},
            walltime={"expected": "30s"},
        )
    )
    assert site.run("tokens", "add", "--range", "2").returncode == 0
    job, log, task_pids = start_two_tasks(slurm, site)
    slurm.run("scancel", job)
    wait_for(lambda: "SIGTERM: stopping 2 running task(s)" in log.read_text(), 10, what="the first TERM")
    assert site.status()["locked"] == 2  # the tasks ignore TERM: the pilot waits for its grace
    # Slurm sends its TERM once; a second comes from someone on the node (a user's second Ctrl-C).
    os.kill(parent_of(task_pids[0]), signal.SIGTERM)
    wait_for(lambda: site.status()["todo"] == 2, 10, what="both tokens back in todo")
    assert not any(alive(pid) for pid in task_pids)
    text = log.read_text()
    assert "second stop signal: killing running tasks now" in text, text
    for row in pool_rows(site.folder / "pool.db"):
        [attempt] = row["attempts"]
        assert (attempt["outcome"], attempt["reason"]) == (
            "interrupted",
            "interrupted: the pilot got SIGTERM",
        )
        assert row["failures"] == 0
    assert slurm.wait_done(job, timeout=40) == ["CANCELLED"]


@pytest.mark.parametrize("cpus", [1, 2])
def test_auto_cores_under_slurm_are_the_jobs_cpus(slurm: SlurmCluster, site: Site, cpus: int) -> None:
    # The test node declares 4 CPUs on a smaller machine and binds nothing (task/none): the job's
    # affinity is the whole machine, so only Slurm's count says 1.
    records = site.folder / "records"
    records.mkdir()
    command = [sys.executable, str(REPO / "tests" / "tasks" / "sized.py"), str(records), "{id}", "0.1"]
    site.write(
        local_config(site.folder, command, pilot={"slots": cpus}, walltime={"margin": "5s", "expected": "5s"})
    )
    site.add_tokens([{"id": f"t{i}", "cores": 1 + i % cpus} for i in range(4)])
    log = site.folder / "job.log"
    job = slurm.sbatch(
        "--time=2", f"--cpus-per-task={cpus}", f"--output={log}", str(pilot_job(site)), env=site.env
    )
    assert slurm.wait_done(job, timeout=150) == ["COMPLETED"], log.read_text()
    text = log.read_text()
    assert f"node: cores: {cpus} (CPU affinity " in text and f"SLURM_CPUS_ON_NODE {cpus}" in text, text
    assert site.status()["done"] == 4
    for path in records.glob("*.json"):
        assert int(json.loads(path.read_text())["env"]["PILOT_CORES"]) <= cpus
