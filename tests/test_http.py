"""The lean keep-alive transport (`comfy_cluster/_http.py`) against scripted loopback servers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from comfy_cluster._http import AnswerTooLarge, KeepAlivePool
from comfy_cluster.comfy_api import ComfyClient, OutputImage, Timeouts
from comfy_cluster.errors import ServerTimeout, ServerUnavailable, TransferError

FAST = Timeouts(connect=1.0, read=2.0, transfer=2.0)
OK_JSON = b'{"queue_running": [], "queue_pending": []}'


def answer(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


class Scripted:
    """A loopback server: each accepted connection is handed to ``serve(conn, requests_seen)``."""

    def __init__(self, serve: Callable[[socket.socket, list[bytes]], None]) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self._serve = serve
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._serve(conn, self.requests)
            except OSError:
                pass

    def close(self) -> None:
        self._sock.close()


def read_request(conn: socket.socket, seen: list[bytes]) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionResetError("client went away")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += conn.recv(65536)
    seen.append(head + b"\r\n\r\n" + rest)
    return head


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def make(serve: Callable[[socket.socket, list[bytes]], None]) -> Scripted:
        servers.append(Scripted(serve))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def keep_answering(conn: socket.socket, seen: list[bytes]) -> None:
    while True:
        head = read_request(conn, seen)
        body = b'{"prompt_id": "p1", "number": 1, "node_errors": {}}' if head.startswith(b"POST") else OK_JSON
        conn.sendall(answer(body))


def test_one_socket_carries_gets_and_posts(scripted) -> None:
    server = scripted(keep_answering)
    client = ComfyClient(server.url, name="gpu-01", timeouts=FAST)
    for _ in range(5):
        client.get_queue()
        client.submit({"1": {"class_type": "X", "inputs": {}}}, client_id="c", prompt_id="p1")
    assert server.connections == 1
    assert len(server.requests) == 10
    post = next(r for r in server.requests if r.startswith(b"POST"))
    assert b"Content-Type: application/json" in post and b'"prompt_id": "p1"' in post


def test_an_idle_socket_the_server_closed_is_replaced(scripted) -> None:
    """A server's keep-alive timeout closes idle sockets; the next call must not fail for it."""

    def one_per_connection(conn: socket.socket, seen: list[bytes]) -> None:
        read_request(conn, seen)
        conn.sendall(answer(OK_JSON))

    server = scripted(one_per_connection)
    client = ComfyClient(server.url, name="gpu-01", timeouts=FAST)
    for _ in range(3):
        assert client.get_queue().pending == []
        time.sleep(0.05)   # let the server's close reach us: an idle, closed socket is the case under test
    assert server.connections == 3


def test_a_post_is_never_sent_twice(scripted) -> None:
    """The server drops the connection after reading the POST: it may have queued the prompt,
    so the transport reports the failure and leaves the retry to the dispatcher."""

    def drop_posts(conn: socket.socket, seen: list[bytes]) -> None:
        while True:
            head = read_request(conn, seen)
            if head.startswith(b"POST"):
                return
            conn.sendall(answer(OK_JSON))

    server = scripted(drop_posts)
    client = ComfyClient(server.url, name="gpu-01", timeouts=FAST)
    client.get_queue()
    with pytest.raises(ServerUnavailable, match="server 'gpu-01': POST /prompt failed"):
        client.submit({"1": {"class_type": "X", "inputs": {}}}, client_id="c", prompt_id="p1")
    assert sum(r.startswith(b"POST") for r in server.requests) == 1


def test_a_dripping_answer_is_cut_at_the_budget(scripted) -> None:
    def drip(conn: socket.socket, seen: list[bytes]) -> None:
        read_request(conn, seen)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(100):
            conn.sendall(b" ")
            time.sleep(0.2)

    server = scripted(drip)
    client = ComfyClient(server.url, name="gpu-01", timeouts=Timeouts(connect=1.0, read=1.0))
    started = time.monotonic()
    with pytest.raises(ServerTimeout, match="server 'gpu-01': GET /queue timed out after 1 s"):
        client.get_queue()
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 999999,
])
def test_answers_over_the_cap_are_refused_before_reading_them(scripted, head: bytes) -> None:
    def big(conn: socket.socket, seen: list[bytes]) -> None:
        read_request(conn, seen)
        conn.sendall(head)
        time.sleep(1)

    pool = KeepAlivePool(scripted(big).url, {}, connect_timeout=1.0, read_timeout=2.0)
    with pytest.raises(AnswerTooLarge):
        pool.fetch("GET", "/x", cap=1000)


def test_an_error_page_is_never_written_into_the_output_file(scripted, tmp_path) -> None:
    def not_found(conn: socket.socket, seen: list[bytes]) -> None:
        read_request(conn, seen)
        conn.sendall(answer(b"404: file not found", "404 Not Found"))

    client = ComfyClient(scripted(not_found).url, name="gpu-01", timeouts=FAST)
    dest = tmp_path / "frame.png"
    image = OutputImage(filename="out_00001_.png", subfolder="", type="output", node_id="9")
    with pytest.raises(TransferError, match=r"could not fetch 'out_00001_.png' of node 9 \(HTTP 404\)"):
        client.download(image, dest)
    assert not dest.exists()


def test_connection_close_is_honoured(scripted) -> None:
    def close_each(conn: socket.socket, seen: list[bytes]) -> None:
        read_request(conn, seen)
        conn.sendall(answer(OK_JSON, extra="Connection: close\r\n"))

    server = scripted(close_each)
    client = ComfyClient(server.url, name="gpu-01", timeouts=FAST)
    client.get_queue()
    client.get_queue()
    assert server.connections == 2


def test_a_proxy_or_an_own_session_takes_the_requests_path(monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.studio.lan:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert ComfyClient("http://gpu-01:8188")._keepalive is None
    monkeypatch.delenv("HTTP_PROXY")
    assert ComfyClient("http://gpu-01:8188")._keepalive is not None
    assert ComfyClient("http://gpu-01:8188", session=requests.Session())._keepalive is None
