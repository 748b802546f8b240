"""TLS in front of a plain-HTTP server on 127.0.0.1, the way sites put nginx or CouchDB's own TLS before
the database: every connection is decrypted here and passed on to the real server, byte for byte.

The certificate (tests/servers/tls/cert.pem, with its key) is self-signed for IP 127.0.0.1 and made once
for these tests: no public CA vouches for it, so a client that verifies TLS refuses it unless told to
trust that file. Standard library only, like the rest of tests/servers.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
CERT = HERE / "tls" / "cert.pem"
KEY = HERE / "tls" / "key.pem"


class TLSProxy:
    """``start`` serves on a free port of 127.0.0.1; ``stop`` stops accepting and closes every connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(CERT, KEY)
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler, bind_and_activate=True)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="tls-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> TLSProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            self.sockets = []

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused our certificate: what the tests want to see
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            secure.close()  # the server behind is down: the client sees the connection close
            return
        with self.lock:
            self.sockets += [secure, upstream]
        threading.Thread(target=_pump, args=(upstream, secure), daemon=True).start()
        _pump(secure, upstream)


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes one way until either side closes, then close both."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.close()
