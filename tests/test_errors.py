"""agent/errors.py: each error's one line names what is wrong and where, and says what to do next."""

from __future__ import annotations

from agent.errors import IDS_FROM_FILE, DependencyError, DuplicateToken, ExitCode, NotSupported


def test_a_duplicate_id_says_where_ids_come_from_and_how_to_add_the_lines_again() -> None:
    err = DuplicateToken("inputs-1").explained(IDS_FROM_FILE.format(prefix="inputs"))
    assert str(err) == (
        "token 'inputs-1': already in the pool; nothing was added. Ids are inputs-<line number>, from the "
        "file's name and its line numbers: to add these lines as new tokens, give them other ids with "
        "--prefix (e.g. --prefix inputs-2)"
    )
    assert err.exit_code == ExitCode.POOL


def test_what_a_pool_cannot_do_says_what_works_on_every_pool() -> None:
    err = NotSupported("https://topos.example.org/4.1/pools/p/", "listing tokens")
    assert str(err) == (
        "pool https://topos.example.org/4.1/pools/p/: listing tokens is not supported by this kind of pool; "
        "`status`, `watch` and `tokens show ID` work on every pool"
    )


def test_a_dependency_error_carries_its_hint_after_what_was_not_added() -> None:
    plain = DependencyError("`after` makes a cycle", ["a -> b -> a"])
    assert str(plain) == "`after` makes a cycle: a -> b -> a; nothing was added"
    hinted = DependencyError("`after` names tokens in neither the pool nor the input", ["zz"], "add zz first")
    assert str(hinted).endswith("zz; nothing was added; add zz first")
    assert hinted.exit_code == ExitCode.CONFIG
