"""Chaos soak (`make soak`; a few minutes, not part of `make test`): many pilots, kills, a black-hole node
and a server outage at once, then a check that no token and no result went astray.

pouchdb-server on 127.0.0.1 (data on disk, so a stop and start keeps it) holds 2,000 tokens. Each token's
`mode` and `seconds` follow from a hash of its id: most work, some are bad (fail every time, so they end
in error after task.max_attempts = 3), some are flaky (fail their first attempt only, so retries show).
Eight "nodes" each run one pilot.pyz with two slots and their own workdir (node-local disk: journals).
Node 0 is a black hole: its pilots' environment makes every task fail at once; after its pilot exits 7
it gets a new one. At random times a random pilot is SIGKILLed and its node gets a new pilot: mostly the
whole node dies (the pilot and its tasks' process groups), sometimes the pilot alone, whose guard process
then kills its tasks. Once a third of the tokens are finished the server is stopped for 30 seconds.

Every run of a task appends to an execution log (tests/soak/task.py): token, attempt, pilot, start, and
end and exit code when it ends by itself. At the end the tokens' histories are compared with that log:

- every token is done, with exactly one done attempt and that one last, or in error with its
  max_attempts charged failures, and every attempt on every token is closed;
- no token is executed after it was reported done: no run starts after the done attempt's end (the time
  the pilot saw the task exit, before its report reached the server). A run that started before and
  ended after is counted, not failed (a run whose lease ran out while it ran, say). Tokens are run at
  least once, not exactly once;
- tasks die with their pilot: no run of a pilot killed alone ends by itself more than GUARD_GRACE after
  the kill (its guard kills them; without it they ran on, unseen, while another pilot ran the token);
- no report is lost: every run that ended while its pilot lived is on the token's history with its
  outcome, or its attempt was closed as lease-expired and that is explained: the pilot was killed before
  its report got out (a success still in memory, in the seconds of HTTP retries before it goes to the
  journal; a failure held by the black-hole breaker), or the report (from a journal, after the outage)
  met a newer attempt: a conflict, rightly not forced over it. Every closed attempt with an outcome from
  a run has that run in the log;
- no attempt number of a token was run by two pilots (claims are exclusive);
- the black hole burns at most K (pilot.black_hole_failures) tokens per pilot: it gives the tokens it
  fails back uncharged; it charges only tokens that had already failed where tasks worked (bad ones,
  blamed on themselves) and at most K others (failures it held when the pool ran dry), and sends at most
  K working tokens to error;
- pilots exit 0, 7, or were killed (-9); no traceback in any pilot's log.

It prints figures (tokens/s, attempts by outcome, kills, conflicts, journal replays, black-hole trips)
and exits 1 when a check fails, keeping its folder (also kept with --keep).

    .venv/bin/python tests/soak/soak.py [--tokens 2000] [--pilots 8] [--outage 30] [--seed 6] [--keep]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks.common import ensure_pyz, report  # noqa: E402
from conftest import alive, pilot_env  # noqa: E402
from servers.pouchdb import PouchDBServer, ServerMissing  # noqa: E402

DATABASE = "soak"
LEASE = 10  # seconds: a dead pilot's tokens come back soon
BLACK_HOLE_NODE = 0
BLACK_HOLE_RESTART = 3.0  # seconds before the black-hole node gets its next pilot
KILL_GAP = (3.0, 9.0)  # seconds between kills, uniform
NODE_KILL_SHARE = 0.75  # of kills take the whole node (pilot and tasks); the rest the pilot alone
OUTAGE_AFTER = 1 / 3  # of the tokens finished when the server is stopped
FINISH_TIMEOUT = 180.0  # seconds the pilots get to end once the pool is finished
TICK = 0.2
CHARGED = frozenset({"failed", "timeout", "not-started"})
GUARD_GRACE = 0.25  # seconds a task of a pilot killed alone may still end by itself: the guard is at work
EXIT_CODES = frozenset({0, 7, -signal.SIGKILL})  # done or drained, black hole, killed by us
LOG_LINE = re.compile(r"^\S+ (\S+) token=(\S+) (\w+) (.*)$")

CONFIG = """\
[server]
backend = "couchdb"
url = {url}
database = {database}
lease = "{lease}s"
timeout = "5s"
max_outage = "5m"

