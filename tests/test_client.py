"""ComfyClient: contract tests against the emulator over loopback, plus the error shapes an
emulator cannot produce (tests/loopback.py: scripted HTTP answers and raw canned sockets).
Every call goes through the production transport."""

from __future__ import annotations

import io
import json
import socket
import struct
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from comfy_cluster.client import ComfyClient
from comfy_cluster.config import ServerConfig
from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.errors import (
    ExecutionFailed,
    MissingNodes,
    ProtocolError,
    ServerTimeout,
    ServerUnavailable,
    TransferError,
    WorkflowRejected,
)
from comfy_cluster.tracker import PromptTracker
from comfy_cluster.transport import Timeouts
from comfy_cluster.wire import HistoryEntry, OutputImage, UploadedFile, parse_binary_frame
from tests.helpers import wait_until
from tests.loopback import canned, json_answer, scripted  # noqa: F401 - canned, scripted: fixtures

FAST = Timeouts(connect=1.0, read=5.0, transfer=10.0)



# -- loopback servers, for shapes no real server produces on purpose --------------------------

def test_connection_refused_is_server_unavailable() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = ComfyClient(f"http://127.0.0.1:{port}", name="gpu-02", timeouts=FAST)
    with pytest.raises(ServerUnavailable) as info:
        client.get_queue()
    assert type(info.value) is ServerUnavailable
    assert str(info.value) == "server 'gpu-02': GET /queue failed: connection refused"
    assert info.value.server == "gpu-02"


def test_read_timeout_names_the_call_and_the_seconds(canned) -> None:
    server = canned(None)
    client = ComfyClient(server.url, name="gpu-02", timeouts=Timeouts(connect=1.0, read=0.3))
    with pytest.raises(ServerTimeout) as info:
        client.submit({"1": {"class_type": "X", "inputs": {}}}, client_id="c", prompt_id="p-1")
    assert str(info.value) == "server 'gpu-02': POST /prompt timed out after 0.3 s"
    assert info.value.prompt_id == "p-1"
    assert info.value.server == "gpu-02"


def test_body_that_breaks_off_is_protocol_error(canned) -> None:
    server = canned(lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n{\"queue_running\": ["))
    with pytest.raises(ProtocolError, match=r"server '127.0.0.1:\d+': GET /queue: the answer broke off"):
        ComfyClient(server.url, timeouts=FAST).get_queue()


def test_truncated_json_is_protocol_error(canned) -> None:
    body = b'{"queue_running": [], "queue_pen'
    server = canned(lambda conn: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)))
    with pytest.raises(ProtocolError, match="GET /queue answered invalid JSON"):
        ComfyClient(server.url, name="gpu-01", timeouts=FAST).get_queue()


