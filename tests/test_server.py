"""ComfyUIServer: the status cache, its states, the load estimate and run_prompt, on emulators.

Every server here is a real emulated ComfyUI over loopback; waits have deadlines.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from comfy_cluster.backend import PromptRequest
from comfy_cluster.backend import ServerState
from comfy_cluster.client import ComfyClient
from comfy_cluster.config import ServerConfig
from comfy_cluster.emulator.process import EmulatorProcess, EmulatorThread
from comfy_cluster.errors import Cancelled, JobTimeout, MissingNodes, ServerUnavailable
from comfy_cluster.server import EWMA_ALPHA, ComfyUIServer, ServerStatus
from comfy_cluster.transport import Timeouts
from tests.helpers import wait_until

FAST = Timeouts(connect=1.0, read=5.0, transfer=10.0)
OTHER_ARTIST = "other-artist-" + uuid.uuid4().hex[:6]



def graph(color: int = 0x204060, prefix: str = "shot010_comp") -> dict:
    """EmptyImage -> ImageInvert -> SaveImage: tiny, deterministic, real pixels."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def config_for(url: str, name: str, **kw: Any) -> ServerConfig:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    return ServerConfig(name=name, ip=host, port=int(port), **kw)


def make_server(url: str, name: str = "gpu-01", **kw: Any) -> ComfyUIServer:
    cfg = config_for(url, name, **{k: kw.pop(k) for k in ("max_queue", "priority") if k in kw})
    client = ComfyClient.from_config(cfg, environ={}, timeouts=FAST)
    return ComfyUIServer(cfg, client_id=uuid.uuid4().hex, environ={}, client=client, poll_interval=0.2, **kw)


def drain(emu: Any) -> None:
    """Leave the emulator idle for the next test: no faults, empty queue."""
    emu.set_faults(hang=False, http_500=False, delay_s=0.0)
    with ComfyClient(emu.url, timeouts=FAST) as client:
        queue = client.get_queue()
        client.delete_pending([e.prompt_id for e in queue.pending])
        assert wait_until(lambda: client.queue_remaining() == 0), "emulator did not drain"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorThread]:
    with EmulatorThread(seconds_per_job=0.05, name="gpu-01") as server:
        yield server


@pytest.fixture
def server(emu: EmulatorThread) -> Iterator[ComfyUIServer]:
    srv = make_server(emu.url)
    yield srv
    srv.close()
    drain(emu)


