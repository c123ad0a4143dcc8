"""A lean keep-alive HTTP/1.1 transport for the hot calls to one ComfyUI server.

Measured here, a call through requests costs about 1 ms of CPU (session merging, urllib3's
pool, header parsing through the ``email`` package). The dispatcher makes two calls per
frame (``POST /prompt``, ``GET /view``) and the monitor one per server per second, so that
overhead alone was more than the per-frame budget. This transport does only what those
calls need: a few keep-alive sockets per server, Content-Length, chunked and
close-delimited bodies, TLS, and a total time budget per answer, so a server that drips a
byte at a time cannot hold a caller past its timeout.

``ComfyClient`` uses it when no proxy applies and translates its errors exactly as it
translates requests' ones; nothing else in the package talks to it.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from typing import Callable, Mapping
from urllib.parse import urlsplit

#: Idle sockets kept per server (two of our prompts at a time, plus the monitor and polls).
IDLE_CONNECTIONS = 8
_RECV = 256 * 1024
_HEAD_CAP = 64 * 1024


class ConnectFailed(OSError):
    """The TCP (or TLS) connection could not be made; ``__cause__`` says why."""


class _Connection:
    """One socket: send a request, read its answer within the caller's deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.deadline = 0.0
        self.reusable = True

    def stale(self) -> bool:
        """An idle keep-alive socket that is readable was closed (or garbled) by the server."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable) or bool(self.buf)

    def exchange(self, request: bytes, cap: int, sink: Callable[[bytes], None] | None,
                 deadline: float) -> tuple[int, bytes]:
        self.deadline = deadline
        self.sock.sendall(request)
        head = self._read_until(b"\r\n\r\n", _HEAD_CAP)
        status_line, _, header_block = head.partition(b"\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise http.client.BadStatusLine(status_line.decode("latin-1", "replace")[:80])
        fields = {}
        for line in header_block.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                fields[name.strip().lower()] = value.strip().lower()
        status = int(parts[1])
        if status >= 400:
            sink = None  # an error page is read (capped), never written to the caller's file
            cap = min(cap, _HEAD_CAP)
        if b"chunked" in fields.get(b"transfer-encoding", b""):
            body = self._read_chunked(cap, sink)
        elif fields.get(b"content-length", b"").isdigit():
            body = self._read_length(int(fields[b"content-length"]), cap, sink)
        else:
            body = self._read_to_close(cap, sink)
        if fields.get(b"connection") == b"close" or parts[0] == b"HTTP/1.0":
            self.reusable = False
        return status, body

    # -- reading ------------------------------------------------------------------------

    def _recv(self) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("the answer was still arriving when the time budget ran out")
        self.sock.settimeout(min(remaining, self.sock.gettimeout() or remaining))
        data = self.sock.recv(_RECV)
        if not data:
            raise http.client.RemoteDisconnected("the server closed the connection")
        return data

    def _read_until(self, marker: bytes, cap: int) -> bytes:
        while marker not in self.buf:
            if len(self.buf) > cap:
                raise http.client.LineTooLong("response head")
            self.buf += self._recv()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes: what is buffered, else one socket read."""
        if not self.buf:
            self.buf = self._recv()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _read_length(self, length: int, cap: int, sink: Callable[[bytes], None] | None) -> bytes:
        if length > cap:
            self.reusable = False
            raise AnswerTooLarge(length)
        out = bytearray()
        left = length
        while left:
            try:
                data = self._take(left)
            except http.client.RemoteDisconnected as err:
                raise http.client.IncompleteRead(bytes(out), left) from err
            left -= len(data)
            if sink is not None:
                sink(data)
            else:
                out += data
        return bytes(out)

    def _read_chunked(self, cap: int, sink: Callable[[bytes], None] | None) -> bytes:
        out = bytearray()
        total = 0
        while True:
            size_line = self._read_until(b"\r\n", 1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError as err:
                raise http.client.IncompleteRead(bytes(out)) from err
            if size == 0:
                self._read_until(b"\r\n", _HEAD_CAP)  # the (empty) trailer
                return bytes(out)
            total += size
            if total > cap:
                self.reusable = False
                raise AnswerTooLarge(total)
            out += self._read_length(size, cap, sink)
            self._read_length(2, 2, None)

    def _read_to_close(self, cap: int, sink: Callable[[bytes], None] | None) -> bytes:
        self.reusable = False
        out = bytearray()
        total = 0
        while True:
            try:
                data = self._take(_RECV)
            except http.client.RemoteDisconnected:
                return bytes(out)
            total += len(data)
            if total > cap:
                raise AnswerTooLarge(total)
            if sink is not None:
                sink(data)
            else:
                out += data

    def close(self) -> None:
        self.reusable = False
        try:
            self.sock.close()
        except OSError:
            pass


class AnswerTooLarge(Exception):
    """The answer is larger than the caller's cap (``args[0]``: bytes declared or seen)."""


class KeepAlivePool:
    """A few keep-alive connections to one server, shared by its threads."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, connect_timeout: float,
                 read_timeout: float, verify: bool | str = True, idle: int = IDLE_CONNECTIONS) -> None:
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        lines = [f"Host: {host}:{self._port}", "Connection: keep-alive", "Accept-Encoding: identity",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self._head = "\r\n".join(lines).encode("latin-1")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._verify = verify
        self._idle: list[_Connection] = []
        self._max_idle = idle
        self._lock = threading.Lock()

    def fetch(self, method: str, route: str, *, body: bytes | None = None, content_type: str | None = None,
              cap: int, sink: Callable[[bytes], None] | None = None,
              budget: float | None = None) -> tuple[int, bytes]:
        """Send one request and return ``(status, body)``; with ``sink`` a 2xx body goes there instead.

        ``budget`` bounds the whole answer (default: the read timeout). A GET that fails on a
        reused socket the server had closed is sent once more on a fresh one; a POST never is
        (the caller's retry policy decides, knowing the prompt id).
        """
        request = self._request(method, route, body, content_type)
        deadline = time.monotonic() + (budget if budget is not None else self._read_timeout)
        conn, reused = self._checkout()
        try:
            try:
                status, data = conn.exchange(request, cap, sink, deadline)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused or method != "GET":
                    raise
                conn.close()
                conn = self._open()
                status, data = conn.exchange(request, cap, sink, deadline)
        except BaseException:
            conn.close()
            raise
        self._checkin(conn)
        return status, data

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _request(self, method: str, route: str, body: bytes | None, content_type: str | None) -> bytes:
        lines = [f"{method} {self._path}{route} HTTP/1.1".encode("latin-1"), self._head]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}".encode("latin-1"))
            if content_type:
                lines.append(f"Content-Type: {content_type}".encode("latin-1"))
        return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")

    def _checkout(self) -> tuple[_Connection, bool]:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._open(), False
            if not conn.stale():
                return conn, True
            conn.close()

    def _checkin(self, conn: _Connection) -> None:
        if conn.reusable:
            with self._lock:
                if len(self._idle) < self._max_idle:
                    self._idle.append(conn)
                    return
        conn.close()

    def _open(self) -> _Connection:
        try:
            sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        except OSError as err:
            raise ConnectFailed(str(err)) from err
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                context = ssl.create_default_context(cafile=self._verify if isinstance(self._verify, str) else None)
                if self._verify is False:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(sock, server_hostname=self._host)
        except OSError as err:
            sock.close()
            raise ConnectFailed(str(err)) from err
        sock.settimeout(self._read_timeout)
        return _Connection(sock)
