"""The tools issue 2 quotes beside its target, run here on the same 2,000 `/bin/true` with 2 at a time.

The issue gives their rates on its author's machine ("QCG-PilotJob's local mode ran about 1,100 trivial
tasks a second here, GNU parallel with 2 jobs about 380"). Run on this machine in the same session as the
pilot, they say how fast this machine is against that one, and where the pilot stands among agents that
do its job. ``install-references.sh`` installs them; a missing one is "not measured", never an error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
QCG_SERVICE = REPO / ".deps" / "qcg-venv" / "bin" / "qcg-pm-service"


def gnu_parallel(count: int, jobs: int) -> float:
    """Seconds for ``parallel -j JOBS /bin/true`` over ``count`` input lines, its start-up included."""
    lines = "".join(f"{n}\n" for n in range(count))
    start = time.perf_counter()
    subprocess.run(
        ["parallel", "--will-cite", "-j", str(jobs), "-N0", "/bin/true"],
        input=lines,
        text=True,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def qcg_pilotjob(count: int, cores: int) -> float:
    """Seconds for QCG-PilotJob's service in local mode (``--nodes CORES``, no batch system) to run one
    job of ``count`` iterations of /bin/true on 1 core each, its start-up included. Every iteration must
    be reported SUCCEED, or the figure would time a failure."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        requests = [
            {
                "request": "submit",
                "jobs": [
                    {
                        "name": "t",
                        "iteration": {"start": 0, "stop": count},
                        "execution": {"exec": "/bin/true"},
                        "resources": {"numCores": {"exact": 1}},
                    }
                ],
            },
            {"request": "control", "command": "finishAfterAllTasksDone"},
        ]
        took = qcg_service(folder, requests, cores)
        iterations = [record for record in qcg_report(folder) if str(record.get("name", "")).startswith("t:")]
        succeeded = sum(iteration["state"] == "SUCCEED" for iteration in iterations)
        if succeeded != count:
            raise SystemExit(f"QCG-PilotJob: {succeeded} of {count} iterations succeeded")
        return took


def qcg_service(folder: Path, requests: list[dict[str, Any]], cores: int) -> float:
    """Seconds for QCG-PilotJob's service in local mode (``--nodes CORES``: one node of that many cores)
    to take ``requests`` from a file in ``folder`` and finish, its start-up included."""
    (folder / "reqs.json").write_text(json.dumps(requests))
    argv = [str(QCG_SERVICE), "--file-path", "reqs.json", "--nodes", str(cores), "--log", "warning"]
    start = time.perf_counter()
    subprocess.run(
        [*argv, "--wd", str(folder)],
        cwd=folder,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def qcg_report(folder: Path) -> list[dict[str, Any]]:
    """The jobs (and iterations) QCG-PilotJob reported in ``folder``, with their final states."""
    return [
        json.loads(line)
        for report in folder.glob(".qcgpjm-service-*/jobs.report")
        for line in report.read_text().splitlines()
        if line.startswith("{")
    ]


@dataclass(frozen=True)
class Reference:
    name: str
    quoted: float  # tasks per second on the issue author's machine, as the issue gives it
    run: Callable[[int, int], float]  # (tasks, at a time) -> seconds
    installed: Callable[[], bool]
    target: str = ""  # what pilot.pyz's rate should be against it, for the report


REFERENCES = (
    Reference("GNU parallel -j2", 380.0, gnu_parallel, lambda: shutil.which("parallel") is not None),
    Reference("QCG-PilotJob, local mode", 1100.0, qcg_pilotjob, QCG_SERVICE.exists, " (target >= 3x)"),
)