def test_declared_huge_body_is_refused_before_reading(canned) -> None:
    server = canned(lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n{}"))
    with pytest.raises(ProtocolError, match="99999999999 bytes, more than the 16777216 byte limit"):
        ComfyClient(server.url, timeouts=FAST).get_system_stats()


def test_endless_chunked_body_is_cut_at_the_cap(canned) -> None:
    sent = []

    def endless(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b" " * 65536
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        for _ in range(1024):          # 64 MiB at most; the client must hang up long before
            conn.sendall(frame)
            sent.append(len(chunk))

    server = canned(endless)
    with pytest.raises(ProtocolError, match="more than the 16777216 byte limit"):
        ComfyClient(server.url, timeouts=FAST).queue_remaining()
    assert sum(sent) < 48 * 2**20


def test_streamed_download_over_the_cap_leaves_no_file(canned, tmp_path: Path) -> None:
    def chunked(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(64):
            conn.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
        conn.sendall(b"0\r\n\r\n")

    server = canned(chunked)
    image = OutputImage(filename="big_00001_.png", subfolder="", type="output", node_id="9")
    dest = tmp_path / "big.png"
    with pytest.raises(ProtocolError, match=r"GET /view answered \d+ bytes, more than the 10000 byte limit \(file 'big_00001_.png' of node 9\)"):
        ComfyClient(server.url, timeouts=FAST).download(image, dest, max_bytes=10_000)
    assert not dest.exists()


def test_html_instead_of_json_is_protocol_error(scripted) -> None:
    server = scripted(lambda r: (200, {"Content-Type": "text/html"}, b"<html>login</html>"))
    with pytest.raises(ProtocolError, match="GET /system_stats answered invalid JSON .*<html>login</html>"):
        ComfyClient(server.url, name="gpu-01", timeouts=FAST).get_system_stats()


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_names_the_variable_never_the_token(scripted, status: int) -> None:
    server = scripted(lambda r: (status, {}, b"denied"))
    cfg = ServerConfig(name="gpu-03", ip="127.0.0.1", port=server.port, auth_token_env="GPU03_TOKEN")
    client = ComfyClient.from_config(cfg, environ={"GPU03_TOKEN": "s3cret-token-value"}, timeouts=FAST)
    with pytest.raises(ServerUnavailable) as info:
        client.get_system_stats()
    assert server.requests[0].headers["authorization"] == "Bearer s3cret-token-value"
    text = str(info.value)
    assert f"authentication failed (HTTP {status})" in text
    assert "$GPU03_TOKEN" in text
    assert "s3cret" not in text and "s3cret" not in repr(client)


def test_bad_gateway_html_is_server_unavailable_with_an_excerpt(scripted) -> None:
    html = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
    server = scripted(lambda r: (502, {"Content-Type": "text/html"}, html))
    with pytest.raises(ServerUnavailable) as info:
        ComfyClient(server.url, name="gpu-01", timeouts=FAST).submit({}, client_id="c", prompt_id="p-9")
    assert type(info.value) is ServerUnavailable
    assert str(info.value).startswith("server 'gpu-01': POST /prompt failed with HTTP 502: <html><head><title>502")
    assert info.value.prompt_id == "p-9"


def test_connection_reset_is_server_unavailable(canned) -> None:
    def reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close sends RST

    server = canned(reset)
    with pytest.raises(ServerUnavailable, match="GET /prompt failed: connection reset by the server"):
        ComfyClient(server.url, name="gpu-01", timeouts=FAST).queue_remaining()


def test_base_url_path_and_api_prefix_are_joined(scripted) -> None:
    server = scripted(lambda r: json_answer(b'{"exec_info": {"queue_remaining": 3}}'))
    client = ComfyClient(f"{server.url}/comfy/", api_prefix="api/", name="proxy", timeouts=FAST)
    assert client.queue_remaining() == 3
    assert server.paths() == ["/comfy/api/prompt"]
    secure = ComfyClient("https://farm.studio.lan/comfy/", api_prefix="api/")
    assert secure.ws_url("a b/c") == "wss://farm.studio.lan/comfy/api/ws?clientId=a%20b%2Fc"
    assert ComfyClient("http://10.0.0.5:8188").ws_url("x") == "ws://10.0.0.5:8188/ws?clientId=x"


def test_from_config_merges_headers_and_brackets_ipv6() -> None:
    cfg = ServerConfig(name="gpu-v6", ip="::1", port=8190, headers={"X-Studio": "nuke"})
    client = ComfyClient.from_config(cfg, environ={})
    assert client.base_url == "http://[::1]:8190"
    assert client.name == "gpu-v6"
    assert client.headers == {"X-Studio": "nuke"}


def test_interrupt_and_free_always_send_json_bodies(scripted) -> None:
    server = scripted(lambda r: (200, {}, b""))
    client = ComfyClient(server.url, name="gpu-01", timeouts=FAST)
    client.interrupt()
    client.interrupt("p-1")
    client.free(unload_models=True)
    assert server.paths() == ["/interrupt", "/interrupt", "/free"]
    assert all(r.headers["content-type"] == "application/json" for r in server.requests)
    assert [json.loads(r.body) for r in server.requests] == [{}, {"prompt_id": "p-1"},
                                                             {"unload_models": True, "free_memory": False}]


def test_older_servers_reject_unknown_classes_in_their_own_words(scripted) -> None:
    answer = {"error": {"type": "invalid_prompt", "message": "Cannot execute because node Eff. Loader SDXL "
                        "does not exist.", "details": "Node ID '#7'", "extra_info": {}}, "node_errors": {}}
    server = scripted(lambda r: json_answer(json.dumps(answer).encode(), 400))
    with pytest.raises(MissingNodes) as info:
        ComfyClient(server.url, name="gpu-01", timeouts=FAST).submit({}, client_id="c")
    assert info.value.missing == {"Eff. Loader SDXL"}
    assert info.value.server == "gpu-01"
    assert "Node ID '#7'" in str(info.value)


# -- pure parsing ------------------------------------------------------------------------------

def test_binary_preview_frames_are_parsed_by_type() -> None:
    jpeg = b"\xff\xd8jpegdata"
    event = parse_binary_frame(struct.pack(">II", 1, 1) + jpeg)
    assert (event.type, event.data["format"], event.data["image"], event.prompt_id) == ("preview", "jpeg", jpeg, None)

    meta = json.dumps({"node_id": "9", "prompt_id": "p-7", "image_type": "image/png"}).encode()
    event = parse_binary_frame(struct.pack(">II", 4, len(meta)) + meta + b"\x89PNG...")
    assert event.prompt_id == "p-7"
    assert (event.data["node_id"], event.data["format"], event.data["image"]) == ("9", "png", b"\x89PNG...")

    event = parse_binary_frame(struct.pack(">II", 3, 2) + b"12" + "width: 33, height: 22\n ✓".encode())
    assert event.type == "progress_text"
    assert event.data == {"node": "12", "text": "width: 33, height: 22\n ✓"}


@pytest.mark.parametrize("payload", [
    b"",
    b"\x00\x00",
    struct.pack(">I", 99) + b"whatever",                       # unknown type
    struct.pack(">I", 1) + b"\x00",                            # preview cut inside the format word
    struct.pack(">II", 4, 500) + b"{}",                        # metadata longer than the frame
    struct.pack(">II", 4, 5) + b"{oops" + b"img",              # metadata that is not JSON
    struct.pack(">II", 4, 2) + b"[]" + b"img",                 # metadata that is not an object
    struct.pack(">II", 3, 9) + b"1",                           # node id longer than the frame
    b'{"type": "status", "data": {}}',                         # JSON sent as binary is not parsed
])
def test_malformed_binary_frames_are_skipped(payload: bytes) -> None:
    assert parse_binary_frame(payload) is None


def test_history_images_sort_by_numeric_node_id_then_order() -> None:
    entry = HistoryEntry(prompt_id="p", status_str="success", completed=True, outputs={
        "10": {"images": [{"filename": "c.png", "subfolder": "", "type": "output"}]},
        "9": {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"},
                         {"filename": "b.png", "subfolder": "s", "type": "temp"}]},
        "11": {"text": ["not an image"]},
    })
    assert [(i.node_id, i.filename, i.type) for i in entry.images] == [
        ("9", "a.png", "output"), ("9", "b.png", "temp"), ("10", "c.png", "output")]


def test_uploaded_file_load_image_value() -> None:
    assert UploadedFile("a.png", "", "input").load_image_value == "a.png"
    assert UploadedFile("a.png", "shots/010", "input").load_image_value == "shots/010/a.png"
    assert UploadedFile("a.png", "", "temp").load_image_value == "a.png [temp]"


# -- contract tests against the emulator -------------------------------------------------------

CLIENT_ID = "nuke-artist-01"


@pytest.fixture
def emu() -> Iterator[EmulatorThread]:
    server = EmulatorThread(name="gpu-01").start()
    try:
        yield server
    finally:
        server.set_faults(hang=False)
        server.stop()


@pytest.fixture
def client(emu: EmulatorThread) -> Iterator[ComfyClient]:
    with ComfyClient(emu.url, name="gpu-01", timeouts=FAST) as c:
        yield c


@pytest.fixture
def tracker(client: ComfyClient) -> Iterator[PromptTracker]:
    with PromptTracker(client, CLIENT_ID, poll_interval=0.1) as t:
        assert t.wait_connected(5)
        yield t


def solid(color: int, prefix: str, width: int = 64, height: int = 48) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1,
                                                      "color": color}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def run(client: ComfyClient, tracker: PromptTracker, prompt: dict, **submit_kw) -> HistoryEntry:
    pid = uuid.uuid4().hex
    watch = tracker.watch(pid)
    client.submit(prompt, client_id=CLIENT_ID, prompt_id=pid, **submit_kw)
    return watch.wait(10)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_submit_wait_download_gives_the_rendered_pixels(client, tracker, tmp_path: Path) -> None:
    entry = run(client, tracker, solid(0xFF00FF, "shots/sh010/comp"))
    assert entry.status_str == "success"
    [image] = entry.images
    assert (image.node_id, image.subfolder, image.type) == ("3", "shots/sh010", "output")
    dest = client.download(image, tmp_path / "frame.png")
    out = pixels(dest)
    assert out.shape == (48, 64, 3)
    assert (out == np.array([255, 0, 255], dtype=np.uint8)).all()


def test_invert_of_an_uploaded_frame_matches_comfyui_float32_arithmetic(client, tracker, tmp_path: Path) -> None:
    rng = np.random.default_rng(1001)
    plate = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    uploaded = client.upload_image(png(plate), f"plate_{uuid.uuid4().hex[:8]}.png", subfolder="sh010")
    assert uploaded.subfolder == "sh010" and uploaded.type == "input"
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": uploaded.load_image_value}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    out = pixels(client.download(run(client, tracker, graph).images[0], tmp_path / "inv.png"))
    x = plate.astype(np.float32) / np.float32(255.0)
    expected = np.clip(np.float32(255.0) * (np.float32(1.0) - x), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert (out != 255 - plate).any()          # the naive inverse is not what ComfyUI writes


def test_upload_overwrite_flag_and_path_input(client, tmp_path: Path) -> None:
    first = tmp_path / "plate.png"
    first.write_bytes(png(np.zeros((4, 4, 3), dtype=np.uint8)))
    other = png(np.full((4, 4, 3), 200, dtype=np.uint8))
    assert client.upload_image(first, "plate.png").name == "plate.png"
    assert client.upload_image(other, "plate.png", overwrite=False).name == "plate (1).png"
    assert client.upload_image(other, "plate.png", overwrite=True).name == "plate.png"
    with pytest.raises(TransferError, match="cannot read"):
        client.upload_image(tmp_path / "missing.png", "missing.png")


def test_400_names_every_node_and_input(client) -> None:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 99999, "height": 48, "batch_size": 1, "color": 0}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "y"}},
    }
    with pytest.raises(WorkflowRejected) as info:
        client.submit(graph, client_id=CLIENT_ID, prompt_id="p-400")
    err = info.value
    lines = str(err).splitlines()
    assert lines[0] == ("server 'gpu-01' rejected prompt p-400: Prompt outputs failed validation "
                        "[prompt_outputs_failed_validation]")
    assert "  node 3 (SaveImage) input 'images': Required input is missing" in lines
    assert any(line.startswith("  node 1 (EmptyImage) input 'width': ") and "16384" in line for line in lines)
    assert err.error_type == "prompt_outputs_failed_validation"
    assert set(err.node_errors) == {"1", "3"}
    assert (err.server, err.prompt_id, err.server_specific) == ("gpu-01", "p-400", False)


