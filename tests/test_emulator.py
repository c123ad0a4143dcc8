"""The ComfyUI emulator, over real loopback HTTP and websockets, against comfyui_api.md."""

from __future__ import annotations

import contextlib
import io
import json
import time

import numpy as np
import pytest
import requests
import websocket
from PIL import Image

from comfy_cluster.emulator.process import EmulatorProcess, EmulatorThread
from tests.helpers import wait_until

TIMEOUT = 10.0


def graph(color: int = 0xFF0000, prefix: str = "test/run", width: int = 64, height: int = 48, batch: int = 1) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def post(url: str, prompt: dict | None, **body) -> requests.Response:
    if prompt is not None:
        body["prompt"] = prompt
    return requests.post(f"{url}/prompt", json=body, timeout=TIMEOUT)


def wait_history(url: str, prompt_id: str, timeout: float = TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = requests.get(f"{url}/history/{prompt_id}", timeout=TIMEOUT).json()
        if prompt_id in entry:
            return entry[prompt_id]
        time.sleep(0.01)
    raise AssertionError(f"prompt {prompt_id} not in history after {timeout} s")


def run(url: str, prompt: dict, **body) -> dict:
    response = post(url, prompt, **body)
    assert response.status_code == 200, response.text
    return wait_history(url, response.json()["prompt_id"])



def view(url: str, image: dict) -> np.ndarray:
    response = requests.get(f"{url}/view", params=image, timeout=TIMEOUT)
    assert response.status_code == 200, response.status_code
    return np.asarray(Image.open(io.BytesIO(response.content)))


def upload(url: str, name: str, data: bytes, **fields) -> requests.Response:
    return requests.post(f"{url}/upload/image", files={"image": (name, data, "image/png")}, data=fields, timeout=TIMEOUT)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class Socket:
    """A websocket client that records every JSON message it reads."""

    def __init__(self, url: str, client_id: str) -> None:
        self.ws = websocket.create_connection(url.replace("http://", "ws://") + f"/ws?clientId={client_id}", timeout=TIMEOUT)
        self.messages: list[dict] = []

    def recv(self) -> dict | bytes:
        frame = self.ws.recv()
        if isinstance(frame, bytes):
            return frame
        message = json.loads(frame)
        self.messages.append(message)
        return message

    def until(self, predicate) -> dict:
        while True:
            message = self.recv()
            if isinstance(message, dict) and predicate(message):
                return message

    def until_done(self, prompt_id: str) -> list[dict]:
        start = len(self.messages)
        self.until(lambda m: m["type"] == "executing" and m["data"]["node"] is None and m["data"].get("prompt_id") == prompt_id)
        return self.messages[start:]

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def sockets():
    opened: list[Socket] = []

    def connect(url: str, client_id: str) -> Socket:
        sock = Socket(url, client_id)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


# --- pixels ------------------------------------------------------------------------------


def test_invert_of_loaded_frame_is_float32_truncation_not_255_minus_x(emulator):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    assert upload(emulator.url, "plate.png", png_bytes(pixels)).json() == {"name": "plate.png", "subfolder": "", "type": "input"}
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    entry = run(emulator.url, prompt)
    assert entry["status"]["status_str"] == "success"
    out = view(emulator.url, entry["outputs"]["3"]["images"][0])
    expected = np.clip(255.0 * (1.0 - pixels.astype(np.float32) / 255.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    off_by_one = np.mean(out != 255 - pixels)
    assert 0.4 < off_by_one < 0.8, off_by_one


def test_empty_image_colour_and_png_metadata(emulator):
    entry = run(emulator.url, {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 1, "color": 0x12AB7F}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "solid"}},
    }, extra_data={"extra_pnginfo": {"workflow": {"shot": "sq010_sh0040"}}})
    image = entry["outputs"]["2"]["images"][0]
    assert image == {"filename": "solid_00001_.png", "subfolder": "", "type": "output"}
    out = view(emulator.url, image)
    assert out.shape == (4, 8, 3)
    channels = [np.float32(v / 0xFF) for v in (0x12, 0xAB, 0x7F)]
    expected = [int(np.clip(np.float32(255.0) * c, 0, 255)) for c in channels]
    assert out.reshape(-1, 3).tolist() == [expected] * 32
    png = Image.open(emulator.base_dir / "output" / "solid_00001_.png")
    assert json.loads(png.text["prompt"])["1"]["inputs"]["color"] == 0x12AB7F
    assert json.loads(png.text["workflow"]) == {"shot": "sq010_sh0040"}


