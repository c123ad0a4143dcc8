"""What ComfyUI's HTTP API and websocket say, as frozen types, and the pure parsers behind them.

Nothing here touches the network: ``client.py`` fills these types from HTTP answers and
``tracker.py`` from websocket messages (``parse_binary_frame`` for the binary ones).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

# Binary websocket frame types (ComfyUI protocol.py).
_PREVIEW_IMAGE = 1
_UNENCODED_PREVIEW_IMAGE = 2
_TEXT = 3
_PREVIEW_IMAGE_WITH_METADATA = 4
_IMAGE_FORMATS = {1: "jpeg", 2: "png"}


@dataclass(frozen=True)
class QueueEntry:
    """One item of ComfyUI's queue: ``[number, prompt_id, prompt, extra_data, outputs]``."""

    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list[str]

    @property
    def client_id(self) -> str | None:
        """The websocket client that submitted it (``None`` for anonymous submissions)."""
        value = self.extra_data.get("client_id")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class QueueState:
    """The queue as the server sees it; ``pending`` is in execution order (by number)."""

    running: list[QueueEntry]
    pending: list[QueueEntry]


@dataclass(frozen=True)
class SubmitResult:
    """What ``POST /prompt`` answered. ``node_errors`` is non-empty only for partial runs."""

    prompt_id: str
    number: float
    node_errors: dict


@dataclass(frozen=True)
class OutputImage:
    """One file an output node reported; pass it to ``ComfyClient.download``."""

    filename: str
    subfolder: str
    type: str
    node_id: str


def _node_key(node_id: str) -> tuple:
    """Sort node ids the way people read them: "2" < "10", then text ids ("5:3")."""
    parts = str(node_id).split(":")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


@dataclass(frozen=True)
class HistoryEntry:
    """A finished prompt: its status and what its output nodes produced."""

    prompt_id: str
    status_str: str
    completed: bool
    outputs: dict
    messages: list = field(default_factory=list)

    @property
    def images(self) -> list[OutputImage]:
        """Every reported image, by node id (numeric order) then in the node's order."""
        found: list[OutputImage] = []
        for node_id in sorted(self.outputs, key=_node_key):
            ui = self.outputs[node_id]
            for item in ui.get("images", []) if isinstance(ui, dict) else []:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    found.append(OutputImage(
                        filename=item["filename"],
                        subfolder=str(item.get("subfolder") or ""),
                        type=str(item.get("type") or "output"),
                        node_id=str(node_id),
                    ))
        return found


@dataclass(frozen=True)
class Device:
    """One compute device of a server (``cpu`` or a GPU), memory in bytes."""

    name: str
    type: str
    vram_total: int
    vram_free: int


@dataclass(frozen=True)
class SystemStats:
    """``GET /system_stats``, typed; ``raw`` keeps the whole answer."""

    comfyui_version: str | None
    devices: list[Device]
    argv: list[str]
    raw: dict


@dataclass(frozen=True)
class UploadedFile:
    """Where an upload landed on the server."""

    name: str
    subfolder: str
    type: str

    @property
    def load_image_value(self) -> str:
        """The value for LoadImage's ``image`` input: ``sub/name``, annotated if not input."""
        value = f"{self.subfolder}/{self.name}" if self.subfolder else self.name
        return value if self.type == "input" else f"{value} [{self.type}]"


@dataclass(frozen=True)
class Event:
    """One websocket message (JSON, or a parsed binary frame)."""

    type: str
    data: dict

    @property
    def prompt_id(self) -> str | None:
        value = self.data.get("prompt_id")
        return value if isinstance(value, str) else None


def parse_binary_frame(payload: bytes) -> Event | None:
    """Parse a binary websocket frame by its 4-byte big-endian type; ``None`` if unknown.

    Type 1 (and 2): 4-byte image format, image. Type 4: 4-byte JSON length, JSON metadata
    (with ``prompt_id``), image. Type 3: 4-byte node id length, node id, UTF-8 text.
    A frame is never parsed as JSON as a whole.
    """
    if len(payload) < 4:
        return None
    (kind,) = struct.unpack_from(">I", payload, 0)
    if kind in (_PREVIEW_IMAGE, _UNENCODED_PREVIEW_IMAGE):
        if len(payload) < 8:
            return None
        (fmt,) = struct.unpack_from(">I", payload, 4)
        return Event("preview", {"format": _IMAGE_FORMATS.get(fmt, "unknown"), "image": payload[8:]})
    if kind == _PREVIEW_IMAGE_WITH_METADATA:
        if len(payload) < 8:
            return None
        (size,) = struct.unpack_from(">I", payload, 4)
        if len(payload) < 8 + size:
            return None
        try:
            meta = json.loads(payload[8:8 + size])
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        mime = meta.get("image_type")
        fmt = mime.split("/", 1)[-1] if isinstance(mime, str) else "unknown"
        return Event("preview", {**meta, "format": fmt, "image": payload[8 + size:]})
    if kind == _TEXT:
        if len(payload) < 8:
            return None
        (size,) = struct.unpack_from(">I", payload, 4)
        if len(payload) < 8 + size:
            return None
        node = payload[8:8 + size].decode("utf-8", errors="replace")
        text = payload[8 + size:].decode("utf-8", errors="replace")
        return Event("progress_text", {"node": node, "text": text})
    return None


def node_error_lines(node_errors: Mapping[str, Any], prompt: Mapping[str, Any] | None) -> list[str]:
    """One readable line per node and input: ``node 3 (SaveImage) input 'images': ...``."""
    lines = []
    for node_id in sorted(node_errors, key=_node_key):
        info = node_errors[node_id] if isinstance(node_errors[node_id], dict) else {}
        class_type = info.get("class_type")
        if not class_type and prompt and isinstance(prompt.get(node_id), dict):
            class_type = prompt[node_id].get("class_type")
        where = f"node {node_id} ({class_type})" if class_type else f"node {node_id}"
        errors = info.get("errors") or [{}]
        for error in errors:
            error = error if isinstance(error, dict) else {"message": str(error)}
            extra = error.get("extra_info")
            input_name = extra.get("input_name") if isinstance(extra, dict) else None
            message = str(error.get("message") or error.get("type") or "invalid")
            details = str(error.get("details") or "")
            line = f"{where} input {input_name!r}: {message}" if input_name else f"{where}: {message}"
            if details and details != input_name:
                line += f" ({details})"
            lines.append(line)
    return lines


__all__ = [
    "Device",
    "Event",
    "HistoryEntry",
    "OutputImage",
    "QueueEntry",
    "QueueState",
    "SubmitResult",
    "SystemStats",
    "UploadedFile",
    "node_error_lines",
    "parse_binary_frame",
]
