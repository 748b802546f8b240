from __future__ import annotations

from pathlib import Path

import pytest
from conftest import to_toml

from agent.config import Secret, expand_path, load
from agent.errors import ConfigError
from agent.resources import NodeSpec, Request

MINIMAL = {"task": {"command": ["python3", "run.py", "{input}"]}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), environ or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, to_toml(MINIMAL)), {"TMPDIR": "/scratch/job1"})
    assert config.server.backend == "local"
    assert config.server.local is not None and config.server.local.path == tmp_path / "pool.db"
    assert config.server.lease == 600
    assert config.pilot.slots == 1 and config.pilot.max_tasks == 0
    assert config.pilot.workdir == Path("/scratch/job1/pilot")
    assert config.task.timeout is None and config.task.max_attempts == 1
    assert config.task.command_text == ("python3", "run.py", "{input}")


def test_string_command_is_split_like_a_shell_but_kept_as_argv(tmp_path: Path) -> None:
    config = load(write(tmp_path, "[task]\ncommand = \"python3 'my script.py' {input}\"\n"), {})
    assert config.task.command_text == ("python3", "my script.py", "{input}")


def test_paths_expand_home_variables_and_defaults(tmp_path: Path) -> None:
    env = {"HOME": "/home/alice", "SCRATCH": "/scratch"}
    assert expand_path("~/pool.db", tmp_path, env) == Path("/home/alice/pool.db")
    assert expand_path("$SCRATCH/w", tmp_path, env) == Path("/scratch/w")
    assert expand_path("${NOPE:-/fallback}/w", tmp_path, env) == Path("/fallback/w")
    assert expand_path("$TMPDIR/w", tmp_path, env) == Path("/tmp/w")
    assert expand_path("rel/pool.db", tmp_path, env) == tmp_path / "rel/pool.db"


def test_broken_toml_names_line_and_column(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[task]\ncommand = ["a"]\ntimeout = = "1h"\n[pilot]\n')
    assert message.startswith(f"{tmp_path / 'site.toml'}: invalid TOML:")
    assert "line" in message and "column" in message


def test_unknown_key_is_named_with_its_table(tmp_path: Path) -> None:
    message = error_of(tmp_path, to_toml({**MINIMAL, "pilot": {"slot": 2}}))
    assert "pilot.slot: unknown key" in message and "slots" in message


def test_unknown_table_is_named(tmp_path: Path) -> None:
    assert "piolt: unknown key" in error_of(tmp_path, to_toml({**MINIMAL, "piolt": {"slots": 2}}))


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"pilot": {"slots": "2"}}, "pilot.slots: expected an integer >= 1, got a string"),
        ({"pilot": {"slots": 0}}, "pilot.slots: expected an integer >= 1, got 0"),
        ({"pilot": {"slots": True}}, "pilot.slots: expected an integer >= 1, got a boolean"),
        ({"task": {"command": ["a"], "timeout": 3600}}, "task.timeout: expected a duration"),
        ({"task": {"command": ["a"], "timeout": "1 hour"}}, 'task.timeout: expected a duration like "90s"'),
        ({"task": {"command": ["a"], "env": {"X": 1}}}, "task.env.X: expected a string, got an integer"),
        ({"task": {"command": ["a", 3]}}, "task.command: element 1: expected a string"),
        ({"server": {"backend": "redis"}}, "server.backend: expected one of 'local', 'couchdb'"),
        ({"pilot": {"keep_workdirs": "sometimes"}}, "pilot.keep_workdirs: expected one of"),
        ({"pilot": {"kill_leftovers_after": "later"}}, "pilot.kill_leftovers_after: expected a duration"),
    ],
)
def test_wrong_types_name_the_key_and_what_was_expected(
    tmp_path: Path, sections: dict, expected: str
) -> None:
    assert expected in error_of(tmp_path, to_toml({**MINIMAL, **sections}))


@pytest.mark.parametrize("command", [[], [""], "", "   "])
def test_empty_command_is_refused(tmp_path: Path, command: object) -> None:
    assert "task.command: is empty" in error_of(tmp_path, to_toml({"task": {"command": command}}))


def test_missing_command_is_refused(tmp_path: Path) -> None:
    assert "task.command: missing; expected a list of strings" in error_of(tmp_path, to_toml({"pilot": {}}))


def test_placeholder_errors_are_found_before_anything_runs(tmp_path: Path) -> None:
    assert "task.command: bad placeholder" in error_of(
        tmp_path, to_toml({"task": {"command": ["a", "{in put}"]}})
    )
    assert "names no entry in [cache.files]" in error_of(
        tmp_path, to_toml({"task": {"command": ["{cache.x}"]}})
    )
    assert "is not one of" in error_of(tmp_path, to_toml({"task": {"command": ["{pilot.home}"]}}))


