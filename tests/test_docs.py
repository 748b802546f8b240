"""README.md, docs/ and site-configs/ checked against the code, so the documentation cannot rot.

- docs/configuration.md has a row for every key agent/config.py reads, with its default, and no others;
- every ```sh block marked ``<!-- runnable -->`` runs in a fresh folder with ./pilot.pyz, and every local
  site-configs/*.toml is run by one;
- every ```toml block and every site-configs/*.toml loads and passes ``pilot.pyz check`` (local pools:
  ``init`` and ``check``; others up to their example server);
- site-configs/*.jdl are well-formed ClassAds with known attributes;
- the README: at most 150 lines, 20 pilots on its first screen, every command, every exit code;
- docs/troubleshooting.md's error lines are ones agent/ writes;
- every command's --help has an example, and each example runs against a local pool.

docs/design.md ("Documentation that cannot rot") says how to mark blocks and examples.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import http
import inspect
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import click
import pytest
from click.testing import CliRunner
from conftest import REPO, pilot_env, to_toml

from agent import config as config_module
from agent.cli import cli
from agent.errors import ConfigError, ExitCode
from agent.units import format_duration, parse_duration, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOCS = REPO / "docs"
CONFIG_DOC = DOCS / "configuration.md"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
SITE_CONFIGS = REPO / "site-configs"
RUNNABLE = "<!-- runnable -->"
NEEDS_SERVER = "# needs a server"
ENTRY = "probe"  # the [cache.files.<name>] entry of the probe sites, documented as <name>


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


# -- the configuration reference against agent/config.py ---------------------------------------------


@dataclass(frozen=True)
class Key:
    name: str  # dotted; a cache entry's keys as cache.files.<name>.url
    getter: str  # the _Table method that read it: duration, size, integer, path, ...
    default: Any  # as agent/config.py passes it: seconds, bytes, config.REQUIRED, None, ...


@contextlib.contextmanager
def _watch_getters(records: dict[str, Key]) -> Iterator[None]:
    """Wrap _Table's getters: each key read through ``raw`` is recorded with the getter the parser called
    (the outermost one: ``duration`` calls ``converted``, which calls ``raw``) and raw's default."""
    table = config_module._Table
    outer: list[str] = []
    originals = {
        name: getattr(table, name)
        for name, member in vars(table).items()
        if inspect.isfunction(member)
        and not name.startswith("_")
        and name not in ("key", "error", "has", "finish")
    }

    def wrap(name: str, original: Any) -> Any:
        def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
            first = outer[0] if outer else name
            if name == "raw" and first != "table":
                bound = inspect.signature(original).bind(self, *args, **kwargs)
                key = re.sub(rf"\.{ENTRY}\.", ".<name>.", self.key(bound.arguments["name"]) + ".")[:-1]
                records.setdefault(key, Key(key, first, bound.arguments["default"]))
            outer.append(name)
            try:
                return original(self, *args, **kwargs)
            finally:
                outer.pop()

        return watched

    for name, original in originals.items():
        setattr(table, name, wrap(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(table, name, original)


def _fill(key: str, problem: str) -> Any:
    """A value for a required key the probe site lacks, from what the parser expects."""
    if "a string" in problem:
        return "http://127.0.0.1:5984" if key.endswith("url") else "probe"
    if "an integer" in problem:
        return int(re.search(r">= (\d+)", problem).group(1)) if ">=" in problem else 1  # type: ignore[union-attr]
    if "true or false" in problem:
        return True
    if "a duration" in problem:
        return "1m"
    if "a size" in problem:
        return "1MB"
    raise AssertionError(f"tests/test_docs.py: _fill does not know how to give {key} ({problem}); teach it")


def schema_keys(folder: Path) -> dict[str, Key]:
    """Every key agent/config.py reads, with its default: a site of each backend in config.BACKENDS (plus a
    cache entry) is loaded while the getters are watched; a required key is given a value and the site
    loaded again, until it loads."""
    records: dict[str, Key] = {}
    environ = {"HOME": str(folder), "TMPDIR": str(folder)}
    for backend in config_module.BACKENDS:
        sections: dict[str, dict[str, Any]] = {
            "server": {"backend": backend},
            "task": {"command": ["/bin/true"]},
            f"cache.files.{ENTRY}": {"url": "file:///dev/null"},
        }
        for _ in range(50):
            path = folder / f"probe-{backend}.toml"
            path.write_text(to_toml(sections))
            try:
                with _watch_getters(records):
                    config_module.load(path, environ)
                break
            except ConfigError as err:
                if not err.problem.startswith("missing"):
                    raise AssertionError(
                        f"the probe site for backend {backend!r} is refused: {err}"
                    ) from None
                section, _, name = err.key.rpartition(".")
                sections.setdefault(section, {})[name] = _fill(err.key, err.problem)
    return records


@dataclass(frozen=True)
class Row:
    key: str
    default: str
    line: int


def documented_rows() -> dict[str, Row]:
    """The rows of the page's `| key | default | meaning |` tables."""
    rows: dict[str, Row] = {}
    in_table = False
    for number, line in enumerate(CONFIG_DOC.read_text().splitlines(), start=1):
        if re.match(r"\|\s*key\s*\|\s*default\s*\|", line):
            in_table = True
        in_table = in_table and line.startswith("|")
        match = re.match(r"\|\s*`([A-Za-z0-9_.<>-]+)`\s*\|([^|]*)\|", line)
        if in_table and match:
            key = match.group(1)
            first = rows.get(key)
            assert first is None, (
                f"{rel(CONFIG_DOC)}:{number}: {key!r} has a second row (first: line {first.line})"
            )
            rows[key] = Row(key, match.group(2).strip(), number)
    return rows


def shown_default(key: Key) -> str:
    """The code's default as a row of configuration.md writes it."""
    value = key.default
    if value is config_module.REQUIRED or value is None:
        return "required" if value is config_module.REQUIRED else "none"
    if key.getter == "duration":
        text = format_duration(value)
        literal = f'"{text}"' if parse_duration(text) == value else f'"{value:g}s"'
    elif key.getter == "size":
        literal = f'"{value // 10**6}MB"' if value % 10**6 == 0 else f'"{value}B"'
    elif isinstance(value, bool):
        literal = "true" if value else "false"
    elif isinstance(value, str):
        literal = '"' + value.replace(str(os.getuid()), "<uid>") + '"'
    else:
        literal = "{}" if isinstance(value, dict) else repr(value)
    return f"`{literal}`"


def same_default(key: Key, text: str) -> bool:
    if text in ("required", "none"):
        return text == shown_default(key)
    if not (text.startswith("`") and text.endswith("`")):
        return False
    try:
        value = tomllib.loads(f"v = {text.strip('`')}")["v"]
    except tomllib.TOMLDecodeError:
        return False
    if key.getter == "duration" and isinstance(value, str):
        return parse_duration(value) == key.default
    if key.getter == "size" and isinstance(value, str):
        return parse_size(value) == key.default
    if isinstance(value, str):
        value = value.replace("<uid>", str(os.getuid()))
    return bool(value == key.default and type(value) is type(key.default))


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    return schema_keys(tmp_path_factory.mktemp("schema"))


def test_every_config_key_the_code_reads_has_a_row_with_its_default(schema: dict[str, Key]) -> None:
    rows = documented_rows()
    problems = []
    for name, key in sorted(schema.items()):
        shown = shown_default(key)
        if name not in rows:
            problems.append(
                f"{rel(CONFIG_DOC)}: no row for {name!r}, which agent/config.py reads; add "
                f"| `{name}` | {shown} | <what it means> |"
            )
        elif not same_default(key, rows[name].default):
            problems.append(
                f"{rel(CONFIG_DOC)}:{rows[name].line}: {name!r} documents the default {rows[name].default}, "
                f"agent/config.py's is {shown}"
            )
    assert not problems, "\n".join(problems)


def test_every_documented_config_key_exists_in_the_code(schema: dict[str, Key]) -> None:
    extra = [
        f"{rel(CONFIG_DOC)}:{row.line}: {key!r} is documented, but agent/config.py does not read it; "
        "remove the row or fix its name"
        for key, row in documented_rows().items()
        if key not in schema
    ]
    assert not extra, "\n".join(extra)


def test_the_schema_probe_finds_keys_of_every_kind(schema: dict[str, Key]) -> None:
    # The probe itself must see what it checks: a key of each backend, a cache entry's keys, defaults.
    assert (
        schema["server.path"].default == "pool.db" and schema["server.url"].default is config_module.REQUIRED
    )
    assert schema["server.lease"].getter == "duration" and schema["server.lease"].default == 600.0
    assert {"cache.files.<name>.url", "cache.files.<name>.sha256", "task.env"} <= schema.keys()
    assert "cache.files" not in schema and "server" not in schema  # tables are sections, not keys


def test_a_row_with_a_wrong_default_or_a_missing_row_is_named(schema: dict[str, Key]) -> None:
    lease = schema["server.lease"]
    assert same_default(lease, '`"10m"`') and not same_default(lease, '`"5m"`')
    assert shown_default(lease) == '`"10m"`' and shown_default(schema["task.command"]) == "required"
    assert not same_default(schema["pilot.slots"], "`true`")  # 1 == True in Python, not in TOML


# -- markdown blocks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence
    language: str
    text: str
    runnable: bool

    def __str__(self) -> str:
        return f"{rel(self.page)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"```(\w*)\s*$", lines[i])
        if fence:
            start = i
            i += 1
            body = []
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            before = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
            found.append(Block(page, start + 1, fence.group(1), "\n".join(body) + "\n", before == RUNNABLE))
        i += 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
RUNNABLE_BLOCKS = [block for block in ALL_BLOCKS if block.runnable]
TOML_BLOCKS = [block for block in ALL_BLOCKS if block.language == "toml"]


def test_runnable_marks_stand_before_sh_blocks() -> None:
    for page in PAGES:
        marks = sum(line.strip() == RUNNABLE for line in page.read_text().splitlines())
        marked = [block for block in blocks(page) if block.runnable]
        assert marks == len(marked), f"{rel(page)}: a {RUNNABLE} mark is not right before a ``` block"
        for block in marked:
            assert block.language == "sh", f"{block}: runnable blocks are ```sh"
    assert any(block.page.name == "README.md" for block in RUNNABLE_BLOCKS)


@pytest.fixture
def folder(tmp_path: Path, pyz: Path) -> Path:
    """A fresh folder as a user's clone looks after `make pyz`: ./pilot.pyz and site-configs/."""
    shutil.copytree(SITE_CONFIGS, tmp_path / "site-configs")
    (tmp_path / "pilot.pyz").symlink_to(pyz.resolve())
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pilot.pyz").symlink_to(pyz.resolve())
    return tmp_path


def folder_env(folder: Path, pyz_root: Path) -> dict[str, str]:
    env = pilot_env(folder, pyz_root)
    env["PATH"] = f"{folder / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.parametrize("block", RUNNABLE_BLOCKS, ids=str)
def test_runnable_block_runs(block: Block, folder: Path, pyz_root: Path) -> None:
    script = folder / "block.sh"
    script.write_text(block.text)
    done = run(["sh", "-eu", str(script)], folder, folder_env(folder, pyz_root), timeout=180)
    assert done.returncode == 0, (
        f"{block}: exit {done.returncode}\n{block.text}\n{done.stdout}\n{done.stderr[-3000:]}"
    )
    if block.page.name == "README.md" and "status" in block.text:
        # The quick start does not only exit 0: it runs every example token.
        genomes = (SITE_CONFIGS / "examples" / "genomes.txt").read_text().splitlines()
        done_count = len([line for line in genomes if line.strip()])
        assert re.search(rf"^done\s+{done_count}$", done.stdout, re.M), done.stdout
        assert '"state": "done"' in done.stdout


FIRST_SCREEN = 60  # lines: what a terminal or the forge shows before one scrolls much
README_LINES = 150  # issue 21: "at most about 150 lines"


def test_the_readme_shows_how_to_submit_20_pilots_on_its_first_screen() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    [sbatch] = [number for number, line in enumerate(lines) if "sbatch --array=1-20" in line]
    [dirac] = [number for number, line in enumerate(lines) if line.startswith("dirac-wms-job-submit")]
    assert sbatch < FIRST_SCREEN and dirac < FIRST_SCREEN + 15, (sbatch, dirac)
    for line in (lines[sbatch], lines[dirac]):
        for named in re.findall(r"site-configs/[\w.-]+", line):
            assert (REPO / named).is_file(), f"README.md: {line} names a missing {named}"


def test_the_readme_is_at_most_about_150_lines() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_LINES, (
        f"README.md has {len(lines)} lines, more than {README_LINES}: move detail into docs/"
    )


def test_the_readmes_exit_code_table_has_every_exit_code_and_no_other() -> None:
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Exit codes") :].split("\n## ")[0]
    shown = [int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.M)]
    codes = sorted(int(code) for code in ExitCode)
    assert sorted(shown) == codes, f"README.md's exit codes {shown} are not agent/errors.py's {codes}"
    page = TROUBLESHOOTING.read_text()
    unexplained = [code for code in shown if code > 1 and not re.search(rf"\b{code}\b", page)]
    assert not unexplained, f"{rel(TROUBLESHOOTING)} says nothing of exit codes {unexplained}"


def slug(heading: str) -> str:
    """The anchor GitHub and GitLab give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_lead_somewhere() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            if not linked.exists():
                broken.append(f"{rel(page)}: ({target}): no file {file}")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                if anchor not in {slug(heading) for heading in headings}:
                    broken.append(f"{rel(page)}: ({target}): no heading #{anchor} in {rel(linked)}")
    assert not broken, "\n".join(broken)


# -- site.toml examples ----------------------------------------------------------------------------------

FRAGMENT_BASE = {"task": {"command": ["/bin/true"]}}


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def make_named_files(path: Path, data: dict[str, Any], environ: dict[str, str]) -> None:
    """The password and CA files a site names, as the user would have them (the parser reads them)."""
    server = data.get("server", {})
    for key in ("password_file", "ca_bundle"):
        if key in server:
            target = config_module.expand_path(server[key], path.parent, environ)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("s3cret\n")
            target.chmod(0o600)


def validate_site(path: Path, pyz: Path, environ: dict[str, str], where: str) -> None:
    """Local pools: `pilot.pyz init` and `check` (config, pool, program). Others: the config parser,
    since `check` would need their server."""
    data = tomllib.loads(path.read_text())
    make_named_files(path, data, environ)
    try:
        loaded = config_module.load(path, environ)
    except ConfigError as err:
        raise AssertionError(f"{where}: {err}") from None
    if loaded.server.backend != "local":
        return
    for command in ("init", "check"):
        done = run([str(pyz), command, "--config", str(path)], path.parent, environ)
        assert done.returncode == 0, f"{where}: pilot.pyz {command}: {done.stderr}"


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=str)
def test_toml_block_is_a_valid_site(block: Block, tmp_path: Path, pyz: Path, pyz_root: Path) -> None:
    try:
        data = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as err:
        raise AssertionError(f"{block}: invalid TOML: {err}") from None
    site = tmp_path / "site.toml"
    site.write_text(to_toml(merged(FRAGMENT_BASE, data)))
    environ = {**pilot_env(tmp_path, pyz_root), "HOME": str(tmp_path)}
    validate_site(site, pyz, environ, str(block))


@pytest.mark.parametrize("name", sorted(path.name for path in SITE_CONFIGS.glob("*.toml")))
def test_site_config_is_valid(name: str, folder: Path, pyz: Path, pyz_root: Path) -> None:
    environ = {**pilot_env(folder, pyz_root), "HOME": str(folder)}
    validate_site(folder / "site-configs" / name, pyz, environ, f"site-configs/{name}")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_every_server_site_passes_pilot_pyz_check_up_to_its_server(
    tmp_path: Path, pyz: Path, pyz_root: Path
) -> None:
    """The CouchDB and ToPoS sites (blocks and site-configs/) through `pilot.pyz check` itself: their
    servers are examples, so each runs with server.url moved to a closed port on 127.0.0.1 and must pass
    the config step (`config ...: ok`) and stop at the pool with one line, exit 3 or 4. All at once: each
    waits out its retries."""
    sources = [(str(block), tomllib.loads(block.text)) for block in TOML_BLOCKS]
    sources += [
        (f"site-configs/{path.name}", tomllib.loads(path.read_text()))
        for path in sorted(SITE_CONFIGS.glob("*.toml"))
    ]
    url = f"http://127.0.0.1:{_closed_port()}/"
    started = []
    for number, (where, data) in enumerate(sources):
        site = merged(FRAGMENT_BASE, data)
        if site.get("server", {}).get("backend", "local") == "local":
            continue
        site["server"]["url"] = url + ("4.1/" if site["server"]["backend"] == "topos" else "")
        folder = tmp_path / f"site-{number}"
        folder.mkdir()
        path = folder / "site.toml"
        path.write_text(to_toml(site))
        environ = {**pilot_env(folder, pyz_root), "HOME": str(folder)}
        make_named_files(path, site, environ)
        argv = [str(pyz), "check", "--config", str(path)]
        started.append(
            (
                where,
                path,
                subprocess.Popen(
                    argv, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    assert len(started) >= 8, [where for where, _, _ in started]  # README, backends, topos, site-configs...
    for where, path, process in started:
        stdout, stderr = process.communicate(timeout=120)
        assert f"config {path}: ok" in stdout, f"{where}: pilot.pyz check: {stdout}{stderr}"
        lines = stderr.strip().splitlines()
        assert process.returncode in (ExitCode.POOL, ExitCode.SERVER_UNREACHABLE) and len(lines) == 1, (
            f"{where}: pilot.pyz check: exit {process.returncode}: {stderr}"
        )
        assert lines[0].startswith("pilot: error: pool http://127.0.0.1:"), f"{where}: {lines[0]}"


def test_every_site_config_is_listed_in_the_configuration_page() -> None:
    page = CONFIG_DOC.read_text()
    for path in [*SITE_CONFIGS.glob("*.toml"), *SITE_CONFIGS.glob("*.jdl"), *SITE_CONFIGS.glob("*.sbatch")]:
        assert f"`{path.name}`" in page, (
            f"{rel(CONFIG_DOC)}: site-configs/{path.name} is not in the Examples table"
        )


def test_every_local_site_config_is_run_by_a_runnable_block() -> None:
    # One example per kind of workload (an array, a reference database, mixed sizes, map-reduce) is not
    # only loaded: a runnable block runs it, so an example that stops working fails.
    local = [
        path.name
        for path in sorted(SITE_CONFIGS.glob("*.toml"))
        if tomllib.loads(path.read_text()).get("server", {}).get("backend", "local") == "local"
    ]
    assert {"array.toml", "refdb.toml", "mixed.toml", "mapreduce.toml"} <= set(local), local
    unrun = [
        name for name in local if not any(f"site-configs/{name}" in block.text for block in RUNNABLE_BLOCKS)
    ]
    assert not unrun, f"no <!-- runnable --> block in README.md or docs/ runs site-configs/{unrun}"


# -- JDL -------------------------------------------------------------------------------------------------

DIRAC_ATTRIBUTES = {
    "Executable", "Arguments", "JobName", "JobGroup", "JobType", "StdOutput", "StdError", "InputSandbox",
    "OutputSandbox", "InputData", "OutputData", "OutputSE", "OutputPath", "Parameters", "ParameterStart",
    "ParameterStep", "ParameterFactor", "Site", "BannedSite", "Platform", "Priority", "CPUTime",
    "NumberOfProcessors", "MinNumberOfProcessors", "MaxNumberOfProcessors", "Tags", "WholeNode",
    "LogLevel", "ExecutionEnvironment",
}  # fmt: skip
GLITE_ATTRIBUTES = {
    "Type", "JobType", "Executable", "Arguments", "StdInput", "StdOutput", "StdError", "InputSandbox",
    "OutputSandbox", "OutputSandboxBaseDestURI", "Environment", "Requirements", "Rank", "RetryCount",
    "ShallowRetryCount", "Parameters", "ParameterStart", "ParameterStep", "VirtualOrganisation",
    "MyProxyServer", "CpuNumber", "SMPGranularity", "WholeNodes", "HostNumber", "PerusalFileEnable",
}  # fmt: skip
_JDL_TOKEN = re.compile(
    r'\s+|//[^\n]*|#[^\n]*|/\*.*?\*/|(?P<string>"(?:[^"\\\n]|\\.)*")|(?P<number>\d+(?:\.\d+)?)'
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<op>>=|<=|==|!=|&&|\|\||[\[\]{}();=,<>!+\-*/])",
    re.S,
)


def jdl_tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) for a JDL file; comments (//, #, /* */) and blanks dropped."""
    tokens, pos = [], 0
    while pos < len(text):
        match = _JDL_TOKEN.match(text, pos)
        line = text.count("\n", 0, pos) + 1
        if match is None:
            raise SyntaxError(f"line {line}: unexpected {text[pos : pos + 10]!r} (an unclosed string?)")
        if match.lastgroup:
            tokens.append((match.lastgroup, match.group(), line))
        pos = match.end()
    return tokens


def parse_jdl(text: str) -> dict[str, list[tuple[str, str, int]]]:
    """A ClassAd: ``[ Attr = value; ... ]`` (the brackets optional, as DIRAC allows), every statement ended
    by ';'; a value is a string, a number, a name, a list ``{v, v}`` or an expression, brackets balanced."""
    tokens = jdl_tokens(text)
    if tokens and tokens[0][1] == "[":
        if tokens[-1][1] != "]":
            raise SyntaxError(f"line {tokens[-1][2]}: the ClassAd opened with '[' is not closed by ']'")
        tokens = tokens[1:-1]
    attributes: dict[str, list[tuple[str, str, int]]] = {}
    i = 0
    while i < len(tokens):
        kind, name, line = tokens[i]
        if kind != "name" or i + 1 >= len(tokens) or tokens[i + 1][1] != "=":
            raise SyntaxError(f"line {line}: expected 'Attribute = value;', got {name!r}")
        if name.lower() in (known.lower() for known in attributes):
            raise SyntaxError(f"line {line}: {name} is given twice")
        value, i = _jdl_value(tokens, i + 2, name, line)
        attributes[name] = value
    return attributes


def _jdl_value(tokens: list[tuple[str, str, int]], i: int, name: str, line: int) -> tuple[list[Any], int]:
    """The tokens of one value, from ``i`` to its ';'; and where the next statement starts."""
    closing = {"(": ")", "{": "}", "[": "]"}
    value: list[tuple[str, str, int]] = []
    depth: list[str] = []
    while i < len(tokens) and not (tokens[i][1] == ";" and not depth):
        text = tokens[i][1]
        if text in closing:
            depth.append(closing[text])
        elif text in ")}]" and (not depth or depth.pop() != text):
            raise SyntaxError(f"line {tokens[i][2]}: unbalanced {text!r} in {name}")
        value.append(tokens[i])
        i += 1
    if i >= len(tokens):
        raise SyntaxError(f"line {line}: {name} = ... is not ended by ';'")
    if not value:
        raise SyntaxError(f"line {line}: {name} has no value")
    if value[0][1] == "{":
        items = value[1:-1]
        well_formed = value[-1][1] == "}" and all(
            (kind in ("string", "number")) if j % 2 == 0 else (text == ",")
            for j, (kind, text, _) in enumerate(items)
        )
        if not well_formed or (items and items[-1][1] == ","):
            raise SyntaxError(f'line {line}: {name}: a list is {{"a", "b"}}')
    return value, i + 1


JDL_FILES = {"grid.jdl": DIRAC_ATTRIBUTES, "grid-glite.jdl": GLITE_ATTRIBUTES}


def test_both_jdl_files_are_there() -> None:
    assert sorted(path.name for path in SITE_CONFIGS.glob("*.jdl")) == sorted(JDL_FILES)


@pytest.mark.parametrize("name", sorted(JDL_FILES))
def test_jdl_is_well_formed_with_known_attributes(name: str) -> None:
    path = SITE_CONFIGS / name
    try:
        attributes = parse_jdl(path.read_text())
    except SyntaxError as err:
        raise AssertionError(f"site-configs/{name}: {err}") from None
    unknown = sorted(set(attributes) - JDL_FILES[name])
    assert not unknown, (
        f"site-configs/{name}: attributes unknown to {'DIRAC' if name == 'grid.jdl' else 'gLite'}: {unknown}"
    )
    assert attributes["Parameters"][0][1] == "20", f"site-configs/{name}: 20 pilots"
    assert {"ParameterStart", "ParameterStep"} <= attributes.keys(), f"site-configs/{name}: 1 to 20"
    if name == "grid.jdl":  # the form SURF's DIRAC documentation uses: the queue, cores and site, %s
        assert {"Tags", "NumberOfProcessors", "Site"} <= attributes.keys(), f"site-configs/{name}"
        texts = [text for value in attributes.values() for kind, text, _ in value if kind == "string"]
        assert any("%s" in text for text in texts), f"site-configs/{name}: no %s (the job's parameter)"
    else:
        assert attributes["JobType"][0][1] == '"Parametric"', f"site-configs/{name}: JobType"
    placeholder = "%j" if name == "grid.jdl" else "_PARAM_"
    for output in ("StdOutput", "StdError"):
        assert placeholder in attributes[output][0][1], f"site-configs/{name}: {output} needs {placeholder}"
    # The sandbox names files as they are in a clone (submitted from its folder); the pyz is built,
    # the password is the user's.
    for kind, text, _ in attributes["InputSandbox"]:
        if kind == "string" and text.strip('"') not in ("pilot.pyz", "couchdb.password"):
            assert (REPO / text.strip('"')).is_file(), f"site-configs/{name}: no file {text} for the sandbox"
    command = " ".join(text.strip('"') for _, text, _ in attributes["Arguments"])
    assert "exec python3 pilot.pyz --config grid.toml" in command


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[ Executable = "/bin/sh"; ', "not closed"),
        ('[ Executable = "/bin/sh" ]', "not ended by ';'"),
        ('[ Executable = "/bin/sh; ]', "unclosed string"),
        ('[ Tags = {"long", }; ]', "a list is"),
        ("[ Requirements = (a >= 1; ]", "not ended"),
        ("[ A = 1; a = 2; ]", "twice"),
        ("[ = 1; ]", "expected 'Attribute = value;'"),
    ],
)
def test_the_jdl_checker_finds_broken_files(text: str, problem: str) -> None:
    with pytest.raises(SyntaxError, match=re.escape(problem)):
        parse_jdl(text)


