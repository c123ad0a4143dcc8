"""worker-comfyui through RunPodEndpoint: the emulator's own handler and the real handler.py 5.8.5.

"real": the RunPod emulator with ``external_workers=True`` and no handler of its own; the
real worker-comfyui handler runs on the runpod SDK's worker loop in its own venv, takes the
jobs from the emulator's job-take URL and posts results to its job-done URL, against the
session's real ComfyUI. "emulated": the emulator's built-in handler over an emulated
ComfyUI. The same client calls, the same expectations.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_cluster.backend import PromptRequest, PromptResult
from comfy_cluster.client import ComfyClient
from comfy_cluster.config import RunPodConfig
from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.emulator.runpod import RunPodEmulator
from comfy_cluster.errors import ExecutionFailed, MissingNodes, WorkflowRejected
from comfy_cluster.ledger import CostLedger
from comfy_cluster.runpod import RunPodEndpoint
from tests.contract.conftest import DEADLINE, image_chain, png_bytes, unique
from tests.helpers import wait_until
from tests.real_components import RealComfyUI, RealHandler, require_real, start_real_handler

KEY = "rpa_C0NTRACT_5f1e2d3c4b5a69788796"
EID = "ep-contract"


@dataclass
class Endpoint:
    kind: str
    emulator: RunPodEmulator
    comfy_url: str

    def client(self, tmp_path: Path) -> RunPodEndpoint:
        cfg = RunPodConfig(endpoint_id=EID, base_url=f"{self.emulator.url}/v2/{{endpoint_id}}",
                           status_poll_min=0.05, status_poll_max=0.5)
        return RunPodEndpoint(cfg, environ={"RUNPOD_API_KEY": KEY}, ledger=CostLedger(tmp_path / "state"))


@pytest.fixture(scope="module")
def _emulated_endpoint() -> Iterator[Endpoint]:
    comfy = EmulatorThread(name="contract-rp-comfy").start()
    emu = RunPodEmulator(endpoint_id=EID, api_key=KEY, comfy_urls=[comfy.url]).start()
    try:
        yield Endpoint("emulated", emu, comfy.url)
    finally:
        emu.stop()
        comfy.stop()


@pytest.fixture(scope="module")
def _real_endpoint(real_comfyui: RealComfyUI) -> Iterator[Endpoint]:
    layout = require_real()
    emu = RunPodEmulator(endpoint_id=EID, api_key=KEY, external_workers=True).start()
    work = Path(tempfile.mkdtemp(prefix="worker-comfyui-"))
    worker_id = f"contract-{uuid.uuid4().hex[:8]}"
    handler: RealHandler = start_real_handler(real_comfyui, emu.worker_env(worker_id), work, layout=layout)
    try:
        def joined() -> bool:
            if not handler.alive:
                pytest.fail(f"the real worker-comfyui handler exited with {handler.proc.returncode}; "
                            f"log {handler.log_path}:\n{handler.log_tail()}", pytrace=False)
            return any(w.id == worker_id for w in emu.workers)
        wait_until(joined, timeout=DEADLINE, what=f"the real handler polling for jobs (log {handler.log_path})")
        yield Endpoint("real", emu, real_comfyui.url)
    finally:
        handler.stop()
        emu.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(params=["emulated", "real"])
def endpoint(request: pytest.FixtureRequest) -> Endpoint:
    return request.getfixturevalue(f"_{request.param}_endpoint")


def _run(endpoint: Endpoint, tmp_path: Path, request: PromptRequest) -> tuple[PromptResult | BaseException, dict]:
    """Run through the client; return its result (or raised error) and the job as RunPod holds it."""
    events: list[tuple[str, dict]] = []
    client = endpoint.client(tmp_path)
    try:
        outcome: PromptResult | BaseException = client.run_prompt(
            request, on_event=lambda kind, data: events.append((kind, data)), cancel=threading.Event())
    except Exception as err:  # noqa: BLE001 - the tests look at the error
        outcome = err
    job_id = next(data["job_id"] for kind, data in events if kind == "submitted")
    return outcome, endpoint.emulator.job(job_id)


# handler.py stops listening at the execution_error message and reads /history at once; ComfyUI
# stores the entry only after that message, so the handler mostly finds no entry yet.
EXECUTION_FAILURES = ("Job processing failed", "Job processing failed, prompt ID not found in history.")


def _execution_detail(job: dict) -> str:
    assert job["status"] == "FAILED" and job["error"] in EXECUTION_FAILURES, job
    details = job["output"]["details"]
    if job["error"] == EXECUTION_FAILURES[1]:
        assert details[1:] == [f"Prompt ID {details[1].split()[2]} not found in history after execution."]
    else:
        assert len(details) == 1
    return str(details[0])


def _source(tmp_path: Path, data: bytes, name: str = "plate.1001.png") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _direct_pixels(endpoint: Endpoint, source: bytes, prompt: dict[str, Any], tmp_path: Path) -> np.ndarray:
    """The same graph run straight on the worker's ComfyUI, for the reference pixels."""
    with ComfyClient(endpoint.comfy_url) as comfy:
        name = comfy.upload_image(source, unique("direct") + ".png").load_image_value
        graph = {**prompt, "1": {"class_type": "LoadImage", "inputs": {"image": name}}}
        prompt_id = comfy.submit(graph, client_id=unique("direct")).prompt_id
        entry = wait_until(lambda: comfy.get_history(prompt_id), timeout=DEADLINE, what="the direct run")
        [image] = entry.images
        return _pixels(comfy.download(image, tmp_path / "direct.png").read_bytes())