[task]
command = {command}
timeout = "2m"
kill_grace = "2s"
max_attempts = {max_attempts}
env = {{ SOAK_LOG = {log} }}

[pilot]
slots = {slots}
workdir = {workdir}
black_hole_failures = {black_hole_failures}
black_hole_window = "10m"
idle_timeout = "1m"
"""


def plan(token_id: str) -> dict[str, Any]:
    """A token's fields, the same on every run: 2% bad, 5% flaky, the rest work; 0.05 to 0.8 seconds."""
    digest = hashlib.sha256(token_id.encode()).digest()
    roll = int.from_bytes(digest[:4], "big") % 1000
    mode = "bad" if roll < 20 else "flaky" if roll < 70 else "ok"
    return {"id": token_id, "mode": mode, "seconds": round(0.05 + digest[4] / 255 * 0.75, 2)}


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Pilot:
    number: int
    node: int
    process: subprocess.Popen[bytes]
    log: Path
    started: float  # epoch seconds
    ended: Optional[float] = None  # when it was killed, or when we saw it exit
    code: Optional[int] = None
    killed: str = ""  # "node" (with its tasks) or "pilot" (alone)
    orphans: list[int] = field(default_factory=list)  # its tasks' pids, left running when killed alone
    pilot_id: str = ""

    @property
    def black_hole(self) -> bool:
        return self.node == BLACK_HOLE_NODE

    def record(self) -> dict[str, Any]:
        """What the soak knows of this pilot, for pilots.json in a kept folder."""
        names = ("number", "node", "pilot_id", "started", "ended", "code", "killed", "orphans")
        return {name: getattr(self, name) for name in names} | {"log": self.log.name}


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the pilot's tasks: each leads its own session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class Soak:
    def __init__(self, args: argparse.Namespace, folder: Path, pyz: Path, server: PouchDBServer) -> None:
        self.args = args
        self.folder = folder
        self.pyz = pyz
        self.server = server
        self.rng = random.Random(args.seed)
        self.config = folder / "site.toml"
        self.runs_log = folder / "runs.log"
        self.env = pilot_env(folder, folder / "pyz-root")
        self.pilots: list[Pilot] = []
        self.running: dict[int, Pilot] = {}  # by node
        self.started = 0.0
        self.finished: Optional[float] = None  # when the pool had nothing left to do
        self.outage: tuple[float, float] = (0.0, 0.0)  # (stopped, started again), epoch seconds
        self.down_since: Optional[float] = None
        self.restarts: dict[int, float] = {}  # node: when it gets its next pilot
        self.next_kill = 0.0
        self.next_count = 0.0
        self.problems: list[str] = []

    def prepare(self) -> None:
        command = [sys.executable, "-S", str(HERE / "task.py")]
        self.config.write_text(
            CONFIG.format(
                url=json.dumps(self.server.url),
                database=json.dumps(DATABASE),
                lease=LEASE,
                command=json.dumps(command),
                max_attempts=self.args.max_attempts,
                log=json.dumps(str(self.runs_log)),
                slots=self.args.slots,
                workdir=json.dumps(str(self.folder / "nodes" / "${SOAK_NODE:-admin}")),
                black_hole_failures=self.args.black_hole_failures,
            )
        )
        tokens = self.folder / "tokens.jsonl"
        tokens.write_text("".join(json.dumps(plan(f"soak-{i:04d}")) + "\n" for i in range(self.args.tokens)))
        for argv in (["init"], ["tokens", "add", "--jsonl", str(tokens)]):
            subprocess.run([str(self.pyz), *argv, "--config", str(self.config)], env=self.env, check=True)

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
                [str(self.pyz), "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,
            )
        pilot = Pilot(number, node, process, log, time.time())
        self.pilots.append(pilot)
        self.running[node] = pilot

    def kill(self, pilot: Pilot, whole_node: bool) -> None:
        """SIGKILL the pilot; with ``whole_node`` its tasks too, as when the node dies. The pilot is
        stopped first so that it starts no task and reports nothing between the two."""
        os.kill(pilot.process.pid, signal.SIGSTOP)
        tasks = children(pilot.process.pid)
        os.kill(pilot.process.pid, signal.SIGKILL)
        pilot.ended = time.time()
        pilot.killed = "node" if whole_node else "pilot"
        for pid in tasks:
            if whole_node:
                for kill in (os.killpg, os.kill):  # its group, or itself if it has none of its own yet
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        kill(pid, signal.SIGKILL)
            else:
                pilot.orphans.append(pid)

    # -- the pool ----------------------------------------------------------------------------------

    def counts(self) -> Optional[dict[str, int]]:
        try:
            answer = self.server.request(
                "GET", f"/{DATABASE}/_design/Monitor/_view/overview_total?group=true"
            )
        except OSError:
            return None
        if answer.status != 200:
            return None
        found = {row["key"]: row["value"] for row in answer.body["rows"]}
        return {state: int(found.get(state, 0)) for state in ("todo", "locked", "done", "error")}

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Keep a pilot on every node until the pool is finished; kill some; stop the server once."""
        self.started = time.time()
        for node in range(self.args.pilots):
            self.start_pilot(node)
        self.next_kill = self.started + self.rng.uniform(*KILL_GAP)
        deadline = self.started + self.args.max_minutes * 60
        while self.running or self.finished is None:
            now = time.time()
            self.tend_pilots(now)
            self.tend_server(now)
            if self.finished is None and now >= self.next_kill and self.running:
                victim = self.rng.choice(sorted(self.running.values(), key=lambda p: p.node))
                self.kill(victim, self.rng.random() < NODE_KILL_SHARE)
                self.next_kill = now + self.rng.uniform(*KILL_GAP)
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

    def tend_server(self, now: float) -> None:
        """Stop the server once a third of the tokens are finished, start it again after the outage;
        note when the pool is finished."""
        if self.down_since is not None:
            if now - self.down_since >= self.args.outage:
                self.server.start()
                self.outage = (self.down_since, time.time())
                print(f"  server back after {self.outage[1] - self.outage[0]:.0f}s", flush=True)
                self.down_since = None
            return
        if now < self.next_count:
            return
        self.next_count = now + 1.0
        counts = self.counts()
        if counts is None:
            return
        finished = counts["done"] + counts["error"]
        if not self.outage[0] and finished >= self.args.tokens * OUTAGE_AFTER:
            print(
                f"  {finished} tokens finished after {now - self.started:.0f}s: stopping the server",
                flush=True,
            )
            self.server.stop()
            self.down_since = time.time()
        elif self.finished is None and counts["todo"] == counts["locked"] == 0:
            self.finished = now
            print(f"  pool finished after {now - self.started:.0f}s", flush=True)

    def stop_all(self) -> None:
        if self.down_since is not None:
            self.server.start()
            self.down_since = None
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


# -- the checks ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run of a task, from the execution log."""

    token: str
    attempt: int
    pilot: str
    start: float
    end: Optional[float] = None
    code: Optional[int] = None


