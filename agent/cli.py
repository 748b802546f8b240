"""The commands of pilot.pyz. The one place that turns an error into a line and an exit code (``main``).

Examples:
    ./pilot.pyz --config site.toml                    # run a pilot (what sbatch and JDL call)
    ./pilot.pyz tokens add --config site.toml --lines inputs.txt
    ./pilot.pyz status --config site.toml --json
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Optional, TypeVar

import click

from agent import __version__
from agent.errors import ExitCode, PilotError, UsageError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from agent.config import Config
    from agent.errors import DifferentToken, DuplicateToken, RepeatedToken, TokenError
    from agent.identity import Identity
    from agent.pools import NewToken, Pool

# Everything else is imported where it is used: `pilot.pyz --version` and `--help` stay as quick as
# the interpreter plus click, and a local pilot never imports urllib3.
log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """What the group's options decided, for the subcommands."""

    def __init__(self) -> None:
        self.config_path: Optional[Path] = None
        self.verbosity = 0
        self._identity: Optional[Identity] = None

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            from agent.identity import make_identity

            # os.uname, not socket.gethostname: the same name on Linux, without importing socket.
            self._identity = make_identity(os.environ, os.uname().nodename, os.getpid())
        return self._identity

    def setup_logging(self) -> None:
        from agent import logs

        logs.setup(self.identity.pilot_id, self.verbosity)

    def config(self, walltime: Optional[float] = None) -> Config:
        from agent.config import load

        if self.config_path is None:
            raise UsageError("no configuration: pass --config site.toml (or set PILOT_CONFIG)")
        return load(self.config_path, os.environ, walltime_override=walltime)

    def pool(self, config: Config, *, create: bool = False, only: Optional[str] = None) -> Pool:
        from agent.pools import open_pool

        return open_pool(config.server, self.identity, create=create, only=only)


def pool_option(command: F) -> F:
    """--pool NAME: one of server.pools (default: all of them)."""
    return click.option("--pool", "only", help="One of server.pools (default: all, in order).")(command)


def first_pool_option(command: F) -> F:
    """--pool NAME of `tokens add`, which adds to the first of server.pools without it."""
    return click.option("--pool", "only", help="One of server.pools (default: the first).")(command)


