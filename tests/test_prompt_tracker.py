"""PromptTracker / PromptWatch: websocket routing, history fallback, drops, faults, kills.

A scripted aiohttp server plays exact frame sequences (binary previews, garbage); the
emulator plays a real ComfyUI for everything else. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
import uuid
from typing import Any, Iterator

import pytest
from aiohttp import web

from comfy_cluster.client import ComfyClient
from comfy_cluster.emulator.process import EmulatorProcess, EmulatorThread
from comfy_cluster.errors import (
    Cancelled,
    ExecutionFailed,
    Interrupted,
    JobTimeout,
    ServerUnavailable,
)
from comfy_cluster.tracker import PromptTracker
from comfy_cluster.transport import Timeouts
from comfy_cluster.wire import Event
from tests.helpers import wait_until

FAST = Timeouts(connect=1.0, read=5.0, transfer=10.0)



class ScriptedComfy:
    """A loopback server that sends a fixed frame script to each websocket and answers /history."""

    def __init__(self, script: list[str | bytes], history: dict[str, Any] | None = None) -> None:
        self.script = script
        self.history = history or {}
        self.history_hits = 0
        self.received: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/history/{pid}", self._history)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready.set()
        self._loop.run_forever()

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive(timeout=5)
        self.received.append(first.data)
        for frame in self.script:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        async for _ in ws:
            pass
        return ws

    async def _history(self, request: web.Request) -> web.Response:
        self.history_hits += 1
        pid = request.match_info["pid"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def msg(kind: str, **data: Any) -> str:
    return json.dumps({"type": kind, "data": data})


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[ScriptedComfy] = []

    def make(script: list[str | bytes], history: dict | None = None) -> ScriptedComfy:
        servers.append(ScriptedComfy(script, history))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def test_frames_are_routed_by_prompt_and_garbage_is_skipped(scripted) -> None:
    meta = json.dumps({"node_id": "9", "prompt_id": "p-1", "image_type": "image/png"}).encode()
    image = {"images": [{"filename": "run_00001_.png", "subfolder": "shots", "type": "output"}]}
    server = scripted([
        msg("status", status={"exec_info": {"queue_remaining": 1}}, sid="c"),
        "{not json",
        '"a bare string"',
        json.dumps({"type": 5, "data": {}}),
        msg("executing", node="3"),                                  # reconnect notice, no prompt id
        msg("execution_start", prompt_id="p-1", timestamp=1000),
        msg("execution_cached", nodes=[], prompt_id="p-1", timestamp=1000),
        msg("executing", node="9", display_node="9", prompt_id="p-1"),
        struct.pack(">II", 4, len(meta)) + meta + b"PNG-A",         # preview with its prompt id
        struct.pack(">II", 1, 2) + b"PNG-B",                         # legacy preview: the running prompt's
        struct.pack(">II", 3, 1) + b"9" + b"hello",                  # text from node 9
        struct.pack(">I", 77) + b"unknown",                          # unknown type: skipped
        b"\x00",                                                     # too short: skipped
        msg("progress", value=1, max=2, node="9", prompt_id="p-1"),
        msg("executed", node="9", display_node="9", output=image, prompt_id="p-1"),
        msg("execution_start", prompt_id="p-2", timestamp=1001),    # nobody watches p-2 yet
        msg("execution_success", prompt_id="p-1", timestamp=1500),
        msg("status", status={"exec_info": {"queue_remaining": 0}}),
    ])
    statuses: list[int] = []
    links: list[bool] = []
    events: list[Event] = []
    tracker = PromptTracker(ComfyClient(server.url, name="scripted", timeouts=FAST), "c",
                            on_status=statuses.append, on_connection=links.append)
    with tracker:
        assert tracker.wait_connected(5)
        watch = tracker.watch("p-1", on_event=events.append)   # events seen before this are replayed
        entry = watch.wait(5)
        assert wait_until(lambda: statuses == [1, 0])
        late = tracker.watch("p-2")
        assert wait_until(lambda: late._stream_complete)      # the buffered execution_start was replayed
        late.close()
    assert links[0] is True
    assert json.loads(server.received[0]) == {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
    assert entry.status_str == "success" and entry.outputs == {"9": image}
    assert [(i.node_id, i.filename, i.subfolder) for i in entry.images] == [("9", "run_00001_.png", "shots")]
    assert [m[0] for m in entry.messages] == ["execution_start", "execution_cached", "execution_success"]
    assert server.history_hits == 0                       # the whole stream was seen: no /history trip
    previews = [e for e in events if e.type == "preview"]
    assert [(p.data["image"], p.data["format"]) for p in previews] == [(b"PNG-A", "png"), (b"PNG-B", "png")]
    assert [e.data for e in events if e.type == "progress_text"] == [{"node": "9", "text": "hello"}]
    assert [e.type for e in events if e.type.startswith("execution")] == [
        "execution_start", "execution_cached", "execution_success"]


def test_execution_error_event_raises_execution_failed(scripted) -> None:
    server = scripted([
        msg("execution_start", prompt_id="p-3", timestamp=1),
        msg("execution_error", prompt_id="p-3", node_id="5", node_type="ImageBlur", exception_type="RuntimeError",
            exception_message="boom\n", traceback=["..."], executed=[], timestamp=2),
        msg("executing", node=None, prompt_id="p-3"),
    ])
    tracker = PromptTracker(ComfyClient(server.url, name="gpu-05", timeouts=FAST), "c")
    watch = tracker.watch("p-3")
    with tracker, pytest.raises(ExecutionFailed) as info:
        watch.wait(5)
    err = info.value
    assert str(err) == "server 'gpu-05': node 5 (ImageBlur) raised RuntimeError: boom (prompt p-3)"
    assert (err.node_id, err.node_type, err.exception_type, err.exception_message) == (
        "5", "ImageBlur", "RuntimeError", "boom")
    assert (err.server, err.prompt_id) == ("gpu-05", "p-3")


def test_a_missed_start_means_outputs_come_from_history(scripted) -> None:
    """Joining mid-prompt, the websocket's outputs may be partial: ask /history instead."""
    stored = {"prompt": [], "outputs": {"4": {"images": [{"filename": "h.png", "subfolder": "", "type": "output"}]}},
              "status": {"status_str": "success", "completed": True, "messages": []}}
    server = scripted([
        msg("executed", node="7", output={"images": []}, prompt_id="p-4"),
        msg("executing", node=None, prompt_id="p-4"),
    ], history={"p-4": stored})
    tracker = PromptTracker(ComfyClient(server.url, timeouts=FAST), "c")
    watch = tracker.watch("p-4")
    with tracker:
        entry = watch.wait(5)
    assert [i.filename for i in entry.images] == ["h.png"]
    assert server.history_hits >= 1


