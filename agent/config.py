"""site.toml, parsed and validated once into frozen objects.

Every problem is a ConfigError naming the file and the dotted key (or TOML's line and column), so the pilot
stops before it claims anything. Nothing else in the package reads the config file or the environment:
``load`` gets the environment as an argument and everything downstream gets these objects.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from agent import template
from agent.errors import ConfigError
from agent.resources import NodeSpec, Request, parse_cores, parse_gpus, parse_memory
from agent.units import parse_duration, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised by the 3.9 and 3.10 runs of the zipapp
    import tomli as tomllib

BACKENDS = ("local", "couchdb", "topos")
KEEP_WORKDIRS = ("always", "failed", "never")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_SHA256 = re.compile(r"[0-9a-f]{64}")
PILOT_FIELDS = ("pilot.config_dir", "pilot.task_dir")  # placeholders the pilot fills in itself
_CACHE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_POOL_NAME = re.compile(r"[a-z][a-z0-9_\-]*")  # a CouchDB database name, and a file name
_TOPOS_POOL = re.compile(r"[A-Za-z0-9_.\-]+")  # what ToPoS's URL rewriting accepts as a pool name

T = TypeVar("T")


class Secret:
    """A password that never shows up in a repr, a log line or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class LocalServer:
    path: Path  # the SQLite pool file


@dataclass(frozen=True)
class CouchDBServer:
    url: str
    database: str
    username: Optional[str]
    password: Optional[Secret]
    design_doc: str
    ca_bundle: Optional[Path]
    tls_verify: bool


@dataclass(frozen=True)
class ToposServer:
    url: str  # the ToPoS base URL, ending in '/': https://host/4.1/
    pool: str
    done_pool: str  # where results of done tokens go
    error_pool: str  # where tokens that failed for good go, with their results
    username: Optional[str]
    password: Optional[Secret]
    ca_bundle: Optional[Path]
    tls_verify: bool


@dataclass(frozen=True)
class ServerConfig:
    backend: str
    lease: float  # seconds a claim stays ours without renewal
    max_outage: float  # seconds the server may stay unreachable before the pilot gives up
    timeout: float  # seconds for one HTTP request
    local: Optional[LocalServer] = None
    couchdb: Optional[CouchDBServer] = None
    pools: tuple[str, ...] = ()  # pools in order of priority (see agent/pools/ordered.py); () for one
    topos: Optional[ToposServer] = None


@dataclass(frozen=True)
class TaskConfig:
    command: tuple[template.Template, ...]
    command_text: tuple[str, ...]  # as written, for logs and checks
    timeout: Optional[float]
    env: Mapping[str, str]
    kill_grace: float
    max_attempts: int
    log_tail: int  # bytes of stdout and stderr kept on the token
    request: Request = field(
        default_factory=Request
    )  # what a token without the fields cores, gpus, memory asks
    enforce_memory: bool = False  # kill a task over its memory request (reason "memory")


@dataclass(frozen=True)
class PilotConfig:
    slots: int
    workdir: Path
    max_tasks: int  # 0: no limit
    idle_timeout: float  # how long a pilot with nothing to claim waits for tokens other pilots still hold
    keep_workdirs: str  # "always", "failed" or "never"
    kill_leftovers_after: float  # seconds a finished task's processes may live on outside its group
    black_hole_failures: int  # consecutive failures of different tokens that stop the pilot; 0: never
    black_hole_window: float
    min_free_space: int  # bytes that must be free in workdir before the first claim
    node: NodeSpec = field(default_factory=NodeSpec)  # cores, gpus, memory ("auto": None) and binding
    start_jitter: float = 0.0  # the first claim waits a random part of this: an array's herd spreads out


@dataclass(frozen=True)
class WalltimeConfig:
    limit: Optional[float]  # seconds from the pilot's start; None: find it out ("auto")
    margin: float
    expected: float


@dataclass(frozen=True)
class CacheFile:
    name: str
    url: str
    sha256: Optional[str]
    unpack: bool


