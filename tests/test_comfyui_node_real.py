"""The Remote Render node inside the real ComfyUI 0.3.64, against emulated servers and the
RunPod emulator: it loads, it returns the right pixels downstream, the local upstream does
not run, progress and cost reach the UI, interrupt cancels only our prompt, errors read well
and the key stays out of logs, history and messages."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_cluster.emulator.process import EmulatorProcess
from comfy_cluster.emulator.runpod import RunPodEmulator

from .comfyui_real_helpers import CORE_ENV, EID, KEY, PACKAGE, ComfyClient, require_core, runpod_env
from .helpers import wait_until
from .real_components import require_real, start_real_comfyui

COLOR = 0x336699


def _saved(x: np.ndarray) -> np.ndarray:
    """SaveImage's encoding, then LoadImage's decoding (float32, truncating like ComfyUI)."""
    return np.clip(255.0 * x, 0, 255).astype(np.uint8).astype(np.float32) / 255.0


PLATE = np.array([0x33, 0x66, 0x99], np.float32) / 255.0            # EmptyImage's pixel
#: Upstream invert, out as PNG and back, downstream invert, saved: ComfyUI's own arithmetic.
RGB = np.clip(255.0 * (1.0 - _saved(1.0 - PLATE)), 0, 255).astype(np.uint8)
#: The pasted workflow: the input image goes out as PNG, is inverted, comes back as PNG.
PASTED = np.clip(255.0 * _saved(1.0 - _saved(PLATE)), 0, 255).astype(np.uint8)


def graph(mode: str, **node_inputs: Any) -> dict[str, Any]:
    """EmptyImage -> ImageInvert -> Remote Render -> ImageInvert -> SaveImage.

    The downstream invert undoes the upstream one, so the saved pixels are COLOR exactly
    when the remote ran the captured upstream (without it they would be inverted).
    """
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": COLOR}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ComfyClusterRemoteRender", "inputs": {"mode": mode, "image": ["2", 0], **node_inputs}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": f"down_{mode}"}},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Two emulated servers, a RunPod emulator (own worker) and a real ComfyUI using all three."""
    require_core(require_real())
    base = tmp_path_factory.mktemp("real-node")
    servers = [EmulatorProcess(name=f"gpu-0{i}").start() for i in (1, 2)]
    worker = EmulatorProcess(name="rp-worker").start()
    runpod = RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[worker.url],
                            endpoint_settings={"workersMax": 2}).start()
    env = {"NUKE_COMFYUI_SERVERS": json.dumps([{"name": s.name, "ip": "127.0.0.1", "port": s.port}
                                               for s in servers]),
           "NUKE_COMFYUI_POLL_INTERVAL": "0.5", "COMFY_CLUSTER_STATE_DIR": str(base / "state"),
           **runpod_env(runpod), **CORE_ENV}
    comfy = None
    try:
        comfy = start_real_comfyui(base / "comfyui", custom_nodes=(PACKAGE,), env=env)
        wait_until(lambda: _states(comfy.url) == {"gpu-01": "online", "gpu-02": "online"}, 60,
                   "both emulated servers online in the node's pool")
        yield comfy, servers, runpod
    finally:
        if comfy is not None:
            comfy.stop()
        runpod.stop()
        for proc in (*servers, worker):
            proc.kill()
            proc.stop()


def _states(url: str) -> dict[str, str]:
    body = requests.get(f"{url}/api/comfy_cluster/status", timeout=10).json()
    return {s["name"]: s["state"] for s in body.get("servers", [])}


def saved_pixels(comfy: Any, client: ComfyClient, prompt_id: str, node: str = "5") -> np.ndarray:
    image = client.history(prompt_id)["outputs"][node]["images"][0]
    path = comfy.output_dir / image["subfolder"] / image["filename"]
    return np.asarray(Image.open(path).convert("RGB"))


def test_object_info_lists_the_node_and_the_ui_is_served(stack) -> None:
    comfy, _, _ = stack
    info = requests.get(f"{comfy.url}/object_info/ComfyClusterRemoteRender", timeout=30).json()
    node = info["ComfyClusterRemoteRender"]
    assert node["python_module"] == "custom_nodes.comfyui_comfy_cluster"
    assert node["output"] == ["IMAGE"] and node["output_node"] is True
    assert node["input"]["required"]["mode"][0] == ["local", "cluster", "runpod"]
    assert node["input"]["optional"]["image"][1]["lazy"] is True
    assert set(node["input"]["hidden"]) == {"prompt", "unique_id", "extra_pnginfo"}
    scripts = requests.get(f"{comfy.url}/api/extensions", timeout=30).json()
    ours = [s for s in scripts if s.endswith("/comfy_cluster.js")]
    assert ours == ["/extensions/comfyui_comfy_cluster/comfy_cluster.js"]     # served once, from WEB_DIRECTORY
    log = comfy.log_path.read_text(errors="replace")
    assert "Unable to parse pyproject.toml" not in log
    assert not [line for line in log.splitlines() if "IMPORT FAILED" in line and "comfyui_comfy_cluster" in line]
    js = requests.get(f"{comfy.url}/extensions/comfyui_comfy_cluster/comfy_cluster.js", timeout=30)
    assert js.status_code == 200 and "registerSidebarTab" in js.text