def test_unset_variable_in_a_path_is_named(tmp_path: Path) -> None:
    message = error_of(tmp_path, to_toml({**MINIMAL, "pilot": {"workdir": "$SCRATCH/w"}}))
    assert "pilot.workdir: $SCRATCH is not set" in message


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"site\.toml: no such file"):
        load(tmp_path / "site.toml", {})


def with_password_file(tmp_path: Path, mode: int) -> str:
    """site.toml text for a CouchDB pool whose password file holds hunter2, with this mode."""
    secret = tmp_path / "password"
    secret.write_text("hunter2\n")
    secret.chmod(mode)
    server = {
        "backend": "couchdb",
        "url": "http://127.0.0.1:5984",
        "database": "t",
        "password_file": str(secret),
    }
    return to_toml({**MINIMAL, "server": server})


def test_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, with_password_file(tmp_path, 0o644))
    assert "readable by group or others" in message and "chmod 600" in message
    assert "hunter2" not in message


def test_password_comes_from_a_private_file_and_never_shows(tmp_path: Path) -> None:
    config = load(write(tmp_path, with_password_file(tmp_path, 0o600)), {})
    assert config.server.couchdb is not None
    assert config.server.couchdb.password == Secret("hunter2")
    assert "hunter2" not in repr(config)


def test_credentials_in_the_url_are_refused(tmp_path: Path) -> None:
    server = {"backend": "couchdb", "url": "https://alice:pw@db.example.org", "database": "t"}
    message = error_of(tmp_path, to_toml({**MINIMAL, "server": server}))
    assert (
        "server.url: put the user name in server.username" in message
        and "pw" not in message.split(": ", 2)[2]
    )


def test_walltime_override_wins(tmp_path: Path) -> None:
    path = write(tmp_path, to_toml({**MINIMAL, "walltime": {"limit": "10h"}}))
    assert load(path, {}).walltime.limit == 36000
    assert load(path, {}, walltime_override=60).walltime.limit == 60
    assert load(write(tmp_path, to_toml(MINIMAL)), {}).walltime.limit is None


def test_resource_keys_default_to_auto_and_one_core_per_task(tmp_path: Path) -> None:
    config = load(write(tmp_path, to_toml(MINIMAL)), {})
    assert config.pilot.node == NodeSpec(cores=None, gpus=None, memory=None, bind=True)
    assert config.task.request == Request(1, 1, 0, 0) and config.task.enforce_memory is False


def test_resource_keys_declared(tmp_path: Path) -> None:
    sections = {
        **MINIMAL,
        "pilot": {"cores": 8, "gpus": ["0", 1], "memory": "240GB", "bind": False},
        "task": {**MINIMAL["task"], "cores": "4-16", "gpus": 1, "memory": "2GiB", "enforce_memory": True},
    }
    config = load(write(tmp_path, to_toml(sections)), {})
    assert config.pilot.node == NodeSpec(cores=8, gpus=("0", "1"), memory=240 * 10**9, bind=False)
    assert config.task.request == Request(4, 16, 1, 2 * 2**30) and config.task.enforce_memory
    assert load(write(tmp_path, to_toml({**MINIMAL, "pilot": {"gpus": 0}})), {}).pilot.node.gpus == ()


@pytest.mark.parametrize(
    ("section", "values", "problem"),
    [
        ("pilot", {"cores": 0}, 'pilot.cores: expected "auto" or a number of cores >= 1, got 0'),
        ("pilot", {"cores": "many"}, "pilot.cores: expected \"auto\" or a number of cores >= 1, got 'many'"),
        ("pilot", {"gpus": ["0", "0"]}, "pilot.gpus: a device id is listed twice"),
        ("pilot", {"memory": "lots"}, 'pilot.memory: expected "auto" or expected a size'),
        ("task", {"cores": "16-4"}, "task.cores: expected a range of at least 1 core, low to high"),
        ("task", {"gpus": -1}, "task.gpus: expected a GPU count >= 0, got -1"),
    ],
)
def test_wrong_resource_keys_name_the_key(tmp_path: Path, section: str, values: dict, problem: str) -> None:
    sections = {**MINIMAL, section: {**MINIMAL.get(section, {}), **values}}
    assert problem in error_of(tmp_path, to_toml(sections))


def test_start_jitter_is_a_duration_off_by_default(tmp_path: Path) -> None:
    assert load(write(tmp_path, to_toml(MINIMAL)), {}).pilot.start_jitter == 0.0
    jittered = {**MINIMAL, "pilot": {"start_jitter": "2m"}}
    assert load(write(tmp_path, to_toml(jittered)), {}).pilot.start_jitter == 120.0
    assert "pilot.start_jitter" in error_of(tmp_path, to_toml({**MINIMAL, "pilot": {"start_jitter": "soon"}}))
