"""When the batch job ends, how long a task takes, and whether another task still fits.

Pure logic with the clock passed in: ``Walltime.verdict(now)`` answers before each claim. Where the end
comes from is decided once at start (``find_end``), never once per task: the first source that answers
wins, in this order:

1. ``--walltime`` or ``walltime.limit``, counted from the pilot's start;
2. Slurm: ``SLURM_JOB_END_TIME`` (set by newer Slurm), else one ``squeue`` (or ``scontrol``) query;
3. PBS/Torque: ``qstat -f`` (limit minus time used), else ``PBS_WALLTIME``;
4. HTCondor: ``AllowedJobDuration`` or ``MaxWallTimeMins`` in the job ad (``$_CONDOR_JOB_AD``);
5. grid sites with Machine/Job Features: ``$JOBFEATURES/shutdowntime_job`` or ``wall_limit_secs``;
6. otherwise no limit, and the first log lines say so and why.

The environment comes in as a mapping and external commands go through ``run`` (an argv list, the
environment and a timeout), so that the unit tests can answer for the batch system.
"""

from __future__ import annotations

import calendar
import math
import re
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from agent.config import WalltimeConfig
from agent.units import format_duration, parse_duration

QUERY_TIMEOUT = 10.0  # seconds one batch-system query may take; the pilot waits for it before any claim
TOKEN_ESTIMATE = "expected_duration"  # a token field: its own task's duration, "20m" or seconds
# Slurm prints times in the caller's time zone and format: ask for UTC in the standard format.
_SLURM_QUERY_ENV = {"TZ": "UTC", "SLURM_TIME_FORMAT": "standard"}
_SLURM_TIME = "%Y-%m-%dT%H:%M:%S"
_SLURM_NO_END = ("NONE", "Unknown", "N/A", "UNLIMITED", "INFINITE")

Run = Callable[[Sequence[str], Mapping[str, str], float], str]


@dataclass(frozen=True)
class End:
    """The job's end as a monotonic time, and where we learned it; ``at`` None means no known limit.

    ``notes`` say which sources were asked and could not answer (a failed query, an unreadable file)."""

    at: Optional[float]
    source: str
    notes: tuple[str, ...] = ()


class Estimator:
    """What a task is expected to take: the configured value until ``min_samples`` tasks were measured
    on this node, then a high percentile of the recent durations times a safety factor."""

    def __init__(
        self,
        configured: float,
        *,
        percentile: float = 0.9,
        factor: float = 1.2,
        min_samples: int = 3,
        window: int = 50,
    ) -> None:
        self.configured = configured
        self.percentile = percentile
        self.factor = factor
        self.min_samples = min_samples
        self.durations: deque[float] = deque(maxlen=window)
        self._expected: Optional[float] = None  # until the next record: the loop asks several times a task

    def record(self, seconds: float) -> None:
        self.durations.append(max(0.0, seconds))
        self._expected = None

    def expected(self) -> float:
        if self._expected is None:
            self._expected = self._estimate()
        return self._expected

    def _estimate(self) -> float:
        if len(self.durations) < self.min_samples:
            return self.configured
        ordered = sorted(self.durations)
        index = min(len(ordered) - 1, math.ceil(self.percentile * len(ordered)) - 1)
        return ordered[index] * self.factor

    def basis(self) -> str:
        """Where ``expected`` comes from, for the log."""
        if len(self.durations) < self.min_samples:
            return "walltime.expected"
        return f"measured over {len(self.durations)} tasks"

    def describe(self) -> str:
        return f"about {format_duration(self.expected())} ({self.basis()})"


