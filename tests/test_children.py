"""Reading the tokens a task adds ($PILOT_NEW_TOKENS): ids, checks, and what a malformed line does."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.children import collect, read
from agent.errors import ChildrenError, TokenError
from agent.token import NewToken, Outcome, Report, Result, State, Token


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "new-tokens.jsonl"
    path.write_text(text)
    return path


def test_ids_are_the_parents_and_the_line_number_unless_given(tmp_path: Path) -> None:
    path = write(tmp_path, '{"input": 1}\n\n{"input": 2, "id": "named"}\n{"after": ["p.1", "named"]}\n')
    assert read(path, "p") == (
        NewToken("p.1", {"input": 1}),
        NewToken("named", {"input": 2}),
        NewToken("p.4", {"after": ["p.1", "named"]}),
    )


def test_no_file_means_no_children(tmp_path: Path) -> None:
    assert read(tmp_path / "new-tokens.jsonl", "p") == ()


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ('{"a": 1}\n{"a": \n', 2, "not valid JSON"),
        ("[1, 2]\n", 1, "expected a JSON object, got list"),
        ('{"id": "_x"}\n', 1, "starts with '_'"),
        ('{"_rev": 1}\n', 1, "field '_rev' starts with '_'"),
        ('{"after": "p.2"}\n{}\n', 1, "`after` must be a list of token ids"),
        ('{"id": "a"}\n{"id": "a"}\n', 2, "id 'a' is on line 1 too"),
        ('{"id": "a", "after": ["b"]}\n{"id": "b", "after": ["a"]}\n', 1, "cycle"),
        ('{"pool": 3}\n', 1, "`pool` must be the name of a pool"),
    ],
)
def test_a_malformed_line_is_named_with_file_and_line(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ChildrenError) as caught:
        read(path, "p")
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert problem in str(caught.value)
    assert str(caught.value).endswith("no tokens were added")


def test_a_malformed_file_fails_a_done_attempt_and_a_failed_task_adds_none(tmp_path: Path) -> None:
    write(tmp_path, "oops\n")
    token = Token("p", {})
    done = Result(Outcome.DONE, "exit code 0", 1.0, 2.0, 0)
    result, new = collect(done, str(tmp_path), token)
    assert (result.outcome, new) == (Outcome.FAILED, ())
    assert (
        result.reason.startswith("the task succeeded but its new tokens: ")
        and ":1: not valid JSON" in result.reason
    )
    write(tmp_path, '{"input": 1}\n')
    failed = Result(Outcome.FAILED, "exit code 3", 1.0, 2.0, 3)
    assert collect(failed, str(tmp_path), token) == (failed, ())
    assert collect(done, str(tmp_path), token) == (done, (NewToken("p.1", {"input": 1}),))


def test_refused_children_make_a_charged_failure_without_them() -> None:
    from agent.children import refused

    token = Token("p", {}, failures=0)
    report = Report(
        Result(Outcome.DONE, "exit code 0", 1.0, 2.0, 0), State.DONE, 0, children=(NewToken("x", {}),)
    )
    instead = refused(token, report, TokenError("x", "already in the pool; nothing was added"), 2)
    assert (instead.state, instead.failures, instead.children) == (State.TODO, 1, ())
    assert "token 'x': already in the pool" in instead.result.reason