def test_history_error_status_raises_from_its_messages(scripted) -> None:
    stored = {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {"prompt_id": "p-5", "timestamp": 1}],
        ["execution_interrupted", {"prompt_id": "p-5", "node_id": "2", "node_type": "ImageInvert", "executed": []}]]}}
    server = scripted([], history={"p-5": stored})
    tracker = PromptTracker(ComfyClient(server.url, name="gpu-06", timeouts=FAST), "c", poll_interval=0.05)
    watch = tracker.watch("p-5")             # never started: wait() polls history
    with pytest.raises(Interrupted, match=r"server 'gpu-06': prompt p-5 was interrupted at node 2 \(ImageInvert\)"):
        watch.wait(5)


def test_stop_returns_promptly_and_reports_the_drop(scripted) -> None:
    server = scripted([])
    links: list[bool] = []
    tracker = PromptTracker(ComfyClient(server.url, timeouts=FAST), "c", on_connection=links.append).start()
    assert tracker.wait_connected(5)
    started = time.monotonic()
    tracker.stop()
    assert time.monotonic() - started < 10.0, "stop() waited on the socket"
    assert links == [True, False] and not tracker.connected


def test_cancel_returns_promptly(scripted) -> None:
    server = scripted([])
    tracker = PromptTracker(ComfyClient(server.url, timeouts=FAST), "c")
    watch = tracker.watch("p-6")
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with tracker:
        started = time.monotonic()
        with pytest.raises(Cancelled, match="prompt p-6 was cancelled"):
            watch.wait(30, cancel=cancel)
        assert time.monotonic() - started < 15.0, "the wait ran on towards its 30 s budget"


