"""The node-local cache of the tasks' shared input: fetched once per node, shared by every pilot of the user.

One folder per entry, named for its source and checksum (``refdb-v3-1a2b3c4d5e6f``), so a new version of
the input is a new entry and pilots of an older configuration keep theirs until they stop::

    .lock          exclusive flock (filelock): held while the entry is fetched, cleaned or evicted
    .use           shared flock held by every pilot using the entry, for the pilot's whole life
    .ready.json    written last, by rename: its presence is what "ready" means
    <name>         the file, or the unpacked folder, that tasks get
    .partial       the download so far, kept for the next pilot to resume
    .partial.json  what the server said about it (ETag, Last-Modified, size), for a safe If-Range
    .unpacking     a temporary folder, renamed to <name> once the archive is unpacked and checked
    .failed.json   the last failure, so the pilots that waited for it do not all repeat it

A ready entry is found without the lock: look, take the shared use lock, look again. Otherwise: lock, look
again, clean what a killed pilot left, fetch (resuming), verify, unpack or rename, mark ready, take the use
lock, unlock. The kernel drops a dead pilot's flocks, so nothing wedges; lock files are never deleted
(filelock's lesson: a lock file that may be held must stay). Locks are only valid on node-local disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit

from agent.config import CacheConfig, CacheFile
from agent.errors import CacheError, ServerUnreachable
from agent.locks import file_lock, is_locked, try_acquire
from agent.units import format_duration, format_size

log = logging.getLogger(__name__)

PROGRESS_EVERY = 5.0  # seconds between progress lines of a download, and of the pilots waiting for it
CHECKSUM_ATTEMPTS = 3  # full downloads whose checksum may mismatch before we give up
TRANSFER_ATTEMPTS = 5  # consecutive broken transfers without a new byte before we give up
BACKOFF_MAX = 30.0
CHECK_URL = "check cache.files.{name}.url"  # what to do about a source that does not give the entry
FREE_DISK = "free space there, or set [cache] dir to a bigger node-local disk"  # ... about a full disk
CHUNK = 1 << 20

LOCK = ".lock"
USE = ".use"
READY = ".ready.json"
PARTIAL = ".partial"
PARTIAL_META = ".partial.json"
UNPACKING = ".unpacking"
FAILED = ".failed.json"

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


# -- names -----------------------------------------------------------------------------------------


def data_name(file: CacheFile) -> str:
    """The name tasks see: the source's file name (the archive's name without its suffix when unpacked)."""
    path = urlsplit(file.url).path if "://" in file.url else file.url
    name = _UNSAFE.sub("_", unquote(path.rstrip("/").rsplit("/", 1)[-1])).lstrip(".")[:80]
    if file.unpack:
        from agent.archive import strip_suffix

        name = strip_suffix(name)
    return name or "data"


def entry_key(file: CacheFile) -> str:
    """The entry's folder name: readable, and different for any other source, checksum or unpacking."""
    identity = json.dumps([file.url, file.sha256, file.unpack])
    return f"{data_name(file)[:40]}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def progress_text(done: int, total: Optional[int], rate: float) -> str:
    """``412.0MiB of 1.0GiB (40%), 85.2MiB/s, about 7s left``: what a long download logs."""
    speed = f"{format_size(rate)}/s"
    if not total:
        return f"{format_size(done)}, {speed}"
    left = f", about {format_duration((total - done) / rate)} left" if rate > 0 and done < total else ""
    return f"{format_size(done)} of {format_size(total)} ({100 * done // total}%), {speed}{left}"


def parse_content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """``bytes 100-999/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000); unknown parts are None."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


# -- entries on disk -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One configured file and the folder it lives in."""

    file: CacheFile
    folder: Path

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def data(self) -> Path:
        return self.folder / data_name(self.file)

    def part(self, name: str) -> Path:
        return self.folder / name


