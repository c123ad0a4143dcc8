"""The core modules behind the ComfyUI front: graph capture, IMAGE <-> PNG, the remote run
loop and the app session, against the emulators (no ComfyUI, no torch)."""

from __future__ import annotations

import json
import math
import queue
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import requests

from comfy_cluster import graph_capture, image_batch, remote_render
from comfy_cluster.app_session import AppSession, comparable, redact
from comfy_cluster.config import ServerConfig
from comfy_cluster.emulator.runpod import RunPodEmulator
from comfy_cluster.errors import BudgetExceeded, ConfigError, Interrupted, TransferError, WorkflowError
from comfy_cluster.pool import ComfyUIServerPool

from .helpers import wait_until

KEY = "rpa_NODECORE_0123456789abcdef"
EID = "ep-node-core"

#: A live prompt as ComfyUI hands it to a node: 1 -> 2 -> 3 (ours) -> 4, plus an unrelated 5.
LIVE_PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 1, "color": 0x336699},
          "_meta": {"title": "Plate"}, "is_changed": [float("nan")]},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "ComfyClusterRemoteRender", "inputs": {"mode": "cluster", "image": ["2", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "down"}},
    "5": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 1, "color": 0}},
}


def test_capture_takes_the_ancestors_and_ends_in_a_save() -> None:
    graph = graph_capture.upstream_workflow(LIVE_PROMPT, "3", "image", filename_prefix="rr")
    assert set(graph) == {"1", "2", graph_capture.OUTPUT_NODE_ID}
    assert graph[graph_capture.OUTPUT_NODE_ID] == {
        "class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "rr"},
        "_meta": {"title": "output of node 3"}}
    assert "is_changed" not in graph["1"] and graph["1"]["_meta"] == {"title": "Plate"}
    json.dumps(graph, allow_nan=False)          # strict JSON: the NaN fingerprint is gone


def test_capture_rewraps_unwrapped_list_constants() -> None:
    live = {"0": {"class_type": "Y", "inputs": {}},
            "1": {"class_type": "X", "inputs": {"values": [1, 2, 3], "names": ["a", "b"], "src": ["0", 0]}},
            "2": {"class_type": "R", "inputs": {"image": ["1", 0]}}}
    graph = graph_capture.upstream_workflow(live, "2", "image")
    assert graph["1"]["inputs"]["values"] == {"__value__": [1, 2, 3]}
    assert graph["1"]["inputs"]["names"] == {"__value__": ["a", "b"]}
    assert graph["1"]["inputs"]["src"] == ["0", 0] and "0" in graph      # a link stays a link


def test_capture_errors_name_the_node_and_input() -> None:
    unwired = {"3": {"class_type": "ComfyClusterRemoteRender", "inputs": {"mode": "cluster"}}}
    with pytest.raises(WorkflowError, match=r"node 3 input 'image': not connected"):
        graph_capture.upstream_workflow(unwired, "3", "image")
    dangling = {"3": {"class_type": "R", "inputs": {"image": ["9", 0]}}}
    with pytest.raises(WorkflowError, match=r"node 9: linked from the graph upstream of node 3"):
        graph_capture.upstream_workflow(dangling, "3", "image")
    nan = {"1": {"class_type": "X", "inputs": {"v": math.nan}}, "2": {"class_type": "R", "inputs": {"image": ["1", 0]}}}
    with pytest.raises(WorkflowError, match=r"node 1 input 'v': cannot be sent as JSON"):
        graph_capture.upstream_workflow(nan, "2", "image")


def test_local_image_files_bind_each_load_image(tmp_path: Path) -> None:
    (tmp_path / "plate.png").write_bytes(b"png")
    graph = {"7": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}},
             "8": {"class_type": "ImageInvert", "inputs": {"image": ["7", 0]}}}
    files = graph_capture.local_image_files(graph, lambda name: str(tmp_path / name))
    assert files == {"7.image": tmp_path / "plate.png"}
    graph["7"]["inputs"]["image"] = "gone.png"
    with pytest.raises(WorkflowError, match=r"node 7 LoadImage input 'image': 'gone.png'"):
        graph_capture.local_image_files(graph, lambda name: str(tmp_path / name))


@pytest.mark.parametrize("text", ['{"3": {"class_type": "KSampler", ', '{"nodes": [], "links": []}', "[1, 2]", "hello"])
def test_a_bad_workflow_json_says_how_to_export_one(text: str) -> None:
    with pytest.raises(WorkflowError) as info:
        graph_capture.parse_api_workflow(text)
    assert "Save (API Format)" in str(info.value) and str(info.value).startswith("workflow_json:")


