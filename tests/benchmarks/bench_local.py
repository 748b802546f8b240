"""Local pool throughput: 2,000 `/bin/true` tokens, slots=2, against a bare Python loop in the same run.

Prints tasks per second for pilot.pyz and for the baseline (2 threads running subprocess.run), their
ratio (printed; its old target of 0.5 is retired), the pilot's rate as a fraction of the floor's (target
>= 0.85) and against QCG-PilotJob's local mode (target >= 3x), the loop's own CPU time per task (user +
system of the pilot process, children excluded, its start-up taken off; target <= 0.3 ms), the pilot's
peak RSS (target < 40 MB), and warm start-up against `python3 -c pass` (target <= 2x). The pilot's time
includes its start-up; it runs under the interpreter that runs the baseline.

It also runs floor_loop.py, the least a claim-run-report loop in Python does per task (one SQLite
transaction, a folder with output files, posix_spawn; none of the pilot's other duties), started the same
way, with its workdir on tmpfs (its best case): its ratio is as close to the baseline as any agent written
like this can come on the machine.

Then, unless --no-references, the two tools issue 2 quotes beside its target (GNU parallel and
QCG-PilotJob, see references.py) run the same tasks in rounds of their own, each with a baseline.

Shared machines are noisy: each round runs the baseline, the pilot (workdir on disk, and on tmpfs) and the
floor once each, in an order that turns with the round; figures are medians over the rounds, and each ratio
is the median of the rounds' ratios (every ratio from one round's baseline).

    .venv/bin/python tests/benchmarks/bench_local.py [--rounds 8] [--no-references]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_pyz, median_time, report, rounds_option, rounds_text, run_own_cpu, turned
from conftest import to_toml
from floor_loop import make_pool
from references import REFERENCES

FLOOR = Path(__file__).resolve().parent / "floor_loop.py"

TOKENS = 2000
SLOTS = 2
REFERENCE_ROUNDS = 3  # GNU parallel takes seconds per run here: fewer rounds than the pilot's


def baseline(count: int, threads: int) -> float:
    """Seconds for a bare Python loop to run ``count`` /bin/true in ``threads`` threads."""

    def worker(n: int) -> None:
        for _ in range(n):
            subprocess.run(["/bin/true"], check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, [count // threads] * threads))
    return time.perf_counter() - start


def write_site(config: Path, pool: Path, workdir: Path) -> Path:
    """The bench's site.toml: a local pool, /bin/true, SLOTS slots."""
    sections = {
        "server": {"backend": "local", "path": str(pool)},
        "task": {"command": ["/bin/true"]},
        "pilot": {"slots": SLOTS, "workdir": str(workdir)},
    }
    config.write_text(to_toml(sections))
    return config


