"""A file server on 127.0.0.1 for the cache tests and benchmark. Standard library only.

It counts every request, answers Range requests (with ETag and If-Range), and on purpose can throttle a
transfer, stall it, break the connection partway, or leave out Content-Length. In a test::

    with FileServer() as server:
        url = server.serve("/ref.bin", data, Rules(rate=1_000_000))
        ...
        assert len(server.gets("/ref.bin")) == 1

As a process (the benchmark): ``python tests/httpfiles.py /big.bin=/tmp/big.bin`` prints its base URL,
serves until killed, and answers ``GET /_stats`` with the requests as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Union

PIECE = 64 * 1024
STALL_LIMIT = 120.0  # seconds a stalled response waits before it gives up on its own


@dataclass(frozen=True)
class Rules:
    """How one path is served."""

    ranges: bool = True  # answer Range with 206; False: always the whole file with 200
    rate: Optional[float] = None  # bytes per second
    break_after: Optional[int] = None  # drop the connection after this many bytes of the body
    stall_after: Optional[int] = None  # or stop sending after this many bytes and hold the connection
    faults: int = 1  # how many responses break or stall; the later ones are whole
    length: bool = True  # send Content-Length (False: the body ends when the connection closes)


@dataclass
class Request:
    method: str
    path: str
    range: Optional[str]
    status: int = 0
    start: int = 0
    sent: int = 0  # body bytes written
    done: bool = False


@dataclass
class _Served:
    source: Union[bytes, Path]
    rules: Rules
    etag: str
    size: int
    faulted: int = 0


@dataclass
class _State:
    files: dict[str, _Served] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        if self.path == "/_stats":
            with self.state.lock:
                data = json.dumps([asdict(request) for request in self.state.requests]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        request = Request(self.command, self.path, self.headers.get("Range"))
        with self.state.lock:
            self.state.requests.append(request)
            served = self.state.files.get(self.path)
        try:
            if served is None:
                request.status = 404
                self.send_error(404)
                return
            start = self._start(served)
            if start is not None and start >= served.size:
                request.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{served.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            request.start = start or 0
            request.status = 206 if start is not None else 200
            self.send_response(request.status)
            self.send_header("ETag", served.etag)
            self.send_header("Accept-Ranges", "bytes" if served.rules.ranges else "none")
            if start is not None:
                self.send_header("Content-Range", f"bytes {start}-{served.size - 1}/{served.size}")
            if served.rules.length:
                self.send_header("Content-Length", str(served.size - request.start))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if body:
                self._send(served, request)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            request.done = True

    def _start(self, served: _Served) -> Optional[int]:
        """The first byte asked for, or None for the whole file."""
        wanted = self.headers.get("Range")
        if not wanted or not served.rules.ranges:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != served.etag:
            return None
        match = re.fullmatch(r"bytes=(\d+)-", wanted.strip())
        return int(match.group(1)) if match else None

    def _send(self, served: _Served, request: Request) -> None:
        rules = served.rules
        with self.state.lock:
            fault = served.faulted < rules.faults and (rules.break_after or rules.stall_after) is not None
            if fault:
                served.faulted += 1
        limit = (rules.break_after if rules.break_after is not None else rules.stall_after) if fault else None
        position, end = request.start, served.size
        began = time.monotonic()
        if isinstance(served.source, Path) and rules.rate is None and limit is None:
            with served.source.open("rb") as source:
                request.sent = self.connection.sendfile(source, position, end - position)
            return
        while position < end:
            piece = min(PIECE, end - position)
            if limit is not None:
                piece = min(piece, max(0, request.start + limit - position))
                if piece == 0:
                    self._fault(rules)
                    return
            self.wfile.write(_read(served.source, position, piece))
            position += piece
            request.sent += piece
            if rules.rate:
                ahead = began + request.sent / rules.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def _fault(self, rules: Rules) -> None:
        self.close_connection = True
        if rules.stall_after is not None and rules.break_after is None:
            self.state.release.wait(STALL_LIMIT)
        self.connection.shutdown(socket.SHUT_RDWR)


def _read(source: Union[bytes, Path], position: int, size: int) -> bytes:
    if isinstance(source, bytes):
        return source[position : position + size]
    with source.open("rb") as opened:
        opened.seek(position)
        return opened.read(size)


class FileServer:
    """The server in a thread of this process; ``with`` starts and stops it."""

    def __init__(self) -> None:
        self.state = _State()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="httpfiles", daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.state.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def serve(self, path: str, source: Union[bytes, Path], rules: Optional[Rules] = None) -> str:
        """Serve ``source`` at ``path`` (replacing what was there); returns its URL."""
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        tag = hashlib.sha256(f"{path}:{size}:{time.monotonic_ns()}".encode()).hexdigest()[:16]
        with self.state.lock:
            self.state.files[path] = _Served(source, rules or Rules(), f'"{tag}"', size)
        return self.url + path

    def requests(self, path: Optional[str] = None) -> list[Request]:
        with self.state.lock:
            return [r for r in self.state.requests if path is None or r.path == path]

    def gets(self, path: str) -> list[Request]:
        return [r for r in self.requests(path) if r.method == "GET"]

    def sent(self, path: str) -> int:
        return sum(r.sent for r in self.requests(path))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="+", help="URLPATH=FILE, e.g. /big.bin=/tmp/big.bin")
    parser.add_argument("--rate", type=float, help="bytes per second for every file")
    args = parser.parse_args()
    server = FileServer()
    for item in args.files:
        path, _, file = item.partition("=")
        server.serve(path, Path(file), Rules(rate=args.rate))
    print(server.url, flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    sys.exit(main())