def read_runs(path: Path) -> dict[tuple[str, int, str], Run]:
    runs: dict[tuple[str, int, str], Run] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if parts[0] == "S" and len(parts) == 5:
            key = (parts[1], int(parts[2]), parts[3])
            runs[key] = Run(parts[1], int(parts[2]), parts[3], float(parts[4]))
        elif parts[0] == "E" and len(parts) == 7 and (parts[1], int(parts[2]), parts[3]) in runs:
            run = runs[(parts[1], int(parts[2]), parts[3])]
            run.end, run.code = float(parts[5]), int(parts[6])
    return runs


@dataclass
class Logs:
    """What the pilots said: pilot ids, and events counted from their log lines."""

    tracebacks: list[str] = field(default_factory=list)
    conflicts: set[str] = field(default_factory=set)  # tokens with a report refused as a conflict
    events: collections.Counter[str] = field(default_factory=collections.Counter)


def read_logs(pilots: Iterable[Pilot]) -> Logs:
    logs = Logs()
    patterns = {
        "journaled": re.compile(r"report kept in the journal"),
        "sent from own journal": re.compile(r"sent (\d+) report\(s\) from the journal"),
        "adopted from dead pilots": re.compile(r"found (\d+) unsent report\(s\) from an earlier pilot"),
        "conflicts": re.compile(r"conflict: the lease moved to another pilot"),
        "claimed again after a lease expired": re.compile(r"claimed again: the lease of its last pilot"),
        "leases lost": re.compile(r"lease lost"),
        "breaker trips": re.compile(r"black hole: .* no more claims"),
        "server reachable again": re.compile(r"server reachable again"),
    }
    for pilot in pilots:
        text = pilot.log.read_text(errors="replace")
        if "Traceback" in text:
            logs.tracebacks.append(pilot.log.name)
        for line in text.splitlines():
            match = LOG_LINE.match(line)
            if match is None:
                continue
            pilot.pilot_id = pilot.pilot_id or match.group(1)
            message = match.group(4)
            for name, pattern in patterns.items():
                found = pattern.search(message)
                if found:
                    logs.events[name] += int(found.group(1)) if found.groups() else 1
            if "conflict: the lease moved" in message:
                logs.conflicts.add(match.group(2))
    return logs