def test_blur_crop_scale_and_blend_arithmetic(emulator):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 20, "batch_size": 1, "color": 0x808080}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.0}},
        "3": {"class_type": "ImageCrop", "inputs": {"image": ["2", 0], "width": 16, "height": 16, "x": 100, "y": 4}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "bilinear", "width": 20,
                                                     "height": 0, "crop": "disabled"}},
        "5": {"class_type": "EmptyImage", "inputs": {"width": 7, "height": 7, "batch_size": 1, "color": 0x0000FF}},
        "6": {"class_type": "ImageBlend", "inputs": {"image1": ["4", 0], "image2": ["5", 0], "blend_factor": 1.0,
                                                     "blend_mode": "screen"}},
        "7": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "area", "scale_by": 0.26}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "crop"}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "blend"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "scaleby"}},
    }
    entry = run(emulator.url, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    grey = int(np.clip(255.0 * np.float32(0x80 / 0xFF), 0, 255))
    crop = view(emulator.url, entry["outputs"]["10"]["images"][0])
    assert crop.shape == (16, 1, 3)  # x clamped to width-1, so only one column is left
    assert np.all(np.abs(crop.astype(int) - grey) <= 1)  # a blurred flat field stays flat
    blend = view(emulator.url, entry["outputs"]["11"]["images"][0])
    assert blend.shape == (10, 20, 3)  # height 0 kept the 2:1 aspect
    assert np.all(blend[..., 2] >= 254) and np.all(np.abs(blend[..., :2].astype(int) - grey) <= 1)
    assert view(emulator.url, entry["outputs"]["12"]["images"][0]).shape == (5, 10, 3)  # round(20*0.26), round(40*0.26)


def test_blur_spreads_a_point_with_the_normalised_grid_kernel(emulator):
    pixels = np.zeros((9, 9, 3), dtype=np.uint8)
    pixels[4, 4] = 255
    upload(emulator.url, "dot.png", png_bytes(pixels))
    entry = run(emulator.url, {
        "1": {"class_type": "LoadImage", "inputs": {"image": "dot.png"}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "dot"}},
    })
    out = view(emulator.url, entry["outputs"]["3"]["images"][0])[..., 0]
    axis = np.linspace(-1, 1, 3)
    kernel = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / 2.0)
    kernel /= kernel.sum()
    assert np.all(np.abs(out[3:6, 3:6].astype(int) - np.floor(255 * kernel).astype(int)) <= 1)
    assert out.sum() == out[3:6, 3:6].sum()


# --- saving --------------------------------------------------------------------------


def test_save_counter_subfolders_and_tokens(emulator):
    first = run(emulator.url, graph(color=1, prefix="sq010/comp/beauty", batch=2))
    assert [i["filename"] for i in first["outputs"]["3"]["images"]] == ["beauty_00001_.png", "beauty_00002_.png"]
    assert {i["subfolder"] for i in first["outputs"]["3"]["images"]} == {"sq010/comp"}
    second = run(emulator.url, graph(color=2, prefix="sq010/comp/beauty"))
    assert second["outputs"]["3"]["images"][0]["filename"] == "beauty_00003_.png"
    assert (emulator.base_dir / "output" / "sq010" / "comp" / "beauty_00003_.png").is_file()
    tokens = run(emulator.url, graph(color=3, prefix="res_%width%x%height%_%year%", width=33, height=22))
    assert tokens["outputs"]["3"]["images"][0]["filename"] == f"res_33x22_{time.localtime().tm_year}_00001_.png"


def test_prefix_escaping_the_output_dir_fails_at_run_time(emulator):
    response = post(emulator.url, graph(prefix="../../escape"))
    assert response.status_code == 200 and response.json()["node_errors"] == {}
    entry = wait_history(emulator.url, response.json()["prompt_id"])
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    error = dict(entry["status"]["messages"])["execution_error"]
    assert error["node_id"] == "3" and error["node_type"] == "SaveImage"
    assert "outside the output folder" in error["exception_message"] and error["exception_type"] == "Exception"
    assert sorted(error["executed"]) == ["1", "2"]
    assert not list((emulator.base_dir).parent.glob("escape*"))


def test_preview_image_goes_to_temp(emulator):
    entry = run(emulator.url, {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    })
    image = entry["outputs"]["2"]["images"][0]
    assert image["type"] == "temp" and image["subfolder"] == ""
    assert image["filename"].startswith("ComfyUI_temp_") and image["filename"].endswith("_00001_.png")
    assert len(image["filename"].split("_")[2]) == 5
    assert view(emulator.url, image).shape == (4, 4, 3)


# --- cache ---------------------------------------------------------------------------