@dataclass(frozen=True)
class CacheConfig:
    dir: Path
    max_size: Optional[int]
    files: tuple[CacheFile, ...] = ()
    timeout: float = 60.0  # seconds a download may stall before it is resumed


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    task: TaskConfig
    pilot: PilotConfig
    walltime: WalltimeConfig
    cache: CacheConfig
    extra: Mapping[str, Any] = field(default_factory=dict)


class _Missing:
    """Marks a key that has no default: it must be given."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Missing()


class _Table:
    """One TOML table: typed getters that name the dotted key in every error, and a check for leftovers."""

    def __init__(self, file: Path, prefix: str, data: Mapping[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.data = data
        self.known: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any, kind: type | tuple[type, ...], expected: str) -> Any:
        self.known.append(name)
        if name not in self.data:
            if default is REQUIRED:
                raise self.error(name, f"missing; expected {expected}")
            return default
        value = self.data[name]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(name, f"expected {expected}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(name, f"expected {expected}, got {_describe(value)}")
        return value

    def converted(self, name: str, default: Any, expected: str, convert: Callable[[str], T]) -> T:
        value = self.raw(name, default, str, expected)
        if value is default:
            return value
        try:
            return convert(value)
        except ValueError as err:
            raise self.error(name, str(err)) from None

    def string(self, name: str, default: Any = REQUIRED) -> Any:
        return self.raw(name, default, str, "a string")

    def boolean(self, name: str, default: Any = REQUIRED) -> Any:
        return self.raw(name, default, bool, "true or false")

    def integer(self, name: str, default: Any = REQUIRED, minimum: int = 0) -> Any:
        value = self.raw(name, default, int, f"an integer >= {minimum}")
        if value is not default and value < minimum:
            raise self.error(name, f"expected an integer >= {minimum}, got {value}")
        return value

    def duration(self, name: str, default: Any = REQUIRED) -> Any:
        return self.converted(name, default, 'a duration like "90s", "10m" or "2h"', parse_duration)

    def size(self, name: str, default: Any = REQUIRED) -> Any:
        return self.converted(name, default, 'a size like "500MB" or "50GB"', parse_size)

    def choice(self, name: str, choices: tuple[str, ...], default: Any = REQUIRED) -> Any:
        value = self.string(name, default)
        if value not in choices:
            raise self.error(name, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    def path(self, name: str, base: Path, environ: Mapping[str, str], default: Any = REQUIRED) -> Any:
        value = self.string(name, default)
        if value is default and not isinstance(default, str):
            return value
        try:
            return expand_path(value, base, environ)
        except ValueError as err:
            raise self.error(name, str(err)) from None

    def table(self, name: str) -> _Table:
        value = self.raw(name, {}, dict, "a table")
        return _Table(self.file, self.key(name), value)

    def string_map(self, name: str) -> dict[str, str]:
        value = self.raw(name, {}, dict, "a table of strings")
        for key, item in value.items():
            if not isinstance(item, str):
                raise ConfigError(
                    self.file, f"{self.key(name)}.{key}", f"expected a string, got {_describe(item)}"
                )
        return dict(value)

    def finish(self) -> None:
        """Every key must be one we read: a typo is an error, not a silently ignored setting."""
        for name in self.data:
            if name not in self.known:
                known = ", ".join(sorted(self.known)) or "none"
                raise self.error(name, f"unknown key (known keys here: {known})")


def _describe(value: Any) -> str:
    kinds = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}
    return kinds.get(type(value), type(value).__name__)


def expand_path(text: str, base: Path, environ: Mapping[str, str]) -> Path:
    """``~``, ``$VAR``, ``${VAR}`` and ``${VAR:-default}`` expanded; relative paths are relative to ``base``.

    An unset variable is an error, except ``$TMPDIR``, which means /tmp when unset, as POSIX says.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        fallback = match.group(2)
        if name in environ:
            return environ[name]
        if fallback is not None:
            return fallback
        if name == "TMPDIR":
            return "/tmp"  # noqa: S108 - the POSIX default, used only when TMPDIR is unset
        raise ValueError(f"${name} is not set (write ${{{name}:-/some/default}} to give a default)")

    expanded = _VAR.sub(substitute, text)
    if expanded.startswith("~"):
        home = environ.get("HOME")
        expanded = str(Path(expanded).expanduser()) if home is None else home + expanded[1:]
    path = Path(expanded)
    return path if path.is_absolute() else base / path


