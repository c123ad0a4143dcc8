"""The monitor's status socket: ComfyUI pushes ``status`` (queue remaining) on every queue
change, the cache follows it without a probe, and polling takes over when the socket is down."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Iterator

import pytest

from comfy_cluster.backend import ServerState
from comfy_cluster.client import ComfyClient
from comfy_cluster.config import ServerConfig
from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.pool import ComfyUIServerPool
from comfy_cluster.server import PUSHED_POLL_S, ComfyUIServer
from comfy_cluster.transport import Timeouts
from tests.helpers import wait_until
from tests.loopback import Request, Scripted, json_answer

FAST = Timeouts(connect=1.0, read=5.0, transfer=10.0)
POLL = 0.5
GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "push"}},
}


@pytest.fixture
def emu() -> Iterator[EmulatorThread]:
    emu = EmulatorThread(name="gpu-01").start()
    try:
        yield emu
    finally:
        emu.set_faults(hang=False)
        emu.stop()


def monitored(url: str, requested: list[ComfyUIServer]) -> ComfyUIServer:
    """A server as the pool makes it (``request_probe`` set), probed only when the test says."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    cfg = ServerConfig(name="gpu-01", ip=host, port=int(port))
    return ComfyUIServer(cfg, client_id=uuid.uuid4().hex, environ={}, poll_interval=POLL,
                         client=ComfyClient.from_config(cfg, environ={}, timeouts=FAST),
                         request_probe=requested.append)


def test_a_queue_change_reaches_the_cache_by_push_alone(emu) -> None:
    requested: list[ComfyUIServer] = []
    server = monitored(emu.url, requested)
    try:
        assert server.update_status().state is ServerState.ONLINE        # the only probe of this test
        wait_until(lambda: server.next_probe_delay() == PUSHED_POLL_S, what="the status socket")
        emu.set_faults(hang=True)
        with ComfyClient(emu.url, timeouts=FAST) as artist:             # someone else fills the queue
            for i in range(3):
                artist.submit(GRAPH, client_id=f"artist-{i}")
            wait_until(lambda: server.get_status().queue_pending == 2, what="the pushed queue count")
            status = server.get_status()
            assert (status.state, status.queue_running, status.queue_pending) == (ServerState.BUSY, 1, 2)
            artist.delete_pending([e.prompt_id for e in artist.get_queue().pending])
            wait_until(lambda: server.get_status().queue_pending == 0, what="the pushed delete")
            artist.interrupt()
            wait_until(lambda: server.get_status().state is ServerState.ONLINE, what="the pushed empty queue")
    finally:
        server.close()


def test_a_dropped_socket_asks_for_a_probe_and_polls_until_it_is_back(emu) -> None:
    requested: list[ComfyUIServer] = []
    server = monitored(emu.url, requested)
    try:
        server.update_status()
        wait_until(lambda: server.next_probe_delay() == PUSHED_POLL_S, what="the status socket")
        asked = len(requested)
        assert emu.drop_websockets() == 1
        wait_until(lambda: len(requested) > asked, what="a probe asked for on the drop")
        wait_until(lambda: server.next_probe_delay() == PUSHED_POLL_S, what="the socket reconnected")
    finally:
        server.close()


def plain_http_comfy(request: Request) -> tuple[int, dict[str, str], bytes]:
    """A ComfyUI behind a proxy that does not pass websockets: HTTP answers, /ws is 404."""
    if request.path == "/queue":
        return json_answer(b'{"queue_running": [], "queue_pending": []}')
    if request.path == "/system_stats":
        return json_answer(json.dumps({"system": {"comfyui_version": "0.3.64", "argv": []}, "devices": []}).encode())
    if request.path == "/object_info":
        return json_answer(b'{"SaveImage": {}}')
    return 404, {}, b"not found"


def test_without_a_socket_the_server_is_polled_at_the_poll_interval() -> None:
    http = Scripted(plain_http_comfy)
    requested: list[ComfyUIServer] = []
    server = monitored(http.url, requested)
    try:
        assert server.update_status().state is ServerState.ONLINE
        wait_until(lambda: any(p.startswith("/ws") for p in http.paths()), what="a websocket attempt")
        assert server.next_probe_delay() == POLL
    finally:
        server.close()
        http.close()


def test_an_unmonitored_server_opens_no_socket(emu) -> None:
    """``get_status(refresh=True)`` from a one-off command probes over HTTP only."""
    cfg = ServerConfig(name="gpu-01", ip="127.0.0.1", port=emu.port)
    server = ComfyUIServer(cfg, client_id="c", environ={}, poll_interval=POLL)
    try:
        assert server.get_status(refresh=True).state is ServerState.ONLINE
        assert server.next_probe_delay() == POLL
    finally:
        server.close()


def test_the_pools_monitor_opens_the_status_socket(emu) -> None:
    """A started pool gets its servers' sockets up, and a queue change wakes ``wait_for_change``."""
    pool = ComfyUIServerPool([ServerConfig(name="gpu-01", ip="127.0.0.1", port=emu.port)],
                             poll_interval=POLL, environ={}).start()
    try:
        server = pool.servers[0]
        wait_until(lambda: server.next_probe_delay() == PUSHED_POLL_S, what="the status socket")
        emu.set_faults(hang=True)
        woke: list[bool] = []
        waiter = threading.Thread(target=lambda: woke.append(pool.wait_for_change(10.0)))
        waiter.start()
        with ComfyClient(emu.url, timeouts=FAST) as artist:
            artist.submit(GRAPH, client_id="artist")
            wait_until(lambda: server.queue_running == 1, what="the pushed change")
            waiter.join(10.0)
            assert woke == [True]
            artist.interrupt()
    finally:
        pool.close()