def test_timeout_raises_job_timeout(scripted) -> None:
    server = scripted([])
    tracker = PromptTracker(ComfyClient(server.url, name="gpu-07", timeouts=FAST), "c")
    watch = tracker.watch("p-7")
    with tracker, pytest.raises(JobTimeout, match="server 'gpu-07': prompt p-7 did not finish within 0.3 s"):
        watch.wait(0.3)


def test_a_prompt_is_watched_once(scripted) -> None:
    tracker = PromptTracker(ComfyClient("http://127.0.0.1:9", timeouts=FAST), "c")
    watch = tracker.watch("p-8")
    with pytest.raises(ValueError, match="already watched"):
        tracker.watch("p-8")
    watch.close()
    tracker.watch("p-8").close()


# -- against the emulator ----------------------------------------------------------------------

CLIENT_ID = "nuke-artist-02"


@pytest.fixture
def emu() -> Iterator[EmulatorThread]:
    server = EmulatorThread(name="gpu-02").start()
    try:
        yield server
    finally:
        server.set_faults(hang=False, ws_garbage=False, bad_json=False)
        server.stop()


@pytest.fixture
def client(emu: EmulatorThread) -> Iterator[ComfyClient]:
    with ComfyClient(emu.url, name="gpu-02", timeouts=FAST) as c:
        yield c


def graph(prefix: str, color: int = 0x808080) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def submit(client: ComfyClient, tracker: PromptTracker, prefix: str, on_event=None):
    pid = uuid.uuid4().hex
    watch = tracker.watch(pid, on_event=on_event)
    client.submit(graph(prefix), client_id=CLIENT_ID, prompt_id=pid)
    return pid, watch


def test_result_comes_from_the_socket_without_history(emu, client) -> None:
    with PromptTracker(client, CLIENT_ID) as tracker:
        assert tracker.wait_connected(5)
        emu.set_faults(bad_json=True)          # /history would answer truncated JSON
        pid, watch = submit(client, tracker, "ws-only")
        entry = watch.wait(10)
    assert entry.prompt_id == pid and [i.filename for i in entry.images] == ["ws-only_00001_.png"]


def test_socket_drop_mid_job_still_completes(emu, client) -> None:
    emu.set_faults(seconds_per_job=0.6)
    started = threading.Event()
    links: list[bool] = []
    with PromptTracker(client, CLIENT_ID, on_connection=links.append, poll_interval=0.1) as tracker:
        assert tracker.wait_connected(5)
        pid, watch = submit(client, tracker, "dropped",
                            on_event=lambda e: e.type == "execution_start" and started.set())
        assert started.wait(5)
        assert emu.drop_websockets() >= 1
        entry = watch.wait(10)
        assert wait_until(lambda: links[-2:] == [False, True])     # dropped, then reconnected
    assert [i.filename for i in entry.images] == ["dropped_00001_.png"]


def test_garbage_frames_are_skipped(emu, client) -> None:
    links: list[bool] = []
    with PromptTracker(client, CLIENT_ID, on_connection=links.append) as tracker:
        assert tracker.wait_connected(5)
        emu.set_faults(ws_garbage=True)
        pid, watch = submit(client, tracker, "garbage")
        entry = watch.wait(10)
        assert links == [True]                 # skipped, not a reason to reconnect
    assert entry.status_str == "success" and entry.images