# -- --help examples ------------------------------------------------------------------------------------


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name)


def help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def help_examples(path: tuple[str, ...]) -> list[str]:
    """The ./pilot.pyz lines of a command's help."""
    return [line.strip() for line in help_text(path).splitlines() if line.strip().startswith("./pilot.pyz ")]


ALL_COMMANDS = list(commands())
EXAMPLES = [(path, line) for path in ALL_COMMANDS for line in help_examples(path)]


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda path: " ".join(path) or "pilot.pyz")
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    text = help_text(path)
    assert "Example" in text and help_examples(path), f"pilot.pyz {' '.join(path)} --help has no example"


EXAMPLE_SITE = """\
[server]
backend = "local"
path = "pool.db"

[task]
command = ["/bin/true"]

[pilot]
workdir = "work"

[cache]
dir = "cache"

[cache.files.ref]
url = "ref.txt"
"""


@pytest.fixture(scope="module")
def example_pools(tmp_path_factory: pytest.TempPathFactory, pyz: Path, pyz_root: Path) -> dict[str, Path]:
    """Two folders with the files the help examples name: an empty pool (for `tokens add` examples), and
    one holding the tokens of genomes.txt and inputs.txt (for the others)."""
    made = {}
    for kind in ("empty", "filled"):
        folder = tmp_path_factory.mktemp(f"help-{kind}")
        (folder / "site.toml").write_text(EXAMPLE_SITE)
        (folder / "pilot.pyz").symlink_to(pyz.resolve())
        (folder / "ref.txt").write_text("reference\n")
        shutil.copy(SITE_CONFIGS / "examples" / "genomes.txt", folder / "genomes.txt")
        (folder / "inputs.txt").write_text("a\nb\n")
        (folder / "params.jsonl").write_text('{"alpha": 0.1}\n{"alpha": 0.2}\n')
        adds = [["tokens", "add", "--lines", name] for name in ("genomes.txt", "inputs.txt")]
        for argv in adds if kind == "filled" else [["init"]]:
            done = run([str(pyz), *argv, "--config", "site.toml"], folder, pilot_env(folder, pyz_root))
            assert done.returncode == 0, done.stderr
        made[kind] = folder
    return made


