"""The HTTP API the client relies on, checked against the emulator and the real ComfyUI 0.3.64.

Through ComfyClient wherever it has a call; raw requests only for what it deliberately
never sends (path-escaping /view queries, the heap order it sorts away).
"""

from __future__ import annotations

import heapq
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_cluster.errors import MissingNodes, TransferError, WorkflowRejected
from comfy_cluster.wire import OutputImage
from tests.contract.conftest import DEADLINE, HOLD_NODE, Target, image_chain, png_bytes, unique, wait_running
from tests.helpers import wait_until

HTTP_TIMEOUT = 30


def _finished(client, prompt_id: str):
    return wait_until(lambda: client.get_history(prompt_id), timeout=DEADLINE, what=f"history of {prompt_id}")


def _uploaded_chain(target: Target, client, seed: int = 1):
    name = unique("in") + ".png"
    uploaded = client.upload_image(png_bytes(seed), name)
    return image_chain(uploaded.load_image_value, unique("contract/chain"))


def test_submit_keeps_the_client_chosen_prompt_id_and_history_reports_the_outputs(target: Target) -> None:
    client = target.client()
    prompt = _uploaded_chain(target, client)
    chosen = unique("contract-id")
    assert client.get_history(chosen) is None  # unknown: ComfyUI answers {}

    result = client.submit(prompt, client_id=unique("c"), prompt_id=chosen)
    assert result.prompt_id == chosen and result.node_errors == {}

    entry = _finished(client, chosen)
    assert (entry.status_str, entry.completed) == ("success", True)
    assert [kind for kind, _ in entry.messages] == ["execution_start", "execution_cached", "execution_success"]
    [image] = entry.images
    prefix = prompt["5"]["inputs"]["filename_prefix"]
    assert image == OutputImage(filename=f"{prefix.split('/')[1]}_00001_.png", subfolder="contract", type="output",
                                node_id="5")
    assert (target.output_dir / "contract" / image.filename).is_file()


def test_missing_node_class_is_a_400_naming_the_class(target: Target) -> None:
    client = target.client()
    prompt = _uploaded_chain(target, client)
    prompt["9"] = {"class_type": "NoSuchNode", "inputs": {}}
    with pytest.raises(MissingNodes) as caught:
        client.submit(prompt, client_id=unique("c"))
    assert caught.value.missing == {"NoSuchNode"}
    assert "'NoSuchNode'" in str(caught.value) and "#9" in str(caught.value)

    raw = requests.post(f"{target.url}/prompt", json={"prompt": prompt}, timeout=HTTP_TIMEOUT)
    assert raw.status_code == 400
    assert raw.json() == {"error": {"type": "invalid_prompt", "message": "Cannot execute because node NoSuchNode does "
                                    "not exist.", "details": "Node ID '#9'", "extra_info": {}}, "node_errors": {}}


@pytest.mark.parametrize("break_it, node, input_name, error_type", [
    (lambda p: p["2"]["inputs"].update(blur_radius=99), "2", "blur_radius", "value_bigger_than_max"),
    (lambda p: p["3"]["inputs"].update(upscale_method="nearest-neighbour"), "3", "upscale_method", "value_not_in_list"),
    (lambda p: p["3"]["inputs"].pop("width"), "3", "width", "required_input_missing"),
    (lambda p: p["2"]["inputs"].update(sigma="soft"), "2", "sigma", "invalid_input_type"),
], ids=["above-max", "not-in-list", "missing-required", "not-a-number"])
def test_a_bad_input_is_a_400_naming_the_node_and_input(target: Target, break_it, node: str, input_name: str,
                                                        error_type: str) -> None:
    client = target.client()
    prompt = _uploaded_chain(target, client)
    break_it(prompt)
    with pytest.raises(WorkflowRejected) as caught:
        client.submit(prompt, client_id=unique("c"))
    rejected = caught.value
    assert rejected.error_type == "prompt_outputs_failed_validation"
    [error] = rejected.node_errors[node]["errors"]
    assert error["type"] == error_type and error["extra_info"]["input_name"] == input_name
    assert rejected.node_errors[node]["dependent_outputs"] == ["5"]
    assert rejected.node_errors[node]["class_type"] == prompt[node]["class_type"]
    assert f"node {node} ({prompt[node]['class_type']}) input '{input_name}'" in str(rejected)


