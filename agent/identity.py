"""Who is running: the pilot id, the host and the batch job, recorded on every attempt."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Optional

# (variable, prefix) in the order we trust them; arrays add their task index.
_BATCH_IDS = (
    ("SLURM_JOB_ID", "slurm"),
    ("PBS_JOBID", "pbs"),
    ("LSB_JOBID", "lsf"),
    ("JOB_ID", "sge"),
    ("CONDOR_JOBID", "condor"),
    ("GLITE_WMS_JOBID", "glite"),
    ("DIRACJOBID", "dirac"),
)


@dataclass(frozen=True)
class Identity:
    pilot_id: str
    host: str
    batch_job: Optional[str]


def batch_job_id(environ: Mapping[str, str]) -> Optional[str]:
    """ "slurm:1234_7" for task 7 of array job 1234, "pbs:99.server", ...; None outside a batch job."""
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm:{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    for variable, prefix in _BATCH_IDS:
        value = environ.get(variable)
        if value:
            return f"{prefix}:{value}"
    return None


def make_identity(environ: Mapping[str, str], hostname: str, pid: int) -> Identity:
    """A pilot id that is unique across nodes and restarts: short host, pid and a random suffix."""
    short = hostname.split(".", 1)[0] or "localhost"
    return Identity(
        pilot_id=f"{short}-{pid}-{os.urandom(2).hex()}",
        host=hostname,
        batch_job=batch_job_id(environ),
    )


def unique_ids(prefix: Optional[str] = None) -> Iterator[str]:
    """Ids no other process makes: a random 64-bit prefix (unless given) and a counter. Cheaper than a
    uuid4 (and its getrandom call) each, for what is made once per task: task cookies and local lease ids."""
    start = prefix or random_prefix()
    return (f"{start}-{number}" for number in itertools.count())


def random_prefix() -> str:
    """64 random bits in hex: what sets one process's ids apart from every other's."""
    return os.urandom(8).hex()