def test_unknown_class_is_missing_nodes(client) -> None:
    graph = {"1": {"class_type": "KSamplerAdvancedPlus", "inputs": {}},
             "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    with pytest.raises(MissingNodes) as info:
        client.submit(graph, client_id=CLIENT_ID, prompt_id="p-m")
    assert info.value.missing == {"KSamplerAdvancedPlus"}
    assert info.value.server_specific
    assert str(info.value) == "server 'gpu-01' has no node class 'KSamplerAdvancedPlus' (Node ID '#1')"


def partial_graph() -> dict:
    graph = solid(0x00FF00, "partial")
    graph["4"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "broken"}}
    return graph


def test_partial_ok_runs_the_valid_outputs_and_reports_the_rest(client, tracker) -> None:
    pid = uuid.uuid4().hex
    watch = tracker.watch(pid)
    result = client.submit(partial_graph(), client_id=CLIENT_ID, prompt_id=pid, partial_ok=True)
    assert result.prompt_id == pid and set(result.node_errors) == {"4"}
    assert [i.node_id for i in watch.wait(10).images] == ["3"]


def test_partial_prompt_is_withdrawn_from_the_queue(emu, client) -> None:
    emu.set_faults(hang=True)
    blocker = client.submit(solid(1, "blocker"), client_id=CLIENT_ID).prompt_id
    assert wait_until(lambda: [e.prompt_id for e in client.get_queue().running] == [blocker])
    with pytest.raises(WorkflowRejected) as info:
        client.submit(partial_graph(), client_id=CLIENT_ID, prompt_id="p-partial")
    assert "node 4 (SaveImage) input 'images': Required input is missing" in str(info.value)
    assert "only in part" in str(info.value) and info.value.prompt_id == "p-partial"
    queue = client.get_queue()
    assert [e.prompt_id for e in queue.pending] == [] and [e.prompt_id for e in queue.running] == [blocker]
    client.interrupt(blocker)