def test_png_round_trip_is_bit_exact_and_owner_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    batch = (rng.integers(0, 256, size=(2, 5, 7, 3)) / 255.0).astype(np.float32)
    paths = image_batch.batch_to_pngs(batch, tmp_path / "staged", "in")
    assert [p.name for p in paths] == ["in_000.png", "in_001.png"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in paths)
    back = image_batch.load_batch(paths)
    assert back.dtype == np.float32 and back.shape == (2, 5, 7, 3)
    assert np.array_equal(back, batch)


def test_load_batch_refuses_mixed_sizes_by_file(tmp_path: Path) -> None:
    a = image_batch.batch_to_pngs(np.zeros((1, 4, 4, 3), np.float32), tmp_path, "a")
    b = image_batch.batch_to_pngs(np.zeros((1, 4, 6, 3), np.float32), tmp_path, "b")
    with pytest.raises(TransferError, match=r"b_000.png' is 6x4, but .*a_000.png' is 4x4"):
        image_batch.load_batch(a + b)
    with pytest.raises(TransferError, match="saved no images"):
        image_batch.load_batch([])


def test_node_progress_moves_per_node_and_within_a_node() -> None:
    bar = remote_render.NodeProgress(4)
    assert bar.executing("1") == 0
    assert bar.executing("2") == 25
    assert bar.progress(5, 10) == 37
    assert bar.executing("3") == 50
    assert bar.executing("3") == 50          # a repeated executing message is not a new node


def test_format_cost() -> None:
    assert remote_render.format_cost(0.00123, 2.71, "runpod") == "runpod: $0.0012 (2.7 s)"
    assert remote_render.format_cost(None, 2.71, "gpu-01") == "gpu-01: 2.7 s"


def test_redact_and_comparable() -> None:
    assert redact("key abc123 for ep-1", {"abc123": "(K)", "ep-1": "(E)"}) == "key (K) for (E)"
    a = {"servers": [{"name": "x", "state": "online", "last_status_check": 1.0}]}
    b = {"servers": [{"name": "x", "state": "online", "last_status_check": 2.0}]}
    assert comparable(a) == comparable(b)
    assert comparable(a) != comparable({"servers": [{"name": "x", "state": "offline", "last_status_check": 1.0}]})


# --------------------------------------------------------------------------- against emulators

def _pool(*emus) -> ComfyUIServerPool:
    servers = [ServerConfig(name=e.name, ip="127.0.0.1", port=e.port) for e in emus]
    return ComfyUIServerPool(servers, poll_interval=0.2).start()


def test_remote_run_returns_the_upstream_pixels(emulator_thread_factory, tmp_path: Path) -> None:
    emu = emulator_thread_factory(name="gpu-a")
    with _pool(emu) as pool:
        graph = graph_capture.upstream_workflow(LIVE_PROMPT, "3", "image")
        events: queue.Queue = queue.Queue()
        job = remote_render.start(graph, pool=pool, mode="cluster", inputs={}, output_dir=tmp_path / "out",
                                  events=events)
        seen: list[int] = []
        statuses: list[str] = []
        outcome = remote_render.wait_for(job, events, pool=pool, node_count=len(graph),
                                         on_progress=lambda v, m: seen.append(v), on_status=statuses.append,
                                         interrupted=lambda: False)
    assert outcome.server == "gpu-a" and outcome.cost is None
    assert seen[-1] == 100 and seen == sorted(seen)
    assert any(s.startswith("submitted on gpu-a") for s in statuses)
    pixels = image_batch.load_batch(outcome.images)
    expected = 1.0 - np.array([0x33, 0x66, 0x99], np.float32) / 255.0
    assert pixels.shape == (1, 4, 8, 3)
    assert np.allclose(pixels[0, 0, 0], np.round(expected * 255) / 255, atol=1 / 255)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in outcome.images)


def test_interrupt_cancels_our_prompt_only(emulator_thread_factory, tmp_path: Path) -> None:
    emu = emulator_thread_factory(name="gpu-slow", seconds_per_node=0.5)
    other_graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 1,
                                                              "color": 7}},
                   "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "other"}}}
    with _pool(emu) as pool:
        graph = graph_capture.upstream_workflow(LIVE_PROMPT, "3", "image")
        events: queue.Queue = queue.Queue()
        job = remote_render.start(graph, pool=pool, mode="cluster", inputs={}, output_dir=tmp_path / "out",
                                  events=events)
        wait_until(lambda: job.prompt_id and _running(emu.url) == [job.prompt_id], 15, "our prompt running")
        other = requests.post(f"{emu.url}/prompt", json={"prompt": other_graph, "client_id": "someone-else"},
                              timeout=10).json()["prompt_id"]
        flag = threading.Event()
        flag.set()
        with pytest.raises(Interrupted, match=job.prompt_id):
            remote_render.wait_for(job, events, pool=pool, node_count=len(graph), on_progress=lambda v, m: None,
                                   on_status=lambda s: None, interrupted=flag.is_set)
        history = wait_until(lambda: _finished(emu.url, other), 30, "the other client's prompt to finish")
    assert history["status"]["status_str"] == "success"
    ours = requests.get(f"{emu.url}/history/{job.prompt_id}", timeout=10).json().get(job.prompt_id)
    assert ours is None or ours["status"]["status_str"] != "success"


