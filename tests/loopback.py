"""Tiny loopback servers for the answers no emulator gives on purpose.

``Scripted`` is a real HTTP/1.1 server (``http.server``, keep-alive) answering from a
function and recording every request; ``CannedServer`` writes raw bytes on a socket for
broken framing, resets and drips. Both listen on 127.0.0.1 and stop with the test.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


#: ``answer(request) -> (status, headers, body)``
Answer = Callable[[Request], "tuple[int, dict[str, str], bytes]"]


class Scripted:
    """An HTTP/1.1 server whose answers come from ``answer``; ``requests`` and ``connections`` count."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.connections = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                owner.connections += 1
                super().setup()

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                  self.rfile.read(length))
                owner.requests.append(request)
                status, headers, body = answer(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if status not in (204, 304) and "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def json_answer(body: bytes, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, body


class CannedServer:
    """Reads one HTTP request per connection and lets ``reply(conn)`` write whatever it likes.

    ``reply=None`` accepts nothing (the kernel backlog still completes the connect).
    """

    def __init__(self, reply: Callable[[socket.socket], None] | None) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[bytes] = []
        self._reply = reply
        self._conns: list[socket.socket] = []
        if reply is not None:
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data)
            assert self._reply is not None
            self._reply(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._sock.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def make(answer: Callable[[Request], tuple[int, dict[str, str], bytes]]) -> Scripted:
        servers.append(Scripted(answer))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def canned() -> Iterator[Callable[..., CannedServer]]:
    servers: list[CannedServer] = []

    def make(reply: Callable[[socket.socket], None] | None) -> CannedServer:
        servers.append(CannedServer(reply))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