def test_partial_prompt_that_already_started_is_interrupted(emu, client) -> None:
    emu.set_faults(seconds_per_job=5.0)        # it starts at once and is still running when withdrawn
    with pytest.raises(WorkflowRejected):
        client.submit(partial_graph(), client_id=CLIENT_ID, prompt_id="p-started")
    assert wait_until(lambda: client.get_history("p-started") is not None)
    entry = client.get_history("p-started")
    assert entry.status_str == "error"
    assert "execution_interrupted" in [m[0] for m in entry.messages]


def test_queue_is_parsed_sorted_deleted_and_interrupted_by_id(emu, client) -> None:
    emu.set_faults(hang=True)
    blocker = client.submit(solid(2, "q0"), client_id=CLIENT_ID).prompt_id
    assert wait_until(lambda: len(client.get_queue().running) == 1)
    numbered = client.submit(solid(3, "q1"), client_id=CLIENT_ID, number=5)
    counted = client.submit(solid(4, "q2"), client_id=CLIENT_ID)
    fronted = client.submit(solid(5, "q3"), client_id=CLIENT_ID, front=True)
    half = client.submit(solid(6, "q4"), client_id=CLIENT_ID, number=0.5)
    assert numbered.number == 5 and half.number == 0.5 and fronted.number < 0
    queue = client.get_queue()
    assert [e.prompt_id for e in queue.running] == [blocker]
    by_number = sorted([numbered, counted, fronted, half], key=lambda r: r.number)
    assert [e.prompt_id for e in queue.pending] == [r.prompt_id for r in by_number]
    assert queue.pending[0].prompt_id == fronted.prompt_id
    first = queue.pending[0]
    assert (first.client_id, first.outputs, first.prompt["3"]["inputs"]["filename_prefix"]) == (CLIENT_ID, ["3"], "q3")
    assert client.queue_remaining() == 5

    client.delete_pending([numbered.prompt_id, half.prompt_id])
    client.delete_pending([])
    assert [e.prompt_id for e in client.get_queue().pending] == [fronted.prompt_id, counted.prompt_id]

    client.interrupt(fronted.prompt_id)        # pending, not running: nothing happens
    assert [e.prompt_id for e in client.get_queue().running] == [blocker]
    client.interrupt(blocker)
    assert wait_until(lambda: client.get_history(blocker) is not None)
    assert client.get_history(blocker).status_str == "error"
    emu.set_faults(hang=False)
    assert wait_until(lambda: client.queue_remaining() == 0)
    assert client.get_history(counted.prompt_id).status_str == "success"