def _running(url: str) -> list[str]:
    return [item[1] for item in requests.get(f"{url}/queue", timeout=10).json()["queue_running"]]


def _finished(url: str, prompt_id: str) -> dict | None:
    return requests.get(f"{url}/history/{prompt_id}", timeout=10).json().get(prompt_id)


@pytest.fixture
def runpod(emulator_thread_factory):
    worker = emulator_thread_factory(name="rp-worker")
    with RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[worker.url],
                        endpoint_settings={"workersMax": 3}) as emu:
        yield emu


def _runpod_env(emu: RunPodEmulator, tmp_path: Path, key: str = KEY) -> dict[str, str]:
    """RunPod on the emulator; the one studio server is a closed port (offline)."""
    policy = {"base_url": f"{emu.url}/v2/{{endpoint_id}}", "admin_url": f"{emu.url}/v1",
              "admin_v2_url": f"{emu.url}/v2",
              "graphql_url": f"{emu.url}/graphql", "price_per_second": 0.001, "status_poll_min": 0.05}
    return {"RUNPOD_ENDPOINT_ID": EID, "RUNPOD_API_KEY": key, "NUKE_COMFYUI_RUNPOD": json.dumps(policy),
            "NUKE_COMFYUI_SERVERS": json.dumps([{"name": "studio", "ip": "127.0.0.1", "port": 9}]),
            "COMFY_CLUSTER_STATE_DIR": str(tmp_path / "state")}


def test_session_toggles_min_workers_and_reads_them_back(runpod, tmp_path: Path) -> None:
    session = AppSession(_runpod_env(runpod, tmp_path))
    try:
        status = session.worker_status()
        assert (status["workersMin"], status["workersMax"]) == (0, 3)
        assert {"running", "idle"} <= set(status)
        flipped = session.set_min_workers(1)
        assert flipped == {"status": "ok", "changed": True, "workersMin": 1, "workersMax": 3,
                           "message": "Min workers 0 -> 1"}
        assert runpod.endpoint()["workersMin"] == 1
        again = session.set_min_workers(1)
        assert not again["changed"] and "already 1" in again["message"]
        assert session.cluster_status()["runpod"]["workers_min"] == 1
        for answer in (status, flipped, session.cluster_status()):
            assert EID not in json.dumps(answer) and KEY not in json.dumps(answer)
    finally:
        session.close()


def test_session_errors_hide_the_key_and_endpoint(runpod, tmp_path: Path) -> None:
    session = AppSession(_runpod_env(runpod, tmp_path, key="rpa_WRONG_fedcba9876543210"))
    try:
        with pytest.raises(Exception) as info:
            session.worker_status()
        answer = session.error_answer(info.value)
        assert answer["status"] == "error" and "RUNPOD_API_KEY" in answer["message"]
        assert "rpa_WRONG" not in answer["message"] and EID not in answer["message"]
    finally:
        session.close()
    missing = AppSession({"NUKE_COMFYUI_SERVERS": json.dumps([{"name": "studio", "ip": "127.0.0.1", "port": 9}])})
    try:
        with pytest.raises(ConfigError, match="RUNPOD_ENDPOINT_ID .* RUNPOD_API_KEY"):
            missing.worker_status()
    finally:
        missing.close()


def test_runpod_mode_bills_and_reports_the_cost(runpod, tmp_path: Path) -> None:
    runpod.set(seconds_per_job=0.2)
    session = AppSession(_runpod_env(runpod, tmp_path))
    try:
        pool = session.pool()
        graph = graph_capture.upstream_workflow(LIVE_PROMPT, "3", "image")
        events: queue.Queue = queue.Queue()
        job = remote_render.start(graph, pool=pool, mode="runpod", inputs={}, output_dir=tmp_path / "out",
                                  events=events)
        outcome = remote_render.wait_for(job, events, pool=pool, node_count=len(graph),
                                         on_progress=lambda v, m: None, on_status=lambda s: None,
                                         interrupted=lambda: False)
    finally:
        session.close()
    assert outcome.server == "runpod" and outcome.cost is not None and outcome.cost > 0
    assert outcome.cost_text.startswith("runpod: $")
    assert image_batch.load_batch(outcome.images).shape == (1, 4, 8, 3)