@dataclass(frozen=True)
class Listed:
    """What ``cache list`` shows of one entry folder."""

    key: str
    state: str  # "ready", "partial" (an interrupted download) or "fetching" (a pilot holds its lock)
    size: int
    created: Optional[float]
    last_used: Optional[float]
    in_use: bool
    source: str
    names: tuple[str, ...]


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    """Whole or not at all: written to a temporary name, then renamed."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True), encoding="utf-8")
    temporary.replace(path)


def _ready(folder: Path) -> Optional[dict[str, Any]]:
    """The ready marker, when the data it names is really there (a file of its recorded size)."""
    marker = _read_json(folder / READY)
    if marker is None or not isinstance(marker.get("path"), str):
        return None
    data = folder / marker["path"]
    try:
        if marker.get("unpack"):
            return marker if data.is_dir() else None
        return marker if data.stat().st_size == marker.get("size") else None
    except OSError:
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class _UseLock:
    """The shared flock a pilot holds on an entry while it may use it; eviction needs it exclusive."""

    def __init__(self, folder: Path) -> None:
        self.fd = os.open(folder / USE, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def share(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        with contextlib.suppress(OSError):  # the last use, for eviction's order; not on read-only disk
            os.utime(self.fd)

    def try_exclusive(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        os.close(self.fd)  # drops the flock


def _in_use(folder: Path) -> bool:
    try:
        lock = _UseLock(folder)
    except OSError:
        return False
    try:
        return not lock.try_exclusive()
    finally:
        lock.close()


class Held:
    """The entries a pilot uses, each under its shared use lock until ``close``."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}
        self._locks: list[_UseLock] = []

    def add(self, name: str, path: Path, lock: _UseLock) -> None:
        self.paths[name] = str(path)
        self._locks.append(lock)

    def close(self) -> None:
        for lock in self._locks:
            lock.close()
        self._locks.clear()

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the cache -------------------------------------------------------------------------------------


class _TransferFailed(Exception):
    """A broken, stalled or refused transfer that another try may get past."""