def load(path: Path, environ: Mapping[str, str], walltime_override: Optional[float] = None) -> Config:
    """Read and validate ``path``. Raises ConfigError for anything wrong, before anything is claimed."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, "", f"cannot read: {getattr(err, 'strerror', None) or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "", f"invalid TOML: {err}") from None
    base = path.resolve().parent
    root = _Table(path, "", data)
    server = _server(root.table("server"), base, environ)
    cache = _cache(root.table("cache"), base, environ)
    task = _task(root.table("task"), cache)
    pilot = _pilot(root.table("pilot"), base, environ)
    walltime = _walltime(root.table("walltime"), walltime_override)
    root.finish()
    return Config(path=path, server=server, task=task, pilot=pilot, walltime=walltime, cache=cache)


def _server(table: _Table, base: Path, environ: Mapping[str, str]) -> ServerConfig:
    backend = table.choice("backend", BACKENDS, "local")
    common = {
        "lease": table.duration("lease", 600.0),
        "max_outage": table.duration("max_outage", 900.0),
        "timeout": table.duration("timeout", 30.0),
    }
    if common["lease"] < 1:
        raise table.error("lease", "expected at least 1s")
    pools = _pools(table)
    if backend == "local":
        local = LocalServer(path=table.path("path", base, environ, "pool.db"))
        table.finish()
        return ServerConfig(backend=backend, local=local, pools=pools, **common)
    if backend == "topos":
        if pools:
            raise table.error("pools", 'not with backend = "topos": name one pool in server.pool')
        topos = _topos(table, base, environ)
        table.finish()
        return ServerConfig(backend=backend, topos=topos, **common)
    couchdb = _couchdb(table, base, environ, pools)
    table.finish()
    return ServerConfig(backend=backend, couchdb=couchdb, pools=pools, **common)


def _pools(table: _Table) -> tuple[str, ...]:
    """server.pools: names, each once, that can be a file name (local) and a database name (CouchDB)."""
    names = table.raw("pools", [], list, "a list of pool names")
    for name in names:
        if not isinstance(name, str) or not _POOL_NAME.fullmatch(name):
            raise table.error("pools", f"expected names of lower-case letters, digits, _ and -, got {name!r}")
    if len(set(names)) != len(names):
        raise table.error("pools", "a pool is named twice")
    return tuple(names)


def _couchdb(table: _Table, base: Path, environ: Mapping[str, str], pools: tuple[str, ...]) -> CouchDBServer:
    access = _access(table, base, environ)
    return CouchDBServer(
        url=access.url.rstrip("/"),
        database=table.string("database", pools[0] if pools else REQUIRED),
        username=access.username,
        password=access.password,
        design_doc=table.string("design_doc", "Monitor"),
        ca_bundle=access.ca_bundle,
        tls_verify=access.tls_verify,
    )


def _topos(table: _Table, base: Path, environ: Mapping[str, str]) -> ToposServer:
    access = _access(table, base, environ)
    names = {}
    for key, default in (("pool", REQUIRED), ("done_pool", None), ("error_pool", None)):
        name = table.string(key, default)
        if name is not None and not _TOPOS_POOL.fullmatch(name):
            raise table.error(key, f"a ToPoS pool name uses letters, digits, '_', '.' and '-', got {name!r}")
        names[key] = name
    pool = names["pool"]
    return ToposServer(
        url=access.url.rstrip("/") + "/",
        pool=pool,
        done_pool=names["done_pool"] or f"{pool}.done",
        error_pool=names["error_pool"] or f"{pool}.error",
        username=access.username,
        password=access.password,
        ca_bundle=access.ca_bundle,
        tls_verify=access.tls_verify,
    )


@dataclass(frozen=True)
class _Access:
    """How to reach an HTTP pool server: the same keys and rules for every server backend."""

    url: str
    username: Optional[str]
    password: Optional[Secret]
    ca_bundle: Optional[Path]
    tls_verify: bool


def _access(table: _Table, base: Path, environ: Mapping[str, str]) -> _Access:
    url = table.string("url")
    if not url.startswith(("http://", "https://")):
        raise table.error("url", f"expected an http:// or https:// URL, got {url!r}")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise table.error(
            "url", "put the user name in server.username and the password in a file, not in the URL"
        )
    password_file = table.path("password_file", base, environ, None)
    password = _password(table, password_file, environ)
    ca_bundle = table.path("ca_bundle", base, environ, None)
    if ca_bundle is not None and not ca_bundle.is_file():
        raise table.error("ca_bundle", f"no such file: {ca_bundle}")
    return _Access(
        url=url,
        username=table.string("username", None),
        password=password,
        ca_bundle=ca_bundle,
        tls_verify=table.boolean("tls_verify", True),
    )


def _password(table: _Table, password_file: Optional[Path], environ: Mapping[str, str]) -> Optional[Secret]:
    """From ``password_file`` (which must not be readable by group or others) or PILOT_SERVER_PASSWORD."""
    if password_file is None:
        value = environ.get("PILOT_SERVER_PASSWORD")
        return Secret(value) if value else None
    try:
        mode = password_file.stat().st_mode
        if mode & 0o077:
            raise table.error(
                "password_file",
                f"{password_file} is readable by group or others (mode {mode & 0o777:o}); "
                f"run: chmod 600 {password_file}",
            )
        text = password_file.read_text(encoding="utf-8")
    except OSError as err:
        raise table.error("password_file", f"cannot read {password_file}: {err.strerror}") from None
    return Secret(text.rstrip("\r\n"))


def _task(table: _Table, cache: CacheConfig) -> TaskConfig:
    raw = table.raw("command", REQUIRED, (list, str), "a list of strings (argv) or a string")
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as err:
            raise table.error("command", f"cannot split into words: {err}") from None
    else:
        argv = raw
        for i, word in enumerate(argv):
            if not isinstance(word, str):
                raise table.error("command", f"element {i}: expected a string, got {_describe(word)}")
    if not argv or not argv[0]:
        raise table.error("command", "is empty; expected the program to run and its arguments")
    command = []
    cache_names = {f"cache.{entry.name}" for entry in cache.files}
    for word in argv:
        try:
            parsed = template.parse(word)
        except ValueError as err:
            raise table.error("command", str(err)) from None
        for name in parsed.fields:
            if name.startswith("cache.") and name not in cache_names:
                raise table.error("command", f"{{{name}}} names no entry in [cache.files]")
            if name.startswith("pilot.") and name not in PILOT_FIELDS:
                known = ", ".join(f"{{{field}}}" for field in PILOT_FIELDS)
                raise table.error("command", f"{{{name}}} is not one of {known}")
        command.append(parsed)
    timeout = table.duration("timeout", None)
    config = TaskConfig(
        command=tuple(command),
        command_text=tuple(argv),
        timeout=timeout,
        env=table.string_map("env"),
        kill_grace=table.duration("kill_grace", 10.0),
        max_attempts=table.integer("max_attempts", 1, minimum=1),
        log_tail=table.size("log_tail", 4096),
        request=_request(table),
        enforce_memory=table.boolean("enforce_memory", False),
    )
    table.finish()
    return config


def _request(table: _Table) -> Request:
    """``[task] cores``, ``gpus``, ``memory``: what a token without those fields asks."""
    values = {}
    for name, default, parse in (
        ("cores", 1, parse_cores),
        ("gpus", 0, parse_gpus),
        ("memory", "0", parse_memory),
    ):
        value = table.raw(name, default, (int, str), "a number or a string")
        try:
            values[name] = parse(value)
        except ValueError as err:
            raise table.error(name, str(err)) from None
    cores, max_cores = values["cores"]
    return Request(cores=cores, max_cores=max_cores, gpus=values["gpus"], memory=values["memory"])


def _node(table: _Table) -> NodeSpec:
    """``[pilot] cores``, ``gpus``, ``memory`` ("auto" or a value) and ``bind``."""
    cores = table.raw("cores", "auto", (int, str), '"auto" or a number of cores')
    if cores == "auto":
        cores = None
    elif isinstance(cores, str) or cores < 1:
        raise table.error("cores", f'expected "auto" or a number of cores >= 1, got {cores!r}')
    gpus = table.raw("gpus", "auto", (int, str, list), '"auto", a list of device ids or 0')
    if gpus == "auto":
        gpus = None
    elif gpus == 0:
        gpus = ()
    elif isinstance(gpus, list) and all(
        isinstance(gpu, (str, int)) and not isinstance(gpu, bool) for gpu in gpus
    ):
        gpus = tuple(str(gpu) for gpu in gpus)
        if len(set(gpus)) != len(gpus):
            raise table.error("gpus", f"a device id is listed twice in {list(gpus)}")
    else:
        raise table.error("gpus", f'expected "auto", a list of device ids like ["0", "1"] or 0, got {gpus!r}')
    memory = table.string("memory", "auto")
    if memory == "auto":
        memory_bytes = None
    else:
        try:
            memory_bytes = parse_size(memory)
        except ValueError as err:
            raise table.error("memory", f'expected "auto" or {err}') from None
    return NodeSpec(cores=cores, gpus=gpus, memory=memory_bytes, bind=table.boolean("bind", True))


def _pilot(table: _Table, base: Path, environ: Mapping[str, str]) -> PilotConfig:
    config = PilotConfig(
        slots=table.integer("slots", 1, minimum=1),
        workdir=table.path("workdir", base, environ, "$TMPDIR/pilot"),
        max_tasks=table.integer("max_tasks", 0),
        idle_timeout=table.duration("idle_timeout", 0.0),
        keep_workdirs=table.choice("keep_workdirs", KEEP_WORKDIRS, "failed"),
        kill_leftovers_after=table.duration("kill_leftovers_after", 30.0),
        black_hole_failures=table.integer("black_hole_failures", 3),
        black_hole_window=table.duration("black_hole_window", 600.0),
        min_free_space=table.size("min_free_space", 100 * 10**6),
        node=_node(table),
        start_jitter=table.duration("start_jitter", 0.0),
    )
    table.finish()
    return config


def _walltime(table: _Table, override: Optional[float]) -> WalltimeConfig:
    limit_text = table.string("limit", "auto")
    limit: Optional[float] = None
    if limit_text != "auto":
        try:
            limit = parse_duration(limit_text)
        except ValueError as err:
            raise table.error("limit", f'expected "auto" or a duration: {err}') from None
    config = WalltimeConfig(
        limit=override if override is not None else limit,
        margin=table.duration("margin", 120.0),
        expected=table.duration("expected", 600.0),
    )
    table.finish()
    return config


def _cache(table: _Table, base: Path, environ: Mapping[str, str]) -> CacheConfig:
    # One folder per user: /tmp is shared, and another user's folder would not be writable.
    directory = table.path("dir", base, environ, f"$TMPDIR/pilot-cache-{os.getuid()}")
    max_size = table.size("max_size", None)
    files_table = table.table("files")
    files = []
    for name in files_table.data:
        if not _CACHE_NAME.fullmatch(name):
            raise files_table.error(name, "entry names use letters, digits, '_', '.' and '-'")
        entry = files_table.table(name)
        sha256 = entry.string("sha256", None)
        if sha256 is not None and not _SHA256.fullmatch(sha256.lower()):
            raise entry.error("sha256", "expected 64 hexadecimal digits")
        files.append(
            CacheFile(
                name=name,
                url=_source(entry, base, environ),
                sha256=sha256.lower() if sha256 else None,
                unpack=entry.boolean("unpack", False),
            )
        )
        entry.finish()
    timeout = table.duration("timeout", 60.0)
    table.finish()
    return CacheConfig(dir=directory, max_size=max_size, files=tuple(files), timeout=timeout)


def _source(entry: _Table, base: Path, environ: Mapping[str, str]) -> str:
    """http(s):// and file:// URLs as written; a plain path is made absolute like other paths."""
    url = entry.string("url")
    if url.startswith(("http://", "https://", "file://")):
        return url
    if "://" in url:
        raise entry.error("url", f"expected http://, https://, file:// or a path, got {url!r}")
    try:
        return str(expand_path(url, base, environ))
    except ValueError as err:
        raise entry.error("url", str(err)) from None
