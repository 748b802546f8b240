"""HTTP for the pool servers and the cache: the only module that imports urllib3.

Every request has an explicit timeout. Requests that are safe to repeat are retried on connection errors
and 5xx with capped, jittered exponential backoff (urllib3's Retry, honouring Retry-After up to the cap);
a request that may have reached the server and is not idempotent is not retried blindly. TLS is verified
unless the site explicitly says otherwise. Credentials travel in headers and never appear in messages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError
from urllib3.util import Retry, Timeout

from agent import __version__
from agent.errors import CERTIFICATE_FAILED, HOST_NOT_FOUND, ServerUnreachable

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})  # 429: too many requests, a busy server
USER_AGENT = f"pilot/{__version__}"


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data)


RETRY_AFTER_MAX = 300.0  # seconds: the most a Retry-After header may hold back a pilot's next try


def retry_after(headers: Mapping[str, str]) -> Optional[float]:
    """The seconds a Retry-After header asks to wait (a number; an HTTP date is taken as absent),
    capped at RETRY_AFTER_MAX; None without one."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None or seconds < 0 else min(seconds, RETRY_AFTER_MAX)


def redact(url: str) -> str:
    """The URL without user:password@, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class HttpClient:
    """A connection pool with one site's TLS settings, timeouts and retry policy."""

    def __init__(
        self,
        *,
        timeout: float,
        retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        ca_bundle: Optional[Path] = None,
        verify_tls: bool = True,
        headers: Optional[Mapping[str, str]] = None,
        maxsize: int = 4,
    ) -> None:
        self.timeout = Timeout(connect=min(timeout, 10.0), read=timeout)
        self.retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            allowed_methods=IDEMPOTENT,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff,
            backoff_max=backoff_max,
            backoff_jitter=backoff / 2,
            respect_retry_after_header=True,
            retry_after_max=int(backoff_max),  # a server may ask for hours: we wait at most this long
            raise_on_status=False,
            raise_on_redirect=False,
        )
        if not verify_tls:
            log.warning("TLS certificate verification is OFF (server.tls_verify = false)")
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self.manager = urllib3.PoolManager(
            num_pools=4,
            maxsize=maxsize,
            cert_reqs="CERT_REQUIRED" if verify_tls else "CERT_NONE",
            ca_certs=str(ca_bundle) if ca_bundle else None,
            headers=self.headers,
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        body: Optional[bytes] = None,
        json_body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        retry: Optional[bool] = None,
        timeout: Optional[float] = None,
    ) -> Response:
        """One request, read to the end. ``retry`` defaults to retrying only idempotent methods.

        Raises ServerUnreachable when no answer came (connection refused, timeout, 5xx after retries is
        returned as a Response, not raised, so callers can read CouchDB's error body).
        """
        all_headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            all_headers.setdefault("Content-Type", "application/json")
        repeatable = retry if retry is not None else method in IDEMPOTENT
        retries = self.retry if repeatable else Retry(0, read=False)
        if repeatable and method not in IDEMPOTENT:
            retries = retries.new(allowed_methods=None)  # the caller vouches that this one is safe to repeat
        limit = self.timeout if timeout is None else Timeout(connect=min(timeout, 10.0), read=timeout)
        try:
            response = self.manager.request(
                method,
                url,
                body=body,
                headers={**self.headers, **all_headers},
                retries=retries,
                timeout=limit,
                preload_content=True,
                redirect=False,
            )
        except (MaxRetryError, ProtocolError, HTTPError, OSError) as err:
            raise _unreachable(url, err) from None
        return Response(response.status, dict(response.headers), response.data)

    @contextmanager
    def stream(self, url: str, *, headers: Optional[Mapping[str, str]] = None) -> Iterator[Any]:
        """A GET whose body is read in chunks by the caller (``response.stream(n)``); released on exit."""
        try:
            response = self.manager.request(
                "GET",
                url,
                headers={**self.headers, **(headers or {})},
                retries=self.retry,
                timeout=self.timeout,
                preload_content=False,
                redirect=True,
            )
        except (MaxRetryError, ProtocolError, HTTPError, OSError) as err:
            raise _unreachable(url, err) from None
        try:
            yield response
        finally:
            if not response.closed:
                response.close()  # a body left unread must not go back to the pool with its connection
            response.release_conn()

    def close(self) -> None:
        self.manager.clear()


def chunks(response: Any, url: str, size: int) -> Iterator[bytes]:
    """The body of a ``stream`` response as it is on the wire (no decoding), ``size`` bytes at a time.

    A connection that breaks, stalls past the read timeout or ends before Content-Length is
    ServerUnreachable, so callers can resume without importing urllib3.
    """
    try:
        while True:
            data = response.read(size, decode_content=False)
            if not data:
                return
            yield data
    except (HTTPError, OSError) as err:
        raise _unreachable(url, err) from None


def _unreachable(url: str, err: BaseException) -> ServerUnreachable:
    return ServerUnreachable(redact(url), _reason(err))


def _reason(err: BaseException) -> str:
    """A short cause without urllib3's object reprs: 'connection refused', 'read timed out', ..."""
    cause = getattr(err, "reason", None) or err
    text = str(cause)
    for marker, short in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Name or service not known", HOST_NOT_FOUND),
        ("CERTIFICATE_VERIFY_FAILED", CERTIFICATE_FAILED),
        ("Connection reset", "connection reset"),
        ("Remote end closed", "connection closed by the server"),
        ("IncompleteRead", "connection closed before the end of the body"),
    ):
        if marker in text:
            return short
    return text.split(": ", 1)[-1][:200]
