"""agent/pools/httpauth.py: the lines for an answer that refused us say what to do, and never the password."""

from __future__ import annotations

import pytest

from agent.config import Secret
from agent.errors import PoolError
from agent.pools.httpauth import auth_headers, refusal


def test_a_refused_password_says_what_to_check() -> None:
    assert refusal(401, "alice") == (
        "the server refused the credentials of user 'alice': check server.username and the password "
        "(server.password_file or $PILOT_SERVER_PASSWORD)"
    )


def test_no_user_name_says_which_keys_to_set() -> None:
    assert (
        refusal(401, None)
        == "the server wants a user name and password: set server.username and password_file"
    )


def test_a_forbidden_request_says_whom_to_ask() -> None:
    assert refusal(403, "alice") == (
        "user 'alice' is not allowed to do this: ask the server's admin for access "
        "(CouchDB: design documents need a database admin)"
    )
    assert refusal(403, None) is not None and "'(anonymous)'" in refusal(403, None)  # type: ignore[operator]


def test_other_answers_are_no_refusal() -> None:
    assert [refusal(status, "alice") for status in (200, 404, 500)] == [None, None, None]


def test_a_user_without_a_password_is_one_line_that_names_both_ways_to_give_it() -> None:
    with pytest.raises(
        PoolError, match=r"set server\.password_file or the environment variable PILOT_SERVER_PASSWORD"
    ):
        auth_headers("https://db.example.org/tokens", "alice", None)
    header = auth_headers("https://db.example.org/tokens", "alice", Secret("s3cret"))
    assert header["Authorization"].startswith("Basic ") and "s3cret" not in header["Authorization"]