def test_unknown_history_is_none(client) -> None:
    assert client.get_history(uuid.uuid4().hex) is None


def test_api_prefix_serves_the_same_protocol(emu, tmp_path: Path) -> None:
    with ComfyClient(emu.url + "/", name="gpu-01", api_prefix="/api", timeouts=FAST) as api:
        assert api.ws_url("c").endswith("/api/ws?clientId=c")
        with PromptTracker(api, CLIENT_ID) as tracker:
            assert tracker.wait_connected(5)
            entry = run(api, tracker, solid(0x0000FF, "api"))
        assert api.get_history(entry.prompt_id).outputs == entry.outputs
        assert (pixels(api.download(entry.images[0], tmp_path / "a.png")) == [0, 0, 255]).all()


def test_system_stats_object_info_and_free(client) -> None:
    stats = client.get_system_stats()
    assert stats.comfyui_version == "0.3.64"
    assert stats.devices and stats.devices[0].vram_total >= stats.devices[0].vram_free > 0
    assert isinstance(stats.argv, list) and "system" in stats.raw
    classes = client.node_classes()
    assert {"LoadImage", "SaveImage", "ImageInvert", "ImageBlur"} <= classes
    assert client.get_object_info()["SaveImage"]["output_node"] is True
    client.free(unload_models=True, free_memory=True)


