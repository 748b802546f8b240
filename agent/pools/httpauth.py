"""HTTP basic auth for the pool servers (CouchDB, ToPoS behind Apache): the header, and the one line for an
answer that refused us. The password is only ever revealed into the header, never into a message."""

from __future__ import annotations

import base64
from typing import Optional

from agent.config import Secret
from agent.errors import PoolError

# What to do about a refusal, said after it.
CHECK_CREDENTIALS = "check server.username and the password (server.password_file or $PILOT_SERVER_PASSWORD)"
ASK_ADMIN = "ask the server's admin for access (CouchDB: design documents need a database admin)"


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def auth_headers(where: str, username: Optional[str], password: Optional[Secret]) -> dict[str, str]:
    """The Authorization header for server.username, if set; PoolError when its password is missing."""
    if username is None:
        return {}
    if password is None:
        raise PoolError(
            where,
            f"no password for user {username!r}: set server.password_file or the environment variable "
            "PILOT_SERVER_PASSWORD",
        )
    return {"Authorization": basic_auth(username, password.reveal())}


def refusal(status: int, username: Optional[str]) -> Optional[str]:
    """What a 401 or 403 means for this user; None for other answers."""
    if status == 401 and username is None:
        return "the server wants a user name and password: set server.username and password_file"
    if status == 401:
        return f"the server refused the credentials of user {username!r}: {CHECK_CREDENTIALS}"
    if status == 403:
        return f"user {username or '(anonymous)'!r} is not allowed to do this: {ASK_ADMIN}"
    return None