def _duration(value: Optional[str]) -> Optional[float]:
    from agent.units import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def common(command: F) -> F:
    """--config, --verbose and --quiet on every command; given before the command name they apply too."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="PILOT_CONFIG",
        help="The site.toml to use (or $PILOT_CONFIG).",
    )
    @click.option("-v", "--verbose", is_flag=True, help="Log debug details too.")
    @click.option("-q", "--quiet", is_flag=True, help="Log only warnings and errors.")
    @click.pass_obj
    @functools.wraps(command)
    def wrapper(ctx: Context, config_path: Optional[Path], verbose: bool, quiet: bool, **kwargs: Any) -> Any:
        ctx.config_path = config_path or ctx.config_path
        ctx.verbosity = 1 if verbose else -1 if quiet else ctx.verbosity
        ctx.setup_logging()
        return command(ctx, **kwargs)

    return wrapper  # type: ignore[return-value]


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="PILOT_CONFIG",
    help="The site.toml to use (or $PILOT_CONFIG).",
)
@click.option("--walltime", help='Run at most this long, e.g. "2h" (overrides walltime.limit).')
@click.option("-v", "--verbose", is_flag=True, help="Log debug details too.")
@click.option("-q", "--quiet", is_flag=True, help="Log only warnings and errors.")
@click.version_option(__version__, "--version", prog_name="pilot")
@click.pass_context
def cli(
    ctx: click.Context, config_path: Optional[Path], walltime: Optional[str], verbose: bool, quiet: bool
) -> None:
    """pilot: claim a token, run its task, report, repeat, until the pool is empty.

    \b
    Without a command it runs a pilot, the same as `run`:
        ./pilot.pyz --config site.toml
    \b
    Examples, a typical session:
        ./pilot.pyz init --config site.toml
        ./pilot.pyz tokens add --config site.toml --lines inputs.txt
        PILOT_PYZ=$PWD/pilot.pyz PILOT_CONFIG=$PWD/site.toml sbatch --array=1-20 site-configs/slurm.sbatch
        ./pilot.pyz status --config site.toml
    """
    obj = ctx.ensure_object(Context)
    obj.config_path = config_path
    obj.verbosity = 1 if verbose else -1 if quiet else 0
    if ctx.invoked_subcommand is None:
        obj.setup_logging()
        ctx.exit(_run(obj, _duration(walltime)))


@cli.command()
@click.option("--walltime", help='Run at most this long, e.g. "2h" (overrides walltime.limit).')
@common
def run(ctx: Context, walltime: Optional[str]) -> None:
    """Run a pilot: claim, run, report until the pool is empty or time is up.

    \b
    Examples:
        ./pilot.pyz run --config site.toml
        ./pilot.pyz run --config site.toml --walltime 2h
    """
    sys.exit(_run(ctx, _duration(walltime)))


def _run(ctx: Context, walltime: Optional[float]) -> int:
    from agent.session import run_pilot

    config = ctx.config(walltime)
    with ctx.pool(config) as pool:
        ending = run_pilot(config, pool, ctx.identity, dict(os.environ))
    level = logging.INFO if ending.code == ExitCode.OK else logging.ERROR
    log.log(level, "pilot ends (exit %d): %s", int(ending.code), ending.reason)
    return int(ending.code)


@cli.command()
@common
def init(ctx: Context) -> None:
    """Create the pool if it is missing (the local pool file; CouchDB's database and views).

    \b
    Example:
        ./pilot.pyz init --config site.toml
    """
    config = ctx.config()
    with ctx.pool(config, create=True) as pool:
        for line in pool.init():
            click.echo(line)


@cli.group()
def tokens() -> None:
    """Add and inspect tokens.

    \b
    Examples:
        ./pilot.pyz tokens add --config site.toml --lines inputs.txt
        ./pilot.pyz tokens show --config site.toml inputs-1
    """


@tokens.command("add")
@click.option(
    "--lines",
    "lines_file",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="One token per line, in the field `input` (blank lines are skipped).",
)
@click.option(
    "--jsonl",
    "jsonl_file",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="One JSON object per line; its `id` (or `_id`) is the token id.",
)
@click.option("--range", "count", type=click.IntRange(min=1), help="N tokens with `input` 0 to N-1.")
@click.option("--prefix", help="Start of generated ids (default: the file's name, or `range`).")
@first_pool_option
@common
def tokens_add(
    ctx: Context,
    *,
    lines_file: Optional[Path],
    jsonl_file: Optional[Path],
    count: Optional[int],
    prefix: Optional[str],
    only: Optional[str],
) -> None:
    """Add tokens to the pool (created if missing). Ids are <prefix>-<line number> unless given, so adding
    the same file twice is refused (local pool) or adds nothing more (CouchDB) instead of doubling the work;
    --prefix adds a file again under other ids. (ToPoS numbers tokens itself: a file added twice is there
    twice.)

    \b
    Examples:
        ./pilot.pyz tokens add --config site.toml --lines genomes.txt
        ./pilot.pyz tokens add --config site.toml --lines inputs.txt --prefix week-2
        ./pilot.pyz tokens add --config site.toml --jsonl params.jsonl
        ./pilot.pyz tokens add --config site.toml --range 1000
    """
    from agent.errors import IDS_FROM_FILE, IDS_FROM_RANGE, DifferentToken, DuplicateToken, RepeatedToken
    from agent.pools import NewToken

    chosen = [option for option in (lines_file, jsonl_file, count) if option is not None]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --lines FILE, --jsonl FILE or --range N")
    # Streamed: the input is read as the pool writes it, a batch at a time, so memory stays flat
    # whatever its size. Files are opened before the pool, so a missing one leaves the pool untouched.
    new: Iterator[NewToken]
    if count is not None:
        prefix, hint = prefix or "range", IDS_FROM_RANGE
        new = (NewToken(f"{prefix}-{i}", {"input": i}) for i in range(count))
    elif lines_file is not None:
        prefix, hint = prefix or _stem(lines_file), IDS_FROM_FILE
        new = _from_lines(lines_file, prefix)
    else:
        assert jsonl_file is not None
        prefix, hint = prefix or _stem(jsonl_file), IDS_FROM_FILE
        new = _from_jsonl(jsonl_file, prefix)
    config = ctx.config()
    given = _Counted(new)
    with ctx.pool(config, create=True, only=only) as pool:
        try:  # bulk forms where the backend has them (ToPoS), else Pool.add
            if count is not None:
                added = pool.add_range(given, count)
            elif lines_file is not None:
                added = pool.add_lines(given)
            else:
                added = pool.add(given)
        except (DuplicateToken, DifferentToken, RepeatedToken) as err:
            raise _explained(err, prefix, hint, jsonl_file) from None
    skipped = max(0, given.count - added)  # a bulk form (ToPoS's) need not read them one by one
    same = f" ({skipped} already there with the same fields, skipped)" if skipped else ""
    click.echo(f"added {added} tokens to {pool.where}{same}")


class _Counted:
    """The tokens given to the pool, counted as it reads them: what it skipped is the difference."""

    def __init__(self, tokens: Iterator[NewToken]) -> None:
        self.tokens = tokens
        self.count = 0

    def __iter__(self) -> Iterator[NewToken]:
        for token in self.tokens:
            self.count += 1
            yield token


def _explained(
    err: DuplicateToken | DifferentToken | RepeatedToken, prefix: str, hint: str, jsonl: Optional[Path]
) -> TokenError:
    """The add's duplicate with where its id came from: the numbering of `tokens add`, or a JSON line's
    own "id", and which lines of a JSONL file give it: two of them are the file's mistake, not the pool's."""
    from agent.errors import ID_FROM_JSON, DuplicateToken, RepeatedToken

    token_id = err.token_id
    lines = _lines_giving(jsonl, prefix, token_id) if jsonl is not None else []
    if len(lines) == 2:
        left = "nothing was added" if isinstance(err, DuplicateToken) else err.left
        return RepeatedToken(token_id, left).located(str(jsonl), (lines[0], lines[1]))
    if isinstance(err, RepeatedToken):
        return err
    if token_id.startswith(f"{prefix}-") and token_id[len(prefix) + 1 :].isdigit():
        return err.explained(hint.format(prefix=prefix))
    return err.explained(ID_FROM_JSON.format(line=f" (line {lines[0]} of {jsonl})" if lines else ""))


def _lines_giving(path: Path, prefix: str, token_id: str) -> list[int]:
    """The first two lines of a JSONL file whose token has this id. Read again, only once an add has
    failed on it, so the add itself keeps no ids in memory; not for stdin, which cannot be read twice."""
    if str(path) == "-":
        return []
    found: list[int] = []
    try:
        for number, line in _read_lines(path):
            try:
                fields = json.loads(line)
            except ValueError:
                break  # the add stopped before here
            if isinstance(fields, dict) and _token_id(fields, prefix, number) == token_id:
                found.append(number)
                if len(found) == 2:
                    break
    except UsageError:  # the file went away meanwhile: say what is known
        pass
    return found


def _token_id(fields: dict[str, Any], prefix: str, number: int) -> str:
    """A JSON line's own "id" (taken out of its fields), else the file's name and the line's number."""
    return fields.pop("id", None) or fields.pop("_id", None) or f"{prefix}-{number}"


def _stem(path: Path) -> str:
    return "stdin" if str(path) == "-" else path.stem


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines, read as they are used; bytes that are not UTF-8 are kept
    (surrogateescape) for the task. The file is opened now, the lines read later."""
    try:
        file = sys.stdin.buffer if str(path) == "-" else path.open("rb")
    except OSError as err:
        raise UsageError(f"tokens file {path}: {err.strerror}") from None
    return _numbered(path, file)


def _numbered(path: Path, file: BinaryIO) -> Iterator[tuple[int, str]]:
    with file:
        try:
            for number, raw in enumerate(file, start=1):
                line = raw.rstrip(b"\n")
                line = line[:-1] if line.endswith(b"\r") else line
                if line.strip():
                    yield number, line.decode("utf-8", "surrogateescape")
        except OSError as err:
            raise UsageError(f"tokens file {path}: {err.strerror}") from None


def _from_lines(path: Path, prefix: str) -> Iterator[NewToken]:
    from agent.pools import NewToken

    lines = _read_lines(path)  # opened now: a missing file is an error before the pool is touched
    return (NewToken(f"{prefix}-{number}", {"input": line}) for number, line in lines)


def _from_jsonl(path: Path, prefix: str) -> Iterator[NewToken]:
    return _parsed_jsonl(path, _read_lines(path), prefix)


def _parsed_jsonl(path: Path, lines: Iterator[tuple[int, str]], prefix: str) -> Iterator[NewToken]:
    from agent.pools import NewToken
    from agent.token import check_token_id

    for number, line in lines:
        try:
            fields = json.loads(line)
        except ValueError as err:
            raise UsageError(f"{path}:{number}: not valid JSON: {err}") from None
        if not isinstance(fields, dict):
            raise UsageError(f"{path}:{number}: expected a JSON object, got {type(fields).__name__}")
        token_id = _token_id(fields, prefix, number)
        try:
            check_token_id(token_id)
        except ValueError as err:
            raise UsageError(f"{path}:{number}: {err}") from None
        for name in fields:
            if name.startswith("_"):
                raise UsageError(f"{path}:{number}: field {name!r} starts with '_', which CouchDB reserves")
        yield NewToken(token_id, fields)


@tokens.command("show")
@click.argument("token_id")
@common
def tokens_show(ctx: Context, token_id: str) -> None:
    """Print one token as JSON: its fields, state, attempts and the tails of its last output.

    \b
    Example:
        ./pilot.pyz tokens show --config site.toml genomes-17
    """
    from agent.views import tokens as views

    config = ctx.config()
    with ctx.pool(config) as pool:
        click.echo(views.show(pool, token_id))


@tokens.command("list")
@click.option("--state", help="Only tokens in this state: todo, waiting, locked, done or error.")
@click.option("--reason", help="Only tokens whose last attempt's reason contains this text (any case).")
@click.option("--host", help="Only tokens whose last attempt ran on this host.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many tokens.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@common
def tokens_list(  # noqa: PLR0917 - one parameter per click option
    ctx: Context,
    state: Optional[str],
    reason: Optional[str],
    host: Optional[str],
    limit: Optional[int],
    as_json: bool,
) -> None:
    """List tokens: id, state, attempts, last host, duration, exit code, reason.

    \b
    Examples:
        ./pilot.pyz tokens list --config site.toml --state error
        ./pilot.pyz tokens list --config site.toml --reason timeout --host node12 --limit 20
        ./pilot.pyz tokens list --config site.toml --json
    """
    from agent.views import tokens as views

    wanted = views.parse_state(state)
    config = ctx.config()
    with ctx.pool(config) as pool:
        if not as_json:
            click.echo(views.header())
        for token in views.listed(pool, wanted, views.Filters(reason, host), limit):
            click.echo(json.dumps(views.summary(token)) if as_json else views.table_row(token))


@tokens.command("export")
@click.option(
    "--jsonl",
    "jsonl_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Write here, one JSON object per token (- for stdout).",
)
@click.option("--state", help="Only tokens in this state.")
@common
def tokens_export(ctx: Context, jsonl_file: Path, state: Optional[str]) -> None:
    """Export tokens as JSON lines: fields, state, every attempt (times also in ISO 8601 UTC) and the
    output tails. For pandas: pd.read_json("tokens.jsonl", lines=True).

    \b
    Examples:
        ./pilot.pyz tokens export --config site.toml --jsonl tokens.jsonl
        ./pilot.pyz tokens export --config site.toml --jsonl errors.jsonl --state error
    """
    from agent.views import tokens as views

    wanted = views.parse_state(state)
    config = ctx.config()
    with ctx.pool(config) as pool:
        if str(jsonl_file) == "-":
            views.export(pool, click.get_text_stream("stdout"), wanted)
            return
        written = views.export_to(pool, jsonl_file, wanted)
    click.echo(f"exported {written} tokens to {jsonl_file}", err=True)


@tokens.command("delete")
@click.argument("token_ids", nargs=-1)
@click.option("--state", help="Delete every token in this state instead.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@common
def tokens_delete(ctx: Context, token_ids: tuple[str, ...], state: Optional[str], yes: bool) -> None:
    """Delete tokens by id, or every token in a state; asks first unless --yes.

    \b
    Examples:
        ./pilot.pyz tokens delete --config site.toml genomes-3 genomes-9 --yes
        ./pilot.pyz tokens delete --config site.toml --state error --yes
    """
    from agent.views import tokens as views

    wanted = views.parse_state(state)
    config = ctx.config()
    with ctx.pool(config) as pool:
        click.echo(views.delete(pool, token_ids, wanted, lambda question: yes or click.confirm(question)))


@tokens.command("cancel")
@click.argument("token_ids", nargs=-1)
@click.option("--all-todo", is_flag=True, help="Cancel every token that is todo or waiting.")
@common
def tokens_cancel(ctx: Context, token_ids: tuple[str, ...], all_todo: bool) -> None:
    """Move tokens to error with the reason `cancelled`; running ones are stopped by their pilots.

    \b
    Examples:
        ./pilot.pyz tokens cancel --config site.toml genomes-17 genomes-18
        ./pilot.pyz tokens cancel --config site.toml --all-todo
    """
    from agent.cancel import cancel

    config = ctx.config()
    with ctx.pool(config) as pool:
        click.echo(cancel(pool, token_ids, all_todo=all_todo, lease=config.server.lease))


@cli.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON object: todo, locked, done, error, total and more."
)
@pool_option
@common
def status(ctx: Context, as_json: bool, only: Optional[str]) -> None:
    """Counts per state, tasks running per host, done per minute over 5 and 60 minutes, the ETA, median
    and 90th-percentile durations, the commonest failure reasons and the hosts with most failures.

    \b
    Examples:
        ./pilot.pyz status --config site.toml
        ./pilot.pyz status --config site.toml --json
    """
    import time

    from agent import stats
    from agent.views import status as views

    config = ctx.config()
    with ctx.pool(config, only=only) as pool:
        figures = stats.figures(views.observe(pool, time.time()))
    if as_json:
        click.echo(views.as_json(figures))
    else:
        for line in views.lines(figures):
            click.echo(line)


@cli.command()
@click.option("--interval", default="5s", show_default=True, help="Time between refreshes.")
@click.option("--exit-when-done", is_flag=True, help="End once nothing is todo or locked.")
@click.option("--count", type=click.IntRange(min=1), help="End after this many refreshes.")
@common
def watch(ctx: Context, interval: str, exit_when_done: bool, count: Optional[int]) -> None:
    """Watch the run: a progress bar, the rate, the ETA, tasks per host, the last failures. Redrawn in
    place on a terminal (`pilot.pyz watch --config site.toml`; Ctrl-C ends it); one line per refresh
    when stdout is not a terminal.

    \b
    Examples:
        ./pilot.pyz watch --config site.toml --count 1
        ./pilot.pyz watch --config site.toml --interval 1s --count 3 --exit-when-done
    """
    import shutil
    import time

    from agent.views.watch import Watch, stop_on_signals

    every = _duration(interval)
    assert every is not None
    if every <= 0:
        raise UsageError(f"--interval {interval!r}: expected more than 0s")
    config = ctx.config()
    out = click.get_text_stream("stdout")
    stop, restore = stop_on_signals()
    try:
        with ctx.pool(config) as pool:
            Watch(
                pool=pool,
                out=out,
                terminal=out.isatty(),
                interval=every,
                exit_when_done=exit_when_done,
                count=count,
                clock=time.time,
                width=lambda: shutil.get_terminal_size().columns,
            ).run(stop)
    finally:
        restore()


@cli.command()
@click.option(
    "--html", "html_file", type=click.Path(path_type=Path, dir_okay=False), help="Write the page here."
)
@click.option(
    "--json", "json_file", type=click.Path(path_type=Path, dir_okay=False), help="Write the figures here."
)
@common
def report(ctx: Context, html_file: Optional[Path], json_file: Optional[Path]) -> None:
    """Write a report of the run: one self-contained HTML page (timeline, concurrency, throughput,
    durations, failures by reason and host, attempts per token, utilisation), and/or its figures as JSON.

    \b
    Examples:
        ./pilot.pyz report --config site.toml --html run.html
        ./pilot.pyz report --config site.toml --html run.html --json run.json
    """
    import time

    from agent.views import report as views

    config = ctx.config()
    with ctx.pool(config) as pool:
        for line in views.run(pool, time.time(), html_file, json_file):
            click.echo(line)


@cli.command()
@click.option("--locked", is_flag=True, help="Put locked tokens back to todo (their pilots are gone).")
@click.option("--errors", is_flag=True, help="Put error tokens back to todo with a fresh attempt budget.")
@pool_option
@common
def reset(ctx: Context, locked: bool, errors: bool, only: Optional[str]) -> None:
    """Put tokens back to todo. Their attempt history stays on them.

    \b
    Examples:
        ./pilot.pyz reset --config site.toml --errors
        ./pilot.pyz reset --config site.toml --locked
    """
    if not (locked or errors):
        raise UsageError("say what to reset: --locked, --errors, or both")
    config = ctx.config()
    with ctx.pool(config, only=only) as pool:
        changed = pool.reset(locked=locked, errors=errors)
    click.echo(f"{changed} tokens back to todo")


@cli.command()
@common
def check(ctx: Context) -> None:
    """Validate site.toml, reach the pool, and look for the command's program.

    \b
    Example:
        ./pilot.pyz check --config site.toml
    """
    from agent.errors import NodeUnhealthy
    from agent.health import check_program

    config = ctx.config()
    click.echo(f"config {config.path}: ok")
    with ctx.pool(config) as pool:
        for line in pool.check():
            click.echo(line)
    try:
        click.echo(check_program(config, os.environ))
    except NodeUnhealthy as err:
        raise UsageError(err.problem) from None  # here a question about site.toml, not a node stopping


@cli.group("cache")
def cache_group() -> None:
    """Fill, list and clean this node's cache of the [cache.files] entries.

    \b
    Examples:
        ./pilot.pyz cache fetch --config site.toml
        ./pilot.pyz cache list --config site.toml
    """


@cache_group.command("fetch")
@common
def cache_fetch(ctx: Context) -> None:
    """Make every [cache.files] entry ready on this node (to warm a node ahead of its jobs).

    \b
    Example:
        ./pilot.pyz cache fetch --config site.toml
    """
    from agent.cache import Cache

    config = ctx.config()
    if not config.cache.files:
        raise UsageError(f"{config.path}: no [cache.files.<name>] entries to fetch")
    with Cache(config.cache).prepare() as held:
        for name, path in held.paths.items():
            click.echo(f"{name}: {path}")


@cache_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@common
def cache_list(ctx: Context, as_json: bool) -> None:
    """Show the entries in the cache folder: size, age, whether a pilot uses them.

    \b
    Example:
        ./pilot.pyz cache list --config site.toml
    """
    import dataclasses
    import time

    from agent.cache import Cache
    from agent.units import format_duration, format_size

    config = ctx.config()
    listed = Cache(config.cache).list()
    if as_json:
        for item in listed:
            click.echo(json.dumps(dataclasses.asdict(item)))
        return
    click.echo(f"cache folder {config.cache.dir}: {len(listed)} entries")
    now = time.time()
    for item in listed:
        age = format_duration(now - item.created) if item.created else "-"
        used = "in use" if item.in_use else "unused"
        names = f" [{', '.join(item.names)}]" if item.names else ""
        click.echo(
            f"  {item.key:<40} {item.state:<8} {format_size(item.size):>9} {age:>7} {used:<6} "
            f"{item.source}{names}"
        )


@cache_group.command("clean")
@common
def cache_clean(ctx: Context) -> None:
    """Remove every entry that no pilot on this node uses, and interrupted downloads.

    \b
    Example:
        ./pilot.pyz cache clean --config site.toml
    """
    from agent.cache import Cache
    from agent.units import format_size

    config = ctx.config()
    removed, kept = Cache(config.cache).clean()
    for item in removed:
        click.echo(f"removed {item.key} ({format_size(item.size)})")
    for item in kept:
        click.echo(f"kept {item.key}: in use")
    freed = format_size(sum(item.size for item in removed))
    click.echo(f"{len(removed)} removed ({freed} freed), {len(kept)} in use and kept")


def main() -> None:
    """Entry point: run the CLI; a PilotError becomes one line on stderr and its exit code."""
    try:
        code = cli.main(prog_name="pilot.pyz", standalone_mode=False)
    except PilotError as err:
        click.echo(f"pilot: error: {err}", err=True)
        sys.exit(int(err.exit_code))
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(ExitCode.CONFIG)
    except click.Abort:
        click.echo("pilot: aborted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)
