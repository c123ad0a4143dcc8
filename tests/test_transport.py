"""The one transport of ``ComfyClient`` (urllib3, one pool per server) against loopback servers:
keep-alive, timeouts per call, no-body answers, redirects, chunked and dripping bodies,
proxies, and the guarded withdraw."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Callable

import pytest
import websocket

from comfy_cluster.client import ComfyClient
from comfy_cluster.errors import ProtocolError, ServerTimeout, ServerUnavailable, TransferError
from comfy_cluster.transport import Timeouts
from comfy_cluster.wire import OutputImage
from tests.loopback import Request, Scripted, canned, json_answer, scripted  # noqa: F401 - canned, scripted: fixtures

FAST = Timeouts(connect=1.0, read=2.0, transfer=2.0)
QUEUE = b'{"queue_running": [], "queue_pending": []}'
GRAPH = {"1": {"class_type": "X", "inputs": {}}}


def comfy(request: Request) -> tuple[int, dict[str, str], bytes]:
    """A well-behaved ComfyUI: our prompt id echoed, an empty queue."""
    route = request.path.split("8188", 1)[-1]       # a proxy is asked for the absolute URL
    if request.method == "POST" and route == "/prompt":
        pid = json.loads(request.body)["prompt_id"]
        return json_answer(json.dumps({"prompt_id": pid, "number": 1, "node_errors": {}}).encode())
    if route == "/upload/image":
        return json_answer(b'{"name": "in.png", "subfolder": "", "type": "input"}')
    return json_answer(QUEUE)


def test_one_connection_carries_gets_and_posts(scripted) -> None:
    server = scripted(comfy)
    client = ComfyClient(server.url, name="gpu-01", timeouts=FAST)
    for i in range(5):
        client.get_queue()
        client.submit(GRAPH, client_id="c", prompt_id=f"p{i}")
    assert server.connections == 1
    assert len(server.requests) == 10
    post = server.requests[1]
    assert post.headers["content-type"] == "application/json" and json.loads(post.body)["prompt_id"] == "p0"


def test_each_call_gets_its_own_read_timeout(scripted) -> None:
    """A short call on a connection must not shorten the next call's timeout (5 s then 30 s, scaled)."""
    release = threading.Event()

    def slow_queue(request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.path == "/queue":
            release.wait(1.0)           # longer than the history poll's 0.3 s, well inside 5 s
        return json_answer(b"{}" if request.path.startswith("/history") else QUEUE)

    server = scripted(slow_queue)
    client = ComfyClient(server.url, name="gpu-01", timeouts=Timeouts(connect=1.0, read=5.0))
    assert client.get_history("p1", timeout=0.3) is None
    assert client.get_queue().pending == []
    assert server.connections == 1


def test_a_post_is_never_sent_twice(canned) -> None:
    """The server drops the connection after reading the POST: it may have queued the prompt,
    so the transport reports the failure and leaves the retry to the dispatcher."""
    server = canned(lambda conn: None)
    client = ComfyClient(server.url, name="gpu-01", timeouts=FAST)
    with pytest.raises(ServerUnavailable, match="server 'gpu-01': POST /prompt failed"):
        client.submit(GRAPH, client_id="c", prompt_id="p1")
    assert len(server.requests) == 1


def test_a_dripping_answer_is_cut_at_the_budget(canned) -> None:
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.wait(0.2):       # never idle long enough to trip a per-read timeout
            conn.sendall(b" ")

    server = canned(drip)
    client = ComfyClient(server.url, name="gpu-01", timeouts=Timeouts(connect=1.0, read=1.0))
    try:
        with pytest.raises(ServerTimeout, match="server 'gpu-01': GET /queue timed out after 1 s while the answer was still arriving"):
            client.get_queue()
    finally:
        stop.set()


@pytest.mark.parametrize("status", [204, 304])
def test_answers_without_a_body_return_at_once(canned, status: int) -> None:
    """204 and 304 carry no body: the client must not wait for one (the server keeps the socket open)."""
    held = threading.Event()

    def no_body(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\n\r\n".encode())
        held.wait(10)

    client = ComfyClient(canned(no_body).url, name="gpu-01", timeouts=Timeouts(connect=1.0, read=5.0))
    try:
        if status == 204:
            client.interrupt("p1")      # a proxy's "no content" is a fine answer to a command
        else:
            with pytest.raises(ProtocolError, match="GET /queue answered HTTP 304"):
                client.get_queue()
    finally:
        held.set()


def test_redirects_are_answers_on_every_path(scripted, tmp_path: Path) -> None:
    """No call follows a 3xx (uploads, downloads, JSON calls and the websocket alike)."""
    server = scripted(lambda r: (302, {"Location": "/elsewhere"}, b"moved"))
    client = ComfyClient(server.url, name="gpu-01", timeouts=FAST)
    with pytest.raises(ProtocolError, match=r"GET /queue answered HTTP 302 \(redirects are not followed"):
        client.get_queue()
    with pytest.raises(ProtocolError, match="POST /prompt answered HTTP 302"):
        client.submit(GRAPH, client_id="c", prompt_id="p1")
    with pytest.raises(TransferError, match=r"POST /upload/image refused 'in.png' \(HTTP 302\)"):
        client.upload_image(b"\x89PNG", "in.png")
    image = OutputImage(filename="out.png", subfolder="", type="output", node_id="9")
    with pytest.raises(TransferError, match=r"could not fetch 'out.png' of node 9 \(HTTP 302\)"):
        client.download(image, tmp_path / "out.png")
    with pytest.raises(websocket.WebSocketException):
        client.open_websocket("c")
    assert "/elsewhere" not in server.paths()
    assert not (tmp_path / "out.png").exists()


def test_an_error_page_is_never_written_into_the_output_file(scripted, tmp_path: Path) -> None:
    client = ComfyClient(scripted(lambda r: (404, {}, b"404: file not found")).url, name="gpu-01", timeouts=FAST)
    dest = tmp_path / "frame.png"
    image = OutputImage(filename="out_00001_.png", subfolder="", type="output", node_id="9")
    with pytest.raises(TransferError, match=r"could not fetch 'out_00001_.png' of node 9 \(HTTP 404\): 404: file"):
        client.download(image, dest)
    assert not dest.exists()


def test_a_chunked_download_is_streamed_whole(canned, tmp_path: Path) -> None:
    parts = [bytes([i]) * (1000 + i) for i in range(50)]

    def chunked(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        conn.sendall(b"0\r\n\r\n")

    image = OutputImage(filename="big.png", subfolder="", type="output", node_id="9")
    dest = ComfyClient(canned(chunked).url, timeouts=FAST).download(image, tmp_path / "big.png")
    assert dest.read_bytes() == b"".join(parts)


def test_connection_close_is_honoured(scripted) -> None:
    server = scripted(lambda r: (200, {"Connection": "close", "Content-Type": "application/json"}, QUEUE))
    client = ComfyClient(server.url, name="gpu-01", timeouts=FAST)
    client.get_queue()
    client.get_queue()
    assert server.connections == 2


def test_the_environment_proxy_carries_every_call(scripted, monkeypatch, tmp_path: Path) -> None:
    """requests' rule, kept: HTTP_PROXY is used (with its credentials) unless NO_PROXY names the host."""
    proxy = scripted(comfy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("HTTP_PROXY", f"http://artist:pa%40ss@127.0.0.1:{proxy.port}")
    client = ComfyClient("http://gpu-01.studio.lan:8188", name="gpu-01", timeouts=FAST)
    client.get_queue()
    client.submit(GRAPH, client_id="c", prompt_id="p1")
    client.upload_image(b"\x89PNG", "in.png")
    assert proxy.paths() == ["http://gpu-01.studio.lan:8188/queue", "http://gpu-01.studio.lan:8188/prompt",
                             "http://gpu-01.studio.lan:8188/upload/image"]
    assert {r.headers["proxy-authorization"] for r in proxy.requests} == {"Basic YXJ0aXN0OnBhQHNz"}
    monkeypatch.setenv("no_proxy", "localhost")
    direct = scripted(comfy)
    ComfyClient(direct.url.replace("127.0.0.1", "localhost"), timeouts=FAST).get_queue()
    assert len(proxy.requests) == 3 and direct.paths() == ["/queue"]


def test_submit_refuses_an_answer_for_another_prompt(scripted) -> None:
    server = scripted(lambda r: json_answer(b'{"prompt_id": "theirs-1", "number": 3, "node_errors": {}}'))
    with pytest.raises(ProtocolError) as info:
        ComfyClient(server.url, name="gpu-01", timeouts=FAST).submit(GRAPH, client_id="c", prompt_id="ours-1")
    assert "server 'gpu-01'" in str(info.value) and "'theirs-1'" in str(info.value) and "'ours-1'" in str(info.value)
    assert info.value.prompt_id == "ours-1"


def queue_with(running: str) -> Callable[[Request], tuple[int, dict[str, str], bytes]]:
    """An old ComfyUI (before 0.3.57, /interrupt ignores prompt_id) running ``running``."""
    def answer(request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.path == "/queue" and request.method == "GET":
            item = [0, running, {}, {"client_id": "someone"}, ["9"]]
            return json_answer(json.dumps({"queue_running": [item], "queue_pending": []}).encode())
        return 200, {}, b""
    return answer


def test_withdraw_never_interrupts_another_prompt(scripted) -> None:
    server = scripted(queue_with("another-artists-job"))
    ComfyClient(server.url, name="gpu-01", timeouts=FAST).withdraw("ours-1")
    assert [(r.method, r.path) for r in server.requests] == [("POST", "/queue"), ("GET", "/queue")]
    assert json.loads(server.requests[0].body) == {"delete": ["ours-1"]}


def test_withdraw_interrupts_ours_when_it_runs(scripted) -> None:
    server = scripted(queue_with("ours-1"))
    ComfyClient(server.url, name="gpu-01", timeouts=FAST).withdraw("ours-1")
    assert [(r.method, r.path) for r in server.requests] == [("POST", "/queue"), ("GET", "/queue"),
                                                             ("POST", "/interrupt")]
    assert json.loads(server.requests[2].body) == {"prompt_id": "ours-1"}


def test_a_closed_client_opens_new_connections_when_used_again(scripted) -> None:
    server = scripted(comfy)
    client = ComfyClient(server.url, name="gpu-01", timeouts=FAST)
    client.get_queue()
    client.close()
    assert client.get_queue().pending == []
    assert server.connections == 2


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 that no default CA store trusts, made now by openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


def test_http_and_the_websocket_trust_the_same_ca_bundle(self_signed, monkeypatch) -> None:
    """One CA rule everywhere: requests' ($REQUESTS_CA_BUNDLE, else certifi), never a second store."""
    cert, context = self_signed
    server = Scripted(comfy, tls=context)
    try:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        untrusting = ComfyClient(server.url, name="gpu-tls", timeouts=FAST)
        with pytest.raises(ServerUnavailable, match="server 'gpu-tls': GET /queue failed: .*certificate verify failed"):
            untrusting.get_queue()
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusting.open_websocket("c")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        trusting = ComfyClient(server.url, name="gpu-tls", timeouts=FAST)
        assert trusting.get_queue().pending == []
        with pytest.raises(websocket.WebSocketBadStatusException):   # TLS passed; this server has no /ws
            trusting.open_websocket("c")
        assert "/ws?clientId=c" in server.paths()
    finally:
        server.close()