@pytest.mark.parametrize(("path", "line"), EXAMPLES, ids=[line for _, line in EXAMPLES])
def test_help_example_runs_against_a_local_pool(
    path: tuple[str, ...], line: str, example_pools: dict[str, Path], tmp_path: Path, pyz_root: Path
) -> None:
    command, _, comment = line.partition(" #")
    argv = shlex.split(command)
    parse_only = f"#{comment}".strip() == NEEDS_SERVER
    kind = "empty" if argv[1:3] == ["tokens", "add"] else "filled"
    folder = tmp_path / "site"
    shutil.copytree(example_pools[kind], folder, symlinks=True)
    done = run([*argv, *(["--help"] if parse_only else [])], folder, pilot_env(folder, pyz_root))
    shown = f"pilot.pyz {' '.join(path)} --help: {line}"
    assert done.returncode == 0, f"{shown}: exit {done.returncode}: {done.stderr[-2000:]}"


def test_the_readme_names_every_command() -> None:
    # Its command lines (`./pilot.pyz tokens show | list | ...  # ...`) name each command one can run.
    shown = [
        line.split()[1:]
        for block in blocks(REPO / "README.md")
        for line in block.text.splitlines()
        if line.startswith("./pilot.pyz ")
    ]
    missing = [
        " ".join(path)
        for path in ALL_COMMANDS[1:]
        if not any(words[: len(path) - 1] == list(path[:-1]) and path[-1] in words for words in shown)
    ]
    assert not missing, f"README.md: no ./pilot.pyz line names {missing}; add them to its Commands block"


