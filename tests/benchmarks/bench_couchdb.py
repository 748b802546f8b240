"""CouchDB pool throughput: 1,000 `/bin/true` tokens, 4 pilot.pyz pilots against 4 picas RunActor pilots, in
the same run, against the same pouchdb-server (in memory, on 127.0.0.1), one after the other.

Both sides run in turn, round after round (4 by default), the one that goes first changing each round,
so that both meet the same noise of a shared machine; the figures are medians over the rounds, and the
ratio is the median of the rounds' ratios.
Prints tasks per second for both and their ratio (target >= 3), duplicate executions for both (target 0
for ours), HTTP requests per task for both, and the CPU time per task of the server and of the pilots
(which bounds the throughput on a small machine). Requests are counted from pouchdb-server's request log
(every request it served for that database) in a last, untimed pass, since logging costs the server
time. Executions are counted from each pilot's own record of starting a task: our pilots' "started" log
lines, the picas actors' list of the tokens they process.

    .venv/bin/python tests/benchmarks/bench_couchdb.py [--tokens 1000] [--pilots 4] [--slots 1] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import ensure_pyz, report, rounds_option, rounds_text, turned  # noqa: E402 - puts tests/ on the path
from conftest import to_toml  # noqa: E402
from servers.pouchdb import PouchDBServer, ServerMissing, require_picas  # noqa: E402

PICAS_SIDE = HERE.parent / "pools" / "picas_side.py"
STARTED = re.compile(r" token=(\S+) INFO started \(attempt")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a running process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_all(processes: list[subprocess.Popen[bytes]], what: str, *, strict: bool) -> tuple[float, int]:
    """Wait for every pilot; (their CPU seconds, how many exited non-zero)."""
    cpu, failed = 0.0, 0
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        if process.returncode != 0:
            if strict:
                raise SystemExit(f"{what}: a pilot exited with {process.returncode}")
            failed += 1
    return cpu, failed


def duplicates(executed: Counter[str], tokens: int) -> tuple[int, int]:
    """(executions beyond the first, tokens never executed)."""
    return sum(n - 1 for n in executed.values() if n > 1), tokens - len(executed)


@dataclass
class Phase:
    elapsed: float  # seconds from the first pilot's start to the last one's exit
    requests: int  # HTTP requests pouchdb-server served for this phase's database
    server_cpu: float  # CPU seconds pouchdb-server spent meanwhile
    pilots_cpu: float  # CPU seconds of the pilots and their tasks
    failed: int  # pilots that exited non-zero


def run_pilots(
    server: PouchDBServer,
    database: str,
    argvs: list[list[str]],
    env: dict[str, str],
    *,
    logs: list[Path],
    strict: bool,
) -> Phase:
    assert server.process is not None
    count = server.request_count if server.log_requests else lambda _: 0
    before, cpu_before = count(database), cpu_seconds(server.process.pid)
    start = time.perf_counter()
    processes = []
    for argv, log in zip(argvs, logs):
        with log.open("wb") as out:
            processes.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT))
    pilots_cpu, failed = wait_all(processes, argvs[0][0], strict=strict)
    elapsed = time.perf_counter() - start
    return Phase(
        elapsed=elapsed,
        requests=count(database) - before,
        server_cpu=cpu_seconds(server.process.pid) - cpu_before,
        pilots_cpu=pilots_cpu,
        failed=failed,
    )


def ours(
    pyz: Path, server: PouchDBServer, folder: Path, options: argparse.Namespace
) -> tuple[Phase, Counter]:
    database = server.create_database("ours")
    config = folder / "site.toml"
    sections = {
        "server": {"backend": "couchdb", "url": server.url, "database": database},
        "task": {"command": ["/bin/true"]},
        "pilot": {"slots": options.slots, "workdir": str(folder / "work")},
    }
    config.write_text(to_toml(sections))
    env = {**os.environ, "TMPDIR": str(folder)}
    for args in (["init"], ["tokens", "add", "--range", str(options.tokens)]):
        subprocess.run([str(pyz), *args, "--config", str(config)], check=True, env=env, capture_output=True)
    logs = [folder / f"pilot-{i}.log" for i in range(options.pilots)]
    argv = [str(pyz), "run", "--config", str(config)]
    phase = run_pilots(server, database, [argv] * options.pilots, env, logs=logs, strict=True)
    executed = Counter(m.group(1) for log in logs for m in STARTED.finditer(log.read_text()))
    return phase, executed


def picas(
    python: Path, server: PouchDBServer, folder: Path, options: argparse.Namespace
) -> tuple[Phase, Counter]:
    database = server.create_database("picas")
    base = [str(python), str(PICAS_SIDE), server.url, database]
    for args in (["views", "Monitor"], ["add", str(options.tokens)]):
        subprocess.run([*base, *args], check=True, capture_output=True)
    records = [folder / f"picas-{i}.ids" for i in range(options.pilots)]
    argvs = [[*base, "run", str(record), "--", "/bin/true"] for record in records]
    logs = [folder / f"picas-{i}.log" for i in range(options.pilots)]
    # A picas pilot that gives up on contention exits non-zero: counted, not fatal.
    phase = run_pilots(server, database, argvs, dict(os.environ), logs=logs, strict=False)
    executed = Counter(line for record in records if record.exists() for line in record.read_text().split())
    return phase, executed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--pilots", type=int, default=4)
    parser.add_argument("--slots", type=int, default=1, help="slots per pilot.pyz pilot (picas has one)")
    rounds_option(parser, default=4)
    options = parser.parse_args()
    pyz = ensure_pyz()
    python = require_picas()
    timed: list[tuple[tuple[Phase, Counter[str]], tuple[Phase, Counter[str]]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-couchdb-") as tmp:
        # Timed on a server that logs nothing, the two sides in turn, round after round, so that both
        # meet the same noise of a shared machine; requests counted in a last pass on one that logs them.
        for number, name in enumerate([f"round-{i}" for i in range(options.rounds)] + ["counted"]):
            folder = Path(tmp) / name
            server = PouchDBServer(
                folder / "server", auth=False, in_memory=True, log_requests=name == "counted"
            ).start()
            phases = {}
            try:
                for side in turned(["ours", "picas"], number):
                    (folder / side).mkdir()
                    if side == "ours":
                        phases[side] = ours(pyz, server, folder / side, options)
                    else:
                        phases[side] = picas(python, server, folder / side, options)
            finally:
                server.stop()
            if name == "counted":
                counted = (phases["ours"], phases["picas"])
            else:
                timed.append((phases["ours"], phases["picas"]))
    tokens = options.tokens
    rates = [(tokens / mine.elapsed, tokens / theirs.elapsed) for (mine, _), (theirs, _) in timed]
    ratios = [ours_rate / picas_rate for ours_rate, picas_rate in rates]
    ours_dups = [duplicates(ran, tokens) for (_, ran), _ in timed]
    ours_dup, ours_missing = sum(dup for dup, _ in ours_dups), sum(missing for _, missing in ours_dups)
    picas_dup = [duplicates(ran, tokens)[0] for _, (_, ran) in timed]
    picas_failed = sum(phase.failed for _, (phase, _) in timed)

    def cpu_ms(side: int, figure: str) -> float:
        """Median over the rounds of a side's (0 ours, 1 picas) CPU seconds, in ms per task."""
        return 1000 * statistics.median(getattr(pair[side][0], figure) for pair in timed) / tokens

    report(
        f"CouchDB pool: {tokens} /bin/true tokens, {options.pilots} pilots each, pouchdb-server in memory, "
        f"median of {len(timed)} rounds",
        [
            (f"pilot.pyz (slots={options.slots})", _spread([ours_rate for ours_rate, _ in rates], "tasks/s")),
            ("picas RunActor", _spread([picas_rate for _, picas_rate in rates], "tasks/s")),
            ("ratio", f"{statistics.median(ratios):.2f}x (target >= 3; rounds {rounds_text(ratios)})"),
            ("duplicates, pilot.pyz", f"{ours_dup} (never run: {ours_missing}; target 0)"),
            ("duplicates, picas", f"{rounds_text(picas_dup, 'd')} per round (gave up: {picas_failed})"),
            ("requests per task, pilot.pyz", f"{counted[0][0].requests / tokens:.2f} (target <= 2)"),
            ("requests per task, picas", f"{counted[1][0].requests / tokens:.2f}"),
            (
                "server CPU ms per task",
                f"pilot.pyz {cpu_ms(0, 'server_cpu'):.1f}, picas {cpu_ms(1, 'server_cpu'):.1f}",
            ),
            (
                "pilot CPU ms per task",
                f"pilot.pyz {cpu_ms(0, 'pilots_cpu'):.1f}, "
                f"picas {cpu_ms(1, 'pilots_cpu'):.1f} (with the tasks)",
            ),
        ],
    )
    counted_dup = sum(duplicates(counted[0][1], tokens))
    return 0 if ours_dup == ours_missing == counted_dup == 0 else 1


def _spread(values: list[float], unit: str) -> str:
    return f"{statistics.median(values):.1f} {unit} (rounds {rounds_text(values, '.1f')})"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ServerMissing as err:
        sys.exit(f"bench_couchdb: {err}")