def test_base64_inputs_and_outputs(endpoint: Endpoint, tmp_path: Path) -> None:
    source = png_bytes(31)
    prompt = image_chain("plate.1001.png", unique("contract/rp"))
    request = PromptRequest(unique("p"), prompt, {("1", "image"): _source(tmp_path, source)}, timeout=DEADLINE,
                            label="frame 1001")
    result, job = _run(endpoint, tmp_path, request)
    assert isinstance(result, PromptResult), result
    assert job["status"] == "COMPLETED" and "error" not in job
    [image] = job["output"]["images"]
    assert image["type"] == "base64" and image["filename"].endswith("_00001_.png")
    assert set(job["output"]) == {"images"}

    [ref] = result.outputs
    ref.fetch(tmp_path / "out.png")
    got = _pixels((tmp_path / "out.png").read_bytes())
    assert got.shape == (40, 48, 3)
    assert np.array_equal(got, _direct_pixels(endpoint, source, prompt, tmp_path))


def test_a_node_that_fails_while_running(endpoint: Endpoint, tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}},
              "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 20, "sigma": 1.0}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": unique("rp/x")}}}
    error, job = _run(endpoint, tmp_path, PromptRequest(unique("p"), prompt, timeout=DEADLINE, label="frame 7"))
    detail = _execution_detail(job)
    assert detail.startswith("Workflow execution error: Node Type: ImageBlur, Node ID: 2, Message: ")
    assert "Padding size should be less than the corresponding input dimension" in detail
    assert isinstance(error, ExecutionFailed) and (error.node_id, error.node_type) == ("2", "ImageBlur")
    assert "frame 7" in str(error) and "Padding size should be less" in str(error)


def test_a_missing_node_class(endpoint: Endpoint, tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "NoSuchNode", "inputs": {}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    error, job = _run(endpoint, tmp_path, PromptRequest(unique("p"), prompt, timeout=DEADLINE))
    assert job["status"] == "FAILED" and "output" not in job
    assert job["error"].startswith("Cannot execute because node NoSuchNode does not exist.. Raw response: {")
    assert isinstance(error, MissingNodes) and error.missing == {"NoSuchNode"}


def test_an_input_out_of_range_is_a_rejected_workflow(endpoint: Endpoint, tmp_path: Path) -> None:
    prompt = image_chain("plate.1001.png", unique("contract/rp"))
    prompt["2"]["inputs"]["blur_radius"] = 99
    request = PromptRequest(unique("p"), prompt, {("1", "image"): _source(tmp_path, png_bytes(3))}, timeout=DEADLINE)
    error, job = _run(endpoint, tmp_path, request)
    assert job["status"] == "FAILED" and "output" not in job
    lines = job["error"].split("\n")
    assert lines[0] == "Workflow validation failed:"
    assert lines[1].startswith("• Node 2 (errors): [{'type': 'value_bigger_than_max'")
    assert lines[2:] == ["• Node 2 (dependent_outputs): ['5']", "• Node 2 (class_type): ImageBlur"]
    assert isinstance(error, WorkflowRejected) and "blur_radius" in str(error)


def test_an_input_that_is_not_an_image(endpoint: Endpoint, tmp_path: Path) -> None:
    prompt = image_chain("plate.1001.png", unique("contract/rp"))
    not_an_image = _source(tmp_path, b"EXR? no: just bytes that no image library reads")
    error, job = _run(endpoint, tmp_path, PromptRequest(unique("p"), prompt, {("1", "image"): not_an_image},
                                                       timeout=DEADLINE))
    detail = _execution_detail(job)
    assert detail.startswith("Workflow execution error: Node Type: LoadImage, Node ID: 1, Message: cannot identify "
                             "image file")
    assert isinstance(error, ExecutionFailed) and (error.node_id, error.node_type) == ("1", "LoadImage")
    assert "cannot identify image file" in str(error)


def test_undecodable_base64_fails_the_upload(endpoint: Endpoint) -> None:
    body = {"input": {"workflow": image_chain("x.png", "rp/x"), "images": [{"name": "x.png", "image": "abc"}]}}
    answer = requests.post(f"{endpoint.emulator.base_url}/runsync", json=body, timeout=DEADLINE,
                           headers={"Authorization": f"Bearer {KEY}"}).json()
    assert answer["status"] == "FAILED"
    assert answer["error"] == "Failed to upload one or more input images"
    assert answer["output"] == {"details": ["Error decoding base64 for x.png: Incorrect padding"]}