def test_bad_json_and_http_500_faults_become_clear_errors(emu, client) -> None:
    emu.set_faults(bad_json=True)
    with pytest.raises(ProtocolError, match="server 'gpu-01': GET /queue answered invalid JSON"):
        client.get_queue()
    with pytest.raises(ProtocolError, match="GET /history/p-1 answered invalid JSON"):
        client.get_history("p-1")
    emu.set_faults(bad_json=False, http_500=True)
    with pytest.raises(ServerUnavailable) as info:
        client.queue_remaining()
    assert str(info.value).startswith("server 'gpu-01': GET /prompt failed with HTTP 500: 500 Internal Server Error")


def test_download_cap_and_missing_file(client, tracker, tmp_path: Path) -> None:
    image = run(client, tracker, solid(0x123456, "cap", 256, 256)).images[0]
    dest = tmp_path / "big.png"
    with pytest.raises(ProtocolError, match=r"GET /view answered \d+ bytes, more than the 100 byte limit"):
        client.download(image, dest, max_bytes=100)
    assert not dest.exists()
    gone = OutputImage(filename="nope_00001_.png", subfolder="", type="output", node_id="3")
    with pytest.raises(TransferError, match=r"could not fetch 'nope_00001_.png' of node 3 \(HTTP 404\)"):
        client.download(gone, tmp_path / "nope.png")
    assert not (tmp_path / "nope.png").exists()


def test_execution_error_reaches_the_waiter(emu, client, tracker) -> None:
    emu.set_faults(fail_node="ImageInvert", fail_exception_type="torch.OutOfMemoryError",
                   fail_message="CUDA out of memory")
    graph = solid(0, "oom")
    graph["2"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    graph["3"]["inputs"]["images"] = ["2", 0]
    with pytest.raises(ExecutionFailed) as info:
        run(client, tracker, graph)
    err = info.value
    assert "node 2 (ImageInvert) raised torch.OutOfMemoryError: CUDA out of memory" in str(err)
    assert (err.node_id, err.node_type, err.server) == ("2", "ImageInvert", "gpu-01")
    assert err.server_specific                  # out of memory: another GPU may manage


def test_queue_probe_survives_a_restart(emulator_factory) -> None:
    """A pooled connection to a killed server fails the call; once it is back, a fresh one is made."""
    proc = emulator_factory(name="gpu-07")
    client = ComfyClient(proc.url, name="gpu-07", timeouts=FAST)
    client.get_queue()
    proc.kill()
    with pytest.raises(ServerUnavailable, match="server 'gpu-07': GET /queue"):
        client.get_queue()
    proc.restart()
    assert client.get_queue().pending == []


def test_queue_probe_auth_failure_names_the_variable(canned) -> None:
    server = canned(lambda conn: conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ndenied"))
    cfg = ServerConfig(name="gpu-03", ip="127.0.0.1", port=server.port, auth_token_env="GPU03_TOKEN")
    client = ComfyClient.from_config(cfg, environ={"GPU03_TOKEN": "s3cret-token-value"}, timeouts=FAST)
    with pytest.raises(ServerUnavailable, match=r"authentication failed \(HTTP 401\); check the token in \$GPU03_TOKEN"):
        client.get_queue()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"11\r\n{\"queue_running\":\r\n19\r\n [], \"queue_pending\": []}\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"queue_running\": [], \"queue_pending\": []}",
])
def test_queue_probe_reads_chunked_and_close_delimited_answers(canned, answer: bytes) -> None:
    """A proxy in front of ComfyUI may answer chunked or close-delimited; the probe reads both."""

    def reply(conn: socket.socket) -> None:
        conn.sendall(answer)
        conn.close()

    queue = ComfyClient(canned(reply).url, timeouts=FAST).get_queue()
    assert queue.running == [] and queue.pending == []


def test_recent_history_is_the_newest_prompts_oldest_first(client: ComfyClient, tracker: PromptTracker) -> None:
    done = [run(client, tracker, solid(color, f"recent/{i}")).prompt_id
            for i, color in enumerate((0x110000, 0x220000, 0x330000))]
    # execution_success (which ends the wait) goes out before ComfyUI stores the history entry
    recent = wait_until(lambda: (r := client.get_recent_history(2)) and r[-1].prompt_id == done[-1] and r,
                        what="the last prompt in the history")
    assert [entry.prompt_id for entry in recent] == done[1:]
    assert all(entry.status_str == "success" for entry in recent)