class Walltime:
    def __init__(self, end: End, config: WalltimeConfig) -> None:
        self.end = end
        self.margin = config.margin
        self.estimator = Estimator(config.expected)
        self.sizes: dict[int, Estimator] = {}  # per task size (cores given): tasks of 16 cores run longer

    def record(self, seconds: float, cores: Optional[int] = None) -> None:
        self.estimator.record(seconds)
        if cores is not None:
            self.sizes.setdefault(cores, Estimator(self.estimator.configured)).record(seconds)

    def size_estimate(self, cores: int) -> Optional[tuple[float, str]]:
        """What a task of this size is expected to take, and the basis, once tasks of its size were
        measured; None before (the estimator over all sizes answers then)."""
        estimator = self.sizes.get(cores)
        if estimator is None or len(estimator.durations) < estimator.min_samples:
            return None
        return estimator.expected(), f"measured over {len(estimator.durations)} tasks of {cores} core(s)"

    def left(self, now: float) -> Optional[float]:
        """Seconds until the job's end, or None when there is no known limit."""
        return None if self.end.at is None else self.end.at - now

    def verdict(self, now: float, estimate: Optional[float] = None, basis: str = "") -> Optional[str]:
        """None when a task fits before the end minus the margin; otherwise the reason to drain, as it goes
        into the log. The task takes ``estimate`` seconds (``basis`` says whose estimate that is), or by
        default what the estimator expects."""
        left = self.left(now)
        if left is None:
            return None
        if estimate is None:
            estimate, basis = self.estimator.expected(), self.estimator.basis()
        if left - self.margin >= estimate:
            return None
        return (
            f"drain: {format_duration(max(0.0, left))} left, tasks take about {format_duration(estimate)} "
            f"({basis}) and the last {format_duration(self.margin)} are kept as margin"
        )

    def describe(self, now: float) -> str:
        left = self.left(now)
        notes = "".join(f"; {note}" for note in self.end.notes)
        if left is None:
            return f"walltime: no limit known ({self.end.source}{notes}); tasks run until the pool is empty"
        return (
            f"walltime: {format_duration(left)} left ({self.end.source}{notes}), margin "
            f"{format_duration(self.margin)}, tasks expected to take {self.estimator.describe()}"
        )


def token_estimate(fields: Mapping[str, Any]) -> Optional[float]:
    """A token's own estimate of its task's duration in seconds (field ``expected_duration``: "20m" or a
    number of seconds), or None when it has none. ValueError when the field is not a duration."""
    value = fields.get(TOKEN_ESTIMATE)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f'expected a duration like "20m" or a number of seconds, got {value!r}')


# -- where the end comes from ----------------------------------------------------------------------


class NoAnswer(Exception):
    """A source that applies (its batch system is there) could not tell the end: why, for the log."""


@dataclass(frozen=True)
class _Answer:
    end: Optional[float]  # epoch seconds; None: this batch system says the job has no time limit
    source: str
    notes: tuple[str, ...] = ()  # what failed on the way, e.g. squeue before scontrol answered


def run_command(argv: Sequence[str], environ: Mapping[str, str], timeout: float) -> str:
    """Run a batch-system query (argv, no shell) and return its output; NoAnswer says why it failed."""
    shown = " ".join(argv)
    try:
        done = subprocess.run(
            list(argv),
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise NoAnswer(f"{shown}: no answer within {format_duration(timeout)}") from None
    except OSError as err:
        raise NoAnswer(f"{shown}: {err.strerror or err}") from None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or [""])[0]
        raise NoAnswer(f"{shown}: exit code {done.returncode}{': ' + first if first else ''}")
    return done.stdout


def find_end(
    config: WalltimeConfig,
    environ: Mapping[str, str],
    now_epoch: float,
    now_mono: float,
    *,
    run: Run = run_command,
) -> End:
    """The job's end, first source that answers (see the module's docstring). Called once at start."""
    if config.limit is not None:
        return End(now_mono + config.limit, f"limit {format_duration(config.limit)} from the pilot's start")
    notes: list[str] = []
    for source in (_slurm, _pbs, _condor, _job_features):
        try:
            answer = source(environ, now_epoch, run)
        except NoAnswer as err:
            notes.append(str(err))
            continue
        if answer is None:
            continue
        at = None if answer.end is None else now_mono + (answer.end - now_epoch)
        return End(at, answer.source, (*notes, *answer.notes))
    if notes:
        return End(None, "no batch system source answered", tuple(notes))
    return End(None, "no --walltime, no walltime.limit, no batch system limit found")


