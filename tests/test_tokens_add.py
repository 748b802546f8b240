"""`tokens add` at scale, end to end through pilot.pyz: the input is streamed in batches (memory stays flat
whatever its size) and the local pool adds all of it or nothing. CouchDB's resumable add:
tests/pools/test_couchdb_add.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import Site, local_config, one_line_error, pool_rows, wait_with_peak_rss

from agent.errors import ExitCode

LINES = 300_000
MEMORY_CEILING = 60 * 2**20  # the bound; reading the whole file, as before, took about 150 MB


def write_lines(path: Path, count: int) -> Path:
    with path.open("w") as out:
        for number in range(count):
            out.write(f"/data/sample-{number:07d}.fastq.gz --seed {number}\n")
    return path


def test_adding_300000_lines_stays_under_60_mb(site: Site) -> None:
    """Peak RSS from /proc's VmHWM while the add runs: a reader that holds the file, or a pool that
    holds every token before writing, goes over the ceiling."""
    site.write(local_config(site.folder, ["/bin/true"]))
    lines = write_lines(site.folder / "inputs.txt", LINES)
    argv = site.argv("tokens", "add", "--lines", str(lines), "--config", str(site.config))
    process = subprocess.Popen(argv, env=site.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, peak = wait_with_peak_rss(process, interval=0.005)
    assert code == 0, process.stderr.read() if process.stderr else ""
    assert 0 < peak < MEMORY_CEILING, f"peak RSS {peak / 2**20:.1f} MB"
    assert site.status() == {"todo": LINES, "locked": 0, "done": 0, "error": 0, "waiting": 0, "total": LINES}
    last = site.token(f"inputs-{LINES}")
    assert last["fields"] == {"input": f"/data/sample-{LINES - 1:07d}.fastq.gz --seed {LINES - 1}"}


def test_a_duplicate_deep_in_a_large_file_leaves_the_local_pool_as_it_was(site: Site) -> None:
    """The duplicate is in batch 271 of 300: the 270,000 tokens before it were written in the same
    transaction and are rolled back with it."""
    site.write(local_config(site.folder, ["/bin/true"]))
    assert site.run("tokens", "add", "--range", "3", "--prefix", "old").returncode == 0
    before = pool_rows(site.folder / "pool.db")
    deep = 270_500
    with (site.folder / "params.jsonl").open("w") as out:
        for number in range(LINES):
            token_id = "old-1" if number == deep else f"p-{number}"
            out.write(json.dumps({"id": token_id, "x": number}) + "\n")
    line = one_line_error(site.run("tokens", "add", "--jsonl", "params.jsonl"), ExitCode.POOL)
    assert "token 'old-1': already in the pool; nothing was added" in line
    assert f"(line {deep + 1} of params.jsonl)" in line  # found by reading the file again
    assert pool_rows(site.folder / "pool.db") == before


def test_bad_input_deep_in_a_large_file_adds_nothing(site: Site) -> None:
    site.write(local_config(site.folder, ["/bin/true"]))
    with (site.folder / "params.jsonl").open("w") as out:
        for number in range(50_000):
            out.write(json.dumps({"x": number}) + "\n")
        out.write("{not json\n")
    line = one_line_error(site.run("tokens", "add", "--jsonl", "params.jsonl"), ExitCode.CONFIG)
    assert "params.jsonl:50001: not valid JSON" in line
    assert pool_rows(site.folder / "pool.db") == []