class _Digest:
    """sha256 in a helper thread, so hashing overlaps receiving and writing (hashlib releases the GIL on
    large buffers): a download costs little more than a plain one. ``hexdigest`` waits for what was fed."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[Optional[bytes]] = queue.Queue(maxsize=32)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for data in iter(self._queue.get, None):
            self._sha.update(data)

    def update(self, data: bytes) -> None:
        self._queue.put(data)

    def hexdigest(self) -> str:
        self.close()
        return self._sha.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _Received:
    """The bytes in .partial so far: their count and running sha256."""

    def __init__(self) -> None:
        self.digest = _Digest()
        self.size = 0

    def restart(self) -> None:
        self.digest.close()
        self.digest, self.size = _Digest(), 0


@dataclass
class _Opened:
    start: int  # where the body starts in the file: our offset, or 0 when the source starts over
    total: Optional[int]  # the whole file's size, when announced
    chunks: Iterator[bytes]


class Cache:
    """The cache folder of one configuration. Every method raises CacheError naming the entry."""

    def __init__(
        self,
        config: CacheConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wallclock = wallclock
        self.sleep = sleep
        self._http: Any = None

    def entry(self, file: CacheFile) -> Entry:
        return Entry(file, self.config.dir / entry_key(file))

    # -- using entries ---------------------------------------------------------------------------

    def prepare(self) -> Held:
        """Every configured entry ready and held (fetched here if no pilot did it yet)."""
        held = Held()
        try:
            for file in self.config.files:
                path, lock = self.ensure(file)
                held.add(file.name, path, lock)
        except BaseException:
            held.close()
            raise
        finally:
            self.close()
        return held

    def ensure(self, file: CacheFile) -> tuple[Path, _UseLock]:
        """The entry's path, with its use lock taken. Found without the entry's lock when ready."""
        entry = self.entry(file)
        held = self._hold_if_ready(entry)
        if held is not None:
            log.info("%s: found ready: %s", entry.name, entry.data)
            return entry.data, held
        return entry.data, self._make_ready(entry)

    def _hold_if_ready(self, entry: Entry) -> Optional[_UseLock]:
        if _ready(entry.folder) is None:
            return None
        try:
            lock = _UseLock(entry.folder)
        except OSError:
            return None
        lock.share()
        if _ready(entry.folder) is None:  # evicted between the look and the lock
            lock.close()
            return None
        return lock

    def _make_ready(self, entry: Entry) -> _UseLock:
        self._make_folder(entry)
        lock = file_lock(entry.part(LOCK))
        waited_since = self._acquire(entry, lock)
        try:
            if _ready(entry.folder) is None:
                if waited_since is not None:
                    self._fail_fast(entry, waited_since)
                self._fetch(entry)
            else:
                log.info("%s: another pilot fetched it: %s", entry.name, entry.data)
            use = _UseLock(entry.folder)
            use.share()  # still under the entry's lock, so no eviction can come in between
            return use
        except OSError as err:
            raise self._disk_error(entry, err) from None
        finally:
            lock.release()

    def _make_folder(self, entry: Entry) -> None:
        try:
            self.config.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            owner = self.config.dir.stat().st_uid
            if owner != os.getuid():
                raise CacheError(
                    entry.name,
                    f"the cache folder {self.config.dir} belongs to user id {owner}, not to you; "
                    "set [cache] dir to a folder of your own",
                )
            entry.folder.mkdir(exist_ok=True)
        except OSError as err:
            raise self._disk_error(entry, err) from None

    def _acquire(self, entry: Entry, lock: Any) -> Optional[float]:
        """Take the entry's lock; returns when we started waiting for another pilot, or None."""
        try:
            if try_acquire(lock, 0):
                return None
            waited_since = self.wallclock()
            log.info("%s: another pilot on this node is fetching it; waiting", entry.name)
            while True:
                if try_acquire(lock, PROGRESS_EVERY):
                    return waited_since
                with contextlib.suppress(OSError):
                    done = entry.part(PARTIAL).stat().st_size
                    log.info("%s: still waiting (%s fetched so far)", entry.name, format_size(done))
        except OSError as err:
            raise self._disk_error(entry, err) from None

    def _fail_fast(self, entry: Entry, waited_since: float) -> None:
        """The pilot we waited for gave up: its error is ours too, instead of one more full try each."""
        failure = _read_json(entry.part(FAILED))
        if failure and isinstance(failure.get("time"), (int, float)) and failure["time"] >= waited_since:
            raise CacheError(entry.name, f"{failure.get('problem')} (found by the pilot this one waited for)")

    # -- fetching ---------------------------------------------------------------------------------

    def _fetch(self, entry: Entry) -> None:
        """Under the entry's lock: clean up, download, verify, unpack or rename, then mark ready."""
        for leftover in (entry.data, entry.part(UNPACKING), entry.part(READY)):
            if leftover.exists() or leftover.is_symlink():
                log.info("%s: removing %s, left by an interrupted pilot", entry.name, leftover.name)
                _remove(leftover)
        started = self.clock()
        log.info("%s: fetching %s into %s", entry.name, self._where(entry), entry.folder)
        try:
            try:
                digest, size = self._download_verified(entry)
                if entry.file.unpack:
                    size = self._unpack(entry)
                else:
                    entry.part(PARTIAL).chmod(0o444)  # shared by every task on the node: not theirs to change
                    entry.part(PARTIAL).replace(entry.data)
            except OSError as err:
                raise self._disk_error(entry, err) from None
        except CacheError as err:
            with contextlib.suppress(OSError):
                _write_json(entry.part(FAILED), {"time": self.wallclock(), "problem": err.problem})
            raise
        _write_json(
            entry.part(READY),
            {
                "name": entry.name,
                "source": entry.file.url,
                "sha256": digest,
                "unpack": entry.file.unpack,
                "path": entry.data.name,
                "size": size,
                "created": self.wallclock(),
            },
        )
        for name in (PARTIAL, PARTIAL_META, FAILED):
            _remove(entry.part(name))
        took = format_duration(self.clock() - started)
        log.info("%s: ready in %s (%s): %s", entry.name, took, format_size(size), entry.data)

    def _download_verified(self, entry: Entry) -> tuple[str, int]:
        expected = entry.file.sha256
        for attempt in range(1, CHECKSUM_ATTEMPTS + 1):
            digest, size = self._download(entry)
            if expected is None:
                log.info(
                    '%s: sha256 = "%s" (add it to [cache.files.%s] to have the file verified)',
                    entry.name,
                    digest,
                    entry.name,
                )
                return digest, size
            if digest == expected:
                return digest, size
            log.warning(
                "%s: checksum mismatch (attempt %d of %d): expected sha256 %s, got %s; deleted",
                entry.name,
                attempt,
                CHECKSUM_ATTEMPTS,
                expected,
                digest,
            )
            _remove(entry.part(PARTIAL))
            _remove(entry.part(PARTIAL_META))
        raise CacheError(
            entry.name,
            f"checksum mismatch {CHECKSUM_ATTEMPTS} times from {self._where(entry)}: expected sha256 "
            f"{expected}, got {digest}; if the source is right, fix cache.files.{entry.name}.sha256",
        )

    def _download(self, entry: Entry) -> tuple[str, int]:
        """Fetch into .partial, resuming what is there; returns its sha256 and size."""
        partial = entry.part(PARTIAL)
        got = _Received()
        try:
            return self._download_into(entry, partial, got)
        finally:
            got.digest.close()

    def _download_into(self, entry: Entry, partial: Path, got: _Received) -> tuple[str, int]:
        got.size = self._rehash(partial, got.digest)
        if got.size:
            log.info("%s: resuming an interrupted download at %s", entry.name, format_size(got.size))
        failures = 0
        while True:
            before = got.size
            try:
                with self._open(entry, got.size) as opened:
                    if opened.start != got.size:
                        dropped = format_size(got.size)
                        log.info("%s: the source starts over; %s dropped", entry.name, dropped)
                        got.restart()
                        partial.write_bytes(b"")
                    if opened.total is not None:
                        self._make_room(entry, opened.total - got.size)
                    self._receive(entry, opened, got)
                if opened.total is not None and got.size < opened.total:
                    raise _TransferFailed(f"the transfer ended after {format_size(got.size)}")
                return got.digest.hexdigest(), got.size
            except _TransferFailed as err:
                if not partial.exists():  # the source made us start over
                    got.restart()
                failures = 1 if got.size > before else failures + 1
                if failures >= TRANSFER_ATTEMPTS:
                    raise CacheError(
                        entry.name,
                        f"cannot download {self._where(entry)}: {err} ({failures} tries without progress); "
                        + CHECK_URL.format(name=entry.name),
                    ) from None
                pause = min(BACKOFF_MAX, 2.0 ** (failures - 1))
                at = f" at {format_size(got.size)}" if got.size else ""
                log.warning("%s: %s; trying again%s in %s", entry.name, err, at, format_duration(pause))
                self.sleep(pause)

    def _rehash(self, partial: Path, digest: Any) -> int:
        """Feed what an earlier pilot downloaded into ``digest``; returns its size."""
        try:
            with partial.open("rb") as existing:
                size = 0
                for data in iter(lambda: existing.read(CHUNK), b""):
                    digest.update(data)
                    size += len(data)
        except FileNotFoundError:
            return 0
        return size

    def _receive(self, entry: Entry, opened: _Opened, got: _Received) -> None:
        """Append the body to .partial while hashing it, logging progress. ``got`` keeps what was
        written even when the transfer breaks, so the next try resumes there."""
        started, start_size = self.clock(), got.size
        next_log = started + PROGRESS_EVERY
        with entry.part(PARTIAL).open("ab") as out:
            for data in opened.chunks:
                out.write(data)
                got.digest.update(data)
                got.size += len(data)
                now = self.clock()
                if now >= next_log:
                    next_log = now + PROGRESS_EVERY
                    rate = (got.size - start_size) / max(now - started, 1e-6)
                    log.info("%s: %s", entry.name, progress_text(got.size, opened.total, rate))

    @contextlib.contextmanager
    def _open(self, entry: Entry, offset: int) -> Iterator[_Opened]:
        url = entry.file.url
        if url.startswith(("http://", "https://")):
            with self._open_http(entry, offset) as opened:
                yield opened
            return
        path = Path(unquote(urlsplit(url).path)) if url.startswith("file://") else Path(url)
        try:
            source = path.open("rb")
        except OSError as err:
            raise CacheError(entry.name, f"cannot read {path}: {err.strerror}") from None
        with source:
            total = os.fstat(source.fileno()).st_size
            start = offset if offset <= total else 0
            source.seek(start)
            yield _Opened(start, total, _file_chunks(source, path))

    @contextlib.contextmanager
    def _open_http(self, entry: Entry, offset: int) -> Iterator[_Opened]:
        from agent import http

        if self._http is None:
            self._http = http.HttpClient(timeout=self.config.timeout)
        url = entry.file.url
        headers = {"Accept-Encoding": "identity"}
        meta = _read_json(entry.part(PARTIAL_META)) or {}
        validator = meta.get("etag") or meta.get("last_modified")
        if offset and (validator or entry.file.sha256):
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator
        try:
            with self._http.stream(url, headers=headers) as response:
                yield self._answer(entry, offset, response, http.chunks(response, url, CHUNK))
        except ServerUnreachable as err:
            raise _TransferFailed(err.problem) from None

    def _answer(self, entry: Entry, offset: int, response: Any, chunks: Iterator[bytes]) -> _Opened:
        """What the server's status and headers mean for this download."""
        status, headers = response.status, response.headers
        if status == 206:
            start, total = parse_content_range(headers.get("Content-Range"))
            if start != offset:
                raise _TransferFailed(f"asked for bytes from {offset}, got {headers.get('Content-Range')}")
            return _Opened(offset, total, chunks)
        if status == 200:
            length = headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            etag = headers.get("ETag")
            _write_json(
                entry.part(PARTIAL_META),
                {
                    "etag": etag if etag and not etag.startswith("W/") else None,
                    "last_modified": headers.get("Last-Modified"),
                    "total": total,
                },
            )
            return _Opened(0, total, chunks)
        if status == 416 and offset:
            _, total = parse_content_range(headers.get("Content-Range"))
            if total == offset:  # the previous pilot got every byte but died before checking them
                return _Opened(offset, total, iter(()))
            _remove(entry.part(PARTIAL))
            raise _TransferFailed(f"the server refused to resume at {format_size(offset)}; starting over")
        if status >= 500 or status in (408, 429):
            raise _TransferFailed(f"the server answered HTTP {status}")
        reason = f"{status} {response.reason}" if response.reason else str(status)
        hint = CHECK_URL.format(name=entry.name)
        raise CacheError(entry.name, f"{self._where(entry)} answered HTTP {reason}; {hint}")

    def _where(self, entry: Entry) -> str:
        """The source for messages: a URL without its user and password."""
        if not entry.file.url.startswith(("http://", "https://")):
            return entry.file.url
        from agent.http import redact

        return redact(entry.file.url)

    def _unpack(self, entry: Entry) -> int:
        temporary = entry.part(UNPACKING)
        log.info("%s: unpacking", entry.name)
        from agent.archive import ArchiveError, unpack

        try:
            size = unpack(entry.part(PARTIAL), temporary)
        except ArchiveError as err:
            for name in (UNPACKING, PARTIAL, PARTIAL_META):
                _remove(entry.part(name))
            raise CacheError(entry.name, f"refused to unpack {self._where(entry)}: {err}") from None
        except OSError:
            _remove(temporary)
            raise
        temporary.replace(entry.data)
        return size

    # -- room -------------------------------------------------------------------------------------

    def _make_room(self, entry: Entry, needed: int) -> None:
        """Before downloading ``needed`` bytes: evict unused entries beyond max_size, then check the
        free disk (evicting more if that is what it takes)."""
        limit = self.config.max_size
        if limit is not None:
            used = sum(listed.size for listed in self.list() if listed.key != entry.folder.name)
            if used + needed > limit:
                self._evict(used + needed - limit, keep=entry.folder.name, why="max_size")
        free = shutil.disk_usage(entry.folder).free
        if needed > free:
            self._evict(needed - free, keep=entry.folder.name, why="free disk space")
            free = shutil.disk_usage(entry.folder).free
        if needed > free:
            raise CacheError(
                entry.name,
                f"needs {format_size(needed)} in {self.config.dir} but only {format_size(free)} is free "
                f"(size announced by {self._where(entry)}); {FREE_DISK}",
            )

    def _evict(self, amount: int, keep: str, why: str) -> None:
        # Least recently used first; interrupted downloads nobody resumed before any ready entry.
        candidates = [listed for listed in self.list() if listed.key != keep and not listed.in_use]
        candidates.sort(key=lambda listed: (listed.state == "ready", listed.last_used or 0.0))
        freed = 0
        for listed in candidates:
            if freed >= amount:
                break
            if self._try_remove(self.config.dir / listed.key):
                freed += listed.size
                log.info("cache: evicted %s (%s, for %s)", listed.key, format_size(listed.size), why)
        if freed < amount:
            log.warning("cache: %s: could free only %s; the rest is in use", why, format_size(freed))

    def _try_remove(self, folder: Path) -> bool:
        """Remove an entry's data unless a pilot uses or fetches it; its lock files stay."""
        lock = file_lock(folder / LOCK)
        if not try_acquire(lock, 0):
            return False
        try:
            use = _UseLock(folder)
            try:
                if not use.try_exclusive():
                    return False
                marker = _read_json(folder / READY) or {}
                _remove(folder / READY)  # first: from now on nobody takes it for ready
                if isinstance(marker.get("path"), str):
                    _remove(folder / marker["path"])
                for name in (PARTIAL, PARTIAL_META, UNPACKING, FAILED):
                    _remove(folder / name)
                return True
            finally:
                use.close()
        finally:
            lock.release()

    # -- cache list and cache clean ---------------------------------------------------------------

    def list(self) -> list[Listed]:
        """Every entry folder with data in it, ready or partial."""
        try:
            folders = sorted(path for path in self.config.dir.iterdir() if path.is_dir())
        except FileNotFoundError:
            return []
        except OSError as err:
            raise CacheError("*", f"cannot read the cache folder {self.config.dir}: {err.strerror}") from None
        listed = []
        for folder in folders:
            item = self._describe(folder)
            if item is not None:
                listed.append(item)
        return listed

    def _describe(self, folder: Path) -> Optional[Listed]:
        names = tuple(file.name for file in self.config.files if entry_key(file) == folder.name)
        try:
            last_used: Optional[float] = (folder / USE).stat().st_mtime
        except OSError:
            last_used = None
        marker = _ready(folder)
        if marker is not None:
            return Listed(
                key=folder.name,
                state="ready",
                size=int(marker.get("size") or 0),
                created=marker.get("created"),
                last_used=last_used or marker.get("created"),
                in_use=_in_use(folder),
                source=str(marker.get("source")),
                names=names or (str(marker.get("name")),),
            )
        try:
            size = (folder / PARTIAL).stat().st_size
        except OSError:
            return None
        fetching = is_locked(folder / LOCK)
        return Listed(
            key=folder.name,
            state="fetching" if fetching else "partial",
            size=size,
            created=None,
            last_used=last_used,
            in_use=fetching,
            source="",
            names=names,
        )

    def clean(self) -> tuple[list[Listed], list[Listed]]:
        """Remove every entry no pilot uses or fetches: (removed, kept because in use)."""
        removed, kept = [], []
        for listed in self.list():
            folder = self.config.dir / listed.key
            try:
                gone = self._try_remove(folder)
            except OSError as err:
                raise CacheError(listed.key, f"cannot remove {folder}: {err.strerror}") from None
            (removed if gone else kept).append(listed)
        return removed, kept

    # -- errors and teardown ----------------------------------------------------------------------

    def _disk_error(self, entry: Entry, err: OSError) -> CacheError:
        where = err.filename or self.config.dir
        if err.errno == errno.ENOSPC:
            _remove(entry.part(PARTIAL))  # a full disk hurts every job on the node: give the space back
            return CacheError(
                entry.name,
                f"no space left in {self.config.dir}; the partial download is deleted; {FREE_DISK}",
            )
        return CacheError(entry.name, f"cannot write in the cache folder: {where}: {err.strerror or err}")

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


def _file_chunks(source: Any, path: Path) -> Iterator[bytes]:
    try:
        yield from iter(lambda: source.read(CHUNK), b"")
    except OSError as err:
        raise _TransferFailed(f"reading {path}: {err.strerror}") from None


@contextlib.contextmanager
def ready_cache(config: CacheConfig) -> Iterator[dict[str, str]]:
    """For a pilot's whole life: every configured entry ready, held, and its path by name."""
    if not config.files:
        yield {}
        return
    with Cache(config).prepare() as held:
        yield held.paths