def test_without_a_socket_wait_polls_history(emu, client) -> None:
    tracker = PromptTracker(client, CLIENT_ID, poll_interval=0.05)   # never started
    pid, watch = submit(client, tracker, "polled")
    entry = watch.wait(10)
    assert [i.filename for i in entry.images] == ["polled_00001_.png"]
    assert [m[0] for m in entry.messages][-1] == "execution_success"


def test_interrupt_raises_interrupted(emu, client) -> None:
    emu.set_faults(seconds_per_job=5.0)
    started = threading.Event()
    with PromptTracker(client, CLIENT_ID) as tracker:
        assert tracker.wait_connected(5)
        pid, watch = submit(client, tracker, "stopped", on_event=lambda e: e.type == "execution_start" and started.set())
        assert started.wait(5)
        client.interrupt(pid)
        with pytest.raises(Interrupted) as info:
            watch.wait(10)
    assert info.value.prompt_id == pid and info.value.server == "gpu-02"


def test_a_hung_server_times_out(emu, client) -> None:
    emu.set_faults(hang=True)
    with PromptTracker(client, CLIENT_ID) as tracker:
        pid, watch = submit(client, tracker, "hung")
        with pytest.raises(JobTimeout, match=f"prompt {pid} did not finish within 0.5 s"):
            watch.wait(0.5)


def test_killed_server_with_lost_signal_fails_promptly() -> None:
    proc = EmulatorProcess(seconds_per_job=30.0, name="gpu-09").start(timeout=15)
    try:
        client = ComfyClient(proc.url, name="gpu-09", timeouts=FAST)
        started = threading.Event()
        lost = threading.Event()
        with PromptTracker(client, CLIENT_ID, on_connection=lambda up: up or lost.set()) as tracker:
            assert tracker.wait_connected(5)
            pid, watch = submit(client, tracker, "killed",
                                on_event=lambda e: e.type == "execution_start" and started.set())
            assert started.wait(5)
            proc.kill()
            begun = time.monotonic()
            with pytest.raises(ServerUnavailable) as info:
                watch.wait(60, lost=lost)
            assert time.monotonic() - begun < 30.0, "the wait ran on towards its 60 s budget"
        assert type(info.value) is ServerUnavailable
        assert f"server 'gpu-09' went offline while prompt {pid} was running" in str(info.value)
        assert info.value.prompt_id == pid
    finally:
        proc.stop()


def test_killed_server_without_lost_signal_still_ends_the_wait() -> None:
    proc = EmulatorProcess(seconds_per_job=30.0, name="gpu-10").start(timeout=15)
    try:
        client = ComfyClient(proc.url, name="gpu-10", timeouts=FAST)
        started = threading.Event()
        tracker = PromptTracker(client, CLIENT_ID, poll_interval=0.05)
        tracker.unreachable_after = 0.5
        with tracker:
            assert tracker.wait_connected(5)
            pid, watch = submit(client, tracker, "orphaned",
                                on_event=lambda e: e.type == "execution_start" and started.set())
            assert started.wait(5)
            proc.kill()
            begun = time.monotonic()
            with pytest.raises(ServerUnavailable, match=f"server 'gpu-10': GET /history/{pid} failed"):
                watch.wait(60)
            assert time.monotonic() - begun < 30.0, "the wait ran on towards its 60 s budget"
    finally:
        proc.stop()


