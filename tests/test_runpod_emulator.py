"""The RunPod emulator itself: the job API as documented, played over plain HTTP."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.emulator.runpod import RunPodEmulator

KEY = "rpa_EMU_0a1b2c3d4e5f"
EID = "ep-emu"
AUTH = {"Authorization": f"Bearer {KEY}"}


def workflow(color: int = 0x808080) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 2, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "emu"}}}


@pytest.fixture(scope="module")
def comfy():
    with EmulatorThread(name="rp-emu-worker") as worker:
        yield worker


@pytest.fixture
def emu(comfy):
    with RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[comfy.url]) as server:
        yield server


def post(emu: RunPodEmulator, path: str, body: Any = None, **kw: Any) -> requests.Response:
    return requests.post(f"{emu.base_url}{path}", json=body, headers=AUTH, timeout=10, **kw)


def get(emu: RunPodEmulator, path: str) -> requests.Response:
    return requests.get(f"{emu.base_url}{path}", headers=AUTH, timeout=10)


def wait_status(emu: RunPodEmulator, job_id: str, want: set[str], timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = get(emu, f"/status/{job_id}").json()
        if body["status"] in want:
            return body
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {want}: {body}")


def test_auth_and_unknown_endpoint(emu) -> None:
    assert requests.get(f"{emu.base_url}/health", timeout=5).status_code == 401
    assert requests.get(f"{emu.base_url}/health", headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
    assert requests.get(f"{emu.base_url}/health", headers={"Authorization": KEY}, timeout=5).status_code == 200
    assert requests.get(f"{emu.url}/v2/ep-missing/health", headers=AUTH, timeout=5).status_code == 404


def test_run_then_status_through_the_states(emu) -> None:
    emu.set(seconds_per_job=0.3)
    submitted = post(emu, "/run", {"input": {"workflow": workflow(0xFF8000)}}).json()
    assert submitted["status"] == "IN_QUEUE" and submitted["id"].endswith("-u1")
    running = wait_status(emu, submitted["id"], {"IN_PROGRESS"})
    assert "delayTime" in running and running["workerId"]
    done = wait_status(emu, submitted["id"], {"COMPLETED"})
    assert done["executionTime"] >= 300 and done["delayTime"] >= 0
    [image] = done["output"]["images"]
    assert image["type"] == "base64" and image["filename"].endswith(".png")
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(image["data"]))))
    assert tuple(pixels[0, 0]) == (255, 128, 0)


def test_runsync_waits_or_hands_back_the_id(emu) -> None:
    done = post(emu, "/runsync", {"input": {"workflow": workflow()}}).json()
    assert done["status"] == "COMPLETED" and done["id"].startswith("sync-")
    emu.set(seconds_per_job=2.0)
    pending = post(emu, "/runsync?wait=1000", {"input": {"workflow": workflow()}}).json()
    assert pending["status"] in ("IN_QUEUE", "IN_PROGRESS") and "output" not in pending


def test_jobs_queue_behind_one_worker(emu) -> None:
    emu.set(seconds_per_job=0.3)
    ids = [post(emu, "/run", {"input": {"workflow": workflow()}}).json()["id"] for _ in range(3)]
    health = get(emu, "/health").json()
    assert health["jobs"]["inQueue"] + health["jobs"]["inProgress"] == 3
    assert health["jobs"]["inProgress"] <= 1
    last = wait_status(emu, ids[-1], {"COMPLETED"})
    assert last["delayTime"] >= 550
    assert get(emu, "/health").json()["jobs"]["completed"] == 3


def test_cold_start_shows_initializing_then_idle(comfy) -> None:
    with RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[comfy.url], cold_start_s=0.5) as emu:
        job = post(emu, "/run", {"input": {"workflow": workflow()}}).json()["id"]
        assert get(emu, "/health").json()["workers"]["initializing"] <= 1
        deadline = time.monotonic() + 2
        seen = set()
        while time.monotonic() < deadline and "COMPLETED" not in seen:
            seen.add(get(emu, f"/status/{job}").json()["status"])
            w = get(emu, "/health").json()["workers"]
            if w["initializing"]:
                seen.add("initializing")
            time.sleep(0.02)
        assert {"initializing", "COMPLETED"} <= seen
        assert get(emu, f"/status/{job}").json()["delayTime"] >= 450
        assert get(emu, "/health").json()["workers"]["idle"] == 1


def test_idle_workers_scale_down_after_idle_timeout(comfy) -> None:
    with RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[comfy.url],
                        endpoint_settings={"idleTimeout": 1}) as emu:
        post(emu, "/runsync", {"input": {"workflow": workflow()}})
        assert get(emu, "/health").json()["workers"]["idle"] == 1
        deadline = time.monotonic() + 3
        while get(emu, "/health").json()["workers"]["idle"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(emu, "/health").json()["workers"]["idle"] == 0


def test_cancel_purge_and_retry(emu) -> None:
    emu.set(seconds_per_job=1.0)
    running = post(emu, "/run", {"input": {"workflow": workflow()}}).json()["id"]
    queued = [post(emu, "/run", {"input": {"workflow": workflow()}}).json()["id"] for _ in range(2)]
    wait_status(emu, running, {"IN_PROGRESS"})
    assert post(emu, f"/cancel/{queued[0]}").json()["status"] == "CANCELLED"
    assert post(emu, "/purge-queue").json() == {"removed": 1, "status": "completed"}
    assert get(emu, f"/status/{queued[1]}").status_code == 404
    assert post(emu, f"/cancel/{running}").json()["status"] == "CANCELLED"

    emu.set(seconds_per_job=0.0, fail_next=1)
    failed = post(emu, "/run", {"input": {"workflow": workflow()}}).json()["id"]
    assert wait_status(emu, failed, {"FAILED"})["error"].startswith("{")
    assert post(emu, f"/retry/{failed}").json() == {"id": failed, "status": "IN_QUEUE"}
    assert wait_status(emu, failed, {"COMPLETED"})["output"]["images"]
    assert post(emu, f"/retry/{failed}").status_code == 400
    assert get(emu, "/health").json()["jobs"]["retried"] == 1


def test_handler_errors_fail_the_job_like_worker_comfyui(emu) -> None:
    missing = post(emu, "/run", {"input": {}}).json()["id"]
    assert wait_status(emu, missing, {"FAILED"})["error"] == "Missing 'workflow' parameter"
    bad = post(emu, "/run", {"input": {"workflow": workflow(), "images": [{"name": "x.png"}]}}).json()["id"]
    assert "images" in wait_status(emu, bad, {"FAILED"})["error"]
    assert post(emu, "/run", {"nope": 1}).status_code == 400


def test_payload_limit_and_rate_limit(emu) -> None:
    emu.set(payload_limit=1000)
    big = {"input": {"workflow": workflow(), "images": [{"name": "a.png", "image": "A" * 2000}]}}
    r = post(emu, "/run", big)
    assert r.status_code == 400 and "limit" in r.json()["error"]
    emu.set(rate_limit_next=2, retry_after="7")
    limited = get(emu, "/health")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert get(emu, "/health").status_code == 429
    assert get(emu, "/health").status_code == 200


def test_results_expire_after_retention(emu) -> None:
    emu.set(retention_s=0.2)
    job = post(emu, "/run", {"input": {"workflow": workflow()}}).json()["id"]
    wait_status(emu, job, {"COMPLETED"})
    deadline = time.monotonic() + 3
    while get(emu, f"/status/{job}").status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get(emu, f"/status/{job}").status_code == 404


def test_timed_out_and_legacy_formats(emu) -> None:
    emu.set(timed_out_next=1)
    job = post(emu, "/run", {"input": {"workflow": workflow()}}).json()["id"]
    assert wait_status(emu, job, {"TIMED_OUT", "COMPLETED"})["status"] == "TIMED_OUT"
    emu.set(output_format="legacy")
    out = post(emu, "/runsync", {"input": {"workflow": workflow()}}).json()["output"]
    assert out["status"] == "success" and base64.b64decode(out["message"])[:4] == b"\x89PNG"
    emu.set(completed_error_next=1)
    err = post(emu, "/runsync", {"input": {"workflow": workflow()}}).json()
    assert err["status"] == "COMPLETED" and err["output"]["status"] == "error"


def test_knobs_over_http_need_the_key(emu) -> None:
    assert requests.post(f"{emu.url}/_emulator/knobs", json={"fail_next": 1}, timeout=5).status_code == 401
    assert requests.post(f"{emu.url}/_emulator/knobs", json={"bogus": 1}, headers=AUTH, timeout=5).status_code == 400
    assert requests.post(f"{emu.url}/_emulator/knobs", json={"fail_next": 1}, headers=AUTH,
                         timeout=5).status_code == 200
    assert emu.knobs.fail_next == 1
    with pytest.raises(ValueError):
        emu.set(bogus=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_as_a_process(tmp_path) -> None:
    port = _free_port()
    log_path = tmp_path / "emulator.log"
    env = dict(os.environ, RUNPOD_API_KEY=KEY, PYTHONPATH=os.getcwd())
    log_file = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "comfy_cluster.emulator.runpod", "--port", str(port),
                             "--workers", "1", "--endpoint-id", EID], env=env,
                            stdout=log_file, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/v2/{EID}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{base}/health", headers=AUTH, timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "emulator process did not come up"
            time.sleep(0.1)
        done = requests.post(f"{base}/runsync", json={"input": {"workflow": workflow()}}, headers=AUTH,
                             timeout=20).json()
        assert done["status"] == "COMPLETED"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log_file.close()
    text = log_path.read_text()
    assert f"/v2/{EID}" in text and KEY not in text


def test_process_refuses_to_start_without_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RUNPOD_API_KEY"}
    env["PYTHONPATH"] = os.getcwd()
    r = subprocess.run([sys.executable, "-m", "comfy_cluster.emulator.runpod", "--port", "0"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "RUNPOD_API_KEY is not set" in r.stderr