def run_async(srv: ComfyUIServer, request: PromptRequest, cancel: threading.Event,
              events: list | None = None) -> dict:
    """Run a prompt on a thread; the returned dict gets "result" or "error"."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = srv.run_prompt(request, on_event=lambda k, d: (events or []).append((k, d)),
                                           cancel=cancel)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    box["thread"] = threading.Thread(target=target, daemon=True)
    box["thread"].start()
    return box


# -- status cache --------------------------------------------------------------------------


def test_update_status_fills_the_cache(server: ComfyUIServer) -> None:
    assert server.state is ServerState.OFFLINE and server.last_status_check is None
    status = server.update_status()
    assert status.state is ServerState.ONLINE
    assert status.devices and status.devices[0].vram_total > 0
    assert status.comfyui_version
    assert {"EmptyImage", "ImageBlur", "SaveImage"} <= server.node_classes
    assert status.node_count == len(server.node_classes)
    assert status.last_status_check == pytest.approx(time.time(), abs=5)
    assert server.is_available({"ImageBlur"}) and server.test_connection()


def test_busy_when_the_queue_holds_someone_elses_work(server: ComfyUIServer, emu: EmulatorThread) -> None:
    emu.set_faults(hang=True)
    with ComfyClient(emu.url, timeouts=FAST) as other:
        other.submit(graph(), client_id=OTHER_ARTIST)
        other.submit(graph(), client_id=OTHER_ARTIST)
    status = wait_until(lambda: (s := server.update_status()).queue_running == 1 and s)
    assert status.state is ServerState.BUSY and status.queue_pending == 1
    assert server.is_available()  # busy servers still take work
    assert server.predicted_finish(1, default_seconds=2.0) == pytest.approx(3 * 2.0)


def test_answering_500_is_booting_and_recovers(server: ComfyUIServer, emu: EmulatorThread) -> None:
    emu.set_faults(http_500=True)
    status = server.update_status()
    assert status.state is ServerState.BOOTING and "500" in status.last_error
    assert not server.is_available()
    emu.set_faults(http_500=False)
    assert server.update_status().state is ServerState.ONLINE


def test_nothing_listening_is_offline_with_backoff() -> None:
    srv = make_server("http://127.0.0.1:9", max_backoff=1.0)  # discard port: refused
    try:
        status = srv.update_status()
        assert status.state is ServerState.OFFLINE and "refused" in status.last_error
        assert not srv.is_available() and not srv.test_connection()
        delays = []
        for _ in range(5):
            srv.update_status()
            delays.append(srv.next_probe_delay())
        assert delays == sorted(delays) and delays[0] > srv.poll_interval and delays[-1] == 1.0
    finally:
        srv.close()


def test_disabled_is_a_state_of_its_own(server: ComfyUIServer) -> None:
    server.update_status()
    server.enabled = False
    assert server.state is ServerState.DISABLED and not server.is_available()
    server.enabled = True
    assert server.state is ServerState.ONLINE


def test_missing_classes_from_object_info() -> None:
    with EmulatorThread(node_classes=["EmptyImage", "ImageInvert", "SaveImage"], name="old-box") as emu:
        srv = make_server(emu.url, "old-box")
        try:
            assert srv.missing_classes({"ImageBlur"}) == frozenset()  # unknown yet: not claimed missing
            srv.update_status()
            assert srv.missing_classes({"ImageBlur", "EmptyImage"}) == {"ImageBlur"}
            assert not srv.is_available({"ImageBlur"}) and srv.is_available({"EmptyImage"})
            with pytest.raises(MissingNodes) as info:
                srv.run_prompt(PromptRequest(uuid.uuid4().hex, {
                    **graph(), "4": {"class_type": "ImageBlur",
                                     "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}}}),
                    on_event=lambda k, d: None, cancel=threading.Event())
            assert "ImageBlur" in str(info.value)
        finally:
            srv.close()


def test_record_result_ewma_and_counts(server: ComfyUIServer) -> None:
    assert server.seconds_per_job is None
    server.record_result(2.0, ok=True)
    assert server.seconds_per_job == 2.0           # seeded by the first measurement
    server.record_result(4.0, ok=True)
    assert server.seconds_per_job == pytest.approx(2.0 + EWMA_ALPHA * 2.0)
    server.record_result(100.0, ok=False)          # a failure says nothing about speed
    server.record_result(None, ok=True)
    assert server.seconds_per_job == pytest.approx(2.6)
    assert (server.jobs_done, server.jobs_failed) == (3, 1)


def test_status_round_trips_through_json(server: ComfyUIServer) -> None:
    server.update_status()
    status = server.get_status()
    again = ServerStatus.from_dict(json.loads(json.dumps(status.to_dict())))
    assert again == status and again.state is ServerState.ONLINE


# -- run_prompt ------------------------------------------------------------------------------


def test_run_prompt_end_to_end(server: ComfyUIServer, tmp_path: Path) -> None:
    server.update_status()
    events: list = []
    pid = uuid.uuid4().hex
    result = server.run_prompt(PromptRequest(pid, graph(0x204061, prefix=f"shot010_{pid[:6]}"), label="frame 1001"),
                               on_event=lambda k, d: events.append((k, d)), cancel=threading.Event())
    assert result.prompt_id == pid and result.backend == "gpu-01"
    assert result.elapsed > 0
    kinds = [k for k, _ in events]
    assert kinds[0] == "submitted" and events[0][1] == {"backend": "gpu-01", "prompt_id": pid}
    assert "started" in kinds and ("executing", {"node": "2"}) in events
    [out] = result.outputs
    assert out.node_id == "3" and out.index == 0 and out.filename.startswith(f"shot010_{pid[:6]}")
    dest = tmp_path / "frame.1001.png"
    out.fetch(dest)
    pixels = np.asarray(Image.open(dest).convert("RGB"))
    assert pixels.shape == (4, 8, 3)
    channels = np.array([0x20, 0x40, 0x61], dtype=np.float32) / np.float32(255.0)
    expected = np.clip((np.float32(1.0) - channels) * np.float32(255.0), 0, 255).astype(np.uint8)  # ComfyUI truncates
    assert tuple(pixels[0, 0]) == tuple(expected)


def test_predicted_finish_counts_our_prompt_once(server: ComfyUIServer, emu: EmulatorThread) -> None:
    """Leased and submitted, our prompt shows up in /queue: it must not be counted twice."""
    server.update_status()
    emu.set_faults(hang=True)
    server.reserve()
    assert server.predicted_finish(0, default_seconds=1.0) == 1.0   # unseen: ours only
    cancel = threading.Event()
    box = run_async(server, PromptRequest(uuid.uuid4().hex, graph()), cancel)
    wait_until(lambda: server.update_status().queue_running == 1)
    assert server.predicted_finish(0, default_seconds=1.0) == 1.0   # seen: the server's count only
    cancel.set()
    box["thread"].join(10)
    assert isinstance(box.get("error"), Cancelled)
    server.unreserve()


def test_cancel_pending_leaves_another_artists_prompt_alone(server: ComfyUIServer, emu: EmulatorThread) -> None:
    server.update_status()
    emu.set_faults(hang=True)
    with ComfyClient(emu.url, timeouts=FAST) as other:
        theirs = other.submit(graph(), client_id=OTHER_ARTIST).prompt_id
        assert wait_until(lambda: [e.prompt_id for e in other.get_queue().running] == [theirs])
        ours = uuid.uuid4().hex
        cancel = threading.Event()
        box = run_async(server, PromptRequest(ours, graph()), cancel)
        assert wait_until(lambda: ours in [e.prompt_id for e in other.get_queue().pending])
        cancel.set()
        box["thread"].join(10)
        assert isinstance(box.get("error"), Cancelled)
        queue = other.get_queue()
        assert [e.prompt_id for e in queue.running] == [theirs] and queue.pending == []
        emu.set_faults(hang=False)
        entry = wait_until(lambda: other.get_history(theirs))
        assert entry.status_str == "success"
        assert other.get_history(ours) is None


def test_cancel_running_interrupts_only_ours(server: ComfyUIServer, emu: EmulatorThread) -> None:
    server.update_status()
    emu.set_faults(hang=True)
    with ComfyClient(emu.url, timeouts=FAST) as other:
        ours = uuid.uuid4().hex
        cancel = threading.Event()
        box = run_async(server, PromptRequest(ours, graph()), cancel)
        assert wait_until(lambda: [e.prompt_id for e in other.get_queue().running] == [ours])
        theirs = other.submit(graph(), client_id=OTHER_ARTIST).prompt_id
        cancel.set()
        box["thread"].join(10)
        assert isinstance(box.get("error"), Cancelled)
        entry = wait_until(lambda: other.get_history(ours))
        assert entry.status_str == "error"
        assert any(m[0] == "execution_interrupted" for m in entry.messages)
        emu.set_faults(hang=False)
        assert wait_until(lambda: other.get_history(theirs)).status_str == "success"


def test_timeout_interrupts_and_raises(server: ComfyUIServer, emu: EmulatorThread) -> None:
    server.update_status()
    emu.set_faults(hang=True)
    pid = uuid.uuid4().hex
    with pytest.raises(JobTimeout):
        server.run_prompt(PromptRequest(pid, graph(), timeout=0.5), on_event=lambda k, d: None,
                          cancel=threading.Event())
    with ComfyClient(emu.url, timeouts=FAST) as client:
        assert wait_until(lambda: client.get_history(pid)).status_str == "error"


def test_killed_server_goes_offline_and_the_running_prompt_is_lost(tmp_path: Path) -> None:
    proc = EmulatorProcess(seconds_per_job=0.05, name="gpu-09", base_dir=tmp_path / "emu").start()
    srv = make_server(proc.url, "gpu-09")
    try:
        assert srv.update_status().state is ServerState.ONLINE
        lost = srv.lost
        proc.set_faults(hang=True)
        box = run_async(srv, PromptRequest(uuid.uuid4().hex, graph()), threading.Event())
        assert wait_until(lambda: srv.update_status().queue_running == 1)
        proc.kill()
        assert srv.update_status().state is ServerState.OFFLINE   # refused: no waiting
        assert lost.is_set()
        box["thread"].join(10)
        assert isinstance(box.get("error"), ServerUnavailable)
        assert "gpu-09" in str(box["error"])
        proc.restart()
        assert wait_until(lambda: srv.update_status().state is ServerState.ONLINE)
        assert not srv.lost.is_set() and srv.lost is not lost
    finally:
        srv.close()
        proc.stop()


@pytest.mark.parametrize("how", ["cancel", "timeout", "partial"])
def test_withdrawing_ours_never_interrupts_another_artist_on_an_old_comfyui(
        server: ComfyUIServer, emu: EmulatorThread, how: str) -> None:
    """ComfyUI < 0.3.57 ignores prompt_id on /interrupt: every withdraw checks /queue first."""
    server.update_status()
    emu.set_faults(hang=True, interrupt_ignores_prompt_id=True)
    try:
        _withdraw_beside_another_artist(server, emu, how)
    finally:
        emu.set_faults(hang=False, interrupt_ignores_prompt_id=False)


def _withdraw_beside_another_artist(server: ComfyUIServer, emu: EmulatorThread, how: str) -> None:
    with ComfyClient(emu.url, timeouts=FAST) as other:
        theirs = other.submit(graph(), client_id=OTHER_ARTIST).prompt_id
        assert wait_until(lambda: [e.prompt_id for e in other.get_queue().running] == [theirs])
        ours = uuid.uuid4().hex
        cancel = threading.Event()
        workflow = graph()
        if how == "partial":   # a 200 with node_errors: the client withdraws the valid part at once
            workflow = {**workflow, "8": {"class_type": "EmptyImage", "inputs": {"width": -5, "height": 4,
                                                                                "batch_size": 1, "color": 0}},
                        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}}}
        box = run_async(server, PromptRequest(ours, workflow, timeout=0.5 if how == "timeout" else 60.0), cancel)
        if how == "cancel":
            assert wait_until(lambda: ours in [e.prompt_id for e in other.get_queue().pending])
            cancel.set()
        box["thread"].join(20)
        assert box.get("error") is not None
        assert [e.prompt_id for e in other.get_queue().running] == [theirs]
        emu.set_faults(hang=False)
        assert wait_until(lambda: other.get_history(theirs)).status_str == "success"
        assert other.get_history(ours) is None