def test_a_partly_valid_prompt_is_a_200_with_node_errors(target: Target) -> None:
    client = target.client()
    prompt = _uploaded_chain(target, client)
    prompt["6"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": unique("contract/ok")}}
    prompt["2"]["inputs"]["blur_radius"] = 0  # below min: output 5 fails, output 6 is fine

    result = client.submit(prompt, client_id=unique("c"), partial_ok=True)
    assert list(result.node_errors) == ["2"]
    assert result.node_errors["2"]["errors"][0]["type"] == "value_smaller_than_min"
    assert result.node_errors["2"]["dependent_outputs"] == ["5"]
    entry = _finished(client, result.prompt_id)
    assert entry.status_str == "success" and [i.node_id for i in entry.images] == ["6"]

    prompt["6"]["inputs"]["filename_prefix"] = unique("contract/ok")
    with pytest.raises(WorkflowRejected, match="only in part") as caught:
        client.submit(prompt, client_id=unique("c"))
    assert caught.value.error_type == "partial_outputs_failed_validation"
    withdrawn = caught.value.prompt_id
    assert withdrawn not in [e.prompt_id for e in client.get_queue().pending]


def test_view_serves_outputs_and_inputs_and_keeps_to_its_folders(target: Target, tmp_path: Path) -> None:
    client = target.client()
    data = png_bytes(7)
    uploaded = client.upload_image(data, unique("view") + ".png", subfolder="contract")
    got = client.download(OutputImage(uploaded.name, "contract", "input", "1"), tmp_path / "in.png")
    assert got.read_bytes() == data

    with pytest.raises(TransferError, match="HTTP 404"):
        client.download(OutputImage(unique("absent") + ".png", "", "output", "5"), tmp_path / "absent.png")
    assert not (tmp_path / "absent.png").exists()

    def status(**query: str) -> int:
        return requests.get(f"{target.url}/view", params=query, timeout=HTTP_TIMEOUT).status_code

    name = uploaded.name
    assert status(filename=name, subfolder="contract", type="input") == 200
    assert status(filename=f"{name} [input]", subfolder="contract") == 200  # the annotation picks the folder
    assert status(filename=f"contract/{name} [input]") == 404          # a directory in the name is dropped
    assert status(filename=name, subfolder="contract") == 404          # type defaults to output
    assert status(filename=f"../input/contract/{name}") == 400         # ".." in the name
    assert status(filename="/etc/hostname") == 400                     # absolute name
    assert status(filename=name, subfolder="../input/contract") == 403  # subfolder escaping the folder
    assert status(filename=name, type="bogus") == 400
    assert status() == 404                                              # no filename at all
    response = requests.get(f"{target.url}/view", params={"filename": name, "subfolder": "contract", "type": "input"},
                            timeout=HTTP_TIMEOUT)
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"] == f'filename="{name}"'


def test_upload_renames_on_a_clash_and_reuses_an_identical_file(target: Target) -> None:
    client = target.client()
    name = unique("clash")
    first = client.upload_image(png_bytes(1), f"{name}.png", overwrite=False)
    second = client.upload_image(png_bytes(2), f"{name}.png", overwrite=False)
    again = client.upload_image(png_bytes(2), f"{name}.png", overwrite=False)
    replaced = client.upload_image(png_bytes(3), f"{name}.png", overwrite=True)
    assert (first.name, second.name, again.name, replaced.name) == (
        f"{name}.png", f"{name} (1).png", f"{name} (1).png", f"{name}.png")
    assert (first.subfolder, first.type, first.load_image_value) == ("", "input", f"{name}.png")
    assert (target.input_dir / f"{name}.png").read_bytes() == png_bytes(3)
    assert (target.input_dir / f"{name} (1).png").read_bytes() == png_bytes(2)

    in_sub = client.upload_image(png_bytes(4), f"{name}.png", subfolder="contract/sub")
    assert (in_sub.subfolder, in_sub.load_image_value) == ("contract/sub", f"contract/sub/{name}.png")
    assert (target.input_dir / "contract" / "sub" / f"{name}.png").is_file()


def _heap_order(items: list[tuple[float, str]]) -> list[str]:
    heap: list[tuple[float, str]] = []
    for item in items:
        heapq.heappush(heap, item)
    return [prompt_id for _, prompt_id in heap]


def test_queue_pending_is_a_heap_that_the_client_sorts_and_deletes_from(target: Target) -> None:
    client = target.client()
    hold = client.submit(target.hold_prompt(), client_id=unique("c"))
    wait_running(client, hold.prompt_id)
    numbers = [50.0, 30.0, 40.0, 10.0, 20.0]
    ids = []
    for number in numbers:
        prompt = _uploaded_chain(target, client)
        ids.append(client.submit(prompt, client_id=unique("c"), number=number).prompt_id)
    front = client.submit(_uploaded_chain(target, client), client_id=unique("c"), front=True)
    assert front.number <= 0  # front: the server's own counter, negated

    raw = requests.get(f"{target.url}/queue", timeout=HTTP_TIMEOUT).json()
    assert [item[1] for item in raw["queue_running"]] == [hold.prompt_id]
    assert [item[1] for item in raw["queue_pending"]] == _heap_order(
        [*zip(numbers, ids), (front.number, front.prompt_id)])

    queue = client.get_queue()
    by_number = [pid for _, pid in sorted(zip(numbers, ids))]
    assert [e.prompt_id for e in queue.pending] == [front.prompt_id, *by_number]
    assert [e.number for e in queue.pending][1:] == sorted(numbers)
    assert queue.running[0].prompt_id == hold.prompt_id and queue.running[0].outputs == ["hold_save"]
    assert queue.pending[1].client_id is not None and set(queue.pending[1].outputs) == {"5"}

    client.delete_pending([ids[1], front.prompt_id])
    assert [e.prompt_id for e in client.get_queue().pending] == [pid for pid in by_number if pid != ids[1]]
    client.delete_pending([pid for pid in ids if pid != ids[1]])
    assert client.get_queue().pending == []
    client.interrupt(hold.prompt_id)
    assert _finished(client, hold.prompt_id).status_str == "error"
    for deleted in ids:
        assert client.get_history(deleted) is None


def test_interrupt_by_prompt_id_stops_only_that_prompt(target: Target) -> None:
    client = target.client()
    hold = client.submit(target.hold_prompt(), client_id=unique("c"))
    wait_running(client, hold.prompt_id)
    queued = client.submit(_uploaded_chain(target, client), client_id=unique("c"))

    client.interrupt(queued.prompt_id)   # pending, not running: nothing happens
    client.interrupt(unique("nobody"))
    assert [e.prompt_id for e in client.get_queue().running] == [hold.prompt_id]

    client.interrupt(hold.prompt_id)
    held = _finished(client, hold.prompt_id)
    assert (held.status_str, held.completed) == ("error", False)
    kind, data = held.messages[-1]
    assert kind == "execution_interrupted"
    assert (data["node_id"], data["node_type"], data["executed"]) == (HOLD_NODE, target.hold_prompt()[HOLD_NODE][
        "class_type"], [])
    assert _finished(client, queued.prompt_id).status_str == "success"


def test_system_stats(target: Target) -> None:
    stats = target.client().get_system_stats()
    assert stats.comfyui_version == "0.3.64"
    assert stats.argv[stats.argv.index("--output-directory") + 1] == str(target.output_dir)
    assert stats.argv[stats.argv.index("--input-directory") + 1] == str(target.input_dir)
    [device] = stats.devices
    assert device.vram_total > 0 and 0 <= device.vram_free <= device.vram_total
    assert set(stats.raw) == {"system", "devices"}
    assert set(stats.raw["system"]) == {
        "os", "ram_total", "ram_free", "comfyui_version", "required_frontend_version", "installed_templates_version",
        "required_templates_version", "python_version", "pytorch_version", "embedded_python", "argv"}
    assert set(stats.raw["devices"][0]) == {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total",
                                            "torch_vram_free"}


@pytest.fixture(scope="module")
def real_object_info(_real_target: Target) -> dict:
    return requests.get(f"{_real_target.url}/object_info", timeout=HTTP_TIMEOUT).json()


def test_object_info_of_every_emulated_class_equals_the_real_one(_emulator_target: Target,
                                                                real_object_info: dict) -> None:
    emulated = _emulator_target.client().get_object_info()
    for name, info in emulated.items():
        real = real_object_info.get(name)
        assert real is not None, f"the emulator offers {name}, real ComfyUI 0.3.64 has no such class"
        if name == "LoadImage":  # the combo lists each server's own input files
            info, real = _without_file_list(info), _without_file_list(real)
        assert json.dumps(info, sort_keys=True) == json.dumps(real, sort_keys=True), name


def _without_file_list(info: dict) -> dict:
    info = json.loads(json.dumps(info))
    info["input"]["required"]["image"][0] = "<files>"
    return info


def test_object_info_lists_uploaded_inputs_for_load_image(target: Target) -> None:
    client = target.client()
    name = unique("listed") + ".png"
    client.upload_image(png_bytes(5), name)
    info = client.get_object_info()
    assert name in info["LoadImage"]["input"]["required"]["image"][0]
    assert {"LoadImage", "ImageBlur", "ImageScale", "ImageInvert", "SaveImage"} <= client.node_classes()


def _chain_pixels(target: Target, source: bytes, method: str, crop: str, tmp_path: Path) -> np.ndarray:
    client = target.client()
    uploaded = client.upload_image(source, unique("pixels") + ".png")
    prompt = image_chain(uploaded.load_image_value, unique("contract/pixels"))
    prompt["3"]["inputs"].update(upscale_method=method, crop=crop)
    entry = _finished(client, client.submit(prompt, client_id=unique("c")).prompt_id)
    [image] = entry.images
    path = client.download(image, tmp_path / f"{target.kind}-{method}.png")
    with Image.open(io.BytesIO(path.read_bytes())) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("method, crop", [("bilinear", "center"), ("nearest-exact", "disabled"), ("area", "center"),
                                          ("bicubic", "disabled"), ("lanczos", "center")])
def test_load_blur_scale_invert_save_pixels_equal_real(_emulator_target: Target, _real_target: Target,
                                                       method: str, crop: str, tmp_path: Path) -> None:
    source = png_bytes(11)
    emulated = _chain_pixels(_emulator_target, source, method, crop, tmp_path)
    real = _chain_pixels(_real_target, source, method, crop, tmp_path)
    assert emulated.shape == real.shape == (40, 48, 3)
    difference = np.abs(emulated.astype(int) - real.astype(int))
    assert not difference.any(), f"max difference {difference.max()}, {np.count_nonzero(difference)} values differ"


def test_view_reencodes_channels_and_previews(target: Target) -> None:
    client = target.client()
    pixels = np.random.default_rng(3).integers(0, 256, (16, 24, 4), dtype=np.uint8)
    source = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(source, format="PNG")
    rgba = client.upload_image(source.getvalue(), unique("rgba") + ".png")
    rgb = client.upload_image(png_bytes(4, size=16), unique("rgb") + ".png")

    def fetch(name: str, **query: str) -> tuple[str, Image.Image]:
        response = requests.get(f"{target.url}/view", params={"filename": name, "type": "input", **query},
                                timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, (name, query)
        image = Image.open(io.BytesIO(response.content))
        image.load()
        return response.headers["Content-Type"], image

    kind, alpha = fetch(rgba.name, channel="a")
    assert kind == "image/png" and alpha.mode == "RGBA"
    assert np.array_equal(np.asarray(alpha)[..., 3], pixels[..., 3]) and not np.asarray(alpha)[..., :3].any()
    kind, opaque = fetch(rgb.name, channel="a")
    assert (np.asarray(opaque)[..., 3] == 255).all()
    kind, colour = fetch(rgba.name, channel="rgb")
    assert kind == "image/png" and colour.mode == "RGB" and np.array_equal(np.asarray(colour), pixels[..., :3])

    assert [fetch(rgba.name, **q)[0] for q in ({"preview": "jpeg;80"}, {"preview": "webp;50"}, {"preview": "png"},
                                                {"preview": "jpeg", "channel": "rgba"}, {"preview": ""})] == [
        "image/jpeg", "image/webp", "image/webp", "image/webp", "image/webp"]
    assert fetch(rgba.name, preview="webp")[1].mode == "RGBA"
    assert fetch(rgba.name, preview="webp", channel="rgb")[1].mode == "RGB"