def state_of(doc: dict[str, Any]) -> str:
    """The PiCaS view a token is in, from its lock, done and exit_code (as the Monitor views say)."""
    if doc["lock"] and doc["done"]:
        return "done" if doc["exit_code"] == 0 else "error"
    return "locked" if doc["lock"] else "todo"


class Analysis:
    """The tokens' histories against the execution log and the pilots' logs: the checks and the figures."""

    def __init__(self, soak: Soak, docs: dict[str, dict[str, Any]]) -> None:
        self.soak = soak
        self.args = soak.args
        self.docs = docs
        self.runs = read_runs(soak.runs_log)
        self.logs = read_logs(soak.pilots)
        self.by_id = {pilot.pilot_id: pilot for pilot in soak.pilots if pilot.pilot_id}
        self.history = {token_id: doc.get("pilot", {}).get("attempts", []) for token_id, doc in docs.items()}
        self.states = {token_id: state_of(doc) for token_id, doc in docs.items()}
        self.results: list[tuple[str, list[str]]] = []
        self.burnt: list[str] = []  # working tokens the black hole sent to error
        self.overlaps: collections.Counter[str] = collections.Counter()
        self.reports: collections.Counter[str] = collections.Counter()
        self.report_delays: list[float] = []

    def check(self) -> None:
        k, max_attempts = self.args.black_hole_failures, self.args.max_attempts
        for name, problems in (
            (f"every token done once, or in error after {max_attempts} charged failures", self.finished()),
            ("bad tokens in error, working ones done (unless burnt by the black hole)", self.modes()),
            ("no token executed after it was reported done", self.nothing_after_done()),
            ("no report lost", self.no_report_lost()),
            ("tasks die with their pilot", self.tasks_die_with_their_pilot()),
            ("no result without its run, no attempt run by two pilots", self.no_phantoms()),
            (f"the black hole burnt at most K = {k} tokens per pilot", self.black_hole_bounded()),
            ("pilots exit 0, 7 or killed, no tracebacks, the soak ran to its end", self.endings()),
        ):
            self.results.append((name, problems))

    @property
    def ok(self) -> bool:
        return all(not problems for _, problems in self.results)

    def print_checks(self) -> None:
        print("\n== checks")
        for name, problems in self.results:
            print(f"  {'ok  ' if not problems else 'FAIL'}  {name}")
            for problem in problems[:10]:
                print(f"          {problem}")
            if len(problems) > 10:
                print(f"          ... and {len(problems) - 10} more")

    # -- the checks --------------------------------------------------------------------------------

    def finished(self) -> list[str]:
        problems = []
        for token_id, doc in sorted(self.docs.items()):
            outcomes = [attempt["outcome"] for attempt in self.history[token_id]]
            charged = sum(outcome in CHARGED for outcome in outcomes)
            state = self.states[token_id]
            if None in outcomes:
                problems.append(f"{token_id}: an attempt was never closed: {outcomes}")
            if state == "done" and (outcomes.count("done") != 1 or outcomes[-1] != "done"):
                problems.append(f"{token_id}: done, but its attempts are {outcomes}")
            elif state == "error" and not charged == doc["pilot"]["failures"] == self.args.max_attempts:
                problems.append(f"{token_id}: error after {charged} charged failures: {outcomes}")
            elif state not in ("done", "error"):
                problems.append(f"{token_id}: still {state}")
            if len(doc.get("error", [])) != charged:
                problems.append(
                    f"{token_id}: {charged} charged failures, {len(doc['error'])} PiCaS error entries"
                )
        return problems

    def modes(self) -> list[str]:
        problems = []
        for token_id, doc in sorted(self.docs.items()):
            mode, state = doc["mode"], self.states[token_id]
            if mode == "bad" and state != "error":
                problems.append(f"{token_id}: bad, but {state}")
            elif mode != "bad" and state == "error":
                charged = [a for a in self.history[token_id] if a["outcome"] in CHARGED]
                blamed = any(self.black_hole(attempt) for attempt in charged)
                if blamed:
                    self.burnt.append(token_id)
                else:
                    problems.append(f"{token_id}: {mode}, but in error")
        return problems

    def nothing_after_done(self) -> list[str]:
        """No run starts after the done attempt ended. Runs that started before and ended after (or were
        killed after) are counted: orphans of pilots killed alone, and runs whose lease ran out."""
        problems = []
        for run in self.runs.values():
            history = self.history.get(run.token, [])
            if self.states.get(run.token) != "done" or run.attempt == len(history):
                continue
            done = history[-1]["ended"]
            pilot = self.by_id.get(run.pilot)
            # A run without an end died with its node, when its pilot was killed.
            end = run.end if run.end is not None or pilot is None else pilot.ended
            if run.start > done:
                problems.append(f"{run.token}: run {run.attempt} by {run.pilot} started after it was done")
            elif pilot is not None and (end is None or end > done):
                if pilot.killed == "pilot" and (pilot.ended or 0) <= done:
                    self.overlaps["orphans of pilots killed alone"] += 1
                elif pilot.killed == "node" and run.end is None:
                    self.overlaps["killed with their node after the token was done elsewhere"] += 1
                else:
                    self.overlaps["runs whose lease ran out while they ran"] += 1
        return problems

    def tasks_die_with_their_pilot(self) -> list[str]:
        """No run of a pilot killed alone ends by itself more than GUARD_GRACE after the kill."""
        problems = []
        for run in self.runs.values():
            pilot = self.by_id.get(run.pilot)
            if pilot is None or pilot.killed != "pilot" or run.end is None or pilot.ended is None:
                continue
            if run.end > pilot.ended + GUARD_GRACE:
                late = run.end - pilot.ended
                problems.append(f"{run.token} run {run.attempt}: ended {late:.2f}s after its pilot's kill")
        return problems

    def no_report_lost(self) -> list[str]:
        """Every run that ended while its pilot lived is on its token, or its absence is explained."""
        problems = []
        for run in self.runs.values():
            pilot = self.by_id.get(run.pilot)
            if run.end is None or pilot is None or (pilot.ended is not None and pilot.ended < run.end):
                continue  # killed with its node, or ended after its pilot died: nobody could report it
            history = self.history.get(run.token, [])
            attempt = history[run.attempt - 1] if run.attempt <= len(history) else None
            if attempt is None or attempt["pilot"] != run.pilot:
                problems.append(f"{run.token} attempt {run.attempt} by {run.pilot}: not on the token")
                continue
            outcome = attempt["outcome"]
            if outcome in (("done",) if run.code == 0 else ("failed", "node-unhealthy")):
                self.reports["reported"] += 1
            elif outcome == "lease-expired" and run.token in self.logs.conflicts:
                self.reports["refused as conflicts (the lease moved on while the report waited)"] += 1
            elif outcome == "lease-expired" and pilot.killed and run.code:
                self.reports["failures held by the breaker when their pilot was killed"] += 1
            elif outcome == "lease-expired" and pilot.killed:
                self.reports["successes not yet sent when their pilot was killed"] += 1
                self.report_delays.append((pilot.ended or run.end) - run.end)
            elif outcome == "lease-lost":
                self.reports["stopped by their pilot: lease lost"] += 1
            else:
                problems.append(
                    f"{run.token} attempt {run.attempt} by {run.pilot}: exit {run.code}, {outcome}"
                )
        return problems

    def no_phantoms(self) -> list[str]:
        problems = []
        for token_id, history in self.history.items():
            for number, attempt in enumerate(history, start=1):
                if attempt["outcome"] not in ("done", "failed", "node-unhealthy"):
                    continue
                run = self.runs.get((token_id, number, attempt["pilot"]))
                if run is None or run.code is None or (run.code == 0) != (attempt["outcome"] == "done"):
                    problems.append(f"{token_id} attempt {number}: {attempt['outcome']} without such a run")
        claims = collections.Counter((run.token, run.attempt) for run in self.runs.values())
        problems += [
            f"{token} attempt {n}: run by {count} pilots" for (token, n), count in claims.items() if count > 1
        ]
        return problems

    def black_hole_bounded(self) -> list[str]:
        """A black-hole pilot gives tokens back uncharged; it may charge a token that failed before where
        tasks worked (that token is bad), and at most K others (failures it held when the pool ran dry)."""
        k = self.args.black_hole_failures
        fresh = self.black_hole_charges(earlier=False)
        burnt: collections.Counter[str] = collections.Counter()  # working tokens sent to error, per pilot
        for token_id in self.burnt:
            charged = self.history[token_id]
            burnt.update({a["pilot"] for a in charged if a["outcome"] in CHARGED and self.black_hole(a)})
        problems = [
            f"black-hole pilot {p} charged {n} tokens that had not failed" for p, n in fresh.items() if n > k
        ]
        return problems + [
            f"black-hole pilot {p} burnt {n} working tokens" for p, n in burnt.items() if n > k
        ]

    def black_hole_charges(self, *, earlier: bool) -> collections.Counter[str]:
        """Charged failures by black-hole pilots, per pilot, of tokens that had (or had not) failed before."""
        found: collections.Counter[str] = collections.Counter()
        for history in self.history.values():
            for number, attempt in enumerate(history):
                if attempt["outcome"] in CHARGED and self.black_hole(attempt):
                    before = any(a["outcome"] in CHARGED for a in history[:number])
                    if before == earlier:
                        found[attempt["pilot"]] += 1
        return found

    def endings(self) -> list[str]:
        codes = codes_of(self.soak.pilots)
        problems = [f"{n} pilot(s) exited {code}" for code, n in codes.items() if code not in EXIT_CODES]
        return problems + [f"traceback in {name}" for name in self.logs.tracebacks] + self.soak.problems

    def black_hole(self, attempt: dict[str, Any]) -> bool:
        pilot = self.by_id.get(attempt["pilot"])
        return pilot is not None and pilot.black_hole

    # -- the figures -------------------------------------------------------------------------------

    def figures(self) -> list[tuple[str, str]]:
        soak, args, events = self.soak, self.args, self.logs.events
        elapsed = (soak.finished or time.time()) - soak.started
        attempts = [attempt for history in self.history.values() for attempt in history]
        by_outcome = collections.Counter(attempt["outcome"] for attempt in attempts)
        modes = collections.Counter(doc["mode"] for doc in self.docs.values())
        final = collections.Counter(self.states.values())
        successes = collections.Counter(run.token for run in self.runs.values() if run.code == 0)
        codes = codes_of(soak.pilots)
        kills = collections.Counter(pilot.killed for pilot in soak.pilots if pilot.killed)
        holes = [pilot for pilot in soak.pilots if pilot.black_hole]
        given_back = collections.Counter(
            self.black_hole(a) for a in attempts if a["outcome"] == "node-unhealthy"
        )
        fresh, earlier = self.black_hole_charges(earlier=False), self.black_hole_charges(earlier=True)
        orphans = sum(
            1
            for run in self.runs.values()
            if run.end is not None
            and run.pilot in self.by_id
            and (self.by_id[run.pilot].ended or run.end) < run.end
        )
        down, up = soak.outage
        ended = sum(run.end is not None for run in self.runs.values())
        exit_codes = dict(sorted(codes.items(), key=str))
        figures = [
            ("tokens", f"{args.tokens}: {modes['ok']} ok, {modes['flaky']} flaky, {modes['bad']} bad"),
            (
                "finished",
                f"{final['done']} done, {final['error']} error ({len(self.burnt)} burnt by the black hole)",
            ),
            ("wall time", f"{elapsed:.0f}s to an empty pool, {args.tokens / elapsed:.1f} tokens/s"),
            ("attempts", f"{len(attempts)}: " + ", ".join(f"{n} {o}" for o, n in by_outcome.most_common())),
            ("runs", f"{len(self.runs)} started, {ended} ended by themselves"),
            (
                "tokens done twice",
                f"{sum(n > 1 for n in successes.values())} ran successfully more than once",
            ),
            (
                "runs overlapping done",
                ", ".join(f"{n} {what}" for what, n in self.overlaps.items()) or "none",
            ),
            ("orphans", f"{orphans} runs ended after their pilot was killed (never reported)"),
            ("pilots", f"{len(soak.pilots)} on {args.pilots} nodes; exit codes {exit_codes}"),
            ("kills", f"{kills['node']} whole nodes, {kills['pilot']} pilots alone (SIGKILL)"),
            ("outage", f"server stopped {down - soak.started:.0f}s into the run for {up - down:.0f}s"),
            (
                "journal",
                f"{events['journaled']} reports journaled; {events['sent from own journal']} sent by "
                f"their pilot, {events['adopted from dead pilots']} by the next pilot on the node",
            ),
            ("conflicts", f"{events['conflicts']} reports refused: the lease had moved on"),
            (
                "leases",
                f"{events['claimed again after a lease expired']} tokens claimed again after expiry, "
                f"{events['leases lost']} leases lost",
            ),
            (
                "black hole",
                f"{len(holes)} pilots, {codes_of(holes)[7]} tripped (exit 7), {given_back[True]} "
                f"tokens given back uncharged; charged {sum(fresh.values())} tokens that had not failed "
                f"(at most {max(fresh.values(), default=0)} per pilot), {sum(earlier.values())} that had",
            ),
            (
                "other nodes",
                f"{codes_of(p for p in soak.pilots if not p.black_hole)[7]} pilots tripped the breaker, "
                f"{given_back[False]} tokens given back uncharged",
            ),
            ("reports", ", ".join(f"{n} {what}" for what, n in self.reports.most_common())),
        ]
        if self.report_delays:
            delay = f"at most {max(self.report_delays):.1f}s after the run ended"
            figures.append(("unsent successes", f"{delay} (in memory until sent or journaled)"))
        return figures