def _frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """One server frame (unmasked), RFC 6455 section 5.2."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


def _read_client_frame(conn: socket.socket) -> tuple[int, bytes]:
    """One masked client frame: ``(opcode, unmasked payload)``."""
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionResetError("client went away")
            data += chunk
        return data

    first, second = exact(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(exact(2), "big")
    elif length == 127:
        length = int.from_bytes(exact(8), "big")
    mask = exact(4)
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(exact(length)))


class RawWebsocketServer:
    """A loopback websocket server that writes raw frames: ``play(conn, index)`` per connection."""

    def __init__(self, play) -> None:
        self._play = play
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self.client_frames: list[tuple[int, bytes]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        import base64
        import hashlib
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            try:
                self._play(self, conn, index)
            except OSError:
                pass

    def read(self, conn: socket.socket, opcode: int) -> bytes:
        """The next client frame of ``opcode`` (the tracker's feature_flags text comes first)."""
        while True:
            frame = _read_client_frame(conn)
            self.client_frames.append(frame)
            if frame[0] == opcode:
                return frame[1]

    def close(self) -> None:
        self._sock.close()


def status(n: int, pad: int = 0) -> bytes:
    return json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": n}}},
                       "pad": "x" * pad}).encode()


def test_the_socket_joins_fragments_answers_pings_and_closes_through_the_library() -> None:
    """Lengths of every size class, a ping between the fragments of a message, a preview of
    70,000 bytes, then a CLOSE: answered, and the tracker connects again."""
    preview = struct.pack(">II", 4, 30) + b'{"prompt_id": "p1", "x": "yy"}' + b"\xff" * 70_000
    text = status(3)

    def play(server: RawWebsocketServer, conn: socket.socket, index: int) -> None:
        if index > 1:
            conn.sendall(_frame(1, status(9)))
            server.read(conn, 8)
            return
        conn.sendall(_frame(1, status(1)) + _frame(1, status(2, pad=300)) + _frame(2, preview)
                     + _frame(1, text[:20], fin=False) + _frame(9, b"ping!") + _frame(0, text[20:]))
        assert server.read(conn, 10) == b"ping!"          # the pong carries the ping's payload
        conn.sendall(_frame(8, b"\x03\xe8"))
        server.read(conn, 8)                              # the library answers the CLOSE

    server = RawWebsocketServer(play)
    seen: list[int] = []
    events: list[Event] = []
    tracker = PromptTracker(ComfyClient(server.url, name="raw", timeouts=FAST), "c1", on_status=seen.append)
    tracker.backoff_min = 0.05
    with tracker:
        watch = tracker.watch("p1", on_event=events.append)
        wait_until(lambda: 9 in seen, what="a status on the second connection")
        watch.close()
    assert seen[:3] == [1, 2, 3] and seen[-1] == 9
    assert [(e.type, e.data["format"], len(e.data["image"])) for e in events] == [("preview", "unknown", 70_000)]
    assert server.connections >= 2
    server.close()


def test_a_frame_split_across_the_readers_tick_is_resumed() -> None:
    whole = _frame(1, status(4))
    gap = threading.Event()

    def play(server: RawWebsocketServer, conn: socket.socket, index: int) -> None:
        conn.sendall(whole[:5])
        gap.wait(1.0)                                     # longer than the tick: the read times out mid-frame
        conn.sendall(whole[5:])
        server.read(conn, 8)

    server = RawWebsocketServer(play)
    seen: list[int] = []
    tracker = PromptTracker(ComfyClient(server.url, name="raw", timeouts=FAST), "c1", on_status=seen.append)
    tracker.tick = 0.2
    with tracker:
        wait_until(lambda: seen, what="the split status message")
    assert seen == [4] and server.connections == 1
    server.close()


def test_a_frame_with_reserved_bits_drops_the_connection() -> None:
    """No extension was negotiated, so RSV bits set are a protocol error (the old reader ignored them)."""
    def play(server: RawWebsocketServer, conn: socket.socket, index: int) -> None:
        conn.sendall(_frame(1, status(5), rsv=0x40) if index == 1 else _frame(1, status(6)))
        server.read(conn, 8)

    server = RawWebsocketServer(play)
    seen: list[int] = []
    tracker = PromptTracker(ComfyClient(server.url, name="raw", timeouts=FAST), "c1", on_status=seen.append)
    tracker.backoff_min = 0.05
    with tracker:
        wait_until(lambda: seen, what="a status on the second connection")
    assert seen == [6] and server.connections >= 2
    server.close()
