"""ToPoS pool throughput: 1,000 `/bin/true` tokens, 4 pilot.pyz pilots against 4 shell loops doing what SURF's
bash client (`topos`, sara-nl/griddocs) does per token, in the same run, against the same real ToPoS 4.1
(Apache with mod_php, MariaDB, on 127.0.0.1), one after the other, round after round (3 by default), the
side that goes first turning each round.

A shell loop is the documented pattern: `nextTokenWithLock POOL TIMEOUT` (curl with --dump-header into a
mktemp file, `hostname -f` as the lock description, the token and lock names cut out with tr, awk and
grep), `getToken`, run the task, `deleteToken`; the bash client's own curl command lines, inlined (its
script is not copied here). Ours also keep a result per token in the done pool and check their lock
before deleting, which the shell loop does not.

Prints tasks per second for both and their ratio (target >= 3), HTTP requests per task for both (from
Apache's access log), duplicate executions of ours (target 0), and the rate of `tokens add --lines` for
100,000 lines (target >= 5,000 tokens/s).

    .venv/bin/python tests/benchmarks/bench_topos.py [--tokens 1000] [--pilots 4] [--slots 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import ensure_pyz, report, rounds_option, rounds_text, turned  # noqa: E402 - puts tests/ on the path
from conftest import to_toml  # noqa: E402
from servers.topos import ToposMissing, ToposServer, make_server  # noqa: E402

STARTED = re.compile(r" token=(\S+) INFO started \(attempt")
LINES = 100_000
# The bash client's calls for one token, as its functions make them (CURL="curl --silent --fail").
SHELL_LOOP = r"""
URL="$1"; POOL="$2"; TIMEOUT="$3"; RECORD="$4"
CURL="curl --silent --fail"
while true; do
  headerFile="$( mktemp )"
  TOKEN=$( ${CURL} --header 'Accept: text/plain' --dump-header ${headerFile} \
    "${URL}pools/${POOL}/nextToken?timeout=${TIMEOUT}&description=$(hostname -f)" ) ||
    { rm -f "$headerFile"; break; }  # curl --fail: 404, no token available
  NAME=$( echo ${TOKEN} | tr '/' ' ' | awk '{print $NF}' )
  LOCK=$( grep 'X-Topos-LockURL' <${headerFile} | grep -oP 'http\S+' )
  LOCK=$( echo -n ${LOCK#* } | tr '/' ' ' | awk '{print $NF}' )
  rm $headerFile
  INPUT=$( ${CURL} --header 'Accept: text/plain' "${URL}pools/${POOL}/tokens/${NAME}" )
  /bin/true "$INPUT"
  echo "$NAME" >> "$RECORD"
  ${CURL} --request DELETE --header 'Accept: text/plain' "${URL}pools/${POOL}/tokens/${NAME}" > /dev/null
done
"""


def wait_all(processes: list[subprocess.Popen[bytes]], what: str) -> None:
    for process in processes:
        if process.wait(timeout=1800) != 0:
            raise SystemExit(f"{what}: exited with {process.returncode}")


def ours(
    pyz: Path, server: ToposServer, folder: Path, options: argparse.Namespace
) -> tuple[float, Counter, str]:
    pool = server.new_pool()
    config = folder / "site.toml"
    sections = {
        "server": {"backend": "topos", "url": server.url, "pool": pool, "lease": "60s"},
        "task": {"command": ["/bin/true"]},
        "pilot": {"slots": options.slots, "workdir": str(folder / "work")},
    }
    config.write_text(to_toml(sections))
    env = {**os.environ, "TMPDIR": str(folder)}
    subprocess.run(
        [str(pyz), "tokens", "add", "--range", str(options.tokens), "--config", str(config)],
        check=True,
        env=env,
        capture_output=True,
    )
    logs = [folder / f"pilot-{i}.log" for i in range(options.pilots)]
    start = time.perf_counter()
    pilots = [
        subprocess.Popen(
            [str(pyz), "run", "--config", str(config)],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    wait_all(pilots, "a pilot.pyz pilot")
    elapsed = time.perf_counter() - start
    executed = Counter(m.group(1) for log in logs for m in STARTED.finditer(log.read_text()))
    return elapsed, executed, pool


def shell(server: ToposServer, folder: Path, options: argparse.Namespace) -> tuple[float, Counter, str]:
    pool = server.new_pool()
    server.request(
        "POST",
        f"pools/{pool}/tokens/",
        f"ntokens={options.tokens}&offset=0".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    script = folder / "loop.sh"
    script.write_text(SHELL_LOOP)
    records = [folder / f"shell-{i}.ids" for i in range(options.pilots)]
    start = time.perf_counter()
    loops = [
        subprocess.Popen(["bash", str(script), server.url, pool, "60", str(record)]) for record in records
    ]
    wait_all(loops, "a shell loop")
    elapsed = time.perf_counter() - start
    executed = Counter(line for record in records if record.exists() for line in record.read_text().split())
    return elapsed, executed, pool


def lines_rates(pyz: Path, server: ToposServer, folder: Path) -> tuple[float, float]:
    """Tokens per second for LINES lines: `tokens add --lines` (the zipapp's start included), and the bash
    client's createTokensFromLinesInFile (one curl upload of the file), the server's own floor."""
    lines = folder / "lines.txt"
    lines.write_text("".join(f"/data/genomes/sample-{i:06d}.fa.gz --k 31\n" for i in range(LINES)))
    ours = _timed_upload(
        server,
        lambda config, pool: [str(pyz), "tokens", "add", "--lines", str(lines), "--config", str(config)],
        folder,
    )
    curl = _timed_upload(
        server,
        lambda config, pool: [
            "curl",
            "--silent",
            "--fail",
            "--data-binary",
            f"@{lines}",
            "--header",
            'Content-Type: text/plain; charset="UTF-8"',
            f"{server.url}pools/{pool}/tokens/",
        ],
        folder,
    )
    return ours, curl


def _timed_upload(server: ToposServer, argv: Callable[[Path, str], list[str]], folder: Path) -> float:
    pool = server.new_pool()
    config = folder / "site.toml"
    config.write_text(
        to_toml(
            {
                "server": {"backend": "topos", "url": server.url, "pool": pool},
                "task": {"command": ["/bin/true"]},
            }
        )
    )
    start = time.perf_counter()
    subprocess.run(
        argv(config, pool),
        check=True,
        capture_output=True,
        env={**os.environ, "TMPDIR": str(folder)},
    )
    elapsed = time.perf_counter() - start
    count = len(server.token_ids(pool))
    if count != LINES:
        raise SystemExit(f"{argv(config, pool)[0]}: {count} tokens in the pool, not {LINES}")
    return LINES / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--pilots", type=int, default=4)
    parser.add_argument(
        "--slots", type=int, default=1, help="slots per pilot.pyz pilot (a shell loop has one)"
    )
    rounds_option(parser, default=3)
    options = parser.parse_args()
    pyz = ensure_pyz()
    if not shutil.which("curl"):
        raise ToposMissing("curl is not installed: the shell loops need it")
    rates: list[tuple[float, float]] = []
    requests: dict[str, list[float]] = {"ours": [], "shell": []}
    ours_executed: list[Counter] = []
    server = make_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-topos-") as tmp:
            for number in range(options.rounds):
                measured = {}
                for side in turned(["ours", "shell"], number):
                    folder = Path(tmp) / f"round-{number}" / side
                    folder.mkdir(parents=True)
                    if side == "ours":
                        elapsed, executed, pool = ours(pyz, server, folder, options)
                        ours_executed.append(executed)
                    else:
                        elapsed, executed, pool = shell(server, folder, options)
                    requests[side].append(server.request_count(pool) / options.tokens)
                    measured[side] = options.tokens / elapsed
                rates.append((measured["ours"], measured["shell"]))
            upload, curl_upload = lines_rates(pyz, server, Path(tmp))
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)
    ratios = [mine / theirs for mine, theirs in rates]
    dups = sum(n - 1 for executed in ours_executed for n in executed.values() if n > 1)
    missing = sum(options.tokens - len(executed) for executed in ours_executed)
    report(
        f"ToPoS pool: {options.tokens} /bin/true tokens, {options.pilots} pilots each, the real ToPoS 4.1 "
        f"on 127.0.0.1, median of {len(rates)} rounds",
        [
            (f"pilot.pyz (slots={options.slots})", _spread([mine for mine, _ in rates], "tasks/s")),
            ("bash-client shell loops", _spread([theirs for _, theirs in rates], "tasks/s")),
            ("ratio", f"{statistics.median(ratios):.2f}x (target >= 3; rounds {rounds_text(ratios)})"),
            ("duplicates, pilot.pyz", f"{dups} (never run: {missing}; target 0)"),
            ("requests per task, pilot.pyz", f"{statistics.median(requests['ours']):.2f} (with its result)"),
            ("requests per task, shell loops", f"{statistics.median(requests['shell']):.2f}"),
            (f"tokens add --lines, {LINES:,} lines", f"{upload:,.0f} tokens/s (target >= 5,000)"),
            ("the same lines, one curl upload", f"{curl_upload:,.0f} tokens/s (the server's own rate)"),
        ],
    )
    return 0 if dups == missing == 0 else 1


def _spread(values: list[float], unit: str) -> str:
    return f"{statistics.median(values):.1f} {unit} (rounds {rounds_text(values, '.1f')})"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ToposMissing, RuntimeError) as err:
        sys.exit(f"bench_topos: {err}")