def codes_of(pilots: Iterable[Pilot]) -> collections.Counter[Optional[int]]:
    return collections.Counter(pilot.code for pilot in pilots)


# -- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--pilots", type=int, default=8)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--black-hole-failures", type=int, default=3)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the server stays stopped")
    parser.add_argument("--seed", type=int, default=6, help="for the kills")
    parser.add_argument("--max-minutes", type=float, default=20.0)
    parser.add_argument("--keep", action="store_true", help="keep the soak's folder even when it passes")
    args = parser.parse_args()
    pyz = ensure_pyz()
    folder = Path(tempfile.mkdtemp(prefix="pilot-soak-"))
    print(f"soak in {folder}: {args.tokens} tokens, {args.pilots} pilots x {args.slots} slots", flush=True)
    try:
        server = PouchDBServer(folder / "server", auth=False, in_memory=False).start()
    except ServerMissing as err:
        print(f"soak: {err}", file=sys.stderr)
        return 1
    soak = Soak(args, folder, pyz, server)
    try:
        soak.prepare()
        soak.run()
        docs = server.docs(DATABASE)
    finally:
        try:
            soak.stop_all()
        finally:
            server.stop()
    analysis = Analysis(soak, docs)
    analysis.check()
    (folder / "pilots.json").write_text(json.dumps([pilot.record() for pilot in soak.pilots], indent=1))
    report("soak figures", analysis.figures())
    analysis.print_checks()
    if analysis.ok and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"\nkept {folder}: site.toml, logs/, runs.log, pilots.json, nodes/ (workdirs), server/")
    return 0 if analysis.ok else 1


if __name__ == "__main__":
    sys.exit(main())