# -- troubleshooting.md against the messages in agent/ ---------------------------------------------------

# Words a line shows that come from outside agent/'s messages: the system's and HTTP's own texts.
OUTSIDE_TEXTS = sorted(
    {os.strerror(number) for number in range(1, 134)} | {status.phrase for status in http.HTTPStatus},
    key=len,
    reverse=True,
)
# What a documented line shows between the words of a message: `...`, quoted text, numbers, paths, keys.
_VALUE = re.compile(r"\(HTTP \d+[^)]*\)|\.\.\.|'[^']*'|\"[^\"]*\"|\S*[\d/$<>{}=]\S*|\S+\.\S+")
_EDGES = " \t:;,.()"
_SHORT = ".{0,40}?"  # a value of a message, as a documented line shows it ("the pool", a user name)


def _norm(text: str) -> str:
    """Backticks dropped, blanks collapsed (kept at the ends: they part a message's words from a value)."""
    return re.sub(r"\s+", " ", text.replace("`", ""))


@functools.cache
def _trees(folder: Path) -> list[ast.Module]:
    return [ast.parse(path.read_text(), str(path)) for path in sorted(folder.rglob("*.py"))]


@functools.cache
def module_constants(folder: Path = REPO / "agent") -> dict[str, str]:
    """The strings agent/'s modules name (``INSTALL_PROGRAM = "install it, ..."``)."""
    return {
        target.id: node.value.value
        for tree in _trees(folder)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def message_templates(folder: Path = REPO / "agent") -> list[list[str]]:
    """Every string agent/ builds, as its literal parts between values: f-strings, str.format
    templates, `+` of strings and module constants (`f"...; {INSTALL_PROGRAM}"`) put together."""
    trees = _trees(folder)
    constants = module_constants(folder)

    def literal(node: ast.AST) -> Optional[str]:
        """The text with "\0" for each value; None for what is not a string."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return re.sub(r"\{[^{}]*\}", "\0", node.value)
        if isinstance(node, ast.Name) and node.id in constants:
            return re.sub(r"\{[^{}]*\}", "\0", constants[node.id])
        if isinstance(node, ast.JoinedStr):
            return "".join(
                part.value if isinstance(part, ast.Constant) else (literal(part.value) or "\0")
                for part in node.values
            )
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = literal(node.left), literal(node.right)
            return None if left is None and right is None else (left or "\0") + (right or "\0")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            return literal(node.func.value)
        return None

    found = []
    for tree in trees:
        for node in ast.walk(tree):
            text = literal(node)
            if text is not None and text.strip("\0 "):
                found.append([_norm(part) for part in text.split("\0")])
    return found


def _fits(piece: str, parts: list[str]) -> bool:
    """Whether ``piece`` is a stretch of a string made of these parts with short values between them."""
    if any(piece in part for part in parts):
        return True
    for i in range(len(parts) - 1):
        for j in range(i + 1, len(parts)):
            # The piece starts in part i (or at the value after it) and ends in part j (or before it).
            heads = "|".join(re.escape(parts[i][k:]) for k in range(len(parts[i])))
            tails = "|".join(re.escape(parts[j][:k]) for k in range(1, len(parts[j]) + 1))
            middle = "".join(f"({_SHORT}){re.escape(part)}" for part in parts[i + 1 : j])
            match = re.fullmatch(f"(?:{heads})?{middle}({_SHORT})(?:{tails})?", piece)
            # Most of it must be the message's own words, not what the values were taken to be.
            if match and sum(map(len, match.groups())) <= 0.5 * len(piece):
                return True
    return False


def _words(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z]{4,}", text.lower())}


def _clauses(piece: str) -> list[str]:
    """A line is often one message's text, then ': ', '; ', '. ' or a parenthesis, and another's (or a
    value): each clause is checked alone."""
    return [clause.strip(_EDGES) for clause in re.split(r"[:;.] |[()]", piece)]


def documented_lines(page: Path = TROUBLESHOOTING) -> list[tuple[int, str]]:
    """(line number, error line) of the first column of the page's tables, and of its list items that
    start with one (`- `the command uses {x} ...`: ...`)."""
    found = []
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        match = re.match(r"\|\s*`(.+?)`\s*(?:/[^|]*)?\||- `(.+?)`", line)
        if match:
            found.append((number, match.group(1) or match.group(2)))
    return found


def unmatched_pieces(line: str, templates: list[list[str]]) -> list[str]:
    """The clauses of three words or more of a documented line that no string of agent/ can make."""
    # The system's texts, and agent/'s own named strings (a cause, a hint), are values of a message here.
    known = [text for text in module_constants().values() if len(text) >= 12 and "{" not in text]
    for text in [*OUTSIDE_TEXTS, *sorted(known, key=len, reverse=True)]:
        line = line.replace(text, "\0")
    line = _VALUE.sub("\0", line.replace("`", ""))
    clauses = [clause for piece in line.split("\0") for clause in _clauses(_norm(piece))]
    indexed = [(parts, _words(" ".join(parts))) for parts in templates]
    unmatched = []
    for clause in clauses:
        words = _words(clause)
        if len(clause.split()) < 3:
            continue
        candidates = [parts for parts, known in indexed if len(words & known) * 2 >= len(words)]
        if not any(_fits(clause, parts) for parts in candidates):
            unmatched.append(clause)
    return unmatched


def test_every_error_line_of_troubleshooting_is_one_the_code_writes() -> None:
    templates = message_templates()
    lines = documented_lines()
    assert len(lines) > 40, f"{rel(TROUBLESHOOTING)}: its tables were not found"
    stale = [
        f"{rel(TROUBLESHOOTING)}:{number}: {piece!r} is in no message of agent/ (reworded?): {line}"
        for number, line in lines
        for piece in unmatched_pieces(line, templates)
    ]
    assert not stale, "\n".join(stale)


def test_the_troubleshooting_check_finds_a_reworded_line() -> None:
    templates = message_templates()
    # The line as agent/pools/local.py writes it, values shown as `...`, the system's own text, a hint.
    assert (
        unmatched_pieces("pool .../pool.db: no such pool file (create it with pilot.pyz init)", templates)
        == []
    )
    assert unmatched_pieces("tokens file x.txt: No such file or directory", templates) == []
    assert (
        unmatched_pieces(
            "pool ...: not a usable pool file: ...; check that server.path names a pool file", templates
        )
        == []
    )
    assert unmatched_pieces("pool .../pool.db: no such pool file; make one first", templates) == [
        "make one first"
    ]
    assert unmatched_pieces("pool ...: pool schema version 3; this pilot reads 2", templates) == [
        "this pilot reads"
    ]
