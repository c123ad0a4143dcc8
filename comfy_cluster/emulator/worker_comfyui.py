"""worker-comfyui 5.8.5's ``handler.py``, as the RunPod emulator runs it in-process against a ComfyUI.

Every answer a client reads follows handler.py's code: the input checks, the upload errors,
the 400 texts of ``queue_workflow`` (``Workflow validation failed:`` with one ``• Node N
(key): value`` line per node_errors entry, or ``<message>. Raw response: <body>``), and the
execution error (``Workflow execution error: Node Type: .., Node ID: .., Message: ..``).
handler.py stops listening at the ``execution_error`` message and reads ``/history`` at
once, before ComfyUI has stored the entry; the contract tests saw that race lost, and this
plays it that way: ``Job processing failed, prompt ID not found in history.``. It polls
``/history`` instead of following the websocket: the same end state, no socket per job.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, FormData

HISTORY_POLL_S = 0.02
NO_CHECKPOINTS = "\n\nNo checkpoint models appear to be available. Please check your model installation."


@dataclass
class HandlerResult:
    """``error``: what handler() returned as ``{"error": ..}``; else the images and warnings."""

    error: dict[str, Any] | None = None
    images: list[tuple[str, bytes]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _failed(message: str, details: list[str] | None = None) -> HandlerResult:
    return HandlerResult(error={"error": message, **({"details": details} if details is not None else {})})


def validate_input(job_input: Any) -> tuple[dict[str, Any] | None, str | None]:
    """handler.validate_input."""
    if job_input is None:
        return None, "Please provide input"
    if isinstance(job_input, str):
        try:
            job_input = json.loads(job_input)
        except ValueError:
            return None, "Invalid JSON format in input"
    workflow = job_input.get("workflow")
    if workflow is None:
        return None, "Missing 'workflow' parameter"
    images = job_input.get("images")
    if images is not None and (not isinstance(images, list) or not all(
            isinstance(image, dict) and "name" in image and "image" in image for image in images)):
        return None, "'images' must be a list of objects with 'name' and 'image' keys"
    return {"workflow": workflow, "images": images}, None


async def _upload(http: ClientSession, comfy: str, images: list[dict[str, Any]]) -> list[str]:
    """handler.upload_images: the error lines (none when every image went up)."""
    errors = []
    for image in images:
        name, data = image["name"], str(image["image"])
        encoded = data.split(",", 1)[1] if "," in data else data
        try:
            blob = base64.b64decode(encoded)
        except binascii.Error as err:
            errors.append(f"Error decoding base64 for {name}: {err}")
            continue
        form = FormData()
        form.add_field("image", blob, filename=str(name), content_type="image/png")
        form.add_field("overwrite", "true")
        async with http.post(f"{comfy}/upload/image", data=form) as resp:
            if resp.status >= 400:
                errors.append(f"Error uploading {name}: {_http_error(resp.status, resp.reason, str(resp.url))}")
    return errors


def _http_error(status: int, reason: str | None, url: str) -> str:
    """How requests' raise_for_status words it."""
    kind = "Client" if status < 500 else "Server"
    return f"{status} {kind} Error: {reason} for url: {url}"


async def _checkpoints(http: ClientSession, comfy: str) -> list[str]:
    """handler.get_available_models: CheckpointLoaderSimple's ckpt_name list, if the server has it."""
    try:
        async with http.get(f"{comfy}/object_info") as resp:
            info = await resp.json(content_type=None)
        options = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
        return list(options[0]) if isinstance(options[0], list) else []
    except (KeyError, TypeError, ValueError, IndexError):
        return []


async def _rejection(http: ClientSession, comfy: str, text: str) -> str:
    """queue_workflow's ValueError text for a 400 from ``POST /prompt``."""
    try:
        data = json.loads(text)
    except ValueError:
        return f"ComfyUI validation failed (could not parse error response): {text}"
    message = "Workflow validation failed"
    details = []
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message", message)
        if error.get("type") == "prompt_outputs_failed_validation":
            message = "Workflow validation failed"
    elif "error" in data:
        message = str(error)
    for node_id, node_error in (data.get("node_errors") or {}).items():
        if isinstance(node_error, dict):
            details += [f"Node {node_id} ({key}): {value}" for key, value in node_error.items()]
        else:
            details.append(f"Node {node_id}: {node_error}")
    if not details:
        return f"{message}. Raw response: {text}"
    text = f"{message}:\n" + "\n".join(f"• {detail}" for detail in details)
    if any("not in list" in d and "ckpt_name" in d for d in details):
        models = await _checkpoints(http, comfy)
        text += f"\n\nAvailable checkpoint models: {', '.join(models)}" if models else NO_CHECKPOINTS
    return text


async def _history(http: ClientSession, comfy: str, prompt_id: str) -> dict[str, Any]:
    while True:
        async with http.get(f"{comfy}/history/{prompt_id}") as resp:
            body = await resp.json(content_type=None) if resp.status == 200 else {}
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("status"), dict):
            return entry
        await asyncio.sleep(HISTORY_POLL_S)


async def handle(http: ClientSession, comfy: str, job_input: Any) -> HandlerResult:
    """handler.handler for one job's ``input`` against the ComfyUI at ``comfy``."""
    validated, problem = validate_input(job_input)
    if problem is not None or validated is None:
        return _failed(str(problem))
    host = comfy.split("://", 1)[-1]
    async with http.get(f"{comfy}/") as resp:
        if resp.status != 200:
            return _failed(f"ComfyUI server ({host}) not reachable after multiple retries.")
    if validated["images"]:
        upload_errors = await _upload(http, comfy, validated["images"])
        if upload_errors:
            return _failed("Failed to upload one or more input images", upload_errors)

    async with http.post(f"{comfy}/prompt", json={"prompt": validated["workflow"],
                                                   "client_id": str(uuid.uuid4())}) as resp:
        text = await resp.text()
        if resp.status == 400:
            return _failed(await _rejection(http, comfy, text))
        if resp.status != 200:
            return _failed(f"Error queuing workflow: {_http_error(resp.status, resp.reason, str(resp.url))}")
    queued = json.loads(text)
    prompt_id = queued.get("prompt_id")
    if not prompt_id:
        return _failed(f"Missing 'prompt_id' in queue response: {queued}")

    entry = await _history(http, comfy, prompt_id)
    errors = [f"Workflow execution error: Node Type: {data.get('node_type')}, Node ID: {data.get('node_id')}, "
              f"Message: {data.get('exception_message')}"
              for kind, data in entry["status"].get("messages", []) if kind == "execution_error"]
    if errors:
        return _failed("Job processing failed, prompt ID not found in history.",
                       [*errors, f"Prompt ID {prompt_id} not found in history after execution."])
    outputs = entry.get("outputs") or {}
    result = HandlerResult()
    if not outputs:
        result.warnings.append(f"No outputs found in history for prompt {prompt_id}.")
    for node_id, node_output in outputs.items():
        for image in node_output.get("images", []):
            filename = image.get("filename")
            if image.get("type") == "temp":
                continue
            if not filename:
                result.warnings.append(f"Skipping image in node {node_id} due to missing filename: {image}")
                continue
            params = {"filename": filename, "subfolder": image.get("subfolder", ""), "type": image.get("type")}
            async with http.get(f"{comfy}/view", params={k: str(v) for k, v in params.items()}) as resp:
                if resp.status != 200:
                    result.warnings.append(f"Failed to fetch image data for {filename} from /view endpoint.")
                    continue
                result.images.append((filename, await resp.read()))
    if not result.images and result.warnings:
        return _failed("Job processing failed", result.warnings)
    return result