def test_runpod_mode_without_runpod_names_the_variables(emulator_thread_factory) -> None:
    emu = emulator_thread_factory(name="gpu-b")
    with _pool(emu) as pool:
        with pytest.raises(ConfigError, match="RUNPOD_ENDPOINT_ID .* RUNPOD_API_KEY"):
            remote_render.target_for("runpod", pool)


class HostInterrupt(Exception):
    """Stands for ComfyUI's InterruptProcessingException, raised from its progress hook."""


def test_an_exception_from_a_callback_cancels_our_prompt(emulator_thread_factory, tmp_path: Path) -> None:
    emu = emulator_thread_factory(name="gpu-hook", seconds_per_node=0.5)
    with _pool(emu) as pool:
        graph = graph_capture.upstream_workflow(LIVE_PROMPT, "3", "image")
        events: queue.Queue = queue.Queue()
        job = remote_render.start(graph, pool=pool, mode="cluster", inputs={}, output_dir=tmp_path / "out",
                                  events=events)

        def hook(value: int, maximum: int) -> None:
            raise HostInterrupt()

        with pytest.raises(HostInterrupt):
            remote_render.wait_for(job, events, pool=pool, node_count=len(graph), on_progress=hook,
                                   on_status=lambda s: None, interrupted=lambda: False)
        assert job.state.is_final and job.state.name == "CANCELLED"
    ours = requests.get(f"{emu.url}/history/{job.prompt_id}", timeout=10).json().get(job.prompt_id)
    assert ours is None or ours["status"]["status_str"] != "success"


def test_an_unknown_endpoint_is_explained_without_its_id(runpod, tmp_path: Path) -> None:
    env = {**_runpod_env(runpod, tmp_path), "RUNPOD_ENDPOINT_ID": "ep-deleted-long-ago"}
    session = AppSession(env)
    try:
        pool = session.pool()
        events: queue.Queue = queue.Queue()
        job = remote_render.start(graph_capture.upstream_workflow(LIVE_PROMPT, "3", "image"), pool=pool,
                                  mode="runpod", inputs={}, output_dir=tmp_path / "out", events=events)
        with pytest.raises(Exception) as info:
            remote_render.wait_for(job, events, pool=pool, node_count=3, on_progress=lambda v, m: None,
                                   on_status=lambda s: None, interrupted=lambda: False)
    finally:
        session.close()
    assert "404" in str(info.value) and "not found" in str(info.value)
    shown = session.redact(str(info.value))
    assert "ep-deleted-long-ago" not in shown and "(RUNPOD_ENDPOINT_ID)" in shown and KEY not in shown


def test_secret_in_names_the_variable_not_the_value() -> None:
    session = AppSession({"RUNPOD_API_KEY": KEY, "RUNPOD_ENDPOINT_ID": EID})
    assert session.secret_in(LIVE_PROMPT, None, "") is None
    pasted = {"workflow": {"nodes": [{"widgets_values": [f"Bearer {KEY}"]}]}}
    assert session.secret_in(LIVE_PROMPT, pasted) == "RUNPOD_API_KEY"


def test_the_front_modules_import_without_torch_or_comfyui() -> None:
    """The ComfyUI package does the torch/ComfyUI side; the core modules under it stay plain."""
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "comfy", "server", "folder_paths", "nodes", "aiohttp"):
                    raise ImportError(f"{name} is blocked in this test")
                return None

        sys.meta_path.insert(0, Blocker())
        import comfy_cluster.app_session, comfy_cluster.graph_capture, comfy_cluster.image_batch
        import comfy_cluster.remote_render
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_runpod_preflight_shows_the_cost_and_refuses_a_run_past_the_budget(runpod, tmp_path: Path) -> None:
    """The node says what a RunPod run will cost before it sends anything, and a run that
    would pass today's budget is refused with the numbers: nothing reaches the endpoint."""
    env = _runpod_env(runpod, tmp_path)
    session = AppSession(env)
    try:
        line = remote_render.preflight(session.pool(), "runpod")
    finally:
        session.close()
    assert line.startswith("estimate: runpod ~$") and "RunPod today $0.0000" in line, line
    policy = {**json.loads(env["NUKE_COMFYUI_RUNPOD"]), "daily_budget": 0.0}
    session = AppSession({**env, "NUKE_COMFYUI_RUNPOD": json.dumps(policy)})
    try:
        with pytest.raises(BudgetExceeded, match=r"RunPod would cost \$0\.\d{4} .* of the \$0\.00 budget; "
                                                 r"switch the node to cluster mode"):
            remote_render.preflight(session.pool(), "runpod")
    finally:
        session.close()
    assert runpod.count("POST", "/run") == 0
    assert KEY not in line and EID not in line