def _slurm(environ: Mapping[str, str], now_epoch: float, run: Run) -> Optional[_Answer]:
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None
    given = environ.get("SLURM_JOB_END_TIME")
    if given and given.isdigit():
        return _Answer(float(given), f"Slurm job {job}: SLURM_JOB_END_TIME")
    query_env = {**environ, **_SLURM_QUERY_ENV}
    notes: list[str] = []
    # Asked about an array's job id, both list every task of the array: keep the line of our job id.
    queries = (
        (["squeue", "-h", "-j", job, "-o", "%A %e"], r"^(\d+) (\S+)$"),
        (["scontrol", "-o", "show", "job", job], r"^JobId=(\d+) .*?\bEndTime=(\S+)"),
    )
    for argv, pattern in queries:
        try:
            text = run(argv, query_env, QUERY_TIMEOUT)
        except NoAnswer as err:
            notes.append(str(err))
            continue
        value = dict(re.findall(pattern, text, re.MULTILINE)).get(job, "")
        if value in _SLURM_NO_END:
            return _Answer(None, f"Slurm job {job} has no time limit ({argv[0]}: end {value})", tuple(notes))
        try:
            end = calendar.timegm(time.strptime(value, _SLURM_TIME))
        except ValueError:
            notes.append(f"{' '.join(argv)}: no end time for job {job} in {text.strip()[:80]!r}")
            continue
        return _Answer(float(end), f"Slurm job {job}: {argv[0]} says it ends {value} UTC", tuple(notes))
    raise NoAnswer("; ".join(notes))


def _pbs(environ: Mapping[str, str], now_epoch: float, run: Run) -> Optional[_Answer]:
    job = environ.get("PBS_JOBID")
    if not job:
        return None
    try:
        left = _pbs_left(run(["qstat", "-f", job], environ, QUERY_TIMEOUT), job)
        return _Answer(now_epoch + left, f"PBS job {job}: qstat -f, walltime limit minus walltime used")
    except NoAnswer as err:
        given = environ.get("PBS_WALLTIME", "")  # Torque: the limit in seconds, from the job's start
        if not given.isdigit():
            raise
        source = f"PBS job {job}: PBS_WALLTIME, counted from the pilot's start"
        return _Answer(now_epoch + float(given), source, (str(err),))


def _pbs_left(qstat: str, job: str) -> float:
    """Seconds left from ``qstat -f``: Resource_List.walltime minus resources_used.walltime."""
    limit = re.search(r"Resource_List\.walltime = (\S+)", qstat)
    if not limit:
        raise NoAnswer(f"qstat -f {job}: no Resource_List.walltime")
    used = re.search(r"resources_used\.walltime = (\S+)", qstat)
    return _hms(limit.group(1)) - (_hms(used.group(1)) if used else 0.0)


def _hms(text: str) -> float:
    """PBS durations: seconds, or [[hours:]minutes:]seconds."""
    try:
        total = 0.0
        for part in text.split(":"):
            total = total * 60 + float(part)
        return total
    except ValueError:
        raise NoAnswer(f"qstat: {text!r} is not a duration") from None


def _condor(environ: Mapping[str, str], now_epoch: float, run: Run) -> Optional[_Answer]:
    path = environ.get("_CONDOR_JOB_AD")
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise NoAnswer(f"HTCondor job ad {path}: {err.strerror}") from None
    ad = dict(re.findall(r"^\s*(\w+)\s*=\s*(\S+)\s*$", text, re.MULTILINE))
    start = float(ad["JobCurrentStartDate"]) if ad.get("JobCurrentStartDate", "").isdigit() else now_epoch
    for name, unit in (("AllowedJobDuration", 1), ("MaxWallTimeMins", 60)):
        if ad.get(name, "").isdigit():
            return _Answer(start + int(ad[name]) * unit, f"HTCondor job ad: {name} = {ad[name]}")
    raise NoAnswer(f"HTCondor job ad {path}: no AllowedJobDuration or MaxWallTimeMins")


def _job_features(environ: Mapping[str, str], now_epoch: float, run: Run) -> Optional[_Answer]:
    """Machine/Job Features (HSF-TN-2016-02), as grid sites provide them in a local folder."""
    folder = environ.get("JOBFEATURES")
    if not folder:
        return None
    if "://" in folder:
        raise NoAnswer(f"JOBFEATURES {folder}: only a local folder is read, not a URL")
    features = {}
    for name in ("shutdowntime_job", "wall_limit_secs", "jobstart_secs"):
        try:
            value = (Path(folder) / name).read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if value.isdigit():
            features[name] = float(value)
    if "shutdowntime_job" in features:
        return _Answer(features["shutdowntime_job"], "$JOBFEATURES/shutdowntime_job")
    if "wall_limit_secs" in features:
        start = features.get("jobstart_secs", now_epoch)
        return _Answer(start + features["wall_limit_secs"], "$JOBFEATURES/wall_limit_secs")
    raise NoAnswer(f"JOBFEATURES {folder}: no shutdowntime_job or wall_limit_secs")
