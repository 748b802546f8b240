"""Where the job's end comes from and whether another task fits: pure logic with the clock and the batch
system's answers injected. No sleeps, no batch system (tests/slurm/ runs the real Slurm)."""

from __future__ import annotations

import calendar
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Callable, Optional

import pytest
from conftest import REPO, local_config, to_toml

from agent.config import WalltimeConfig, load
from agent.errors import ExitCode
from agent.identity import Identity
from agent.pilot import Pilot
from agent.pools import NewToken, Pool, open_pool
from agent.walltime import (
    End,
    Estimator,
    NoAnswer,
    Walltime,
    find_end,
    run_command,
    token_estimate,
)

AUTO = WalltimeConfig(limit=None, margin=120.0, expected=600.0)
EPOCH = 1_800_000_000.0  # the injected wall clock
MONO = 5_000.0  # the injected monotonic clock at the same moment


class Batch:
    """Answers the batch-system queries find_end makes, and remembers them."""

    def __init__(self, answers: Mapping[str, str]) -> None:
        self.answers = answers  # program name -> output; a missing program fails like a missing command
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: Sequence[str], environ: Mapping[str, str], timeout: float) -> str:
        self.calls.append((list(argv), dict(environ)))
        assert timeout > 0
        if argv[0] not in self.answers:
            raise NoAnswer(f"{argv[0]}: No such file or directory")
        return self.answers[argv[0]]


def utc(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))


def end_of(environ: Mapping[str, str], batch: Optional[Batch] = None, config: WalltimeConfig = AUTO) -> End:
    return find_end(config, environ, EPOCH, MONO, run=batch or Batch({}))


# -- the estimate ------------------------------------------------------------------------------------


def test_estimate_is_the_configured_value_until_three_tasks_were_measured() -> None:
    estimator = Estimator(600.0)
    estimator.record(100.0)
    estimator.record(120.0)
    assert estimator.expected() == 600.0
    assert "walltime.expected" in estimator.describe()
    estimator.record(110.0)
    assert estimator.expected() == pytest.approx(120.0 * 1.2)
    assert "measured over 3 tasks" in estimator.describe()


def test_estimate_is_a_high_percentile_so_one_slow_task_in_ten_counts() -> None:
    estimator = Estimator(600.0)
    for seconds in [60.0] * 9 + [300.0]:
        estimator.record(seconds)
    assert estimator.expected() == pytest.approx(60.0 * 1.2)  # the 90th percentile of ten is the 9th
    estimator.record(300.0)
    assert estimator.expected() == pytest.approx(300.0 * 1.2)


# -- the decision ------------------------------------------------------------------------------------


def walltime(left: Optional[float], margin: float = 120.0, expected: float = 540.0) -> Walltime:
    end = End(None if left is None else MONO + left, "test")
    return Walltime(end, WalltimeConfig(limit=None, margin=margin, expected=expected))


def test_a_task_fits_while_time_left_minus_margin_covers_the_estimate() -> None:
    clock = walltime(left=3600.0, margin=120.0, expected=540.0)
    assert clock.verdict(MONO) is None
    assert clock.verdict(MONO + 3600 - 660) is None  # exactly estimate plus margin left
    assert clock.verdict(MONO + 3600 - 659) is not None


def test_drain_line_says_time_left_and_what_tasks_take() -> None:
    clock = walltime(left=3600.0, margin=120.0, expected=540.0)
    verdict = clock.verdict(MONO + 3600 - 360)
    assert verdict == (
        "drain: 6m left, tasks take about 9m (walltime.expected) and the last 2m are kept as margin"
    )


def test_drain_line_uses_measured_durations_once_there_are_some() -> None:
    clock = walltime(left=600.0, margin=120.0, expected=60.0)
    for seconds in (400.0, 420.0, 450.0):
        clock.estimator.record(seconds)
    verdict = clock.verdict(MONO)
    assert verdict is not None
    assert "10m left, tasks take about 9m (measured over 3 tasks)" in verdict


