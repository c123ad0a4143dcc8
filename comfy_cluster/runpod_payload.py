"""The worker-comfyui ``/run`` body for a prompt, built and size-checked before anything is sent.

Input files travel base64 inside the body under content-hash names. RunPod refuses a
``/run`` body over 10 MB, so an oversized body is re-encoded (PNG at maximum compression,
lossless; then, only when allowed and no node reads the alpha, JPEG q95) or refused with a
``TransferError`` that says the size, the limit and what to do.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .backend import PromptRequest
from .errors import TransferError
from .workflow import copy_graph

log = logging.getLogger(__name__)

#: RunPod documents 10 MB for ``/run``; taken as 10**7 bytes to stay on the safe side.
RUN_PAYLOAD_LIMIT = 10_000_000


@dataclass
class Payload:
    """The ``/run`` body and what was done to fit it under the limit."""

    body: dict[str, Any]
    size: int


def _json_size(body: Any) -> int:
    return len(json.dumps(body, separators=(",", ":")).encode("utf-8"))


def _content_name(data: bytes, suffix: str) -> str:
    return f"cc_{hashlib.sha256(data).hexdigest()[:20]}{suffix}"


def _mask_used(workflow: Mapping[str, Any], node_id: str) -> bool:
    """True when some node reads LoadImage ``node_id``'s MASK (output 1), i.e. needs alpha."""
    for node in workflow.values():
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        for value in inputs.values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] == 1:
                return True
    return False


def _reencode(data: bytes, fmt: str) -> bytes | None:
    """The image re-encoded losslessly as PNG at max compression, or as JPEG q95; None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            out = io.BytesIO()
            if fmt == "png":
                img.save(out, format="PNG", optimize=True, compress_level=9)
            else:
                img.convert("RGB").save(out, format="JPEG", quality=95, subsampling=0)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def build_payload(request: PromptRequest, *, server: str = "runpod", limit: int = RUN_PAYLOAD_LIMIT,
                  lossy_ok: bool = False) -> Payload:
    """The worker-comfyui ``/run`` body for ``request``, checked against the size limit before sending.

    Every input file goes into ``images`` under a content-hash name and the workflow input
    that reads it is rewritten to that name. Over the limit, the PNGs are re-encoded
    losslessly at maximum compression; if that is not enough and ``lossy_ok``, inputs whose
    alpha no node reads go as JPEG. Otherwise ``TransferError`` says the size, the limit and
    what to do, and nothing is sent.
    """
    originals: dict[tuple[str, str], bytes] = {}
    for (node_id, input_name), path in request.inputs.items():
        try:
            originals[(node_id, input_name)] = Path(path).read_bytes()
        except OSError as err:
            raise TransferError(f"RunPod endpoint '{server}': cannot read input {path} for node "
                                f"{node_id}.{input_name}: {err.strerror or err}", server=server,
                                prompt_id=request.prompt_id) from err
        node = request.workflow.get(node_id)
        if not isinstance(node, Mapping) or not isinstance(node.get("inputs"), Mapping):
            raise TransferError(f"RunPod endpoint '{server}': input {node_id}.{input_name} names no node "
                                f"in the workflow", server=server, prompt_id=request.prompt_id)

    def assemble(files: dict[tuple[str, str], tuple[bytes, str]]) -> dict[str, Any]:
        workflow = copy_graph(request.workflow)
        images: dict[str, bytes] = {}
        for (node_id, input_name), (data, suffix) in files.items():
            name = _content_name(data, suffix)
            workflow[node_id]["inputs"][input_name] = name
            images[name] = data
        body: dict[str, Any] = {"workflow": workflow}
        if images:
            body["images"] = [{"name": n, "image": base64.b64encode(d).decode("ascii")} for n, d in images.items()]
        return {"input": body}

    files = {key: (data, Path(request.inputs[key]).suffix.lower() or ".png") for key, data in originals.items()}
    body = assemble(files)
    size = _json_size(body)
    if size <= limit:
        return Payload(body, size)
    first_size = size

    packed = {}
    for key, (data, suffix) in files.items():
        smaller = _reencode(data, "png")
        packed[key] = (smaller, ".png") if smaller is not None and len(smaller) < len(data) else (data, suffix)
    body = assemble(packed)
    size = _json_size(body)
    if size <= limit:
        log.info("RunPod endpoint '%s': %s payload %.1f MB re-encoded as max-compression PNG to %.1f MB "
                 "(lossless) to fit the %.0f MB /run limit", server, request.label or request.prompt_id,
                 first_size / 1e6, size / 1e6, limit / 1e6)
        return Payload(body, size)

    lossy = {}
    for key, (data, suffix) in packed.items():
        jpeg = None if _mask_used(request.workflow, key[0]) else _reencode(data, "jpeg")
        lossy[key] = (jpeg, ".jpg") if jpeg is not None and len(jpeg) < len(data) else (data, suffix)
    lossy_body = assemble(lossy)
    lossy_size = _json_size(lossy_body)
    if lossy_size <= limit and lossy_ok:
        log.warning("RunPod endpoint '%s': %s inputs sent as JPEG q95 (lossy, RGB only) to fit the %.0f MB "
                    "/run limit: %.1f MB -> %.1f MB", server, request.label or request.prompt_id,
                    limit / 1e6, first_size / 1e6, lossy_size / 1e6)
        return Payload(lossy_body, lossy_size)
    offer = ""
    if lossy_size <= limit:
        offer = (f"; a lossy JPEG encoding of the inputs would be {lossy_size / 1e6:.1f} MB and fit: "
                 f"allow it with \"lossy_inputs\": true in NUKE_COMFYUI_RUNPOD")
    raise TransferError(
        f"RunPod endpoint '{server}': the /run payload for {request.label or request.prompt_id} is "
        f"{first_size / 1e6:.1f} MB ({size / 1e6:.1f} MB even as max-compression PNG), over RunPod's "
        f"{limit / 1e6:.0f} MB limit for /run ({len(files)} input image(s), base64 adds a third); "
        f"not sent. Render these frames locally, give the worker the files through a network volume, "
        f"or use smaller frames{offer}", server=server, prompt_id=request.prompt_id)


__all__ = ["RUN_PAYLOAD_LIMIT", "Payload", "build_payload"]