def test_cluster_mode_runs_the_upstream_remotely_and_returns_its_pixels(stack) -> None:
    comfy, servers, _ = stack
    before = {s.name: _history_ids(s.url) for s in servers}
    client = ComfyClient(comfy.url)
    try:
        prompt_id = client.queue(graph("cluster"))
        run = client.follow(prompt_id)
    finally:
        client.close()
    assert run.ending == "execution_success", run.messages
    assert np.array_equal(saved_pixels(comfy, client, prompt_id)[0, 0], RGB)
    assert "1" not in run.executed_nodes() and "2" not in run.executed_nodes()   # lazy: upstream not run here
    assert {"3", "4", "5"} <= set(run.executed_nodes())
    progress = [d for d in run.of("progress") if str(d.get("node")) == "3"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 100
    new = {s.name: _history_ids(s.url) - before[s.name] for s in servers}
    ran_on = [name for name, ids in new.items() if ids]
    assert len(ran_on) == 1, new
    remote = next(iter(requests.get(f"{servers[0].url if ran_on[0] == 'gpu-01' else servers[1].url}/history",
                                    timeout=10).json()[pid] for pid in new[ran_on[0]]))
    classes = sorted(n["class_type"] for n in remote["prompt"][2].values())
    assert classes == ["EmptyImage", "ImageInvert", "SaveImage"]
    assert any(node == "3" and text.startswith(f"{ran_on[0]}: ") for node, text in run.texts)


def _history_ids(url: str) -> set[str]:
    return set(requests.get(f"{url}/history", timeout=10).json())


def test_runpod_mode_returns_pixels_shows_cost_and_keeps_the_key_out(stack) -> None:
    comfy, _, runpod = stack
    runpod.set(seconds_per_job=0.3)
    client = ComfyClient(comfy.url)
    try:
        prompt_id = client.queue(graph("runpod"), extra_pnginfo={"workflow": {"nodes": [], "links": []}})
        run = client.follow(prompt_id)
    finally:
        client.close()
        runpod.set(seconds_per_job=0.0)
    assert run.ending == "execution_success", run.messages
    assert np.array_equal(saved_pixels(comfy, client, prompt_id)[0, 0], RGB)
    assert runpod.count("POST", f"/v2/{EID}/run") >= 1
    costs = [text for node, text in run.texts if node == "3" and text.startswith("runpod: $")]
    assert costs and float(costs[-1].split("$")[1].split()[0]) > 0
    outputs = list((comfy.output_dir / "comfy_cluster").rglob("*.png"))
    assert outputs and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in outputs)
    history = json.dumps(client.history(prompt_id))
    log = comfy.log_path.read_text(errors="replace")
    for where, text in (("log", log), ("history", history), ("messages", json.dumps(run.messages)),
                        ("texts", json.dumps(run.texts))):
        assert KEY not in text, f"the RunPod key leaked into the {where}"


def test_a_pasted_workflow_that_is_not_api_json_says_how_to_export(stack) -> None:
    comfy, _, _ = stack
    client = ComfyClient(comfy.url)
    try:
        prompt_id = client.queue(graph("cluster", workflow_json='{"nodes": [], "links": []}'))
        run = client.follow(prompt_id)
    finally:
        client.close()
    assert run.ending == "execution_error"
    error = run.of("execution_error")[0]
    assert error["node_id"] == "3" and "Save (API Format)" in error["exception_message"]


def test_a_pasted_workflow_gets_the_input_image_as_png(stack) -> None:
    comfy, _, _ = stack
    remote = {"10": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
              "11": {"class_type": "ImageInvert", "inputs": {"image": ["10", 0]}},
              "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "pasted"}}}
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": COLOR}},
        "3": {"class_type": "ComfyClusterRemoteRender",
              "inputs": {"mode": "cluster", "workflow_json": json.dumps(remote), "input_image": ["1", 0],
                         "input_binding": "10.image"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "pasted_down"}},
    }
    client = ComfyClient(comfy.url)
    try:
        prompt_id = client.queue(prompt)
        run = client.follow(prompt_id)
    finally:
        client.close()
    assert run.ending == "execution_success", run.messages
    assert np.array_equal(saved_pixels(comfy, client, prompt_id)[0, 0], PASTED)


def test_interrupt_cancels_our_remote_prompt_and_nobody_elses(stack) -> None:
    comfy, servers, _ = stack
    for server in servers:
        server.set_faults(seconds_per_node=1.0)
    client = ComfyClient(comfy.url)
    try:
        prompt_id = client.queue(graph("cluster"))
        busy = wait_until(lambda: _running_on(servers), 30, "our prompt running on an emulated server")
        server, remote_id = busy
        other = {"1": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 1, "color": 1}},
                 "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "other"}}}
        other_id = requests.post(f"{server.url}/prompt", json={"prompt": other, "client_id": "another-artist"},
                                 timeout=10).json()["prompt_id"]
        requests.post(f"{comfy.url}/interrupt", json={}, timeout=10).raise_for_status()
        run = client.follow(prompt_id, timeout=60)
        theirs = wait_until(lambda: requests.get(f"{server.url}/history/{other_id}", timeout=10).json().get(other_id),
                            60, "the other client's prompt to finish")
    finally:
        client.close()
        for s in servers:
            s.set_faults(seconds_per_node=0.0)
    assert run.ending == "execution_interrupted", run.messages
    assert theirs["status"]["status_str"] == "success"
    ours = requests.get(f"{server.url}/history/{remote_id}", timeout=10).json().get(remote_id)
    assert ours is None or ours["status"]["status_str"] != "success"
    assert "4" not in run.executed_nodes()                   # nothing downstream ran on a cancelled result