def test_a_token_estimate_is_judged_on_its_own() -> None:
    clock = walltime(left=1200.0, margin=120.0, expected=60.0)
    assert clock.verdict(MONO) is None
    verdict = clock.verdict(MONO, 1800.0, "expected_duration")
    assert verdict is not None
    assert verdict.startswith("drain: 20m left, tasks take about 30m (expected_duration)")


def test_without_a_known_end_everything_fits() -> None:
    clock = walltime(left=None)
    assert clock.verdict(MONO + 10**9) is None
    assert clock.verdict(MONO, 10.0**9, "expected_duration") is None
    assert "no limit known" in clock.describe(MONO)


def test_past_the_end_the_line_says_nothing_is_left() -> None:
    clock = walltime(left=10.0)
    verdict = clock.verdict(MONO + 100)
    assert verdict is not None and verdict.startswith("drain: 0.0s left")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({"expected_duration": "20m"}, 1200.0), ({"expected_duration": 90}, 90.0), ({"input": "x"}, None)],
)
def test_token_estimate_is_a_duration_or_seconds(fields: dict, expected: Optional[float]) -> None:
    assert token_estimate(fields) == expected


@pytest.mark.parametrize("value", ["soon", True, [1], -5])
def test_token_estimate_that_is_not_a_duration_is_an_error(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        token_estimate({"expected_duration": value})


# -- where the end comes from ------------------------------------------------------------------------


def test_configured_limit_wins_and_nothing_is_asked() -> None:
    batch = Batch({"squeue": "2027-01-01T00:00:00\n"})
    end = end_of({"SLURM_JOB_ID": "7"}, batch, WalltimeConfig(limit=7200.0, margin=60.0, expected=60.0))
    assert end.at == MONO + 7200.0
    assert "from the pilot's start" in end.source
    assert batch.calls == []


def test_slurm_end_time_variable_needs_no_query() -> None:
    batch = Batch({})
    end = end_of({"SLURM_JOB_ID": "7", "SLURM_JOB_END_TIME": str(int(EPOCH) + 3000)}, batch)
    assert end.at == MONO + 3000
    assert "SLURM_JOB_END_TIME" in end.source
    assert batch.calls == []


def test_slurm_without_the_variable_asks_squeue_once_in_utc() -> None:
    batch = Batch({"squeue": "7 2027-01-15T10:00:00\n", "scontrol": "JobId=7 EndTime=2000-01-01T00:00:00"})
    end = end_of({"SLURM_JOB_ID": "7", "TZ": "Europe/Amsterdam", "SLURM_TIME_FORMAT": "relative"}, batch)
    assert end.at == MONO + (utc("2027-01-15T10:00:00") - EPOCH)
    assert "squeue" in end.source and "2027-01-15T10:00:00 UTC" in end.source
    [(argv, environ)] = batch.calls
    assert argv == ["squeue", "-h", "-j", "7", "-o", "%A %e"]
    assert environ["TZ"] == "UTC" and environ["SLURM_TIME_FORMAT"] == "standard"


def test_slurm_falls_back_to_scontrol_when_squeue_fails() -> None:
    line = (
        "JobId=7 JobName=pilot TimeLimit=01:00:00 StartTime=2027-01-15T09:00:00 EndTime=2027-01-15T10:00:00"
    )
    batch = Batch({"scontrol": line + "\n"})
    end = end_of({"SLURM_JOB_ID": "7"}, batch)
    assert end.at == MONO + (utc("2027-01-15T10:00:00") - EPOCH)
    assert [argv[0] for argv, _ in batch.calls] == ["squeue", "scontrol"]


def test_slurm_array_task_picks_its_own_line() -> None:
    # The last task of an array has the array's job id, and both tools then list every task.
    batch = Batch({"squeue": "8 2027-01-15T10:00:00\n7 2027-01-15T11:00:00\n"})
    end = end_of({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2"}, batch)
    assert end.at == MONO + (utc("2027-01-15T11:00:00") - EPOCH)
    lines = (
        "JobId=8 ArrayJobId=7 EndTime=2027-01-15T10:00:00\nJobId=7 ArrayJobId=7 EndTime=2027-01-15T11:30:00\n"
    )
    end = end_of({"SLURM_JOB_ID": "7"}, Batch({"scontrol": lines}))
    assert end.at == MONO + (utc("2027-01-15T11:30:00") - EPOCH)
    assert end.notes == ("squeue: No such file or directory",)  # the first log line says squeue failed


def test_slurm_job_without_a_time_limit_has_no_end() -> None:
    end = end_of({"SLURM_JOB_ID": "7"}, Batch({"squeue": "7 NONE\n"}))
    assert end.at is None
    assert "no time limit" in end.source


def test_when_slurm_cannot_answer_the_first_log_line_says_why() -> None:
    end = end_of({"SLURM_JOB_ID": "7"}, Batch({"squeue": "garbage\n"}))
    assert end.at is None
    assert "no end time for job 7 in 'garbage'" in end.notes[0]
    assert "scontrol" in end.notes[0]
    line = Walltime(end, AUTO).describe(MONO)
    assert line.startswith("walltime: no limit known (no batch system source answered; squeue")


def test_pbs_end_is_the_limit_minus_the_time_used() -> None:
    qstat = (
        "Job Id: 42.server\n    Resource_List.walltime = 02:00:00\n    resources_used.walltime = 00:30:00\n"
    )
    end = end_of({"PBS_JOBID": "42.server"}, Batch({"qstat": qstat}))
    assert end.at == MONO + 5400.0
    assert "PBS job 42.server" in end.source


def test_pbs_walltime_variable_when_qstat_is_not_there() -> None:
    end = end_of({"PBS_JOBID": "42.server", "PBS_WALLTIME": "3600"}, Batch({}))
    assert end.at == MONO + 3600.0
    assert "PBS_WALLTIME" in end.source
    assert end.notes == ("qstat: No such file or directory",)


def test_htcondor_job_ad_duration_counts_from_the_job_start(tmp_path: Path) -> None:
    ad = tmp_path / ".job.ad"
    ad.write_text(f'Owner = "me"\nJobCurrentStartDate = {int(EPOCH) - 600}\nAllowedJobDuration = 3600\n')
    end = end_of({"_CONDOR_JOB_AD": str(ad)})
    assert end.at == MONO + 3000.0
    assert "AllowedJobDuration" in end.source


def test_htcondor_max_wall_time_mins(tmp_path: Path) -> None:
    ad = tmp_path / ".job.ad"
    ad.write_text("MaxWallTimeMins = 90\n")
    assert end_of({"_CONDOR_JOB_AD": str(ad)}).at == MONO + 5400.0


def test_job_features_shutdown_time_or_wall_limit(tmp_path: Path) -> None:
    (tmp_path / "wall_limit_secs").write_text("7200\n")
    (tmp_path / "jobstart_secs").write_text(f"{int(EPOCH) - 200}\n")
    assert end_of({"JOBFEATURES": str(tmp_path)}).at == MONO + 7000.0
    (tmp_path / "shutdowntime_job").write_text(f"{int(EPOCH) + 100}\n")
    end = end_of({"JOBFEATURES": str(tmp_path)})
    assert end.at == MONO + 100.0
    assert "shutdowntime_job" in end.source


def test_no_batch_system_means_no_limit_and_the_log_says_so() -> None:
    batch = Batch({})
    end = end_of({"HOME": "/root"}, batch)
    assert end == End(None, "no --walltime, no walltime.limit, no batch system limit found")
    assert batch.calls == []
    assert "tasks run until the pool is empty" in Walltime(end, AUTO).describe(MONO)


def test_run_command_reports_failures_missing_programs_and_timeouts() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    assert run_command([sys.executable, "-c", "print('2027-01-01T00:00:00')"], env, 10) == (
        "2027-01-01T00:00:00\n"
    )
    with pytest.raises(NoAnswer, match="exit code 3: boom"):
        run_command(
            [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], env, 10
        )
    with pytest.raises(NoAnswer, match="No such file"):
        run_command(["/nonexistent/squeue"], env, 10)
    with pytest.raises(NoAnswer, match="no answer within"):
        run_command([sys.executable, "-c", "import time; time.sleep(30)"], env, 0.5)


# -- the pilot's loop with an injected clock ---------------------------------------------------------


@pytest.fixture
def make_pilot(tmp_path: Path) -> Iterator[Callable[[float, list[dict]], Pilot]]:
    """Pilots on a real local pool whose job ends ``left`` seconds from the injected clock's now."""
    sections = local_config(tmp_path, ["/bin/true"], walltime={"margin": "60s", "expected": "5m"})
    (tmp_path / "site.toml").write_text(to_toml(sections))
    config = load(tmp_path / "site.toml", {})
    identity = Identity(pilot_id="test-pilot", host="testhost", batch_job=None)
    pools: list[Pool] = []

    def make(left: float, tokens: list[dict]) -> Pilot:
        pools.append(open_pool(config.server, identity, create=True))
        pools[-1].add([NewToken(token.pop("id"), token) for token in tokens])
        walltime = Walltime(End(MONO + left, "test"), config.walltime)
        return Pilot(config, pools[-1], identity, walltime, environ={}, cache_paths={}, clock=lambda: MONO)

    yield make
    for pool in pools:
        pool.close()


def test_pilot_claims_nothing_when_the_next_task_would_not_fit(make_pilot: Callable) -> None:
    pilot = make_pilot(300.0, [{"id": "a"}])
    ending = pilot.run()
    assert ending.code is ExitCode.OK
    assert (
        ending.reason
        == "drain: 5m left, tasks take about 5m (walltime.expected) and the last 1m are kept as margin"
    )
    assert pilot.pool.counts().todo == 1
    assert pilot.pool.get("a").attempts == ()


def test_token_whose_own_estimate_does_not_fit_goes_back_uncharged_and_the_pilot_drains(
    make_pilot: Callable,
) -> None:
    pilot = make_pilot(1200.0, [{"id": "long", "expected_duration": "30m"}])
    ending = pilot.run()
    assert ending.code is ExitCode.OK
    assert ending.reason.startswith("drain: 20m left, tasks take about 30m (expected_duration)")
    token = pilot.pool.get("long")
    assert token.state.value == "todo" and token.failures == 0
    [attempt] = token.attempts
    assert attempt.outcome == "interrupted" and attempt.started is None
    assert attempt.reason.startswith("not started: drain: 20m left")


def test_token_whose_own_estimate_fits_runs_even_if_it_is_longer_than_usual(make_pilot: Callable) -> None:
    pilot = make_pilot(3600.0, [{"id": "long", "expected_duration": "40m"}])
    assert pilot.run().reason.startswith("pool empty")
    assert pilot.pool.get("long").state.value == "done"


@pytest.mark.parametrize(
    ("name", "password"), [("slurm", ".config/pilot/couchdb.password"), ("grid", "couchdb.password")]
)
def test_site_config_examples_load_and_ask_the_batch_system(tmp_path: Path, name: str, password: str) -> None:
    config_file = tmp_path / f"{name}.toml"
    shutil.copy(REPO / "site-configs" / f"{name}.toml", config_file)
    secret = tmp_path / password
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    config = load(config_file, {"HOME": str(tmp_path), "TMPDIR": str(tmp_path)})
    assert config.walltime.limit is None  # "auto"
    assert config.walltime.margin >= 300 and config.task.kill_grace < 30  # inside Slurm's KillWait


def test_expected_durations_per_task_size_once_measured() -> None:
    walltime = Walltime(End(None, "none"), WalltimeConfig(limit=None, margin=60.0, expected=600.0))
    for seconds in (10.0, 10.0):
        walltime.record(seconds, cores=1)
    walltime.record(100.0, cores=16)
    assert walltime.size_estimate(1) is None  # two of three samples
    walltime.record(10.0, cores=1)
    estimate = walltime.size_estimate(1)
    assert estimate is not None and estimate[0] == 12.0 and "3 tasks of 1 core(s)" in estimate[1]
    assert walltime.size_estimate(16) is None and walltime.size_estimate(4) is None
    assert walltime.estimator.expected() == 120.0  # over all sizes: 90th percentile x 1.2