def pilot_run(pyz: Path, folder: Path, workdir: Path, env: dict[str, str]) -> tuple[float, int, float]:
    """(seconds, peak RSS, the pilot's own CPU seconds) for a pilot on TOKENS tokens."""
    (folder / "pool.db").unlink(missing_ok=True)
    config = write_site(folder / "site.toml", folder / "pool.db", workdir)
    subprocess.run(
        [str(pyz), "tokens", "add", "--range", str(TOKENS), "--config", str(config)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # Run by the interpreter that runs the baseline: a version manager's shim for `python3` (pyenv here)
    # would add its own start-up, which worker nodes with a plain /usr/bin/python3 do not pay.
    argv = [sys.executable, str(pyz), "--config", str(config), "--quiet"]
    code, seconds, rss, cpu = run_own_cpu(argv, env=env)
    if code != 0:
        raise SystemExit(f"pilot exited {code}")
    return seconds, rss, cpu


def empty_pool(pyz: Path, folder: Path, env: dict[str, str]) -> Path:
    """A site.toml whose pool has no tokens: a pilot started on it does all but run tasks."""
    config = write_site(folder / "empty.toml", folder / "empty.db", folder / "work")
    subprocess.run(
        [str(pyz), "init", "--config", str(config)], env=env, check=True, stdout=subprocess.DEVNULL
    )
    return config


def floor_run(folder: Path, workdir: Path, env: dict[str, str]) -> tuple[float, float]:
    """Seconds for floor_loop.py to run the same tokens, its interpreter's start-up included, and its own
    CPU seconds."""
    pool = folder / "floor.db"
    for path in (pool, pool.with_name("floor.db-wal"), pool.with_name("floor.db-shm")):
        path.unlink(missing_ok=True)
    make_pool(str(pool), TOKENS)
    argv = [sys.executable, str(FLOOR), str(pool), str(workdir / "floor"), str(SLOTS), "/bin/true"]
    code, seconds, _, cpu = run_own_cpu(argv, env=env)
    if code != 0:
        raise SystemExit(f"floor_loop.py exited {code}")
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rounds_option(parser, default=8)
    parser.add_argument(
        "--no-references", action="store_true", help="skip GNU parallel and QCG-PilotJob (references.py)"
    )
    args = parser.parse_args()
    rounds = args.rounds
    pyz = ensure_pyz()
    timed: list[dict[str, float]] = []  # per round: seconds of each side
    cpu: list[float] = []  # the pilot's own CPU seconds, every run
    floor_cpu: list[float] = []
    peak = 0
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        folder = Path(tmp)
        env = {**os.environ, "PILOT_PYZ_ROOT": str(folder / "pyz-root")}
        subprocess.run([str(pyz), "--version"], env=env, check=True, stdout=subprocess.DEVNULL)  # unpack once
        # Task folders cost file-system metadata operations: the pilot runs with workdir on disk and on tmpfs.
        workdirs = {"disk": folder / "work", "tmpfs": Path(shm)}
        for number in range(rounds):
            seconds: dict[str, float] = {}
            for side in turned(["baseline", "disk", "tmpfs", "floor"], number):
                if side == "baseline":
                    seconds[side] = baseline(TOKENS, SLOTS)
                elif side == "floor":
                    seconds[side], used = floor_run(folder, workdirs["tmpfs"], env)
                    floor_cpu.append(used)
                else:
                    seconds[side], rss, used = pilot_run(pyz, folder, workdirs[side], env)
                    peak = max(peak, rss)
                    cpu.append(used)
            timed.append(seconds)
        python_start = median_time([sys.executable, "-c", "pass"], 20)
        pyz_start = median_time([sys.executable, str(pyz), "--version"], 20, env=env)
        idle = [sys.executable, str(pyz), "--config", str(empty_pool(pyz, folder, env))]
        idle_runs = [run_own_cpu(idle, env=env) for _ in range(20)]
        idle_run = statistics.median(seconds for _, seconds, _, _ in idle_runs)
        idle_cpu = statistics.median(used for _, _, _, used in idle_runs)
        bare_cpu = statistics.median(run_own_cpu([sys.executable, "-c", "pass"])[3] for _ in range(10))

    def median(figure: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(figure(seconds) for seconds in timed)

    def pilot_line(side: str) -> tuple[str, str]:
        ratios = [seconds["baseline"] / seconds[side] for seconds in timed]
        of_floor = [seconds["floor"] / seconds[side] for seconds in timed]
        return (
            "pilot.pyz",
            f"{median(lambda s: TOKENS / s[side]):7.0f} tasks/s, ratio {statistics.median(ratios):.2f}"
            f"; workdir on {side}, including start-up (rounds {rounds_text(ratios)}); "
            f"{statistics.median(of_floor):.2f} of the floor's rate (target >= 0.85; rounds "
            f"{rounds_text(of_floor)})",
        )

    floor_ratios = [seconds["baseline"] / seconds["floor"] for seconds in timed]

    def overhead(side: str) -> float:
        return median(lambda s: (s[side] - s["baseline"]) / TOKENS * 1000)

    report(
        f"local pool: {TOKENS} x /bin/true, slots={SLOTS}, median of {rounds} rounds",
        [
            (
                "baseline",
                f"{median(lambda s: TOKENS / s['baseline']):7.0f} tasks/s "
                f"(bare Python loop, {SLOTS} threads, subprocess.run)",
            ),
            pilot_line("disk"),
            pilot_line("tmpfs"),
            (
                "floor loop",
                f"{median(lambda s: TOKENS / s['floor']):7.0f} tasks/s, ratio "
                f"{statistics.median(floor_ratios):.2f}; floor_loop.py, workdir on tmpfs, including start-up "
                f"(rounds {rounds_text(floor_ratios)})",
            ),
            (
                "overhead",
                f"{overhead('disk'):7.2f} ms per task over the baseline (disk), "
                f"{overhead('tmpfs'):.2f} ms (tmpfs)",
            ),
            (
                "loop CPU",
                f"{(statistics.median(cpu) - idle_cpu) / TOKENS * 1000:7.3f} ms per task of the pilot's own "
                f"CPU, start-up ({idle_cpu * 1000:.0f} ms) taken off (target <= 0.3 ms; "
                f"{statistics.median(cpu) / TOKENS * 1000:.3f} ms with it); floor_loop.py "
                f"{(statistics.median(floor_cpu) - bare_cpu) / TOKENS * 1000:.3f} ms, its interpreter's "
                f"start-up ({bare_cpu * 1000:.0f} ms) taken off",
            ),
            ("peak RSS", f"{peak / 2**20:7.1f} MB (target < 40 MB)"),
            (
                "warm start",
                f"{pyz_start * 1000:7.1f} ms for pilot.pyz --version vs {python_start * 1000:.1f} ms "
                f"for python -c pass ({pyz_start / python_start:.2f}x; target <= 2x)",
            ),
            (
                "idle run",
                f"{idle_run * 1000:7.1f} ms for a whole pilot on an empty pool: start-up, configuration, "
                "node checks, one claim, the end",
            ),
        ],
    )
    if not args.no_references:
        report_references(median(lambda s: TOKENS / s["disk"]))


def report_references(pilot_rate: float) -> None:
    """The tools the issue quotes, in rounds of their own with a baseline each: their rate here, their
    ratio, how the pilot's rate compares, and this machine against the issue author's."""
    ready = {reference.name: reference for reference in REFERENCES if reference.installed()}
    timed: list[dict[str, float]] = []
    for number in range(REFERENCE_ROUNDS if ready else 0):
        seconds = {}
        for side in turned(["baseline", *ready], number):
            seconds[side] = baseline(TOKENS, SLOTS) if side == "baseline" else ready[side].run(TOKENS, SLOTS)
        timed.append(seconds)
    rows = []
    for reference in REFERENCES:
        name, quoted = reference.name, reference.quoted
        if name not in ready:
            rows.append((name, "not measured: not installed (tests/benchmarks/install-references.sh)"))
            continue
        rate = statistics.median(TOKENS / seconds[name] for seconds in timed)
        ratios = [seconds["baseline"] / seconds[name] for seconds in timed]
        rows.append(
            (
                name,
                f"{rate:7.0f} tasks/s, ratio {statistics.median(ratios):.2f} (rounds {rounds_text(ratios)}), "
                f"including start-up; the issue's machine: {quoted:.0f} ({quoted / rate:.1f}x this); "
                f"pilot.pyz (disk): {pilot_rate / rate:.1f}x this{reference.target}",
            )
        )
    report(
        f"references the issue quotes, same {TOKENS} x /bin/true, 2 at a time, median of {len(timed)} rounds",
        rows,
    )


if __name__ == "__main__":
    main()
