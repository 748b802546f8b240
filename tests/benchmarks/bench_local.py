"""Local pool throughput: 2,000 `/bin/true` tokens, slots=2, against a bare Python loop in the same run.

Prints tasks per second for pilot.pyz and for the baseline (2 threads running subprocess.run), their
ratio (target >= 0.5), the pilot's peak RSS (target < 40 MB), and warm start-up against `python3 -c pass`.
The pilot's time includes its start-up; it runs under the interpreter that runs the baseline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_pyz, median_time, report, run_measured

TOKENS = 2000
SLOTS = 2


def baseline(count: int, threads: int) -> float:
    """Seconds for a bare Python loop to run ``count`` /bin/true in ``threads`` threads."""

    def worker(n: int) -> None:
        for _ in range(n):
            subprocess.run(["/bin/true"], check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, [count // threads] * threads))
    return time.perf_counter() - start


def pilot_run(pyz: Path, folder: Path, workdir: Path, env: dict[str, str]) -> tuple[float, int]:
    config = folder / "site.toml"
    (folder / "pool.db").unlink(missing_ok=True)
    config.write_text(
        f'[server]\nbackend = "local"\npath = "{folder}/pool.db"\n'
        f'[task]\ncommand = ["/bin/true"]\n'
        f'[pilot]\nslots = {SLOTS}\nworkdir = "{workdir}"\n'
    )
    subprocess.run(
        [str(pyz), "tokens", "add", "--range", str(TOKENS), "--config", str(config)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # Run by the interpreter that runs the baseline: a version manager's shim for `python3` (pyenv here)
    # would add its own start-up, which worker nodes with a plain /usr/bin/python3 do not pay.
    argv = [sys.executable, str(pyz), "--config", str(config), "--quiet"]
    code, seconds, rss = run_measured(argv, env=env)
    if code != 0:
        raise SystemExit(f"pilot exited {code}")
    return seconds, rss


def main() -> None:
    pyz = ensure_pyz()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "PILOT_PYZ_ROOT": str(folder / "pyz-root")}
        subprocess.run([str(pyz), "--version"], env=env, check=True, stdout=subprocess.DEVNULL)  # unpack once
        base = baseline(TOKENS, SLOTS)
        seconds, rss = pilot_run(pyz, folder, folder / "work", env)
        # Task folders cost file-system metadata operations: show the same run with workdir on tmpfs.
        with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
            tmpfs_seconds, _ = pilot_run(pyz, folder, Path(shm), env)
        python_start = median_time([sys.executable, "-c", "pass"], 20)
        pyz_start = median_time([sys.executable, str(pyz), "--version"], 20, env=env)
    pilot_rate, tmpfs_rate, base_rate = TOKENS / seconds, TOKENS / tmpfs_seconds, TOKENS / base
    report(
        f"local pool: {TOKENS} x /bin/true, slots={SLOTS}",
        [
            ("baseline", f"{base_rate:7.0f} tasks/s (bare Python loop, {SLOTS} threads, subprocess.run)"),
            (
                "pilot.pyz",
                f"{pilot_rate:7.0f} tasks/s, ratio {pilot_rate / base_rate:.2f} (target >= 0.5); "
                f"workdir on disk ({seconds:.2f}s including start-up)",
            ),
            ("pilot.pyz", f"{tmpfs_rate:7.0f} tasks/s, ratio {tmpfs_rate / base_rate:.2f}; workdir on tmpfs"),
            (
                "overhead",
                f"{(seconds - base) / TOKENS * 1000:7.2f} ms per task over the baseline (disk), "
                f"{(tmpfs_seconds - base) / TOKENS * 1000:.2f} ms (tmpfs)",
            ),
            ("peak RSS", f"{rss / 2**20:7.1f} MB (target < 40 MB)"),
            (
                "warm start",
                f"{pyz_start * 1000:7.1f} ms for pilot.pyz --version vs {python_start * 1000:.1f} ms "
                f"for python -c pass ({pyz_start / python_start:.1f}x)",
            ),
        ],
    )


if __name__ == "__main__":
    main()
