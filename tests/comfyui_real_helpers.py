"""Talking to a real ComfyUI like its frontend does: queue a prompt with a client id and
read the websocket until the prompt ends (text frames and the binary progress-text frames)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from comfy_cluster.emulator.runpod import RunPodEmulator

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "comfyui_comfy_cluster"
#: The core as ComfyUI's Python sees it in tests (users pip-install the repo instead).
CORE_ENV = {"PYTHONPATH": str(REPO)}
KEY = "rpa_REALNODE_a1b2c3d4e5f60718"
EID = "ep-real-node"

#: ComfyUI's BinaryEventTypes.TEXT (send_progress_text).
BINARY_TEXT = 3
ENDINGS = ("execution_success", "execution_error", "execution_interrupted")


@dataclass
class Run:
    """What the websocket said about one prompt."""

    prompt_id: str
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)     # (node, text) from send_progress_text

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for t, data in self.messages if t == kind]

    @property
    def ending(self) -> str | None:
        for kind, _ in reversed(self.messages):
            if kind in ENDINGS:
                return kind
        return None

    def executed_nodes(self) -> list[str]:
        return [str(d["node"]) for d in self.of("executing") if d.get("node") is not None]


class ComfyClient:
    """One frontend-like client of a real ComfyUI."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(f"{url.replace('http', 'ws', 1)}/ws?clientId={self.client_id}",
                                              timeout=5)

    def close(self) -> None:
        self.ws.close()

    def queue(self, prompt: dict[str, Any], extra_pnginfo: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        if extra_pnginfo is not None:
            body["extra_data"] = {"extra_pnginfo": extra_pnginfo}
        resp = requests.post(f"{self.url}/prompt", json=body, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()["prompt_id"]

    def follow(self, prompt_id: str, timeout: float = 120.0, until: Any = None) -> Run:
        """Read events of ``prompt_id`` until it ends (or ``until(run)`` is true); fails at the deadline."""
        run = Run(prompt_id)
        deadline = time.monotonic() + timeout
        while True:
            if until is not None and until(run):
                return run
            if run.ending:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"prompt {prompt_id}: no end within {timeout} s; got {run.messages[-5:]}")
            try:
                opcode, data = self.ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            if opcode == websocket.ABNF.OPCODE_BINARY:
                (kind,) = struct.unpack(">I", data[:4])
                if kind == BINARY_TEXT:
                    (size,) = struct.unpack(">I", data[4:8])
                    run.texts.append((data[8:8 + size].decode(), data[8 + size:].decode()))
                continue
            message = json.loads(data)
            payload = message.get("data") or {}
            if isinstance(payload, dict) and payload.get("prompt_id") not in (None, prompt_id):
                continue
            run.messages.append((message["type"], payload))

    def history(self, prompt_id: str) -> dict[str, Any]:
        return requests.get(f"{self.url}/history/{prompt_id}", timeout=30).json()[prompt_id]


def require_core(layout: Any) -> None:
    """The core must import in ComfyUI's Python (its deps: requests, websocket-client, ...)."""
    probe = subprocess.run([str(layout.comfyui_python), "-c", "import comfy_cluster.pool, comfy_cluster.runpod_admin"],
                           env={**os.environ, **CORE_ENV}, capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.fail(f"comfy_cluster does not import in ComfyUI's Python {layout.comfyui_python}: "
                    f"{probe.stderr.strip().splitlines()[-1]}; install its dependencies there: "
                    f"{layout.comfyui_python} -m pip install {REPO}", pytrace=False)


def runpod_env(emu: RunPodEmulator, key: str = KEY) -> dict[str, str]:
    policy = {"base_url": f"{emu.url}/v2/{{endpoint_id}}", "admin_url": f"{emu.url}/v1",
              "admin_v2_url": f"{emu.url}/v2",
              "graphql_url": f"{emu.url}/graphql", "price_per_second": 0.001, "status_poll_min": 0.05,
              "overflow_after_s": 3600.0}
    return {"RUNPOD_ENDPOINT_ID": EID, "RUNPOD_API_KEY": key, "NUKE_COMFYUI_RUNPOD": json.dumps(policy)}
