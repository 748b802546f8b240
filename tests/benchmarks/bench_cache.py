"""Benchmark: 16 pilots start together on a cold node cache, each needing the same 1 GiB entry.

    .venv/bin/python tests/benchmarks/bench_cache.py [--size 1GiB] [--pilots 16] [--rate 125MB]

A loopback HTTP server (tests/httpfiles.py, in its own process) serves a random file. In the same run the
benchmark times a plain download of that file (urllib3, and curl when installed: read and write, no
checksum; the best of two each), then starts the pilots at once; the one that downloads verifies the
sha256 before any pilot may use the entry. It prints the wall time until every pilot has the entry, the
number of downloads the server saw, and the ratio to the fastest plain download (target: 1 download, at
most 1.2 times). To tell start-up from download it also times the same pilots on the now warm cache, and
one `cache fetch` alone on an empty cache. Everything is made in a temporary folder under $TMPDIR and
removed at the end. Without --rate it runs twice: on raw loopback, where 16 interpreters starting on a
small machine take longer than the download itself, and throttled to 1 Gbit/s, a realistic data link.

A pilot "has it" at the time stamp of its log line saying the entry is ready (it fetched it, another pilot
did, or it was found ready); the pool is empty, so each pilot then exits without claiming.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, ensure_pyz, report  # common puts tests/ on the path

sys.path.insert(0, str(REPO))
from conftest import local_config, to_toml

from agent.units import format_size, parse_size

CHUNK = 1 << 20
TARGET_RATIO = 1.2
HAS_IT = (": ready in ", ": found ready: ", ": another pilot fetched it: ")


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            data = os.urandom(min(CHUNK * 8, left))
            digest.update(data)
            out.write(data)
            left -= len(data)
    return digest.hexdigest()


def start_server(path: Path, rate: int | None) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, str(REPO / "tests" / "httpfiles.py"), f"/{path.name}={path}"]
    if rate:
        argv += ["--rate", str(rate)]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def gets(base: str, name: str) -> list[dict[str, object]]:
    import urllib3

    requests = json.loads(urllib3.request("GET", f"{base}/_stats").data)
    return [r for r in requests if r["path"] == f"/{name}" and r["method"] == "GET"]


def plain_urllib3(url: str, target: Path) -> float:
    import urllib3

    started = time.monotonic()
    response = urllib3.request("GET", url, preload_content=False)
    with target.open("wb") as out:
        for data in iter(lambda: response.read(CHUNK, decode_content=False), b""):
            out.write(data)
    response.release_conn()
    took = time.monotonic() - started
    target.unlink()
    return took


def plain_curl(url: str, target: Path) -> float | None:
    if shutil.which("curl") is None:
        return None
    started = time.monotonic()
    subprocess.run(["curl", "-sSf", "-o", str(target), url], check=True)
    took = time.monotonic() - started
    target.unlink()
    return took


def run_pilots(pyz: Path, folder: Path, env: dict[str, str], pilots: int, prefix: str) -> float:
    """Start the pilots at once; seconds until the last of them logged that it has the entry."""
    config = folder / "site.toml"
    paths = [folder / f"{prefix}-{n}.log" for n in range(pilots)]
    logs = [path.open("w") for path in paths]
    started = time.time()
    processes = [
        subprocess.Popen([str(pyz), "--config", str(config)], stdout=log, stderr=log, env=env) for log in logs
    ]
    codes = [process.wait(timeout=1800) for process in processes]
    for log in logs:
        log.close()
    if any(codes):
        raise SystemExit(f"pilots failed with {codes}; see {folder}/{prefix}-*.log")
    return max(_has_it(path) for path in paths) - started


def fetch_alone(pyz: Path, folder: Path, env: dict[str, str]) -> float:
    """One process on an emptied cache: the download, the checksum and the rename, without company."""
    config = ["--config", str(folder / "site.toml")]
    subprocess.run([str(pyz), "cache", "clean", *config], check=True, capture_output=True, env=env)
    started = time.monotonic()
    subprocess.run([str(pyz), "cache", "fetch", *config], check=True, capture_output=True, env=env)
    return time.monotonic() - started


def _has_it(log: Path) -> float:
    for line in log.read_text().splitlines():
        if any(marker in line for marker in HAS_IT):
            stamp = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
            return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
    raise SystemExit(f"{log}: no line saying the entry is ready")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1GiB", help="size of the entry (default 1GiB)")
    parser.add_argument("--pilots", type=int, default=16)
    parser.add_argument(
        "--rate",
        help="throttle the server, e.g. 125MB for a 1 Gbit/s link, or none "
        "(default: both, one after the other)",
    )
    args = parser.parse_args()
    rates = [args.rate] if args.rate else ["none", "125MB"]
    for rate in rates:
        scenario(args, parse_size(args.size), None if rate == "none" else parse_size(rate))


def scenario(args: argparse.Namespace, size: int, rate: int | None) -> None:
    """One run: a fresh server, folder and cache; prints its table."""
    pyz = ensure_pyz().resolve()
    folder = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    free = shutil.disk_usage(folder).free
    if free < 3 * size + (1 << 30):
        shutil.rmtree(folder)
        raise SystemExit(
            f"needs {format_size(3 * size + (1 << 30))} free in {folder.parent}, has {format_size(free)}"
        )
    server = None
    try:
        source = folder / "entry.bin"
        digest = make_file(source, size)
        server, base = start_server(source, rate)
        url = f"{base}/{source.name}"
        env = {**os.environ, "PILOT_PYZ_ROOT": str(folder / "pyz-root"), "TMPDIR": str(folder)}
        subprocess.run([str(pyz), "--version"], check=True, capture_output=True, env=env)  # unpack once
        sections = local_config(folder, ["true"], cache={"dir": str(folder / "cache")})
        sections["cache.files.entry"] = {"url": url, "sha256": digest}
        (folder / "site.toml").write_text(to_toml(sections))
        subprocess.run(
            [str(pyz), "init", "--config", str(folder / "site.toml")],
            check=True,
            env=env,
            capture_output=True,
        )

        # Best of two: the baseline is the fastest a plain download managed on this machine now.
        by_urllib3 = min(plain_urllib3(url, folder / "plain.bin") for _ in range(2))
        curl = [plain_curl(url, folder / "plain.bin") for _ in range(2)]
        by_curl = None if None in curl else min(t for t in curl if t is not None)
        baseline = min(t for t in (by_urllib3, by_curl) if t is not None)
        before = len(gets(base, source.name))
        cold = run_pilots(pyz, folder, env, args.pilots, "cold")
        downloads = gets(base, source.name)[before:]
        warm = run_pilots(pyz, folder, env, args.pilots, "warm")
        alone = fetch_alone(pyz, folder, env)

        where = f"throttled to {format_size(rate)}/s" if rate else "not throttled"
        sent = format_size(sum(int(str(d["sent"])) for d in downloads))
        ratio = cold / baseline
        rows = [
            ("machine", f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"),
            ("plain download, urllib3 (no checksum, best of 2)", f"{by_urllib3:.2f}s"),
        ]
        if by_curl is not None:
            rows.append(("plain download, curl (no checksum, best of 2)", f"{by_curl:.2f}s"))
        rows += [
            (f"{args.pilots} pilots, cold cache: all have it after", f"{cold:.2f}s"),
            ("downloads the server saw", f"{len(downloads)} ({sent} sent)"),
            ("ratio to the fastest plain download", f"{ratio:.2f} (target <= {TARGET_RATIO})"),
            (f"{args.pilots} pilots, warm cache (start-up only)", f"{warm:.2f}s"),
            ("one `cache fetch` alone, cold (download + sha256)", f"{alone:.2f}s"),
            (
                "target: 1 download, ratio <= 1.2",
                "met" if len(downloads) == 1 and ratio <= TARGET_RATIO else "NOT met",
            ),
        ]
        report(f"cache: {args.pilots} pilots, one {format_size(size)} entry, loopback HTTP {where}", rows)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
