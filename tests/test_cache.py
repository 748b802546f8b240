"""The node-local cache: one download per node, resumed after a kill, verified, and never half-visible.

Pilots run as subprocesses of the built pilot.pyz against a real HTTP server on 127.0.0.1
(tests/httpfiles.py) that counts requests and can throttle, stall or break a transfer. A read-only or full
cache folder is a real read-only or 1 MiB tmpfs mount (the tests run as root, where chmod stops nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import filelock
import pytest
from conftest import Site, local_config, wait_for
from httpfiles import FileServer, Rules
from test_archive import make_tar

from agent.cache import (
    CHECK_URL,
    LOCK,
    PARTIAL,
    READY,
    Cache,
    data_name,
    entry_key,
    parse_content_range,
    progress_text,
)
from agent.config import CacheConfig, CacheFile

MiB = 1 << 20
# The task shows what it got: the placeholder, the environment variable, and the checksum of the file.
SHOW = 'printf "%s %s %s\\n" "$1" "$PILOT_CACHE_REF" "$(sha256sum "$1" | cut -c1-64)" > "$2/$PILOT_TOKEN_ID"'


@pytest.fixture(scope="module")
def server() -> Iterator[FileServer]:
    with FileServer() as running:
        yield running


def payload(size: int) -> bytes:
    return (uuid.uuid4().bytes * (size // 16 + 1))[:size]


def serve(server: FileServer, size: int, rules: Rules | None = None) -> tuple[bytes, str, str]:
    """Random data of ``size`` bytes on the server at a path of its own: (data, path, url)."""
    data = payload(size)
    path = unique("ref.bin")
    return data, path, server.serve(path, data, rules)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique(name: str) -> str:
    return f"/{uuid.uuid4().hex[:8]}/{name}"


def cache_site(site: Site, url: str, digest: str | None, **cache: Any) -> Path:
    """A site whose task records {cache.ref} for each token in out/."""
    (site.folder / "out").mkdir(exist_ok=True)
    entry = {"url": url, **({"sha256": digest} if digest else {}), **cache.pop("entry", {})}
    sections = local_config(
        site.folder,
        ["sh", "-c", SHOW, "sh", "{cache.ref}", str(site.folder / "out")],
        pilot={"slots": 1, "max_tasks": 1},
        cache={"dir": str(cache.pop("dir", site.folder / "cache")), "timeout": "2s", **cache},
    )
    sections["cache.files.ref"] = entry
    return site.write(sections)


def outputs(site: Site) -> dict[str, list[str]]:
    return {path.name: path.read_text().split() for path in (site.folder / "out").iterdir()}


def entry_folder(site: Site, url: str, digest: str | None, unpack: bool = False) -> Path:
    return site.folder / "cache" / entry_key(CacheFile("ref", url, digest, unpack))


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error a user sees: exactly one 'pilot: error:' line, and never a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pilot: error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# -- one download per node -------------------------------------------------------------------------


@pytest.mark.slow
def test_sixteen_pilots_on_a_cold_cache_download_once_and_all_use_the_same_path(
    site: Site, server: FileServer, reaper: list
) -> None:
    # Two seconds of download: the other pilots arrive while it runs.
    data, path, url = serve(server, 16 * MiB, Rules(rate=8 * MiB))
    cache_site(site, url, sha(data))
    assert site.run("tokens", "add", "--range", "16").returncode == 0
    pilots = [site.start(log_name=f"pilot{n}.log") for n in range(16)]
    reaper.extend(pilots)
    codes = [pilot.wait(timeout=240) for pilot in pilots]
    logs = "".join((site.folder / f"pilot{n}.log").read_text() for n in range(16))
    assert codes == [0] * 16, logs
    assert len(server.gets(path)) == 1, "exactly one download for the whole node"
    assert server.sent(path) == len(data)
    seen = outputs(site)
    assert sorted(seen) == sorted(f"range-{i}" for i in range(16)), "all 16 ran their task"
    expected = str(entry_folder(site, url, sha(data)) / "ref.bin")
    assert {tuple(words) for words in seen.values()} == {(expected, expected, sha(data))}
    assert logs.count("fetching http://") == 1
    assert "waiting" in logs, "some pilots waited for the one that downloaded"


def test_a_ready_entry_is_found_without_taking_the_lock(site: Site, server: FileServer) -> None:
    data, _, url = serve(server, MiB)
    cache_site(site, url, sha(data))
    assert site.run("cache", "fetch").returncode == 0
    lock = filelock.FileLock(str(entry_folder(site, url, sha(data)) / LOCK))
    with lock.acquire(timeout=5):  # a pilot holding the lock would make any lookup wait
        result = site.run("cache", "fetch", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "found ready" in result.stderr and "waiting" not in result.stderr


# -- interrupted downloads -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_downloader_killed_mid_transfer_is_finished_by_the_next_pilot_with_a_range_request(
    site: Site, server: FileServer, reaper: list
) -> None:
    data, path, url = serve(server, 8 * MiB, Rules(rate=2 * MiB))
    cache_site(site, url, sha(data))
    folder = entry_folder(site, url, sha(data))
    assert site.run("tokens", "add", "--range", "1").returncode == 0
    first = site.start(log_name="first.log")
    reaper.append(first)
    wait_for(lambda: (folder / PARTIAL).exists() and (folder / PARTIAL).stat().st_size > 2 * MiB, 60)
    # Nothing half-done is visible: no file where tasks look, no ready mark.
    assert not (folder / "ref.bin").exists() and not (folder / READY).exists()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    kept = (folder / PARTIAL).stat().st_size
    second = site.start(log_name="second.log")
    reaper.append(second)
    assert second.wait(timeout=120) == 0, (site.folder / "second.log").read_text()
    gets = server.gets(path)
    assert len(gets) == 2
    assert gets[0].sent < len(data)
    assert gets[1].range == f"bytes={kept}-" and gets[1].status == 206 and gets[1].sent == len(data) - kept
    assert "resuming an interrupted download" in (site.folder / "second.log").read_text()
    assert outputs(site)["range-0"][2] == sha(data)
    assert not (folder / PARTIAL).exists()


@pytest.mark.parametrize(
    "rules",
    [Rules(break_after=MiB), Rules(stall_after=MiB)],
    ids=["connection-broken", "stalled"],
)
def test_a_broken_or_stalled_transfer_is_resumed_by_the_same_pilot(
    site: Site, server: FileServer, rules: Rules
) -> None:
    data, path, url = serve(server, 3 * MiB, rules)
    cache_site(site, url, sha(data), timeout="1s")
    result = site.run("cache", "fetch", timeout=60)
    assert result.returncode == 0, result.stderr
    gets = server.gets(path)
    assert [get.status for get in gets] == [200, 206]
    assert gets[1].range == f"bytes={MiB}-"
    assert "trying again at 1.0MiB" in result.stderr


def test_a_server_without_range_support_gets_a_fresh_download(site: Site, server: FileServer) -> None:
    data, path, url = serve(server, 3 * MiB, Rules(ranges=False, break_after=MiB))
    cache_site(site, url, sha(data))
    result = site.run("cache", "fetch", timeout=60)
    assert result.returncode == 0, result.stderr
    gets = server.gets(path)
    assert gets[1].range == f"bytes={MiB}-" and gets[1].status == 200 and gets[1].sent == len(data)
    assert "starts over" in result.stderr
    assert (entry_folder(site, url, sha(data)) / "ref.bin").read_bytes() == data


# -- wrong data, refused archives ------------------------------------------------------------------


def test_corrupt_data_is_retried_then_the_pilot_stops_before_claiming(site: Site, server: FileServer) -> None:
    data = payload(MiB)
    path = unique("ref.bin")
    url = server.serve(path, data[:-1] + b"!")
    cache_site(site, url, sha(data))
    assert site.run("tokens", "add", "--range", "2").returncode == 0
    result = site.run("run")
    assert result.returncode == 5
    line = one_error_line(result)
    assert f"cache entry 'ref': checksum mismatch 3 times from {url}: expected sha256 {sha(data)}" in line
    assert len(server.gets(path)) == 3
    assert site.status()["todo"] == 2, "no token was claimed on a node without its input"
    folder = entry_folder(site, url, sha(data))
    assert sorted(p.name for p in folder.iterdir()) == [".failed.json", ".lock"], "nothing kept or marked"


def test_pilots_that_waited_share_the_downloaders_failure_instead_of_repeating_it(
    site: Site, server: FileServer, reaper: list
) -> None:
    data = payload(MiB)
    path = unique("ref.bin")
    url = server.serve(path, b"wrong" + data[5:])
    cache_site(site, url, sha(data))
    folder = entry_folder(site, url, sha(data))
    folder.mkdir(parents=True)
    lock = filelock.FileLock(str(folder / LOCK))
    with lock.acquire(timeout=5):  # as if another pilot were downloading: these three must wait
        pilots = [site.start("cache", "fetch", log_name=f"p{n}.log") for n in range(3)]
        reaper.extend(pilots)
        for n in range(3):
            wait_for(lambda n=n: "waiting" in (site.folder / f"p{n}.log").read_text(), 60, what="waiting")
    assert [pilot.wait(timeout=60) for pilot in pilots] == [5, 5, 5]
    assert len(server.gets(path)) == 3, "one pilot tried three times; the others took its answer"
    logs = [(site.folder / f"p{n}.log").read_text() for n in range(3)]
    assert sum("found by the pilot this one waited for" in log for log in logs) == 2


def test_a_missing_file_on_the_server_is_a_clear_error_without_retries(
    site: Site, server: FileServer
) -> None:
    url = server.url + unique("missing.bin")
    cache_site(site, url, None)
    result = site.run("cache", "fetch")
    assert result.returncode == 5
    hint = CHECK_URL.format(name="ref")
    assert (
        one_error_line(result)
        == f"pilot: error: cache entry 'ref': {url} answered HTTP 404 Not Found; {hint}"
    )
    assert len(server.gets(urlsplit(url).path)) == 1


def test_an_archive_that_would_write_outside_its_folder_is_refused(site: Site, server: FileServer) -> None:
    archive = make_tar(
        site.folder / "bad.tar.gz", [("ok.txt", "file", "x"), ("../escape", "file", "x")], "w:gz"
    )
    data = archive.read_bytes()
    url = server.serve(unique("bad.tar.gz"), data)
    cache_site(site, url, sha(data), entry={"unpack": True})
    result = site.run("cache", "fetch")
    assert result.returncode == 5
    line = one_error_line(result)
    assert "archive member '../escape': has a '..' in its path" in line
    folder = entry_folder(site, url, sha(data), unpack=True)
    assert not (folder.parent / "escape").exists() and not (folder / "escape").exists()
    assert sorted(p.name for p in folder.iterdir()) == [".failed.json", ".lock"]


def test_sources_can_be_paths_and_file_urls_and_archives_are_unpacked(site: Site) -> None:
    plain = site.folder / "shared" / "genome.fa"
    plain.parent.mkdir()
    plain.write_text(">chr1\nACGT\n")
    archive = make_tar(site.folder / "shared" / "refdb-v3.tgz", [("refdb/index", "file", "idx\n")], "w:gz")
    sections = local_config(
        site.folder,
        ["sh", "-c", 'cat "$1" "$PILOT_CACHE_DB/refdb/index" > "$2"', "sh", "{cache.genome}", "{id}.out"],
        cache={"dir": str(site.folder / "cache")},
    )
    sections["task"]["command"][-1] = str(site.folder / "out-{id}")
    sections["cache.files.genome"] = {"url": str(plain)}
    sections["cache.files.db"] = {"url": archive.as_uri(), "unpack": True}
    site.write(sections)
    assert site.run("tokens", "add", "--range", "1").returncode == 0
    result = site.run("run")
    assert result.returncode == 0, result.stderr
    assert (site.folder / "out-range-0").read_text() == ">chr1\nACGT\nidx\n"
    folder = site.folder / "cache" / entry_key(CacheFile("db", archive.as_uri(), None, True))
    assert (folder / "refdb-v3" / "refdb" / "index").is_file()


# -- the cache folder's disk -----------------------------------------------------------------------


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(name, options): a fresh tmpfs with mount(8)'s options; unmounted after the test."""
    mounted: list[Path] = []

    def make(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs here (needs root on a host that allows mounts): {done.stderr}")
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_read_only_cache_folder_is_a_clear_error(site: Site, server: FileServer, mount: Callable) -> None:
    readonly = mount("ro", "ro,size=1m")
    data, _, url = serve(server, MiB)
    cache_site(site, url, sha(data), dir=readonly / "cache")
    assert site.run("tokens", "add", "--range", "1").returncode == 0
    result = site.run("run")
    assert result.returncode == 5
    line = one_error_line(result)
    assert f"cache entry 'ref': cannot write in the cache folder: {readonly}/cache: Read-only" in line
    assert site.status()["todo"] == 1


def test_a_read_only_cache_folder_that_holds_the_entry_is_used(
    site: Site, server: FileServer, mount: Callable
) -> None:
    folder = mount("prefilled", "size=4m")
    data, _, url = serve(server, MiB)
    cache_site(site, url, sha(data), dir=folder / "cache")
    assert site.run("cache", "fetch").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    assert site.run("tokens", "add", "--range", "1").returncode == 0
    result = site.run("run")
    assert result.returncode == 0, result.stderr
    assert outputs(site)["range-0"][2] == sha(data)


def test_not_enough_free_disk_for_the_announced_size_stops_before_downloading(
    site: Site, server: FileServer, mount: Callable
) -> None:
    small = mount("small", "size=1m")
    # Slow, so that what the server sent is what the pilot asked for, not what socket buffers took.
    data, path, url = serve(server, 4 * MiB, Rules(rate=MiB))
    cache_site(site, url, sha(data), dir=small / "cache")
    assert site.run("tokens", "add", "--range", "1").returncode == 0
    result = site.run("run")
    assert result.returncode == 5
    line = one_error_line(result)
    assert f"cache entry 'ref': needs 4.0MiB in {small}/cache but only" in line
    assert f"is free (size announced by {url}); free space there, or set [cache] dir to a bigger" in line
    assert server.sent(path) < len(data) // 2, "the body was not downloaded"
    assert len(server.gets(path)) == 1, "no retry can make room"
    assert site.status()["todo"] == 1


def test_a_disk_that_fills_up_during_an_unannounced_download_is_a_clear_error(
    site: Site, server: FileServer, mount: Callable
) -> None:
    small = mount("small", "size=1m")
    data, _, url = serve(server, 4 * MiB, Rules(length=False))
    cache_site(site, url, sha(data), dir=small / "cache")
    result = site.run("cache", "fetch")
    assert result.returncode == 5
    line = one_error_line(result)
    assert (
        f"cache entry 'ref': no space left in {small}/cache; the partial download is deleted; free space"
        in line
    )
    assert not (entry_folder(site, url, sha(data)).parent.parent / "x").exists()
    folder = small / "cache" / entry_key(CacheFile("ref", url, sha(data), False))
    assert not (folder / PARTIAL).exists(), "the space is given back"


# -- cache list, cache clean, max_size -------------------------------------------------------------


def make_files(folder: Path, count: int, size: int) -> list[CacheFile]:
    folder.mkdir(exist_ok=True)
    files = []
    for n in range(count):
        source = folder / f"input{n}.bin"
        source.write_bytes(payload(size))
        files.append(CacheFile(f"input{n}", str(source), None, False))
    return files


def test_cache_list_shows_use_and_clean_keeps_what_a_pilot_uses(site: Site) -> None:
    files = make_files(site.folder / "shared", 2, MiB)
    sections = local_config(site.folder, ["true"], cache={"dir": str(site.folder / "cache")})
    for file in files:
        sections[f"cache.files.{file.name}"] = {"url": file.url}
    site.write(sections)
    assert site.run("cache", "fetch").returncode == 0
    cache = Cache(CacheConfig(site.folder / "cache", None, tuple(files)))
    path, use = cache.ensure(files[0])  # this test process is now a pilot using input0
    try:
        listed = site.run("cache", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {row["names"][0]: row for row in map(json.loads, listed.stdout.splitlines())}
        assert {name: (row["state"], row["size"], row["in_use"]) for name, row in rows.items()} == {
            "input0": ("ready", MiB, True),
            "input1": ("ready", MiB, False),
        }
        table = site.run("cache", "list").stdout
        assert "1.0MiB" in table and "in use" in table and "unused" in table
        cleaned = site.run("cache", "clean")
        assert cleaned.returncode == 0, cleaned.stderr
        assert f"removed {rows['input1']['key']} (1.0MiB)" in cleaned.stdout
        assert f"kept {rows['input0']['key']}: in use" in cleaned.stdout
        assert path.read_bytes() == Path(files[0].url).read_bytes()
    finally:
        use.close()
    assert site.run("cache", "clean").stdout.startswith(f"removed {rows['input0']['key']}")
    assert json.loads(site.run("cache", "list", "--json").stdout or "null") is None


def test_max_size_evicts_the_least_recently_used_entry_but_never_one_in_use(tmp_path: Path) -> None:
    files = make_files(tmp_path / "shared", 3, MiB)
    cache = Cache(CacheConfig(tmp_path / "cache", int(2.5 * MiB), tuple(files)))
    first, first_use = cache.ensure(files[0])
    second, second_use = cache.ensure(files[1])
    second_use.close()
    third, third_use = cache.ensure(files[2])  # over max_size: input1 goes; input0 is in use
    assert first.exists() and third.exists() and not second.exists()
    first_use.close()
    second, second_use = cache.ensure(files[1])  # now input0 is unused and the oldest
    assert not first.exists() and second.exists() and third.exists()
    third_use.close()
    second_use.close()


def test_long_downloads_log_bytes_rate_and_time_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (file,) = make_files(tmp_path / "shared", 1, 4 * MiB)
    ticks = iter(range(0, 10_000, 3))  # every look at the clock is three seconds later
    cache = Cache(CacheConfig(tmp_path / "cache", None, (file,)), clock=lambda: float(next(ticks)))
    with caplog.at_level("INFO", logger="agent.cache"):
        path, use = cache.ensure(file)
    use.close()
    progress = [r.getMessage() for r in caplog.records if " of 4.0MiB (" in r.getMessage()]
    assert progress, "a download longer than a few seconds says how it is going"
    assert "input0: 2.0MiB of 4.0MiB (50%), 341.3KiB/s, about 6.0s left" in progress
    assert path.stat().st_mode & 0o777 == 0o444, "tasks share the file: it is read-only"


# -- pure parts ------------------------------------------------------------------------------------


def test_entries_are_named_by_source_checksum_and_unpacking() -> None:
    base = CacheFile("ref", "https://data.example.org/refdb-v3.tar.gz?x=1", "ab" * 32, False)
    keys = {
        entry_key(base),
        entry_key(CacheFile("ref", base.url, "cd" * 32, False)),
        entry_key(CacheFile("ref", base.url.replace("v3", "v4"), base.sha256, False)),
        entry_key(CacheFile("ref", base.url, base.sha256, True)),
    }
    assert len(keys) == 4
    assert entry_key(CacheFile("other-name", base.url, base.sha256, False)) == entry_key(base)
    assert data_name(base) == "refdb-v3.tar.gz"
    assert data_name(CacheFile("ref", base.url, None, True)) == "refdb-v3"
    assert data_name(CacheFile("ref", "file:///a/My%20Data.zip", None, True)) == "My_Data"
    assert data_name(CacheFile("ref", "https://host/", None, False)) == "data"
    assert data_name(CacheFile("ref", "/data/.hidden", None, False)) == "hidden"


def test_progress_lines_say_bytes_rate_and_time_left() -> None:
    assert (
        progress_text(400 * MiB, 1000 * MiB, 100 * MiB)
        == "400.0MiB of 1000.0MiB (40%), 100.0MiB/s, about 6.0s left"
    )
    assert progress_text(3 * MiB, None, MiB) == "3.0MiB, 1.0MiB/s"
    assert progress_text(0, 10, 0.0) == "0B of 10B (0%), 0B/s"


def test_content_range_headers_are_read_strictly() -> None:
    assert parse_content_range("bytes 100-999/1000") == (100, 1000)
    assert parse_content_range("bytes */1000") == (None, 1000)
    assert parse_content_range("bytes 0-9/*") == (0, None)
    assert parse_content_range("items 0-9/10") == (None, None)
    assert parse_content_range(None) == (None, None)