def test_identical_resubmission_is_cached_and_writes_nothing(emulator, sockets):
    sock = sockets(emulator.url, "artist")
    sock.recv()
    first = post(emulator.url, graph(prefix="cache/run"), client_id="artist").json()["prompt_id"]
    sock.until_done(first)
    files = sorted(p.name for p in (emulator.base_dir / "output" / "cache").iterdir())
    again = post(emulator.url, graph(prefix="cache/run"), client_id="artist").json()["prompt_id"]
    messages = sock.until_done(again)
    cached = next(m for m in messages if m["type"] == "execution_cached")
    assert sorted(cached["data"]["nodes"]) == ["1", "2", "3"]
    assert not [m for m in messages if m["type"] == "executing" and m["data"]["node"] is not None]
    executed = next(m for m in messages if m["type"] == "executed")
    assert executed["data"]["output"]["images"][0]["filename"] == "run_00001_.png"
    assert sorted(p.name for p in (emulator.base_dir / "output" / "cache").iterdir()) == files
    assert wait_history(emulator.url, again)["outputs"]["3"]["images"][0]["filename"] == "run_00001_.png"

    renamed = post(emulator.url, graph(prefix="cache/other"), client_id="artist").json()["prompt_id"]
    messages = sock.until_done(renamed)
    assert sorted(next(m for m in messages if m["type"] == "execution_cached")["data"]["nodes"]) == ["1", "2"]
    assert [m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]] == ["3"]


def test_cache_follows_the_loaded_file_content(emulator):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "frame.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "frame"}},
    }
    upload(emulator.url, "frame.png", png_bytes(np.full((4, 4, 3), 10, np.uint8)))
    assert run(emulator.url, prompt)["outputs"]["2"]["images"][0]["filename"] == "frame_00001_.png"
    upload(emulator.url, "frame.png", png_bytes(np.full((4, 4, 3), 200, np.uint8)), overwrite="true")
    entry = run(emulator.url, prompt)
    assert entry["outputs"]["2"]["images"][0]["filename"] == "frame_00002_.png"
    assert view(emulator.url, entry["outputs"]["2"]["images"][0])[0, 0, 0] == 200


# --- validation ----------------------------------------------------------------------


