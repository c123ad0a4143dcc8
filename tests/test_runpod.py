"""RunPodEndpoint over loopback against the RunPod emulator (worker-comfyui over emulated ComfyUI)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_cluster.backend import Backend, PromptRequest
from comfy_cluster.config import RunPodConfig
from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.emulator.runpod import RunPodEmulator
from comfy_cluster.errors import (
    BudgetExceeded,
    Cancelled,
    ConfigError,
    ExecutionFailed,
    JobTimeout,
    MissingNodes,
    ServerUnavailable,
    TransferError,
    WorkflowRejected,
)
from comfy_cluster.ledger import CostLedger
from comfy_cluster.runpod import RunPodEndpoint, parse_health, retry_after_seconds, runpod_status_text
from comfy_cluster.runpod_payload import RUN_PAYLOAD_LIMIT, build_payload

KEY = "rpa_T3ST_8c1f0e2d9b7a6c5e4f3a"
EID = "ep-nuke-burst"


def invert_workflow() -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "plate.1001.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "rp_out"}}}


def empty_workflow(color: int = 0x336699) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "rp_empty"}}}


def plate(path: Path, value: int = 40, size: tuple[int, int] = (16, 8)) -> Path:
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def comfy():
    workers = [EmulatorThread(name=f"rp-worker-{i}").start() for i in range(2)]
    yield workers
    for w in workers:
        w.stop()


@pytest.fixture(scope="module")
def emu_module(comfy):
    emu = RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[w.url for w in comfy]).start()
    yield emu
    emu.stop()


@pytest.fixture
def emu(emu_module, comfy):
    emu_module.reset()
    for w in comfy:
        w.set_faults(fail_node=None, seconds_per_job=0.0)
    return emu_module


def make_endpoint(emu: RunPodEmulator, tmp_path: Path, *, key: str = KEY, endpoint_id: str = EID,
                  **policy: Any) -> RunPodEndpoint:
    policy.setdefault("status_poll_min", 0.05)
    policy.setdefault("status_poll_max", 0.5)
    cfg = RunPodConfig(endpoint_id=endpoint_id, base_url=f"{emu.url}/v2/{{endpoint_id}}", **policy)
    return RunPodEndpoint(cfg, environ={"RUNPOD_API_KEY": key}, ledger=CostLedger(tmp_path / "state"))


def run(ep: RunPodEndpoint, request: PromptRequest, cancel: threading.Event | None = None,
        events: list | None = None):
    sink = events if events is not None else []
    return ep.run_prompt(request, on_event=lambda kind, data: sink.append((kind, data)),
                         cancel=cancel or threading.Event())


def fetch_pixels(ref, tmp_path: Path) -> np.ndarray:
    dest = tmp_path / f"fetched_{ref.index}_{ref.filename}"
    ref.fetch(dest)
    return np.asarray(Image.open(dest))


# ------------------------------------------------------------------ the happy path

def test_endpoint_is_a_backend(emu, tmp_path) -> None:
    ep = make_endpoint(emu, tmp_path)
    assert isinstance(ep, Backend)
    assert ep.kind == "runpod" and ep.name == "runpod"
    assert ep.base_url == emu.base_url


def test_inputs_go_base64_under_content_names_and_outputs_come_back(emu, tmp_path) -> None:
    src = plate(tmp_path / "plate.1001.png", value=40)
    events: list = []
    request = PromptRequest("p-1001", invert_workflow(), {("1", "image"): src}, timeout=30, label="frame 1001")
    result = run(make_endpoint(emu, tmp_path), request, events=events)

    assert [k for k, _ in events][0] == "submitted"
    job_id = events[0][1]["job_id"]
    sent = emu.job(job_id)["input"]
    name = sent["workflow"]["1"]["inputs"]["image"]
    assert name.startswith("cc_") and name.endswith(".png") and name != "plate.1001.png"
    assert sent["images"] == [{"name": name, "image": base64.b64encode(src.read_bytes()).decode()}]
    assert hashlib.sha256(src.read_bytes()).hexdigest()[:20] in name
    assert request.workflow["1"]["inputs"]["image"] == "plate.1001.png"     # the caller's graph is untouched

    assert result.backend == "runpod" and result.prompt_id == "p-1001"
    assert len(result.outputs) == 1 and re.fullmatch(r"rp_out_\d{5}_\.png", result.outputs[0].filename)
    pixels = fetch_pixels(result.outputs[0], tmp_path)
    assert pixels.shape == (8, 16, 3)
    assert abs(int(pixels[0, 0, 0]) - 215) <= 1      # inverted through ComfyUI's float path


def test_cost_is_billed_from_execution_time_with_delay_apart(emu, tmp_path) -> None:
    emu.set(seconds_per_job=0.2)
    ep = make_endpoint(emu, tmp_path, price_per_second=0.5)
    result = ep.run_prompt(PromptRequest("p-c", empty_workflow(), timeout=30, label="frame 7"),
                           on_event=lambda *a: None, cancel=threading.Event(), batch_id="sh010_v002")
    [entry] = CostLedger(tmp_path / "state").entries()
    assert entry.execution_ms >= 200
    assert result.cost == pytest.approx(entry.execution_ms / 1000 * 0.5)
    assert entry.cost == pytest.approx(result.cost)
    assert entry.batch == "sh010_v002" and entry.label == "frame 7" and entry.endpoint == EID
    assert entry.delay_ms >= 0 and entry.status == "COMPLETED"
    assert ep.get_status().spend_today == pytest.approx(result.cost)


def test_batch_defaults_to_the_label(emu, tmp_path) -> None:
    run(make_endpoint(emu, tmp_path), PromptRequest("p-l", empty_workflow(), timeout=30, label="sh020 frame 3"))
    assert CostLedger(tmp_path / "state").entries()[0].batch == "sh020 frame 3"


# ------------------------------------------------------------------ backoff

def test_a_quick_job_is_seen_done_within_a_few_polls(emu, tmp_path) -> None:
    """0.25 s, then x1.5: a 0.3 s job is seen done by the second or third status poll."""
    emu.set(seconds_per_job=0.3)
    ep = make_endpoint(emu, tmp_path, status_poll_min=0.25, status_poll_max=5.0)
    run(ep, PromptRequest("p-q", empty_workflow(), timeout=30))
    polls = emu.count("GET", "") - emu.count("GET", "/health")
    assert 1 <= polls <= 3, f"{polls} status polls for a 0.3 s job"


def test_a_long_job_polls_a_bounded_number_of_times(emu, tmp_path) -> None:
    emu.set(seconds_per_job=5.0)
    ep = make_endpoint(emu, tmp_path, status_poll_min=0.25, status_poll_max=5.0)
    run(ep, PromptRequest("p-long", empty_workflow(), timeout=60))
    polls = emu.count("GET", "") - emu.count("GET", "/health")
    assert 3 <= polls <= 9, f"{polls} status polls for a 5 s job"


# ------------------------------------------------------------------ HTTP errors

def test_429_is_retried_after_retry_after(emu, tmp_path) -> None:
    emu.set(rate_limit_next=1, retry_after="1")
    t0 = time.monotonic()
    run(make_endpoint(emu, tmp_path), PromptRequest("p-429", empty_workflow(), timeout=30))
    assert emu.count("POST", "/run") == 2
    assert time.monotonic() - t0 >= 0.95


def test_429_that_persists_is_reported_not_looped(emu, tmp_path) -> None:
    emu.set(rate_limit_next=50, retry_after="0")
    with pytest.raises(ServerUnavailable, match=r"rate limited \(HTTP 429\)"):
        run(make_endpoint(emu, tmp_path), PromptRequest("p-429x", empty_workflow(), timeout=30))
    assert emu.count("POST", "/run") == 5


def test_5xx_is_retried_with_backoff(emu, tmp_path) -> None:
    emu.set(server_error_next=2)
    result = run(make_endpoint(emu, tmp_path), PromptRequest("p-503", empty_workflow(), timeout=30))
    assert emu.count("POST", "/run") == 3
    assert len(result.outputs) == 1


def test_retry_after_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    date = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 <= retry_after_seconds(date) <= 31


def test_401_names_the_key_variable(emu, tmp_path) -> None:
    ep = make_endpoint(emu, tmp_path, key="rpa_wrong_key_000")
    with pytest.raises(ServerUnavailable) as info:
        run(ep, PromptRequest("p-401", empty_workflow(), timeout=30))
    assert "RUNPOD_API_KEY" in str(info.value) and "401" in str(info.value)
    assert "rpa_wrong_key_000" not in str(info.value)
    assert ep.update_status().state == "offline"
    assert "RUNPOD_API_KEY" in ep.get_status().last_error


def test_404_names_the_endpoint_variable(emu, tmp_path) -> None:
    ep = make_endpoint(emu, tmp_path, endpoint_id="ep-typo")
    with pytest.raises(ServerUnavailable) as info:
        run(ep, PromptRequest("p-404", empty_workflow(), timeout=30))
    assert "RUNPOD_ENDPOINT_ID" in str(info.value) and "ep-typo" in str(info.value)


def test_an_unreachable_endpoint_is_unavailable_and_offline(emu, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = RunPodConfig(endpoint_id=EID, base_url=f"http://127.0.0.1:{port}/v2/{{endpoint_id}}")
    ep = RunPodEndpoint(cfg, environ={"RUNPOD_API_KEY": KEY}, ledger=CostLedger(tmp_path / "state"))
    with pytest.raises(ServerUnavailable, match="POST /run failed: ConnectionError") as info:
        run(ep, PromptRequest("p-dead", empty_workflow(), timeout=30))
    assert info.value.server == "runpod"
    status = ep.update_status()
    assert status.state == "offline" and "GET /health" in status.last_error


def test_missing_key_is_a_config_error_naming_the_variable(emu) -> None:
    cfg = RunPodConfig(endpoint_id=EID, base_url=emu.base_url)
    with pytest.raises(ConfigError, match="RUNPOD_API_KEY"):
        RunPodEndpoint(cfg, environ={})


# ------------------------------------------------------------------ payload limit

def noise_png(path: Path, width: int, height: int, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_payload_over_the_limit_is_refused_before_sending(emu, tmp_path) -> None:
    big = noise_png(tmp_path / "plate.big.png", 1800, 1500)     # ~8.1 MB of noise, ~10.8 MB as base64
    request = PromptRequest("p-big", invert_workflow(), {("1", "image"): big}, timeout=30, label="frame 1100")
    with pytest.raises(TransferError) as info:
        run(make_endpoint(emu, tmp_path), request)
    text = str(info.value)
    assert "10 MB" in text and "frame 1100" in text and "MB" in text.split("is", 1)[1]
    assert "network volume" in text or "smaller frames" in text
    assert emu.count("POST", "/run") == 0


def test_an_uncompressed_png_is_repacked_losslessly_to_fit(emu, tmp_path) -> None:
    ramp = np.tile(np.arange(2000, dtype=np.uint16)[None, :, None] % 256, (1500, 1, 3)).astype(np.uint8)
    src = tmp_path / "plate.raw.png"
    Image.fromarray(ramp).save(src, compress_level=0)           # 9 MB on disk, 12 MB as base64
    assert src.stat().st_size * 4 / 3 > RUN_PAYLOAD_LIMIT
    events: list = []
    result = run(make_endpoint(emu, tmp_path),
                 PromptRequest("p-raw", invert_workflow(), {("1", "image"): src}, timeout=60), events=events)
    sent = emu.job(events[0][1]["job_id"])["input"]["images"][0]
    packed = Image.open(io.BytesIO(base64.b64decode(sent["image"])))
    assert np.array_equal(np.asarray(packed), ramp)             # lossless
    assert len(result.outputs) == 1


def test_lossy_encoding_is_offered_only_when_it_fits_and_alpha_is_unused(tmp_path) -> None:
    rng = np.random.default_rng(7)
    smooth = (np.linspace(0, 255, 256)[None, :, None] + rng.normal(0, 3, (256, 256, 3))).clip(0, 255)
    src = tmp_path / "plate.png"
    Image.fromarray(smooth.astype(np.uint8)).save(src, optimize=True, compress_level=9)
    request = PromptRequest("p-j", invert_workflow(), {("1", "image"): src}, timeout=30)
    full = build_payload(request).size
    limit = full - 100
    with pytest.raises(TransferError, match="lossy JPEG") as info:
        build_payload(request, limit=limit)
    assert "lossy_inputs" in str(info.value)
    payload = build_payload(request, limit=limit, lossy_ok=True)
    assert payload.size <= limit
    assert payload.body["input"]["workflow"]["1"]["inputs"]["image"].endswith(".jpg")
    sent = base64.b64decode(payload.body["input"]["images"][0]["image"])
    assert Image.open(io.BytesIO(sent)).format == "JPEG"

    masked = invert_workflow()
    masked["4"] = {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}}
    needs_alpha = PromptRequest("p-m", masked, {("1", "image"): src}, timeout=30)
    with pytest.raises(TransferError) as info:
        build_payload(needs_alpha, limit=limit, lossy_ok=True)
    assert "lossy" not in str(info.value)


def test_an_unreadable_input_says_which_file(tmp_path) -> None:
    request = PromptRequest("p-x", invert_workflow(), {("1", "image"): tmp_path / "missing.png"}, timeout=30)
    with pytest.raises(TransferError, match="missing.png"):
        build_payload(request)


# ------------------------------------------------------------------ output formats

def test_s3_url_outputs_are_fetched(emu, tmp_path) -> None:
    emu.set(s3_outputs=True)
    result = run(make_endpoint(emu, tmp_path), PromptRequest("p-s3", empty_workflow(0xFF0000), timeout=30))
    assert re.fullmatch(r"rp_empty_\d{5}_\.png", result.outputs[0].filename)
    pixels = fetch_pixels(result.outputs[0], tmp_path)
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert any(p.startswith("/_s3/") for _, p in emu.requests)


def test_legacy_message_base64(emu, tmp_path) -> None:
    emu.set(output_format="legacy")
    result = run(make_endpoint(emu, tmp_path), PromptRequest("p-old", empty_workflow(0x00FF00), timeout=30))
    [ref] = result.outputs
    assert ref.filename.endswith(".png")
    assert tuple(fetch_pixels(ref, tmp_path)[0, 0]) == (0, 255, 0)


def test_legacy_message_url(emu, tmp_path) -> None:
    emu.set(output_format="legacy", s3_outputs=True)
    result = run(make_endpoint(emu, tmp_path), PromptRequest("p-oldu", empty_workflow(0x0000FF), timeout=30))
    assert tuple(fetch_pixels(result.outputs[0], tmp_path)[0, 0]) == (0, 0, 255)


def test_success_without_images_gives_no_outputs(emu, tmp_path) -> None:
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
          "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert run(make_endpoint(emu, tmp_path), PromptRequest("p-no", wf, timeout=30)).outputs == []


# ------------------------------------------------------------------ failures

def test_failed_job_with_a_raised_handler_error(emu, tmp_path) -> None:
    emu.set(fail_next=1)
    with pytest.raises(ExecutionFailed) as info:
        run(make_endpoint(emu, tmp_path), PromptRequest("p-f", empty_workflow(), timeout=30, label="frame 9"))
    assert "illegal memory access" in str(info.value) and "frame 9" in str(info.value)
    assert info.value.exception_type == "RuntimeError"
    assert info.value.server == "runpod" and info.value.prompt_id == "p-f"


def test_failed_validation_is_a_rejected_workflow(emu, tmp_path) -> None:
    wf = {"1": {"class_type": "NoSuchNode", "inputs": {}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    with pytest.raises(MissingNodes) as info:
        run(make_endpoint(emu, tmp_path), PromptRequest("p-v", wf, timeout=30))
    assert info.value.missing == {"NoSuchNode"}
    wf = empty_workflow()
    wf["1"]["inputs"]["width"] = 0
    with pytest.raises(WorkflowRejected, match="validation"):
        run(make_endpoint(emu, tmp_path), PromptRequest("p-v2", wf, timeout=30))


def test_execution_error_out_of_memory_is_server_specific(emu, comfy, tmp_path) -> None:
    for w in comfy:
        w.set_faults(fail_node="ImageInvert", fail_exception_type="torch.OutOfMemoryError",
                     fail_message="CUDA out of memory")
    src = plate(tmp_path / "p.png")
    with pytest.raises(ExecutionFailed) as info:
        run(make_endpoint(emu, tmp_path), PromptRequest("p-oom", invert_workflow(), {("1", "image"): src},
                                                        timeout=30))
    assert "ImageInvert" in str(info.value) and info.value.server_specific


def test_completed_with_status_error_is_a_failure(emu, tmp_path) -> None:
    emu.set(output_format="legacy", completed_error_next=1)
    with pytest.raises(ExecutionFailed, match="does not exist"):
        run(make_endpoint(emu, tmp_path), PromptRequest("p-ce", empty_workflow(), timeout=30))


def test_timed_out_is_reported_as_such(emu, tmp_path) -> None:
    emu.set(timed_out_next=1)
    with pytest.raises(JobTimeout, match=r"timed out \(TIMED_OUT\)"):
        run(make_endpoint(emu, tmp_path), PromptRequest("p-to", empty_workflow(), timeout=30))


def test_execution_timeout_on_runpod_is_timed_out(emu, tmp_path) -> None:
    emu.set(seconds_per_job=2.0, execution_timeout_s=0.2)
    with pytest.raises(JobTimeout, match="TIMED_OUT"):
        run(make_endpoint(emu, tmp_path), PromptRequest("p-et", empty_workflow(), timeout=30))


def test_cancelled_on_runpod_is_reported_as_such(emu, tmp_path) -> None:
    emu.set(seconds_per_job=3.0)
    ep = make_endpoint(emu, tmp_path)

    def cancel_from_elsewhere(kind: str, data: dict) -> None:
        if kind == "submitted":
            requests.post(f"{emu.base_url}/cancel/{data['job_id']}", headers={"Authorization": f"Bearer {KEY}"},
                          timeout=5)
    with pytest.raises(Cancelled, match=r"\(CANCELLED\)"):
        ep.run_prompt(PromptRequest("p-xc", empty_workflow(), timeout=30), on_event=cancel_from_elsewhere,
                      cancel=threading.Event())


def test_cancel_sends_cancel_and_stops_quickly(emu, tmp_path) -> None:
    emu.set(seconds_per_job=10.0)
    ep = make_endpoint(emu, tmp_path, status_poll_max=5.0)
    cancel = threading.Event()
    seen: list = []

    def on_event(kind: str, data: dict) -> None:
        seen.append(data.get("job_id"))
        if kind == "started":
            cancel.set()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        ep.run_prompt(PromptRequest("p-can", empty_workflow(), timeout=60), on_event=on_event, cancel=cancel)
    assert time.monotonic() - t0 < 10.0, "returned only when the 10 s job would have ended anyway"
    assert emu.count("POST", f"/cancel/{seen[0]}") == 1
    assert emu.job(seen[0])["status"] == "CANCELLED"
    assert ep.in_flight == 0


def test_our_deadline_cancels_the_job(emu, tmp_path) -> None:
    emu.set(seconds_per_job=10.0)
    ep = make_endpoint(emu, tmp_path)
    with pytest.raises(JobTimeout, match="did not finish in 0.6 s"):
        run(ep, PromptRequest("p-dl", empty_workflow(), timeout=0.6))
    assert sum(1 for method, path in emu.requests if method == "POST" and "/cancel/" in path) == 1


# ------------------------------------------------------------------ health and state

def test_health_feeds_the_status_cache(emu, tmp_path) -> None:
    ep = make_endpoint(emu, tmp_path)
    status = ep.update_status()
    assert status.state == "online" and status.last_error is None
    assert set(status.workers) == {"idle", "running", "initializing", "throttled", "unhealthy", "ready"}
    emu.set(throttled=2, unhealthy=1)
    assert ep.update_status().workers["throttled"] == 2
    assert json.loads(json.dumps(status.to_dict()))["kind"] == "runpod"


def test_booting_while_workers_initialize(tmp_path) -> None:
    # A fresh emulator whose only worker takes a second to boot.
    with EmulatorThread(name="rp-cold") as comfy, \
            RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[comfy.url], cold_start_s=1.5) as emu:
        ep = make_endpoint(emu, tmp_path)
        done = threading.Event()
        worker = threading.Thread(target=lambda: (run(ep, PromptRequest("p-b", empty_workflow(), timeout=30)),
                                                  done.set()))
        worker.start()
        deadline = time.monotonic() + 5
        states = set()
        while not done.is_set() and time.monotonic() < deadline:
            states.add(ep.update_status().state)
            time.sleep(0.05)
        worker.join(10)
        assert "booting" in states and done.is_set()
        entry = CostLedger(tmp_path / "state").entries()[0]
        assert entry.delay_ms >= 1400 and entry.execution_ms < entry.delay_ms


def test_monitor_thread_updates_and_stops(emu, tmp_path) -> None:
    ep = make_endpoint(emu, tmp_path)
    ep.poll_interval = 0.05
    ep.start()
    try:
        deadline = time.monotonic() + 5
        while ep.get_status().last_status_check is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ep.state == "online"
    finally:
        ep.stop()
    assert ep._thread is None


def test_parse_health_is_tolerant() -> None:
    workers, jobs = parse_health({"jobs": {"inQueue": 3, "retried": 9}, "workers": {"idle": "2", "extra": 5}})
    assert workers == {"idle": 2, "running": 0, "initializing": 0, "throttled": 0, "unhealthy": 0, "ready": 0}
    assert jobs == {"inQueue": 3, "inProgress": 0, "completed": 0, "failed": 0}
    assert parse_health(None)[0]["idle"] == 0


def test_disabled_endpoint(emu, tmp_path) -> None:
    ep = make_endpoint(emu, tmp_path, enabled=False)
    assert ep.state == "disabled" and not ep.has_free_slot()
    assert not ep.should_take(local_online=0, predicted_local_wait=None)
    with pytest.raises(ServerUnavailable, match="disabled"):
        run(ep, PromptRequest("p-d", empty_workflow(), timeout=30))


# ------------------------------------------------------------------ policy

def test_should_take_overflow_rules(emu, tmp_path) -> None:
    ep = make_endpoint(emu, tmp_path, overflow_after_s=60.0)
    assert ep.should_take(local_online=0, predicted_local_wait=5.0)          # offline burst
    assert ep.should_take(local_online=2, predicted_local_wait=None)         # wait unknown
    assert ep.should_take(local_online=2, predicted_local_wait=61.0)         # local wait too long
    assert not ep.should_take(local_online=2, predicted_local_wait=30.0)
    assert ep.overflow_after_s == 60.0


def test_max_concurrent_caps_free_slots(emu, tmp_path) -> None:
    emu.set(seconds_per_job=1.0)
    ep = make_endpoint(emu, tmp_path, max_concurrent=1)
    ep.update_status()
    t = threading.Thread(target=run, args=(ep, PromptRequest("p-mc", empty_workflow(), timeout=30)))
    t.start()
    deadline = time.monotonic() + 5
    while ep.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ep.has_free_slot() and ep.state == "busy"
    t.join(10)
    assert ep.has_free_slot()


def test_budget_blocks_the_next_job_with_a_reason(emu, tmp_path, caplog) -> None:
    ledger = CostLedger(tmp_path / "state")
    ledger.record(endpoint=EID, job_id="earlier", execution_ms=9_950_000, cost=4.98)
    ep = make_endpoint(emu, tmp_path, daily_budget=5.0, price_per_second=0.001)
    ep.default_job_seconds = 40.0          # next job est. $0.04
    caplog.set_level(logging.INFO, logger="comfy_cluster.runpod")
    assert not ep.has_free_slot()
    assert ep.blocked_reason == "daily budget $5.00 reached: $4.98 spent today, next job est. $0.04"
    assert not ep.should_take(local_online=0, predicted_local_wait=None)
    assert ep.get_status().blocked_reason == ep.blocked_reason
    with pytest.raises(BudgetExceeded) as info:
        run(ep, PromptRequest("p-bud", empty_workflow(), timeout=30))
    assert isinstance(info.value, ServerUnavailable)        # safe to run the frame elsewhere
    assert emu.count("POST", "/run") == 0
    assert caplog.text.count("daily budget $5.00 reached") == 1          # logged once per change
    assert "blocked: daily budget" in runpod_status_text(ep.get_status())


def test_budget_cap_stops_runpod_use_at_the_cap_with_no_frame_lost(emu, comfy, tmp_path) -> None:
    emu.set(seconds_per_job=0.3)
    ep = make_endpoint(emu, tmp_path, daily_budget=1.0, price_per_second=1.0, max_concurrent=2)
    ep.default_job_seconds = 0.3
    frames = list(range(1001, 1011))
    done: dict[int, str] = {}
    local_out = tmp_path / "local"
    local_out.mkdir()

    def render_runpod(frame: int) -> None:
        try:
            result = run(ep, PromptRequest(f"p{frame}", empty_workflow(frame), timeout=30, label=f"frame {frame}"),
                         )
        except BudgetExceeded:
            done[frame] = render_local(frame)
            return
        result.outputs[0].fetch(tmp_path / f"rp.{frame}.png")
        done[frame] = "runpod"

    def render_local(frame: int) -> str:
        # The local tier: the same graph on a ComfyUI server of our own.
        r = requests.post(f"{comfy[0].url}/prompt", json={"prompt": empty_workflow(frame)}, timeout=10)
        assert r.status_code == 200
        return "local"

    pending = list(frames)
    threads: list[threading.Thread] = []
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        # The dispatcher's rule: RunPod while it has a slot; blocked by budget -> local; busy -> wait.
        if ep.blocked_reason is not None:
            frame = pending.pop(0)
            done[frame] = render_local(frame)
        elif ep.has_free_slot():
            frame = pending.pop(0)
            in_flight = ep.in_flight
            t = threading.Thread(target=render_runpod, args=(frame,))
            t.start()
            threads.append(t)
            while ep.in_flight == in_flight and frame not in done and time.monotonic() < deadline:
                time.sleep(0.005)
        else:
            time.sleep(0.01)
    for t in threads:
        t.join(30)

    assert sorted(done) == frames                      # no frame lost
    on_runpod = [f for f, where in done.items() if where == "runpod"]
    assert 1 <= len(on_runpod) < len(frames)
    spent = CostLedger(tmp_path / "state").spend_today()
    assert spent <= 1.0 + 0.3                          # at most one estimate's worth of misjudged runtime
    assert ep.blocked_reason is not None and "daily budget $1.00 reached" in ep.blocked_reason, (spent, done, ep.estimated_job_cost())


def test_status_text_shows_workers_spend_and_always_on(emu, tmp_path) -> None:
    ep = make_endpoint(emu, tmp_path, daily_budget=3.0)
    status = ep.update_status()

    class Settings:
        workers_min, workers_max, idle_timeout = 1, 3, 5
    text = runpod_status_text(status, Settings())
    assert f"RunPod endpoint {EID} (runpod): online" in text
    assert "always-on worker: warm (workersMin 1, workersMax 3, idleTimeout 5 s)" in text
    assert "of $3.00" in text


# ------------------------------------------------------------------ with the real pool and dispatcher

def plates(directory: Path, frames: range) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for f in frames:
        plate(directory / f"sh010.{f}.png", value=f % 200)
    return str(directory / "sh010.####.png")


def test_pool_budget_cap_with_no_frame_lost(emu, tmp_path) -> None:
    from comfy_cluster.config import ServerConfig
    from comfy_cluster.pool import ComfyUIServerPool
    from comfy_cluster.run import animation_submit

    emu.set(seconds_per_job=0.3)
    pattern = plates(tmp_path / "plates", range(1001, 1011))
    ep = make_endpoint(emu, tmp_path, daily_budget=1.0, price_per_second=1.0, overflow_after_s=0.0,
                       max_concurrent=2)
    ep.default_job_seconds = 0.35
    ep.update_status()
    with EmulatorThread(name="gpu-01", seconds_per_job=0.3) as local:
        pool = ComfyUIServerPool([ServerConfig(name="gpu-01", ip="127.0.0.1", port=local.port)], runpod=ep,
                                 poll_interval=0.2)
        pool.start()
        try:
            batch = animation_submit(invert_workflow(), pool=pool, frames="1001-1010",
                                     output=str(tmp_path / "out" / "sh010_inv.####.png"),
                                     inputs={"1.image": pattern})
            result = batch.result(timeout=60)
        finally:
            pool.stop()
    assert sorted(result.frames) == list(range(1001, 1011)) and not result.failed
    assert all(p.exists() for paths in result.frames.values() for p in paths)
    assert 1 <= result.by_server.get("runpod", 0) < 10 and result.by_server["gpu-01"] >= 1
    spent = CostLedger(tmp_path / "state").spend_today()
    assert spent + ep.estimated_job_cost() > 1.0        # stopped because the next job would pass the cap
    assert spent <= 1.0 + 0.5, spent                   # over only by runtime beyond the estimate
    assert ep.blocked_reason is not None


def test_the_api_key_never_leaks(emu, comfy, tmp_path, caplog) -> None:
    """A full burst at DEBUG: every log line and every file written must be free of the key."""
    from comfy_cluster.config import RunPodConfig as Cfg
    from comfy_cluster.pool import ComfyUIServerPool
    from comfy_cluster.run import animation_submit
    from comfy_cluster.runpod_admin import RunPodAdmin

    caplog.set_level(logging.DEBUG)
    log_file = tmp_path / "debug.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    errors: list[BaseException] = []
    texts: list[str] = []
    try:
        emu.set(rate_limit_next=1, retry_after="0")
        pattern = plates(tmp_path / "plates", range(1001, 1007))
        ep = make_endpoint(emu, tmp_path, daily_budget=50.0)
        ep.update_status()
        pool = ComfyUIServerPool([], runpod=ep, poll_interval=0.2)       # studio off: offline burst
        pool.start()
        try:
            batch = animation_submit(invert_workflow(), pool=pool, frames="1001-1006",
                                     output=str(tmp_path / "out" / "sh010_inv.####.png"),
                                     inputs={"1.image": pattern}, retries=3)
            result = batch.result(timeout=60)
            texts.append(json.dumps(pool.snapshot().to_dict()))
        finally:
            pool.stop()
        assert sorted(result.frames) == list(range(1001, 1007)) and result.by_server == {"runpod": 6}

        for trouble in ({"fail_next": 1}, {"timed_out_next": 1},
                        {"output_format": "legacy", "completed_error_next": 1}):
            emu.set(**trouble)
            try:
                run(ep, PromptRequest("p-err", empty_workflow(), timeout=30))
            except Exception as err:   # collected to search their text
                errors.append(err)
        big = noise_png(tmp_path / "big.png", 1800, 1500)
        try:
            run(ep, PromptRequest("p-big", invert_workflow(), {("1", "image"): big}, timeout=30))
        except TransferError as err:
            errors.append(err)

        cfg = Cfg(endpoint_id=EID, base_url=emu.base_url, admin_url=f"{emu.url}/v1",
                  admin_v2_url=f"{emu.url}/v2", graphql_url=f"{emu.url}/graphql")
        emu.set(admin_apis=("graphql",))
        admin = RunPodAdmin(cfg, environ={"RUNPOD_API_KEY": KEY}, state_dir=tmp_path / "state")
        texts += [str(admin.warm().to_dict()), str(admin.cold()), repr(admin), repr(ep)]
        texts.append(runpod_status_text(ep.get_status()))
        texts.append(json.dumps(ep.get_status().to_dict()))
        emu.set(admin_apis=())
        try:
            admin.status()
        except ServerUnavailable as err:
            errors.append(err)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()

    assert len(errors) == 5
    for err in errors:
        chain: BaseException | None = err
        while chain is not None:
            texts += [str(chain), repr(chain)]
            chain = chain.__cause__ or chain.__context__
    assert any("RunPod job" in t for t in texts)
    assert "DEBUG" in log_file.read_text() and "submitted as job" in caplog.text
    assert KEY not in caplog.text
    for record in caplog.records:
        assert KEY not in record.getMessage()
    for text in texts:
        assert KEY not in text
    searched = 0
    roots = [tmp_path, *(w.base_dir for w in comfy)]
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                searched += 1
                assert KEY.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    assert searched >= 10
    assert (tmp_path / "state" / "runpod-ledger.jsonl").exists()
    assert any(p.name.endswith(".jsonl") for p in (tmp_path / "out").rglob("*")) or \
        any("journal" in p.name for p in (tmp_path / "out").rglob("*"))
