"""The scenario driver: one backend's soak from the first pilot to the last token. It writes the site
configs, adds the workload's tokens, keeps a pilot on every node until the pool is finished, lets the
chaos strike, and stops what it started. What it saw (pilots, kills, the outage, the timing) is what the
checks read with the pool's tokens and the execution log.

Eight "nodes" each run one pilot.pyz at a time with their own workdir (node-local disk: journals) and
1 to 4 slots (node n has 1 + n % 4). Node 0 is a black hole: its pilots' environment makes every task
fail at once; after its pilot exits 7 it gets a new one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from backends import Backend  # noqa: E402
from chaos import Cancels, Freezes, Kills, Outage, TaskKills, group_alive, kill_pilot  # noqa: E402
from conftest import alive, pilot_env, to_toml  # noqa: E402
from runlog import read_runs  # noqa: E402
from workload import Workload  # noqa: E402

LEASE = 10  # seconds: a dead pilot's tokens come back soon
FREEZE = LEASE * 1.5  # seconds a frozen pilot stays stopped: its leases expire while its tasks run
BLACK_HOLE_NODE = 0
BLACK_HOLE_RESTART = 3.0  # seconds before the black-hole node gets its next pilot
FINISH_TIMEOUT = 180.0  # seconds the pilots get to end once the pool is finished
TICK = 0.2
CORES = 4  # declared on every pilot where tokens have sizes (unbound: the machine may have fewer CPUs)


@dataclass
class Pilot:
    number: int
    node: int
    slots: int
    process: subprocess.Popen[bytes]
    log: Path
    started: float  # epoch seconds
    ended: Optional[float] = None  # when it was killed, or when we saw it exit
    code: Optional[int] = None
    killed: str = ""  # "node" (with its tasks) or "pilot" (alone)
    frozen: list[tuple[float, float]] = field(default_factory=list)  # (stopped, continued) while it ran
    orphans: list[int] = field(default_factory=list)  # its tasks' pids, left running when killed alone
    pilot_id: str = ""

    @property
    def black_hole(self) -> bool:
        return self.node == BLACK_HOLE_NODE

    def record(self) -> dict[str, Any]:
        """What the soak knows of this pilot, for pilots.json in a kept folder."""
        names = (
            "number",
            "node",
            "slots",
            "pilot_id",
            "started",
            "ended",
            "code",
            "killed",
            "orphans",
            "frozen",
        )
        return {name: getattr(self, name) for name in names} | {"log": self.log.name}


def slots_of(node: int) -> int:
    return 1 + node % 4


class Scenario:
    """One backend's run. ``run`` returns when every pilot has ended; the pool is then read by checks."""

    def __init__(self, args: argparse.Namespace, folder: Path, pyz: Path, backend: Backend) -> None:
        self.args = args
        self.folder = folder
        self.pyz = pyz
        self.backend = backend
        self.rng = random.Random(args.seed)
        self.features = backend.features & args.features
        self.workload = Workload(args.tokens, self.features)
        self.runs_log = folder / "runs.log"
        self.env = pilot_env(folder, folder / "pyz-root")
        self.pilots: list[Pilot] = []
        self.running: dict[int, Pilot] = {}  # by node
        self.started = 0.0
        self.finished: Optional[float] = None  # when the pool had nothing left to do
        self.restarts: dict[int, float] = {}  # node: when it gets its next pilot
        self.kills = Kills(self.rng)
        self.task_kills = TaskKills(self.rng)
        self.freezes = Freezes(self.rng, FREEZE)
        self.outage = Outage(args.outage, args.tokens, backend.go_away, backend.come_back)
        self.cancels = Cancels(self.rng, args.tokens, self.cancel) if "cancel" in self.features else None
        self.next_count = 0.0
        self.counts: Optional[dict[str, int]] = None  # the pool's last counts, read once a second
        self.problems: list[str] = []

    # -- set-up ------------------------------------------------------------------------------------

    def config(self, slots: int) -> dict[str, dict[str, Any]]:
        return {
            "server": {
                **self.backend.server_section(),
                "lease": f"{LEASE}s",
                "timeout": "5s",
                "max_outage": "5m",
            },
            "task": {
                "command": [sys.executable, "-S", str(HERE / "task.py")],
                "timeout": "2m",
                "kill_grace": "2s",
                "max_attempts": self.args.max_attempts,
                "env": {"SOAK_LOG": str(self.runs_log)},
            },
            "pilot": {
                **({"cores": CORES, "bind": False} if "sizes" in self.features else {}),
                "slots": slots,
                "workdir": str(self.folder / "nodes" / "${SOAK_NODE:-admin}"),
                "black_hole_failures": self.args.black_hole_failures,
                "black_hole_window": "10m",
                "idle_timeout": "1m",
            },
        }

    def config_path(self, node: Optional[int]) -> Path:
        return self.folder / ("site.toml" if node is None else f"site-node{node}.toml")

    def prepare(self) -> None:
        self.config_path(None).write_text(to_toml(self.config(1)))
        for node in range(self.args.pilots):
            self.config_path(node).write_text(to_toml(self.config(slots_of(node))))
        tokens = self.folder / "tokens.jsonl"
        tokens.write_text("".join(json.dumps(line) + "\n" for line in self.workload.lines()))
        for argv in (["init"], ["tokens", "add", "--jsonl", str(tokens)]):
            self.admin(*argv)

    def admin(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(self.pyz), *argv, "--config", str(self.config_path(None))], env=self.env, check=True
        )

    # -- pilots ------------------------------------------------------------------------------------

    def start_pilot(self, node: int) -> None:
        number = len(self.pilots)
        log = self.folder / "logs" / f"pilot-{number:03d}-node{node}.log"
        log.parent.mkdir(exist_ok=True)
        env = {**self.env, "SOAK_NODE": f"node{node}"}
        if node == BLACK_HOLE_NODE:
            env["SOAK_BROKEN"] = "libcuda.so.1: cannot open shared object file"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(self.pyz), "--config", str(self.config_path(node))],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,
            )
        pilot = Pilot(number, node, slots_of(node), process, log, time.time())
        self.pilots.append(pilot)
        self.running[node] = pilot

    def running_tasks(self) -> set[int]:
        """The pids of the runs that logged their start and not their end."""
        return {
            run.pid for run in read_runs(self.runs_log).values() if run.end is None and run.terminated is None
        }

    def kill(self, pilot: Pilot, whole_node: bool) -> None:
        kill = kill_pilot(pilot.process.pid, whole_node)
        pilot.ended = kill.at
        pilot.killed = "node" if whole_node else "pilot"
        if not whole_node:
            pilot.orphans.extend(kill.tasks)

    def freeze(self, now: float) -> None:
        """Stop a pilot with running tasks for longer than its lease (not the black hole, whose tasks
        end at once), and note it on the pilot."""
        running = self.running.values() if self.finished is None else []
        by_pid = {p.process.pid: p for p in running if not p.black_hole}
        frozen = {f.pid for f in self.freezes.frozen if f.woke is None}
        todo = None if self.counts is None else self.counts["todo"]
        freeze = self.freezes.tend(now, [pid for pid in by_pid if pid not in frozen], todo)
        if freeze is not None:
            by_pid[freeze.pid].frozen.append((freeze.at, freeze.until))

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Keep a pilot on every node until the pool is finished; let the chaos strike meanwhile."""
        self.started = time.time()
        for node in range(self.args.pilots):
            self.start_pilot(node)
        self.kills.start(self.started)
        self.task_kills.start(self.started)
        self.freezes.start(self.started)
        deadline = self.started + self.args.max_minutes * 60
        while self.running or self.finished is None:
            now = time.time()
            self.tend_pilots(now)
            self.tend_pool(now)
            if self.finished is None and self.running:
                whole_node = self.kills.due(now)
                if whole_node is not None:
                    self.kill(self.running[self.kills.victim(list(self.running))], whole_node)
                pilots = [p.process.pid for p in self.running.values() if not p.black_hole]
                self.task_kills.tend(now, pilots, self.running_tasks)
            self.freeze(now)  # also once the pool is finished: the frozen pilots must wake
            if self.cancels is not None:
                self.cancels.watch()
            late = self.finished is not None and now - self.finished > FINISH_TIMEOUT
            if (late or now > deadline) and self.running:
                self.problems.append(
                    f"pilots still running {FINISH_TIMEOUT:.0f}s after the pool finished"
                    if late
                    else f"the soak did not finish within {self.args.max_minutes} minutes"
                )
                self.finished = self.finished or now
                self.stop_all()
            time.sleep(TICK)
        self.wait_for_orphans()

    def tend_pilots(self, now: float) -> None:
        """Note the pilots that ended and give their nodes a new one, until the pool is finished."""
        for node, pilot in list(self.running.items()):
            code = pilot.process.poll()
            if code is not None:
                pilot.code, pilot.ended = code, pilot.ended or now
                del self.running[node]
                self.restarts[node] = now + (BLACK_HOLE_RESTART if pilot.black_hole else 0.0)
        for node, when in list(self.restarts.items()):
            if now >= when:
                del self.restarts[node]
                if self.finished is None:
                    self.start_pilot(node)

    def tend_pool(self, now: float) -> None:
        """Once a second: the outage's turn, and whether the pool is finished."""
        if self.outage.down:
            self.outage.tend(now, None, self.started)
            return
        if now < self.next_count:
            return
        self.next_count = now + 1.0
        counts = self.backend.counts()
        if counts is None:
            return
        self.counts = counts
        finished = counts["done"] + counts["error"]
        self.outage.tend(now, finished, self.started)
        if self.cancels is not None and not self.outage.down and self.cancels.due(finished):
            self.strike_cancels()
        if self.finished is None and not self.outage.down and not self.unfinished(counts):
            self.finished = now
            print(f"  pool finished after {now - self.started:.0f}s", flush=True)

    def strike_cancels(self) -> None:
        """Cancel a few tokens running now (not on a frozen or black-hole pilot, whose renewals are not
        the point) and a few that have not run yet (DAG tokens still waiting, plain tokens still todo)."""
        assert self.cancels is not None
        runs = read_runs(self.runs_log)
        pilots = {self.pilot_id(p): p for p in self.running.values() if not p.black_hole}
        frozen = {f.pid for f in self.freezes.frozen if f.woke is None}
        running = {
            run.pid: run.token
            for run in runs.values()
            if run.end is None
            and run.terminated is None
            and run.token.startswith(("long-", "soak-"))
            and run.pilot in pilots
            and pilots[run.pilot].process.pid not in frozen
            and group_alive(run.pid)
        }
        started = {run.token for run in runs.values()}
        unstarted = [line["id"] for line in self.workload.lines() if line["id"] not in started]
        waiting = [i for i in unstarted if i.startswith("dag-") and not i.endswith("-split")][-6:]
        waiting += [i for i in unstarted if i.startswith("soak-")][-2:]
        self.cancels.strike(running, waiting)

    def cancel(self, token_ids: list[str]) -> None:
        if token_ids:
            self.admin("tokens", "cancel", *token_ids)

    def pilot_id(self, pilot: Pilot) -> str:
        """The pilot's id, from the first line of its log that names it."""
        if not pilot.pilot_id:
            for line in pilot.log.read_text(errors="replace").splitlines():
                parts = line.split(" ", 2)
                if len(parts) == 3 and parts[2].startswith("token="):
                    pilot.pilot_id = parts[1]
                    break
        return pilot.pilot_id

    def unfinished(self, counts: dict[str, int]) -> int:
        return counts["todo"] + counts["locked"] + counts["waiting"]

    def stop_all(self) -> None:
        self.outage.end()
        self.freezes.wake_all()
        for pilot in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pilot.process.pid, signal.SIGTERM)
        for pilot in self.running.values():
            pilot.process.wait(timeout=60)

    def wait_for_orphans(self) -> None:
        """The tasks of pilots killed alone: their guards killed them; one still alive is a problem."""
        orphans = [pid for pilot in self.pilots for pid in pilot.orphans]
        deadline = time.time() + 30
        while any(alive(pid) for pid in orphans) and time.time() < deadline:
            time.sleep(TICK)
        for pid in orphans:
            if alive(pid):
                self.problems.append(f"orphan task {pid} still running 30s after the end; killed")
                os.killpg(pid, signal.SIGKILL)