def _running_on(servers: list[EmulatorProcess]) -> tuple[EmulatorProcess, str] | None:
    for server in servers:
        running = requests.get(f"{server.url}/queue", timeout=10).json()["queue_running"]
        if running:
            return server, running[0][1]
    return None


def test_a_refused_key_is_explained_without_the_key(real_install, tmp_path: Path) -> None:
    server = EmulatorProcess(name="gpu-solo").start()
    runpod = RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[server.url]).start()
    wrong = "rpa_WRONG_99887766554433221100"
    comfy = None
    try:
        env = {"NUKE_COMFYUI_SERVERS": json.dumps([{"name": "gpu-solo", "ip": "127.0.0.1", "port": server.port}]),
               "COMFY_CLUSTER_STATE_DIR": str(tmp_path / "state"), **runpod_env(runpod, key=wrong), **CORE_ENV}
        comfy = start_real_comfyui(tmp_path / "comfyui", custom_nodes=(PACKAGE,), env=env)
        client = ComfyClient(comfy.url)
        try:
            run = client.follow(client.queue(graph("runpod")))
        finally:
            client.close()
        answer = requests.get(f"{comfy.url}/api/comfy_cluster/workers", timeout=30).json()
        log = comfy.log_path.read_text(errors="replace")
    finally:
        if comfy is not None:
            comfy.stop()
        runpod.stop()
        server.kill()
        server.stop()
    assert run.ending == "execution_error"
    message = run.of("execution_error")[0]["exception_message"]
    assert "401" in message and "RUNPOD_API_KEY" in message and wrong not in message
    assert answer["status"] == "error" and "RUNPOD_API_KEY" in answer["message"]
    assert wrong not in answer["message"] and EID not in answer["message"]
    assert wrong not in log


def test_worker_routes_read_toggle_and_serialise_rapid_clicks(stack) -> None:
    comfy, _, runpod = stack
    workers = requests.get(f"{comfy.url}/api/comfy_cluster/workers", timeout=30).json()
    assert workers["status"] == "ok" and (workers["workersMin"], workers["workersMax"]) == (0, 2)
    assert {"running", "idle"} <= set(workers) and EID not in json.dumps(workers)
    bad = requests.post(f"{comfy.url}/api/comfy_cluster/workers/min", json={"workersMin": 5}, timeout=30)
    assert bad.status_code == 400 and bad.json()["status"] == "error"

    def click(n: int, answers: dict) -> None:
        answers[n] = requests.post(f"{comfy.url}/api/comfy_cluster/workers/min", json={"workersMin": n},
                                   timeout=60).json()

    answers: dict[int, dict] = {}
    patches = runpod.count("PATCH", f"/v2/serverless/{EID}")
    runpod.set(admin_delay_s=5.0)
    try:
        first = threading.Thread(target=click, args=(1, answers))
        first.start()
        wait_until(lambda: runpod.count("PATCH", f"/v2/serverless/{EID}") > patches, 30, "the first write sent")
        second = threading.Thread(target=click, args=(0, answers))
        second.start()
        # the slow write runs in an executor: ComfyUI's loop still answers meanwhile
        assert requests.get(f"{comfy.url}/api/comfy_cluster/status", timeout=30).json()["status"] == "ok"
        assert first.is_alive()
        first.join(60)
        second.join(60)
    finally:
        runpod.set(admin_delay_s=0.0)
    assert answers[1]["message"] == "Min workers 0 -> 1" and answers[1]["workersMin"] == 1
    assert answers[0]["message"] == "Min workers 1 -> 0" and answers[0]["workersMin"] == 0
    assert runpod.endpoint()["workersMin"] == 0
    again = requests.post(f"{comfy.url}/api/comfy_cluster/workers/min", json={"workersMin": 0}, timeout=30).json()
    assert again["status"] == "ok" and not again["changed"] and "already 0" in again["message"]


def test_a_key_pasted_into_the_workflow_is_refused_by_name(stack) -> None:
    comfy, _, _ = stack
    client = ComfyClient(comfy.url)
    try:
        pasted = {"workflow": {"nodes": [{"id": 9, "type": "Note", "widgets_values": [f"key: {KEY}"]}]}}
        run = client.follow(client.queue(graph("cluster"), extra_pnginfo=pasted))
    finally:
        client.close()
    assert run.ending == "execution_error"
    message = run.of("execution_error")[0]["exception_message"]
    assert "RUNPOD_API_KEY appears in this workflow" in message and KEY not in message
