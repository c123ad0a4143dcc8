"""Talking to a real ComfyUI like its frontend does: queue a prompt with a client id and
read the websocket until the prompt ends (text frames and the binary progress-text frames)."""

from __future__ import annotations

import json
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests
import websocket

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