def test_partial_validation_answers_200_and_runs_only_the_good_output(emulator):
    prompt = graph(prefix="good")
    prompt["4"] = {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 99, "sigma": 1.0}}
    prompt["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "bad"}}
    response = post(emulator.url, prompt)
    assert response.status_code == 200
    body = response.json()
    assert body["node_errors"]["4"]["class_type"] == "ImageBlur"
    assert body["node_errors"]["4"]["dependent_outputs"] == ["5"]
    error = body["node_errors"]["4"]["errors"][0]
    assert error["type"] == "value_bigger_than_max" and error["details"] == "blur_radius"
    assert error["message"] == "Value 99 bigger than max of 31"
    assert list(wait_history(emulator.url, body["prompt_id"])["outputs"]) == ["3"]


@pytest.mark.parametrize("node, kind, details", [
    ({"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}, "required_input_missing", "filename_prefix"),
    ({"class_type": "SaveImage", "inputs": {"images": ["1", 0, 1], "filename_prefix": "x"}}, "bad_linked_input", "images"),
    ({"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "x"}}, "return_type_mismatch",
     "images, received_type(MASK) mismatch input_type(IMAGE)"),
])
def test_rejected_outputs_answer_400_with_node_errors(emulator, node, kind, details):
    prompt = {"1": graph()["1"], "9": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8, "height": 8}}, "3": node}
    response = post(emulator.url, prompt)
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["error"]["message"] == "Prompt outputs failed validation"
    errors = body["node_errors"]["3"]["errors"]
    assert errors[0]["type"] == kind and errors[0]["details"] == details
    assert body["node_errors"]["3"]["dependent_outputs"] == ["3"]


@pytest.mark.parametrize("inputs, kind", [
    ({"width": "wide"}, "invalid_input_type"),
    ({"width": 0}, "value_smaller_than_min"),
])
def test_literal_value_errors_sit_on_the_upstream_node(emulator, inputs, kind):
    prompt = graph()
    prompt["1"]["inputs"].update(inputs)
    body = post(emulator.url, prompt).json()
    assert body["node_errors"]["1"]["errors"][0]["type"] == kind
    assert body["node_errors"]["1"]["dependent_outputs"] == ["3"]
    assert "2" not in body["node_errors"] and "3" not in body["node_errors"]


def test_combo_and_load_image_validation(emulator):
    scale = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "magic", "width": 8, "height": 8,
                                                    "crop": "disabled"}}
    body = post(emulator.url, {"1": graph()["1"], "2": scale,
                               "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}).json()
    error = body["node_errors"]["2"]["errors"][0]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == "upscale_method: 'magic' not in ['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']"
    body = post(emulator.url, {"1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
                               "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}).json()
    error = body["node_errors"]["1"]["errors"][0]
    assert error["type"] == "custom_validation_failed" and error["details"] == "image - Invalid image file: missing.png"


def test_prompt_level_errors_and_the_number_counter(emulator):
    assert post(emulator.url, None).json()["error"]["type"] == "no_prompt"
    unknown = graph()
    unknown["2"]["class_type"] = "KSamplerOfDoom"
    body = post(emulator.url, unknown).json()
    assert body["error"]["type"] == "invalid_prompt" and body["error"]["details"] == "Node ID '#2'"
    no_class = post(emulator.url, {"1": {"inputs": {}}}).json()
    assert no_class["error"]["type"] == "invalid_prompt"
    no_outputs = {"1": graph()["1"]}
    assert post(emulator.url, no_outputs).json()["error"]["type"] == "prompt_no_outputs"
    assert post(emulator.url, graph(), partial_execution_targets=["1"]).json()["error"]["type"] == "prompt_no_outputs"
    accepted = post(emulator.url, graph(), prompt_id="my-own-id").json()
    assert accepted == {"prompt_id": "my-own-id", "number": 5, "node_errors": {}}  # five rejected posts counted
    assert post(emulator.url, graph(), number=2.5).json()["number"] == 2.5


def test_capabilities_follow_node_classes(emulator_thread_factory):
    emu = emulator_thread_factory(name="no-blur", node_classes=["EmptyImage", "SaveImage"])
    info = requests.get(f"{emu.url}/object_info", timeout=TIMEOUT).json()
    assert sorted(info) == ["EmptyImage", "SaveImage"]
    assert info["SaveImage"]["output_node"] is True and info["SaveImage"]["input_order"]["required"] == ["images", "filename_prefix"]
    assert requests.get(f"{emu.url}/object_info/ImageBlur", timeout=TIMEOUT).json() == {}
    prompt = {"1": graph()["1"], "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}
    body = post(emu.url, prompt).json()
    assert body["error"]["type"] == "invalid_prompt" and "ImageBlur does not exist" in body["error"]["message"]


def test_discovery_routes(emulator):
    stats = requests.get(f"{emulator.url}/api/system_stats", timeout=TIMEOUT).json()
    assert stats["system"]["comfyui_version"] == "0.3.64"
    argv = stats["system"]["argv"]
    assert argv[argv.index("--output-directory") + 1] == str(emulator.base_dir.resolve() / "output")
    device = stats["devices"][0]
    assert device["type"] == "cuda" and device["vram_total"] >= device["vram_free"] > 0
    assert {"torch_vram_total", "torch_vram_free", "name", "index"} <= set(device)
    upload(emulator.url, "a.png", png_bytes(np.zeros((2, 2, 3), np.uint8)))
    load = requests.get(f"{emulator.url}/object_info/LoadImage", timeout=TIMEOUT).json()["LoadImage"]
    assert load["input"]["required"]["image"][0] == ["a.png"] and load["output"] == ["IMAGE", "MASK"]
    assert requests.get(f"{emulator.url}/features", timeout=TIMEOUT).json()["supports_preview_metadata"] is True
    assert "checkpoints" in requests.get(f"{emulator.url}/models", timeout=TIMEOUT).json()
    assert requests.get(f"{emulator.url}/models/nonsense", timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{emulator.url}/embeddings", timeout=TIMEOUT).json() == []
    assert requests.get(f"{emulator.url}/api/_emulator/faults", timeout=TIMEOUT).status_code == 404


def test_loopback_host_with_foreign_origin_is_forbidden(emulator):
    evil = requests.get(f"{emulator.url}/queue", headers={"Origin": "http://evil.example"}, timeout=TIMEOUT)
    assert evil.status_code == 403
    same = requests.get(f"{emulator.url}/queue", headers={"Origin": emulator.url}, timeout=TIMEOUT)
    assert same.status_code == 200


# --- queue, history, interrupt --------------------------------------------------------


def test_queue_pending_is_the_unsorted_heap(emulator):
    emulator.set_faults(hang=True)
    running = post(emulator.url, graph(color=1)).json()["prompt_id"]
    wait_until(lambda: requests.get(f"{emulator.url}/queue", timeout=TIMEOUT).json()["queue_running"], what="running")
    late = post(emulator.url, graph(color=2), number=9).json()["prompt_id"]
    mid = post(emulator.url, graph(color=3), number=0.5).json()["prompt_id"]
    front = post(emulator.url, graph(color=4), front=True, client_id="artist").json()
    queue = requests.get(f"{emulator.url}/queue", timeout=TIMEOUT).json()
    assert [item[0] for item in queue["queue_pending"]] == [front["number"], 9, 0.5]
    assert front["number"] < 0
    assert queue["queue_running"][0][1] == running and len(queue["queue_running"][0]) == 5
    item = queue["queue_pending"][0]
    assert item[1] == front["prompt_id"] and item[3] == {"client_id": "artist"} and item[4] == ["3"]
    assert requests.get(f"{emulator.url}/prompt", timeout=TIMEOUT).json() == {"exec_info": {"queue_remaining": 4}}
    assert requests.post(f"{emulator.url}/queue", json={"delete": [mid, "unknown"]}, timeout=TIMEOUT).status_code == 200
    assert [i[1] for i in requests.get(f"{emulator.url}/queue", timeout=TIMEOUT).json()["queue_pending"]] == [front["prompt_id"], late]
    requests.post(f"{emulator.url}/queue", json={"clear": True}, timeout=TIMEOUT)
    assert requests.get(f"{emulator.url}/queue", timeout=TIMEOUT).json()["queue_pending"] == []
    emulator.set_faults(hang=False)
    assert wait_history(emulator.url, running)["status"]["status_str"] == "success"


def test_interrupt_with_prompt_id_touches_only_the_running_prompt(emulator):
    emulator.set_faults(hang=True)
    running = post(emulator.url, graph(color=5)).json()["prompt_id"]
    wait_until(lambda: requests.get(f"{emulator.url}/queue", timeout=TIMEOUT).json()["queue_running"], what="running")
    pending = post(emulator.url, graph(color=6)).json()["prompt_id"]
    requests.post(f"{emulator.url}/interrupt", json={"prompt_id": pending}, timeout=TIMEOUT)
    queue = requests.get(f"{emulator.url}/queue", timeout=TIMEOUT).json()
    assert queue["queue_running"][0][1] == running and queue["queue_pending"][0][1] == pending
    requests.post(f"{emulator.url}/interrupt", json={"prompt_id": running}, timeout=TIMEOUT)
    stopped = wait_history(emulator.url, running)
    assert stopped["status"]["status_str"] == "error"
    assert [m[0] for m in stopped["status"]["messages"]] == ["execution_start", "execution_cached", "execution_interrupted"]
    emulator.set_faults(hang=False)  # the pending prompt started (and hung) after the interrupt; it was not affected
    assert wait_history(emulator.url, pending)["status"]["status_str"] == "success"


def test_bare_interrupt_stops_a_slow_node_promptly(emulator, sockets):
    sock = sockets(emulator.url, "comp")
    sock.recv()
    emulator.set_faults(seconds_per_node=30)
    prompt_id = post(emulator.url, graph(color=7), client_id="comp").json()["prompt_id"]
    sock.until(lambda m: m["type"] == "executing" and m["data"]["node"] is not None)
    started = time.monotonic()
    requests.post(f"{emulator.url}/interrupt", timeout=TIMEOUT)
    messages = sock.until_done(prompt_id)
    assert time.monotonic() - started < 15, "the interrupt waited for the 30 s node"
    interrupted = next(m for m in messages if m["type"] == "execution_interrupted")["data"]
    assert interrupted["prompt_id"] == prompt_id and interrupted["node_id"] == "1" and interrupted["node_type"] == "EmptyImage"
    assert wait_history(emulator.url, prompt_id)["status"]["status_str"] == "error"


def test_history_listing_paging_and_deletion(emulator):
    ids = [run(emulator.url, graph(color=c), prompt_id=f"p{c}")["prompt"][1] for c in range(4)]
    assert list(requests.get(f"{emulator.url}/history", timeout=TIMEOUT).json()) == ids
    assert list(requests.get(f"{emulator.url}/history", params={"max_items": 2}, timeout=TIMEOUT).json()) == ids[2:]
    assert list(requests.get(f"{emulator.url}/history", params={"max_items": 2, "offset": 1}, timeout=TIMEOUT).json()) == ids[1:3]
    unknown = requests.get(f"{emulator.url}/history/nope", timeout=TIMEOUT)
    assert unknown.status_code == 200 and unknown.json() == {}
    requests.post(f"{emulator.url}/history", json={"delete": ["p0"]}, timeout=TIMEOUT)
    assert list(requests.get(f"{emulator.url}/history", timeout=TIMEOUT).json()) == ids[1:]
    requests.post(f"{emulator.url}/history", json={"clear": True}, timeout=TIMEOUT)
    assert requests.get(f"{emulator.url}/history", timeout=TIMEOUT).json() == {}


def test_free_needs_a_json_body(emulator):
    assert requests.post(f"{emulator.url}/free", timeout=TIMEOUT).status_code == 500
    assert requests.post(f"{emulator.url}/free", json={"unload_models": True}, timeout=TIMEOUT).status_code == 200


# --- websocket -----------------------------------------------------------------------


def test_websocket_routing_and_message_order(emulator, sockets):
    mine, other = sockets(emulator.url, "nuke-a"), sockets(emulator.url, "nuke-b")
    assert mine.recv() == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "nuke-a"}}
    other.recv()
    prompt_id = post(emulator.url, graph(color=8), client_id="nuke-a").json()["prompt_id"]
    messages = mine.until_done(prompt_id)
    kinds = [m["type"] for m in messages]
    assert kinds[:4] == ["status", "status", "execution_start", "execution_cached"]
    assert kinds[-3:] == ["execution_success", "status", "executing"]
    assert messages[0]["data"]["status"]["exec_info"]["queue_remaining"] == 1
    assert messages[-2]["data"]["status"]["exec_info"]["queue_remaining"] == 0
    body = kinds[4:-3]
    # ComfyUI 0.3.64 sends an output node's "executed" before its finishing progress_state
    assert body == ["progress_state", "executing", "progress_state"] * 2 + [
        "progress_state", "executing", "executed", "progress_state"]
    assert [m["data"]["node"] for m in messages if m["type"] == "executing"][:-1] == ["1", "2", "3"]
    # the other client sees the queue changes and nothing of the prompt itself
    seen = [other.recv() for _ in range(3)]
    assert [m["type"] for m in seen] == ["status"] * 3
    probe = post(emulator.url, graph(color=9)).json()["prompt_id"]  # no client_id: lifecycle goes to nobody
    wait_history(emulator.url, probe)
    other_kinds = []
    while True:
        message = other.recv()
        other_kinds.append(message["type"])
        if message["type"] == "status" and message["data"]["status"]["exec_info"]["queue_remaining"] == 0:
            break
    assert set(other_kinds) <= {"status", "progress_state"}


def test_reconnect_while_executing_gets_the_current_node(emulator, sockets):
    first = sockets(emulator.url, "tracker")
    first.recv()
    emulator.set_faults(seconds_per_node=30)
    prompt_id = post(emulator.url, graph(color=10), client_id="tracker").json()["prompt_id"]
    first.until(lambda m: m["type"] == "executing")
    first.close()
    again = sockets(emulator.url, "tracker")
    assert again.recv()["type"] == "status"
    assert again.recv() == {"type": "executing", "data": {"node": "1"}}
    requests.post(f"{emulator.url}/interrupt", json={"prompt_id": prompt_id}, timeout=TIMEOUT)
    assert any(m["type"] == "execution_interrupted" for m in again.until_done(prompt_id))


def test_feature_flag_handshake_and_binary_text_frame(emulator, sockets):
    sock = sockets(emulator.url, "flags")
    sock.recv()
    sock.ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    reply = sock.until(lambda m: m["type"] == "feature_flags")
    assert reply["data"] == {"supports_preview_metadata": True, "max_upload_size": 104857600}
    prompt = {"1": graph(width=33, height=22)["1"], "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}}
    prompt_id = post(emulator.url, prompt, client_id="flags").json()["prompt_id"]
    frame = sock.recv()
    while not isinstance(frame, bytes):
        frame = sock.recv()
    assert int.from_bytes(frame[:4], "big") == 3
    length = int.from_bytes(frame[4:8], "big")
    assert frame[8:8 + length] == b"2" and frame[8 + length:] == b"width: 33, height: 22\n batch size: 1"
    assert wait_history(emulator.url, prompt_id)["outputs"]["3"] == {"text": ["22"]}


# --- files in and out -----------------------------------------------------------------


def test_upload_naming_rules(emulator):
    a, b = png_bytes(np.zeros((2, 2, 3), np.uint8)), png_bytes(np.ones((2, 2, 3), np.uint8))
    assert upload(emulator.url, "plate.png", a).json()["name"] == "plate.png"
    assert upload(emulator.url, "plate.png", a).json()["name"] == "plate.png"  # same hash: reused
    assert upload(emulator.url, "plate.png", b).json()["name"] == "plate (1).png"
    assert upload(emulator.url, "plate.png", b).json()["name"] == "plate (1).png"
    assert upload(emulator.url, "plate.png", b, overwrite="1").json()["name"] == "plate.png"
    assert (emulator.base_dir / "input" / "plate.png").read_bytes() == b
    nested = upload(emulator.url, "f.0001.png", a, subfolder="shots/sh010", type="temp").json()
    assert nested == {"name": "f.0001.png", "subfolder": "shots/sh010", "type": "temp"}
    assert (emulator.base_dir / "temp" / "shots" / "sh010" / "f.0001.png").is_file()
    assert upload(emulator.url, "x.png", a, subfolder="../../etc").status_code == 400
    no_file = requests.post(f"{emulator.url}/upload/image", data={"subfolder": "a"}, timeout=TIMEOUT)
    assert no_file.status_code == 400


def test_view_path_rules(emulator):
    data = png_bytes(np.zeros((2, 2, 3), np.uint8))
    upload(emulator.url, "in.png", data, subfolder="sub")
    get = lambda **params: requests.get(f"{emulator.url}/view", params=params, timeout=TIMEOUT)  # noqa: E731
    ok = get(filename="in.png", subfolder="sub", type="input")
    assert ok.status_code == 200 and ok.content == data and ok.headers["Content-Type"] == "image/png"
    assert get(filename="in.png [input]", subfolder="sub").status_code == 200
    assert get(filename="in.png", subfolder="sub").status_code == 404  # default type is output
    assert get(filename="/etc/passwd").status_code == 400
    assert get(filename="../in.png", type="input").status_code == 400
    assert get(filename="in.png", type="nonsense").status_code == 400
    assert get(filename="passwd", subfolder="../../../etc", type="input").status_code == 403
    assert get(filename="missing.png").status_code == 404
    webp = get(filename="in.png", subfolder="sub", type="input", preview="webp;80")
    assert webp.headers["Content-Type"] == "image/webp" and Image.open(io.BytesIO(webp.content)).format == "WEBP"
    alpha = get(filename="in.png", subfolder="sub", type="input", channel="a")
    assert Image.open(io.BytesIO(alpha.content)).getchannel("A").getextrema() == (255, 255)


def test_load_image_annotations_and_subpaths(emulator):
    pixels = np.full((3, 5, 3), 77, np.uint8)
    upload(emulator.url, "f.png", png_bytes(pixels), subfolder="deep/er")
    upload(emulator.url, "t.png", png_bytes(pixels), type="temp")
    for name in ("deep/er/f.png", "t.png [temp]"):
        entry = run(emulator.url, {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
                                   "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
        np.testing.assert_array_equal(view(emulator.url, entry["outputs"]["2"]["images"][0]), pixels)


# --- faults --------------------------------------------------------------------------


def test_fault_http_500_and_delay(emulator, sockets):
    emulator.set_faults(http_500=True)
    assert requests.get(f"{emulator.url}/queue", timeout=TIMEOUT).status_code == 500
    assert post(emulator.url, graph()).status_code == 500
    sockets(emulator.url, "still-there").recv()  # the websocket is not an API route
    assert emulator.get_faults()["http_500"] is True
    emulator.set_faults(http_500=False, delay_s=0.3)
    started = time.monotonic()
    assert requests.get(f"{emulator.url}/prompt", timeout=TIMEOUT).status_code == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(ValueError, match="unknown fault knob"):
        emulator.set_faults(explode=True)
    with pytest.raises(ValueError, match="die_mid_job needs a server process"):
        emulator.set_faults(die_mid_job=True)


def test_fault_hang_until_cleared(emulator):
    emulator.set_faults(hang=True)
    prompt_id = post(emulator.url, graph(color=11)).json()["prompt_id"]
    wait_until(lambda: requests.get(f"{emulator.url}/queue", timeout=TIMEOUT).json()["queue_running"], what="running")
    assert requests.get(f"{emulator.url}/history/{prompt_id}", timeout=TIMEOUT).json() == {}
    emulator.set_faults(hang=False)
    assert wait_history(emulator.url, prompt_id)["status"]["status_str"] == "success"


def test_fault_fail_node_reports_execution_error(emulator, sockets):
    sock = sockets(emulator.url, "oom")
    sock.recv()
    emulator.set_faults(fail_node="ImageInvert", fail_exception_type="torch.OutOfMemoryError", fail_message="CUDA out of memory")
    prompt_id = post(emulator.url, graph(color=12), client_id="oom").json()["prompt_id"]
    messages = sock.until_done(prompt_id)
    assert [m["type"] for m in messages][-3:] == ["execution_error", "status", "executing"]
    error = messages[-3]["data"]
    assert error["node_id"] == "2" and error["node_type"] == "ImageInvert"
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert error["exception_message"].startswith("CUDA out of memory\nThis error means you ran out of memory on your GPU.")
    assert error["executed"] == ["1"] and error["current_outputs"] == ["1", "2", "3"] and isinstance(error["traceback"], list)
    assert set(error["current_inputs"]) == {"image"} and isinstance(error["timestamp"], int)
    assert wait_history(emulator.url, prompt_id)["status"]["status_str"] == "error"


def test_fault_output_filename_bad_json_and_ws_garbage(emulator):
    emulator.set_faults(output_filename="../../x.png")
    entry = run(emulator.url, graph(color=13))
    assert entry["outputs"]["3"]["images"][0]["filename"] == "../../x.png"
    emulator.set_faults(output_filename=None, bad_json=True, ws_garbage=True)
    for path in ("/queue", "/history", f"/history/{entry['prompt'][1]}"):
        response = requests.get(emulator.url + path, timeout=TIMEOUT)
        assert response.status_code == 200
        with pytest.raises(ValueError):
            json.loads(response.text)
    ws = websocket.create_connection(emulator.url.replace("http", "ws") + "/ws?clientId=g", timeout=TIMEOUT)
    try:
        text = ws.recv()
        with pytest.raises(ValueError):
            json.loads(text)
        binary = ws.recv()
        assert isinstance(binary, bytes) and int.from_bytes(binary[:4], "big") not in (1, 2, 3, 4)
        assert json.loads(ws.recv())["type"] == "status"
    finally:
        ws.close()


def test_drop_websockets(emulator, sockets):
    sock = sockets(emulator.url, "dropme")
    sock.recv()
    assert emulator.drop_websockets() == 1
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        sock.recv()
    sockets(emulator.url, "dropme").recv()  # reconnecting works


# --- processes -----------------------------------------------------------------------


def test_process_kill_and_restart_on_the_same_port(emulator_factory):
    proc = emulator_factory(name="gpu-01")
    assert requests.get(f"{proc.url}/system_stats", timeout=TIMEOUT).status_code == 200
    url, base = proc.url, proc.base_dir
    run(url, graph(prefix="before"))
    proc.kill()
    assert not proc.alive
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/prompt", timeout=TIMEOUT)
    proc.restart()
    assert proc.url == url and proc.base_dir == base
    assert requests.get(f"{url}/history", timeout=TIMEOUT).json() == {}  # history is memory only
    assert run(url, graph(prefix="before"))["outputs"]["3"]["images"][0]["filename"] == "before_00002_.png"


def test_process_dies_mid_job(emulator_factory):
    proc = emulator_factory(name="fragile")
    proc.set_faults(die_mid_job=True)
    with contextlib.suppress(requests.ConnectionError):  # the answer may or may not beat the crash
        post(proc.url, graph())
    wait_until(lambda: not proc.alive, what="process exit")
    assert proc._proc.returncode == 3


def test_count_runs_independent_servers_in_one_process(emulator_factory, tmp_path):
    proc = emulator_factory(name="farm", count=3, base_dir=tmp_path, seconds_per_job=0.0)
    assert len(proc.urls) == 3 and len(set(proc.ports)) == 3
    entries = [run(url, graph(prefix=f"n{i}")) for i, url in enumerate(proc.urls)]
    assert all(e["status"]["status_str"] == "success" for e in entries)
    for i in range(3):
        assert (tmp_path / f"farm-{i + 1:03d}" / "output" / f"n{i}_00001_.png").is_file()
    proc.set_faults(http_500=True)  # the first server only
    assert requests.get(f"{proc.urls[0]}/queue", timeout=TIMEOUT).status_code == 500
    assert requests.get(f"{proc.urls[1]}/queue", timeout=TIMEOUT).status_code == 200


def test_seconds_per_job_paces_jobs(emulator_thread_factory):
    emu = emulator_thread_factory(name="slow", seconds_per_job=0.3)
    started = time.monotonic()
    run(emu.url, graph(color=14))
    assert time.monotonic() - started >= 0.3


def test_thread_context_manager_cleans_its_base_dir():
    with EmulatorThread(name="ctx") as emu:
        base = emu.base_dir
        assert (base / "input").is_dir() and (base / "temp").is_dir()
    assert not base.exists()


def test_process_start_fails_loudly_on_a_bad_class(tmp_path):
    proc = EmulatorProcess(name="bad", node_classes=["NoSuchNode"], base_dir=tmp_path)
    with pytest.raises(RuntimeError, match="exited"):
        proc.start(timeout=15)
    assert "NoSuchNode" in (tmp_path / "emulator.log").read_text()


def test_undeclared_inputs_are_dropped_and_add_noise_follows_its_seed(emulator):
    """Like ComfyUI's get_input_data: a literal input the class does not declare is ignored."""

    def noisy(seed: int, prefix: str) -> np.ndarray:
        prompt = graph(color=0x808080, prefix=prefix)
        prompt["2"] = {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": seed, "strength": 0.5,
                                                                "not_an_input": "ignored"}}
        entry = run(emulator.url, prompt)
        assert entry["status"]["status_str"] == "success", entry["status"]
        return view(emulator.url, entry["outputs"]["3"]["images"][0])

    first, again, other = noisy(7, "noise/a"), noisy(7, "noise/b"), noisy(8, "noise/c")
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert 0 < first.std() < 128
