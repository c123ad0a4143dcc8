"""Contract fixtures: every test here runs once against the emulator and once against the real ComfyUI.

Both targets are shared by the session (the real one is tests/real_components.py's
``real_comfyui``; a start-up costs seconds), so a test never
assumes an idle-fresh server: it uses its own prompt ids, file names and output prefixes,
and leaves the queue empty. ``hold`` puts a prompt on the server that stays running in its
node ``"hold"`` until interrupted: the real server runs the test-only ``ContractHold`` node
(tests/contract/comfy_nodes), the emulator its ``hang_node`` fault on that node id.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from comfy_cluster.client import ComfyClient
from comfy_cluster.emulator.process import EmulatorThread
from comfy_cluster.tracker import PromptTracker
from tests.helpers import wait_until
from tests.real_components import RealComfyUI

HOLD_NODE = "hold"
HOLD_SECONDS = 120.0
DEADLINE = 60.0


@dataclass
class Target:
    """One server under contract: where it is and how to hold its queue."""

    kind: str
    url: str
    input_dir: Path
    output_dir: Path
    clients: list[ComfyClient] = field(default_factory=list)

    def client(self) -> ComfyClient:
        client = ComfyClient(self.url, name=f"contract-{self.kind}")
        self.clients.append(client)
        return client

    def hold_prompt(self) -> dict:
        """A prompt whose node "hold" runs until interrupted (a fresh token defeats the cache)."""
        token = uuid.uuid4().hex
        if self.kind == "real":
            hold = {"class_type": "ContractHold", "inputs": {"token": token, "seconds": HOLD_SECONDS}}
        else:
            hold = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                           "color": int(token[:6], 16)}}
        return {HOLD_NODE: hold,
                "hold_save": {"class_type": "SaveImage", "inputs": {"images": [HOLD_NODE, 0],
                                                                    "filename_prefix": "contract/hold"}}}

    def close(self) -> None:
        for client in self.clients:
            client.close()


def png_bytes(seed: int, size: int = 64) -> bytes:
    """A small noisy RGB PNG (noise makes every pixel of a filter's output count)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def image_chain(image: str, prefix: str) -> dict:
    """LoadImage -> ImageBlur -> ImageScale -> ImageInvert -> SaveImage."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1.5}},
        "3": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "bilinear",
                                                     "width": 48, "height": 40, "crop": "center"}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": prefix}},
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def _emulator_target() -> Iterator[Target]:
    emu = EmulatorThread(name="contract-emu").start()
    emu.set_faults(hang_node=HOLD_NODE)
    target = Target("emulator", emu.url, emu.emulator.dirs.input, emu.emulator.dirs.output)
    try:
        yield target
    finally:
        target.close()
        emu.stop()


@pytest.fixture(scope="session")
def _real_target(real_comfyui: RealComfyUI) -> Iterator[Target]:
    target = Target("real", real_comfyui.url, real_comfyui.input_dir, real_comfyui.output_dir)
    try:
        yield target
    finally:
        target.close()


@pytest.fixture(params=["emulator", "real"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """The server under contract; the queue is empty before and after each test."""
    chosen: Target = request.getfixturevalue(f"_{request.param}_target")
    client = chosen.client()
    wait_until(lambda: _idle(client), timeout=DEADLINE, what=f"{chosen.kind} queue empty before the test")
    yield chosen
    queue = client.get_queue()
    client.delete_pending([entry.prompt_id for entry in queue.pending])
    for entry in queue.running:
        client.interrupt(entry.prompt_id)
    wait_until(lambda: _idle(client), timeout=DEADLINE, what=f"{chosen.kind} queue empty after the test")


def _idle(client: ComfyClient) -> bool:
    queue = client.get_queue()
    return not queue.running and not queue.pending


@pytest.fixture
def tracker(target: Target) -> Iterator[Callable[..., PromptTracker]]:
    """Start PromptTrackers on the target (connected before returned); all stopped at teardown."""
    started: list[PromptTracker] = []

    def make(client_id: str | None = None, **kwargs: Any) -> PromptTracker:
        tr = PromptTracker(target.client(), client_id or unique("contract"), **kwargs).start()
        started.append(tr)
        assert tr.wait_connected(DEADLINE), f"websocket to {target.kind} did not connect"
        return tr

    yield make
    for tr in started:
        tr.stop()


def wait_running(client: ComfyClient, prompt_id: str) -> None:
    wait_until(lambda: any(e.prompt_id == prompt_id for e in client.get_queue().running),
               timeout=DEADLINE, what=f"prompt {prompt_id} running")
