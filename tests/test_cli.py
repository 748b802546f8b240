"""The commands of pilot.pyz, and bad input: one clear line, the documented exit code, the pool untouched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Site, local_config, one_line_error, to_toml

from agent import __version__
from agent.errors import ID_FROM_JSON, IDS_FROM_RANGE, ExitCode


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pool_with_tokens(site: Site) -> Path:
    site.write(local_config(site.folder, ["/bin/true"]))
    assert site.run("tokens", "add", "--range", "5").returncode == 0
    return site.folder / "pool.db"


def test_version(site: Site) -> None:
    result = site.run("--version", config=False)
    assert result.returncode == 0 and result.stdout.strip() == f"pilot, version {__version__}"


def test_the_quick_version_of_the_zipapp_says_what_click_says(site: Site) -> None:
    """pilot.pyz answers a lone --version before importing click (build/pilot_boot.py)."""
    quick = site.run("--version", config=False)
    through_click = subprocess.run(
        [sys.executable, "-m", "agent", "--version"], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert through_click.returncode == 0 and quick.stdout == through_click.stdout


BAD_CONFIGS = {
    "broken TOML": ("[task\ncommand = 1\n", "invalid TOML"),
    "unknown key": (to_toml({"task": {"command": ["x"], "comand": ["y"]}}), "task.comand: unknown key"),
    "wrong type": (
        to_toml({"task": {"command": ["x"]}, "pilot": {"slots": "two"}}),
        "pilot.slots: expected an",
    ),
    "empty command": (to_toml({"task": {"command": []}}), "task.command: is empty"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_stops_before_claiming_with_one_line(
    site: Site, pool_with_tokens: Path, case: str
) -> None:
    text, expected = BAD_CONFIGS[case]
    before = digest(pool_with_tokens)
    site.config.write_text(text)
    line = one_line_error(site.run(), ExitCode.CONFIG)
    assert str(site.config) in line and expected in line
    assert digest(pool_with_tokens) == before


def test_corrupt_pool_file_is_one_line_and_left_untouched(site: Site) -> None:
    pool = site.folder / "pool.db"
    pool.write_bytes(b"\x00garbage" * 1000)
    before = digest(pool)
    site.write(local_config(site.folder, ["/bin/true"]))
    line = one_line_error(site.run(), ExitCode.POOL)
    assert str(pool) in line and "not a usable pool file" in line
    assert digest(pool) == before


def test_unreadable_pool_path_is_one_line(site: Site) -> None:
    (site.folder / "pool.db").mkdir()  # root reads any file, but nobody opens a folder as a database
    site.write(local_config(site.folder, ["/bin/true"]))
    line = one_line_error(site.run("status"), ExitCode.POOL)
    assert "pool.db" in line


def test_missing_pool_file_says_how_to_create_it(site: Site) -> None:
    site.write(local_config(site.folder, ["/bin/true"]))
    line = one_line_error(site.run(), ExitCode.POOL)
    assert "no such pool file" in line and "tokens add" in line
    assert not (site.folder / "pool.db").exists()


def test_missing_lines_file_is_one_line(site: Site, pool_with_tokens: Path) -> None:
    before = digest(pool_with_tokens)
    line = one_line_error(site.run("tokens", "add", "--lines", "nope.txt"), ExitCode.CONFIG)
    assert "tokens file nope.txt" in line and "No such file" in line
    assert digest(pool_with_tokens) == before


def test_bad_jsonl_line_names_file_and_line_and_adds_nothing(site: Site, pool_with_tokens: Path) -> None:
    (site.folder / "t.jsonl").write_text('{"input": 1}\n[1, 2]\n')
    line = one_line_error(site.run("tokens", "add", "--jsonl", "t.jsonl"), ExitCode.CONFIG)
    assert "t.jsonl:2: expected a JSON object" in line
    assert site.status()["total"] == 5


def test_adding_the_same_tokens_twice_is_refused(site: Site, pool_with_tokens: Path) -> None:
    line = one_line_error(site.run("tokens", "add", "--range", "5"), ExitCode.POOL)
    assert "token 'range-0': already in the pool; nothing was added" in line
    assert IDS_FROM_RANGE.format(prefix="range") in line


def test_next_weeks_file_of_the_same_name_says_ids_come_from_name_and_line(
    site: Site, pool_with_tokens: Path
) -> None:
    (site.folder / "inputs.txt").write_text("week 1, a\nweek 1, b\n")
    assert site.run("tokens", "add", "--lines", "inputs.txt").returncode == 0
    (site.folder / "inputs.txt").write_text("week 2, a\nweek 2, b\n")
    line = one_line_error(site.run("tokens", "add", "--lines", "inputs.txt"), ExitCode.POOL)
    assert "token 'inputs-1': already in the pool; nothing was added. Ids are inputs-<line number>" in line
    assert "--prefix inputs-2" in line
    added = site.run("tokens", "add", "--lines", "inputs.txt", "--prefix", "inputs-2")  # as the line says
    assert added.returncode == 0, added.stderr
    assert site.token("inputs-2-1")["fields"] == {"input": "week 2, a"}
    assert site.status()["total"] == 9


def test_a_json_lines_own_duplicate_id_is_named_as_such_with_its_line(
    site: Site, pool_with_tokens: Path
) -> None:
    (site.folder / "t.jsonl").write_text('{"id": "new-1", "input": 0}\n{"id": "range-3", "input": 1}\n')
    line = one_line_error(site.run("tokens", "add", "--jsonl", "t.jsonl"), ExitCode.POOL)
    hint = ID_FROM_JSON.format(line=" (line 2 of t.jsonl)")
    assert line.endswith(f"token 'range-3': already in the pool; nothing was added. {hint}"), line


def test_an_id_given_twice_by_one_file_names_both_lines_not_the_pool(
    site: Site, pool_with_tokens: Path
) -> None:
    """The second "a" fails the add, but "a" was never in the pool: the file is what to fix, and the two
    lines say where (line 3's id is its own number, t-3, which line 5 gives again)."""
    before = site.status()
    rows = ['{"id": "a", "x": 1}', '{"id": "b"}', '{"x": 3}', '{"id": "a", "x": 4}', '{"id": "t-3"}']
    (site.folder / "t.jsonl").write_text("\n".join(rows) + "\n")
    line = one_line_error(site.run("tokens", "add", "--jsonl", "t.jsonl"), ExitCode.POOL)
    assert "token 'a': given twice in t.jsonl, on lines 1 and 4; nothing was added." in line, line
    assert "already in the pool" not in line
    assert site.status() == before
    (site.folder / "t.jsonl").write_text("\n".join([*rows[:3], '{"id": "c"}', rows[4]]) + "\n")
    line = one_line_error(site.run("tokens", "add", "--jsonl", "t.jsonl"), ExitCode.POOL)
    assert "token 't-3': given twice in t.jsonl, on lines 3 and 5; nothing was added." in line, line
    piped = subprocess.run(
        [*site.argv("tokens", "add", "--jsonl", "-"), "--config", str(site.config)],
        input="\n".join(rows) + "\n",
        check=False,
        capture_output=True,
        text=True,
        env=site.env,
        cwd=site.folder,
    )  # stdin cannot be read again for the lines: the pool, the add undone, says the input gave it twice
    line = one_line_error(piped, ExitCode.POOL)
    assert "token 'a': given twice in the input; nothing was added." in line, line
    assert site.status() == before


def test_no_config_is_a_usage_error(site: Site) -> None:
    line = one_line_error(site.run(config=False), ExitCode.CONFIG)
    assert "--config" in line


def test_status_json_has_the_counts(site: Site, pool_with_tokens: Path) -> None:
    result = site.run("status", "--json")
    shown = json.loads(result.stdout)
    assert {key: shown[key] for key in ("todo", "locked", "done", "error", "waiting", "total")} == {
        "todo": 5,
        "locked": 0,
        "done": 0,
        "error": 0,
        "waiting": 0,
        "total": 5,
    }
    text = site.run("status").stdout
    assert "todo" in text and "5" in text


def test_reset_puts_errors_back_with_their_history(site: Site) -> None:
    site.write(local_config(site.folder, ["/bin/false"]))
    assert site.run("tokens", "add", "--range", "2").returncode == 0
    assert site.run().returncode == 0
    assert site.status()["error"] == 2
    assert one_line_error(site.run("reset"), ExitCode.CONFIG)
    result = site.run("reset", "--errors")
    assert result.returncode == 0 and result.stdout.strip() == "2 tokens back to todo"
    token = site.token("range-0")
    assert token["state"] == "todo" and token["failures"] == 0 and len(token["attempts"]) == 1


def test_check_reaches_the_pool_and_finds_the_program(site: Site, pool_with_tokens: Path) -> None:
    result = site.run("check")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "program /bin/true" in result.stdout
    site.write(local_config(site.folder, ["no-such-program-here"]))
    line = one_line_error(site.run("check"), ExitCode.CONFIG)
    assert "no-such-program-here" in line


def test_tokens_show_names_a_missing_token(site: Site, pool_with_tokens: Path) -> None:
    line = one_line_error(site.run("tokens", "show", "nope"), ExitCode.POOL)
    assert "token 'nope'" in line
