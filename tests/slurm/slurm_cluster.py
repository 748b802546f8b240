"""A real single-node Slurm on this machine for the tests: munged, slurmctld and slurmd from Debian's
packages (tests/setup/install-slurm.sh), all in one throw-away folder with their own ports and socket.

The daemons run in the foreground as our children, so stopping them is a matter of their pids. Anything
that keeps Slurm from starting fails the tests with the reason and the daemons' last log lines.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Callable, Optional

import pytest

HERE = Path(__file__).resolve().parent
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
START_TIMEOUT = 60.0
# Slurm's terminal job states. Anything else (PENDING, RUNNING, COMPLETING, SIGNALING while it delivers
# a --signal, STAGE_OUT, ...) means the job has not ended yet.
ENDED = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SlurmCluster:
    """One node named after this host, one partition, jobs run as the user who runs the tests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.host = socket.gethostname().split(".", 1)[0]
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "TZ": "UTC"}
        for variable in [name for name in self.env if name.startswith(("SLURM_", "SBATCH_"))]:
            if variable != "SLURM_CONF":
                del self.env[variable]
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    # -- start and stop ------------------------------------------------------------------------------

    def start(self) -> None:
        missing = [name for name in PROGRAMS if not self._which(name)]
        if missing:
            raise RuntimeError(
                f"Slurm is not installed (missing: {', '.join(missing)}); "
                "run `make test-deps` (tests/setup/install-slurm.sh) as root"
            )
        for name in ("state", "spool", "log", "run", "munge"):
            (self.folder / name).mkdir()
        secret = self.folder / "munge-key"
        secret.mkdir(mode=0o700)
        key = secret / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        socket_path = self.folder / "munge" / "munge.socket"
        template = Template((HERE / "slurm.conf.in").read_text())
        self.conf.write_text(
            template.substitute(
                host=self.host,
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
                munge_socket=socket_path,
                folder=self.folder,
            )
        )
        self._daemon(
            "munged",
            "--foreground",
            f"--socket={socket_path}",
            f"--key-file={key}",
            f"--pid-file={self.folder / 'run' / 'munged.pid'}",
            f"--log-file={self.folder / 'log' / 'munged.log'}",
            f"--seed-file={secret / 'munged.seed'}",
        )
        self._wait(socket_path.exists, "munged's socket")
        self._daemon("slurmctld", "-D", "-i")
        self._wait(self._controller_up, "slurmctld to answer `scontrol ping`")
        self._daemon("slurmd", "-D", "-N", self.host)
        self._wait(self._node_idle, f"node {self.host} to be idle in `sinfo`")

    def stop(self) -> None:
        if "slurmctld" in self.daemons:
            self.run("scancel", "--user", str(os.getuid()), check=False)
            deadline = time.monotonic() + 40
            while self.active_jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.daemons.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def _which(self, name: str) -> Optional[str]:
        return shutil.which(name, path=self.env.get("PATH", "") + ":/usr/sbin:/sbin")

    def _daemon(self, name: str, *args: str) -> None:
        program = self._which(name)
        assert program is not None
        log = (self.folder / "log" / f"{name}.out").open("wb")
        self.daemons[name] = subprocess.Popen(
            [program, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            dead = [name for name, process in self.daemons.items() if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"no answer in {START_TIMEOUT:.0f}s"
                raise RuntimeError(f"Slurm did not start: waiting for {what}: {why}\n{self.logs()}")
            time.sleep(0.2)

    def _controller_up(self) -> bool:
        return "is UP" in self.run("scontrol", "ping", check=False).stdout

    def _node_idle(self) -> bool:
        return self.run("sinfo", "-h", "-n", self.host, "-o", "%T", check=False).stdout.strip() == "idle"

    def logs(self, lines: int = 15) -> str:
        """The last lines of every daemon's log, for failure messages."""
        parts = []
        for path in sorted((self.folder / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- jobs ----------------------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=30, check=False)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}\n{self.logs()}")
        return done

    def sbatch(self, *args: str, env: Mapping[str, str]) -> str:
        """Submit and return the job id; the job gets ``env`` (plus SLURM_CONF) as its environment."""
        done = subprocess.run(
            ["sbatch", "--parsable", *args],
            capture_output=True,
            text=True,
            env={**env, "SLURM_CONF": str(self.conf)},
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"sbatch {' '.join(args)}: {done.stderr.strip()}\n{self.logs()}")
        return done.stdout.strip().split(";", 1)[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, ...); for an array, its first task."""
        text = self.run("scontrol", "-o", "show", "job", job_id).stdout.splitlines()[0]
        return dict(word.split("=", 1) for word in text.split() if "=" in word)

    def states(self, job_id: str) -> list[str]:
        """The state of the job, or of each task of an array job."""
        lines = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout.splitlines()
        return [
            dict(w.split("=", 1) for w in line.split() if "=" in w).get("JobState", "?") for line in lines
        ]

    def active_jobs(self) -> list[str]:
        return self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()

    def wait_done(self, job_id: str, timeout: float) -> list[str]:
        """Wait until the job (every task of an array) has ended; returns the final states."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(job_id)
            if states and all(state in ENDED for state in states):
                return states
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} still {states} after {timeout:.0f}s\n{self.logs()}")
            time.sleep(0.5)


def start_cluster() -> SlurmCluster:
    """Start Slurm in a fresh folder under /tmp: munged wants every folder above its socket to be
    searchable by all, which pytest's private temporary folders are not."""
    folder = Path(tempfile.mkdtemp(prefix="pilot-slurm-", dir="/tmp"))
    folder.chmod(0o755)
    cluster = SlurmCluster(folder)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
