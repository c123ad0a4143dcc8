"""A ComfyUI-compatible server (HTTP + websocket) that runs real image nodes on the CPU.

It follows ComfyUI 0.3.64 (``server.py``, ``execution.py``, ``main.py``) closely, quirks
included (see shared/reference/comfyui_api.md): the same routes with ``/api`` copies, the
min-heap queue served unsorted, the ``number`` counter that counts rejected posts, partial
validation answered with 200, the output cache that re-sends ``executed`` with old file
names, and per-client websocket routing. One prompt runs at a time on a worker thread, as
in ComfyUI's ``prompt_worker``; simulated GPU time is slept in short slices so that an
interrupt lands promptly. ``/_emulator/*`` routes set fault knobs for failure tests.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import heapq
import io
import ipaddress
import json
import logging
import mimetypes
import os
import shutil
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil
from aiohttp import WSMsgType, web
from PIL import Image

from .nodes import INPUT_FILES, NODES, Directories, NodeContext, NodeDef

log = logging.getLogger(__name__)

COMFYUI_VERSION = "0.3.64"
FRONTEND_VERSION = "1.27.10"
TEMPLATES_VERSION = "0.1.95"
MAXIMUM_HISTORY_SIZE = 10000
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}
MODEL_FOLDERS = ["checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
                 "hypernetworks", "photomaker", "classifiers"]
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
FAKE_VRAM = 24 * 1024**3
SLEEP_SLICE = 0.02
INDEX_HTML = "<!doctype html><html><head><title>ComfyUI</title></head><body>ComfyUI emulator</body></html>"
OOM_TYPE = "torch.OutOfMemoryError"  # full_type_name(torch.cuda.OutOfMemoryError)
OOM_TIPS = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might "
            "have accidentally set the batch_size to a large number.")
BINARY_TEXT = 3


@dataclass
class Faults:
    """Failure knobs; all off by default. ``POST /_emulator/faults`` replaces the keys given."""

    http_500: bool = False
    delay_s: float = 0.0
    hang: bool = False
    hang_node: str | None = None
    fail_node: str | None = None
    fail_exception_type: str = "RuntimeError"
    fail_message: str = "emulated failure"
    die_mid_job: bool = False
    output_filename: str | None = None
    bad_json: bool = False
    ws_garbage: bool = False
    seconds_per_job: float = 0.0
    seconds_per_node: float = 0.0
    #: ComfyUI before 0.3.57: /interrupt ignores prompt_id and stops whatever runs
    interrupt_ignores_prompt_id: bool = False

    def update(self, knobs: dict) -> None:
        """Apply knobs after checking every name and type, so a bad request changes nothing."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        checked = {}
        for key, value in knobs.items():
            if key not in fields:
                raise ValueError(f"unknown fault knob {key!r}; known: {', '.join(sorted(fields))}")
            default = fields[key].default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"fault knob {key!r} must be true or false, got {value!r}")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"fault knob {key!r} must be a number >= 0, got {value!r}")
                value = float(value)
            elif value is not None and not isinstance(value, str):
                raise ValueError(f"fault knob {key!r} must be a string or null, got {value!r}")
            checked[key] = value
        for key, value in checked.items():
            setattr(self, key, value)


class Interrupted(Exception):
    """The running prompt was interrupted (ComfyUI's InterruptProcessingException)."""


class EmulatedNodeError(Exception):
    """The ``fail_node`` fault: reports a configurable exception type and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def _type_name(exc: BaseException) -> str:
    if isinstance(exc, EmulatedNodeError):
        return exc.type_name
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    if isinstance(value, dict):
        return value
    return str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _types_match(received: str, wanted: Any) -> bool:
    """``execution.validate_node_input`` for plain and comma-separated union types."""
    if not isinstance(wanted, str):
        return False
    if received == wanted or "*" in (received, wanted):
        return True
    return bool(set(received.split(",")) & set(wanted.split(",")))


class PromptQueue:
    """``execution.PromptQueue``: a heap of pending items, the running ones, and history."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.mutex = threading.RLock()
        self.not_empty = threading.Condition(self.mutex)
        self.queue: list[tuple] = []
        self.running: dict[int, tuple] = {}
        self.history: dict[str, dict] = {}
        self._task_counter = 0
        self._seq = 0
        self._on_change = on_change

    def put(self, item: tuple) -> None:
        with self.mutex:
            self._seq += 1
            # (number, prompt_id) orders the heap like ComfyUI's tuples; seq breaks exact ties.
            heapq.heappush(self.queue, (item[0], item[1], self._seq, item))
            self._on_change()
            self.not_empty.notify()

    def get(self, timeout: float) -> tuple[tuple, int] | None:
        with self.not_empty:
            if not self.queue:
                self.not_empty.wait(timeout)
            if not self.queue:
                return None
            item = heapq.heappop(self.queue)[3]
            task_id = self._task_counter
            self.running[task_id] = item
            self._task_counter += 1
            self._on_change()
            return item, task_id

    def task_done(self, task_id: int, history_result: dict, status: dict) -> None:
        with self.mutex:
            item = self.running.pop(task_id)
            if len(self.history) > MAXIMUM_HISTORY_SIZE:
                self.history.pop(next(iter(self.history)))
            self.history[item[1]] = {"prompt": list(item[:5]), "outputs": {}, "status": status}
            self.history[item[1]].update(history_result)
            self._on_change()

    def current(self) -> tuple[list, list]:
        with self.mutex:
            return [list(x[:5]) for x in self.running.values()], [list(x[3][:5]) for x in self.queue]

    def remaining(self) -> int:
        with self.mutex:
            return len(self.queue) + len(self.running)

    def wipe_queue(self) -> None:
        with self.mutex:
            self.queue = []
            self._on_change()

    def delete_pending(self, prompt_id: str) -> None:
        with self.mutex:
            for i, entry in enumerate(self.queue):
                if entry[1] == prompt_id:
                    if len(self.queue) == 1:
                        self.wipe_queue()  # like delete_queue_item: the last one goes by a wipe, two status messages
                    else:
                        self.queue.pop(i)
                        heapq.heapify(self.queue)
                    self._on_change()
                    return

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1) -> dict:
        with self.mutex:
            if prompt_id is not None:
                return {prompt_id: copy.deepcopy(self.history[prompt_id])} if prompt_id in self.history else {}
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            out = {}
            for i, key in enumerate(self.history):
                if i >= offset:
                    out[key] = self.history[key]
                    if max_items is not None and len(out) >= max_items:
                        break
            return copy.deepcopy(out)

    def wipe_history(self) -> None:
        with self.mutex:
            self.history.clear()

    def delete_history(self, prompt_id: str) -> None:
        with self.mutex:
            self.history.pop(prompt_id, None)


class Validator:
    """``execution.validate_prompt`` / ``validate_inputs`` over the server's node table."""

    def __init__(self, nodes: dict[str, NodeDef], dirs: Directories) -> None:
        self.nodes = nodes
        self.dirs = dirs

    def validate_prompt(self, prompt: dict, targets: list | None) -> tuple[bool, dict | None, list, dict]:
        outputs = []
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return False, _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                                     f"Node ID '#{node_id}'"), [], {}
            node_def = self.nodes.get(node["class_type"])
            if node_def is None:
                return False, _error("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                                     f"Node ID '#{node_id}'"), [], {}
            if node_def.output_node and (targets is None or node_id in targets):
                outputs.append(node_id)
        if not outputs:
            return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

        good: list[str] = []
        failed: list[tuple[str, list]] = []
        node_errors: dict[str, dict] = {}
        validated: dict[str, tuple[bool, list]] = {}
        for out in outputs:
            try:
                valid, reasons = self._validate_inputs(prompt, out, validated)
            except Exception as exc:  # noqa: BLE001 - reported to the client like ComfyUI does
                valid = False
                reasons = [_error("exception_during_validation", "Exception when validating node", str(exc),
                                  exception_type=_type_name(exc), traceback=traceback.format_tb(exc.__traceback__))]
                validated[out] = (False, reasons)
            if valid:
                good.append(out)
                continue
            if reasons:
                failed.append((out, reasons))
            for node_id, (ok, node_reasons) in validated.items():
                if not ok and node_reasons:
                    entry = node_errors.setdefault(node_id, {"errors": node_reasons, "dependent_outputs": [],
                                                             "class_type": prompt[node_id]["class_type"]})
                    entry["dependent_outputs"].append(out)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons)
            return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), [], node_errors
        return True, None, good, node_errors

    def _validate_inputs(self, prompt: dict, node_id: str, validated: dict) -> tuple[bool, list]:
        if node_id in validated:
            return validated[node_id]
        node = prompt[node_id]
        inputs = node.setdefault("inputs", {})
        node_def = self.nodes[node["class_type"]]
        errors: list[dict] = []
        valid = True
        for name in [*node_def.required, *node_def.optional]:
            category, spec = node_def.input_spec(name)
            assert spec is not None   # required and optional inputs always have a spec
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            info = [kind if kind != INPUT_FILES else [], options]
            if name not in inputs:
                if category == "required":
                    errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
                continue
            value = inputs[name]
            if isinstance(value, list):
                if len(value) != 2:
                    errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                         name, input_name=name, input_config=info, received_value=value))
                    continue
                source_id = value[0]
                source_def = self.nodes[prompt[source_id]["class_type"]]
                received = source_def.outputs[value[1]]
                if not _types_match(received, kind):
                    errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                         f"{name}, received_type({received}) mismatch input_type({kind})",
                                         input_name=name, input_config=info, received_type=received, linked_node=value))
                    continue
                try:
                    ok, _ = self._validate_inputs(prompt, source_id, validated)
                except Exception as exc:  # noqa: BLE001 - reported like ComfyUI's inner validation failure
                    errors.append(_error("exception_during_inner_validation", "Exception when validating inner node", str(exc),
                                         input_name=name, input_config=info, exception_message=str(exc),
                                         exception_type=_type_name(exc), traceback=traceback.format_tb(exc.__traceback__),
                                         linked_node=value))
                    continue
                if not ok:
                    valid = False
                continue
            try:
                if isinstance(value, dict) and "__value__" in value:
                    value = inputs[name] = value["__value__"]
                converter = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(kind if isinstance(kind, str) else "")
                if converter is not None:
                    value = inputs[name] = converter(value)
            except Exception as exc:  # noqa: BLE001 - any conversion failure is a validation error
                errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                                     f"{name}, {value}, {exc}", input_name=name, input_config=info,
                                     received_value=value, exception_message=str(exc)))
                continue
            if name in node_def.validated_inputs:
                continue
            if "min" in options and value < options["min"]:
                errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}", name,
                                     input_name=name, input_config=info, received_value=value))
                continue
            if "max" in options and value > options["max"]:
                errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}", name,
                                     input_name=name, input_config=info, received_value=value))
                continue
            combo = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
            if combo is not None and value not in combo:
                errors.append(_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {combo}",
                                     input_name=name, input_config=info, received_value=value))
                continue
        if node_def.validate is not None and not errors:
            verdict = node_def.validate(self.dirs, inputs)
            if verdict is not True:
                name = node_def.validated_inputs[0]
                details = name if verdict is False else f"{name} - {verdict}"
                errors.append(_error("custom_validation_failed", "Custom validation failed for node", details, input_name=name))
        result = (not errors and valid, errors)
        validated[node_id] = result
        return result


def _error(kind: str, message: str, details: str, **extra_info: Any) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


@dataclass
class _CacheEntry:
    outputs: tuple
    ui: dict | None


class Executor:
    """``execution.PromptExecutor``: runs one prompt, with ComfyUI's default output cache."""

    def __init__(self, server: ComfyEmulator) -> None:
        self.server = server
        self.cache: dict[str, _CacheEntry] = {}

    def _signatures(self, prompt: dict) -> dict[str, str]:
        sigs: dict[str, str] = {}

        def sig(node_id: str) -> str:
            if node_id in sigs:
                return sigs[node_id]
            node = prompt[node_id]
            node_def = self.server.nodes[node["class_type"]]
            parts: list[Any] = [node["class_type"]]
            if node_def.is_changed is not None:
                try:
                    parts.append(node_def.is_changed(self.server.dirs, node["inputs"]))
                except OSError:
                    parts.append(uuid.uuid4().hex)
            for name in sorted(node["inputs"]):
                value = node["inputs"][name]
                if isinstance(value, list) and len(value) == 2 and value[0] in prompt:
                    parts.append((name, sig(value[0]), value[1]))
                else:
                    parts.append((name, value))
            sigs[node_id] = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
            return sigs[node_id]

        for node_id in prompt:
            sig(node_id)
        return sigs

    @staticmethod
    def _order(prompt: dict, outputs: Iterable[str], cached: set[str]) -> list[str]:
        """Like ``ExecutionList.add_node``: the outputs and their uncached ancestors, inputs first.

        A cached node's inputs are not visited at all; a cached output is visited (to re-send
        its ``executed``), a cached intermediate node only through that output's cache.
        """
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            if node_id not in cached:
                for value in prompt[node_id]["inputs"].values():
                    if isinstance(value, list) and len(value) == 2 and value[0] in prompt and value[0] not in cached:
                        visit(value[0])
            order.append(node_id)

        for out in outputs:
            visit(out)
        return order

    def execute(self, prompt: dict, prompt_id: str, extra_data: dict, outputs: list[str]) -> tuple[bool, dict, list]:
        """Run the prompt; returns (success, history_result, status messages)."""
        server = self.server
        server.interrupt_flag.clear()
        client_id = extra_data.get("client_id")
        server.client_id = client_id
        server.last_node_id = None
        messages: list[list] = []

        def add_message(event: str, data: dict, broadcast: bool) -> None:
            data = {**data, "timestamp": _now_ms()}
            messages.append([event, data])
            if client_id is not None or broadcast:
                server.send_sync(event, data, client_id)

        add_message("execution_start", {"prompt_id": prompt_id}, False)
        sigs = self._signatures(prompt)
        wanted = set(sigs.values())
        self.cache = {k: v for k, v in self.cache.items() if k in wanted}
        cached = [node_id for node_id in prompt if sigs[node_id] in self.cache]
        add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id}, False)
        order = self._order(prompt, outputs, set(cached))
        to_run = [n for n in order if sigs[n] not in self.cache]
        job_slice = server.faults.seconds_per_job / max(len(to_run), 1)
        results: dict[str, tuple] = {node_id: self.cache[sigs[node_id]].outputs for node_id in cached}
        ui_outputs: dict[str, dict] = {}
        executed: list[str] = []
        progress: dict[str, dict] = {}
        node_id, class_type = None, None
        try:
            if server.faults.die_mid_job:
                server.die()
            self._hang_while_faulted(None, None)
            if not to_run:
                self._gpu_sleep(server.faults.seconds_per_job)
            for node_id in order:
                node = prompt[node_id]
                class_type = node["class_type"]
                entry = self.cache.get(sigs[node_id])
                if entry is not None:
                    # execution.execute's cache hit: "executed" (output None without a ui), then a
                    # progress entry that never ran (ints: ensure_entry's value=0, max=1).
                    if entry.ui is not None:
                        ui_outputs[node_id] = entry.ui
                    if client_id is not None:
                        server.send_sync("executed", {"node": node_id, "display_node": node_id, "output": entry.ui,
                                                      "prompt_id": prompt_id}, client_id)
                    self._progress(progress, node_id, prompt_id, "finished", client_id, ran=False)
                    continue
                self._check_interrupt()
                self._progress(progress, node_id, prompt_id, "running", client_id)
                if client_id is not None:
                    server.last_node_id = node_id
                    server.send_sync("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, client_id)
                self._gpu_sleep(job_slice + server.faults.seconds_per_node)
                self._hang_while_faulted(node_id, class_type)
                faults = server.faults
                if faults.fail_node is not None and faults.fail_node in (node_id, class_type):
                    raise EmulatedNodeError(faults.fail_exception_type, faults.fail_message)
                node_def = server.nodes[class_type]
                # Like ComfyUI's get_input_data: inputs the class does not declare are dropped.
                declared = {**node_def.required, **node_def.optional}
                inputs = {k: v for k, v in self._inputs(prompt, node_id, results).items() if k in declared}
                ctx = NodeContext(server.dirs, node_id, prompt, extra_data.get("extra_pnginfo"), server.send_text)
                result = node_def.function(ctx, **inputs)
                ui = self._reported(result.ui)
                self.cache[sigs[node_id]] = _CacheEntry(result.outputs, ui)
                results[node_id] = result.outputs
                executed.append(node_id)
                if ui is not None:
                    ui_outputs[node_id] = ui
                    if client_id is not None:
                        server.send_sync("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                                      "prompt_id": prompt_id}, client_id)
                self._progress(progress, node_id, prompt_id, "finished", client_id)
        except Interrupted:
            add_message("execution_interrupted", {"prompt_id": prompt_id, "node_id": node_id, "node_type": class_type,
                                                  "executed": executed}, True)
            return False, self._history(prompt, ui_outputs), messages
        except Exception as exc:  # noqa: BLE001 - a node failure is reported, never raised
            log.debug("node %s (%s) failed: %s", node_id, class_type, exc)
            current = self._inputs(prompt, node_id, results, formatted=True) if node_id else {}
            # exception_message is "{ex}\n{tips}" (tips only for OOM); current_outputs is every
            # node id of the prompt (the output cache's key set), not what was cached.
            type_name = _type_name(exc)
            tips = OOM_TIPS if type_name == OOM_TYPE else ""
            add_message("execution_error", {
                "prompt_id": prompt_id, "node_id": node_id, "node_type": class_type, "executed": executed,
                "exception_message": f"{exc}\n{tips}", "exception_type": type_name,
                "traceback": traceback.format_tb(exc.__traceback__), "current_inputs": current,
                "current_outputs": list(prompt)}, False)
            return False, self._history(prompt, ui_outputs), messages
        add_message("execution_success", {"prompt_id": prompt_id}, False)
        return True, self._history(prompt, ui_outputs), messages

    def _reported(self, ui: dict | None) -> dict | None:
        """The ui dict as sent; the ``output_filename`` fault swaps in a literal file name."""
        name = self.server.faults.output_filename
        if ui is None or name is None:
            return ui
        return {**ui, "images": [{**image, "filename": name} for image in ui.get("images", [])]}

    @staticmethod
    def _history(prompt: dict, ui_outputs: dict) -> dict:
        meta = {node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
                for node_id in ui_outputs}
        return {"outputs": ui_outputs, "meta": meta}

    @staticmethod
    def _inputs(prompt: dict, node_id: str, results: dict, formatted: bool = False) -> dict:
        values = {}
        for name, value in prompt[node_id]["inputs"].items():
            if isinstance(value, list) and len(value) == 2:
                if value[0] not in results:
                    continue
                value = results[value[0]][value[1]]
            values[name] = [_format_value(value)] if formatted else value
        return values

    def _progress(self, progress: dict, node_id: str, prompt_id: str, state: str, client_id: str | None,
                  ran: bool = True) -> None:
        one = 1.0 if ran else 1
        progress[node_id] = {"value": one if state == "finished" else 0.0, "max": one, "state": state,
                             "node_id": node_id, "prompt_id": prompt_id, "display_node_id": node_id,
                             "parent_node_id": None, "real_node_id": node_id}
        self.server.send_sync("progress_state", {"prompt_id": prompt_id, "nodes": copy.deepcopy(progress)}, client_id)

    def _check_interrupt(self) -> None:
        if self.server.interrupt_flag.is_set():
            raise Interrupted()

    def _gpu_sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self._check_interrupt()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.server.interrupt_flag.wait(min(left, SLEEP_SLICE))

    def _hang_while_faulted(self, node_id: str | None, class_type: str | None) -> None:
        """``hang`` holds a prompt before its first node; ``hang_node`` inside that node (id or class)."""
        def held() -> bool:
            faults = self.server.faults
            if node_id is None:
                return faults.hang
            return faults.hang_node is not None and faults.hang_node in (node_id, class_type)

        while held():
            self._check_interrupt()
            self.server.interrupt_flag.wait(SLEEP_SLICE)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def _origin_only(request: web.Request, handler: Callable) -> web.StreamResponse:
    """``create_origin_only_middleware``: loopback host with a different Origin gets 403."""
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host is not None and origin is not None:
        host_domain = host.lower()
        parsed = urllib.parse.urlparse(origin)
        origin_domain = parsed.netloc.lower()
        host_parsed = urllib.parse.urlsplit("//" + host_domain)
        loopback = _is_loopback(host_parsed.hostname)
        if parsed.port is None:
            host_domain = host_parsed.hostname or ""
        if host_parsed.port is None:
            origin_domain = parsed.hostname or ""
        if loopback and host_domain and origin_domain and host_domain != origin_domain:
            return web.Response(status=403)
    return await handler(request)


class ComfyEmulator:
    """One emulated ComfyUI server: state, queue, worker thread and the aiohttp app.

    ``die`` is what the ``die_mid_job`` fault calls (``os._exit`` in a server process); without
    it the knob is refused, so an in-process server can never kill the test run.
    """

    def __init__(self, base_dir: Path, *, seconds_per_job: float = 0.0, seconds_per_node: float = 0.0,
                 node_classes: Iterable[str] | None = None, name: str = "emu", argv: list[str] | None = None,
                 die: Callable[[], None] | None = None) -> None:
        self.name = name
        self.dirs = Directories(Path(base_dir).resolve())
        if node_classes is None:
            self.nodes = dict(NODES)
        else:
            wanted = list(node_classes)
            unknown = sorted(set(wanted) - set(NODES))
            if unknown:
                raise ValueError(f"emulator {name!r}: unknown node classes {unknown}; known: {sorted(NODES)}")
            self.nodes = {k: NODES[k] for k in wanted}
        self.faults = Faults(seconds_per_job=float(seconds_per_job), seconds_per_node=float(seconds_per_node))
        self.argv = argv if argv is not None else [
            "main.py", "--output-directory", str(self.dirs.output), "--input-directory", str(self.dirs.input)]
        self._die = die
        self.queue = PromptQueue(self._queue_updated)
        self.validator = Validator(self.nodes, self.dirs)
        self.executor = Executor(self)
        self.interrupt_flag = threading.Event()
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.number = 0
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self._ws_transports: dict[int, asyncio.BaseTransport | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._prepare_dirs()

    def _prepare_dirs(self) -> None:
        for folder in (self.dirs.input, self.dirs.output):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.dirs.temp, ignore_errors=True)
        self.dirs.temp.mkdir(parents=True, exist_ok=True)

    # --- lifecycle ------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[_origin_only, self._fault_middleware], client_max_size=100 * 1024 * 1024)
        routes = self._routes()
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            if not path.startswith("/_emulator"):
                app.router.add_route(method, "/api" + path, handler)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._tasks.append(asyncio.create_task(self._publish()))
        self._worker = threading.Thread(target=self._work, name=f"comfy-emulator-{self.name}", daemon=True)
        self._worker.start()

    async def _on_shutdown(self, app: web.Application) -> None:
        self.close()
        closing = [asyncio.wait_for(ws.close(code=1001), 0.5) for ws in self.sockets.values()]
        await asyncio.gather(*closing, return_exceptions=True)
        for task in self._tasks:
            task.cancel()

    def close(self) -> None:
        """Stop the worker thread: interrupt the running prompt and wake the queue."""
        self._stopping.set()
        self.interrupt_flag.set()
        with self.queue.not_empty:
            self.queue.not_empty.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=5)

    def die(self) -> None:
        if self._die is not None:
            self._die()

    # --- worker ---------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            got = self.queue.get(timeout=5.0)
            if got is None:
                continue
            item, task_id = got
            number, prompt_id, prompt, extra_data, outputs = item[:5]
            try:
                ok, history_result, messages = self.executor.execute(prompt, prompt_id, extra_data, outputs)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any prompt
                log.exception("emulator %s: prompt %s crashed the executor", self.name, prompt_id)
                ok, history_result, messages = False, {}, [["execution_error", {"exception_message": str(exc)}]]
            status = {"status_str": "success" if ok else "error", "completed": ok, "messages": messages}
            self.queue.task_done(task_id, history_result, status)
            if self.client_id is not None:
                self.send_sync("executing", {"node": None, "prompt_id": prompt_id}, self.client_id)
            self.client_id = None
            self.last_node_id = None

    # --- messages -------------------------------------------------------------------

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    def _queue_updated(self) -> None:
        self.send_sync("status", {"status": self.queue_info()}, None)

    def send_sync(self, event: str, data: Any, sid: str | None) -> None:
        """Queue a message for the publisher task; safe from any thread, order preserved."""
        if self._loop is None or self._outbox is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, (event, data, sid))
        except RuntimeError:
            log.debug("emulator %s: loop closed, dropped %s", self.name, event)

    def send_text(self, node_id: str, text: str) -> None:
        """A binary TEXT frame (type 3); broadcast like ``send_progress_text``."""
        node = node_id.encode()
        payload = BINARY_TEXT.to_bytes(4, "big") + len(node).to_bytes(4, "big") + node + text.encode()
        self.send_sync("__bytes__", payload, None)

    async def _publish(self) -> None:
        assert self._outbox is not None
        while True:
            event, data, sid = await self._outbox.get()
            if sid is None:
                targets = list(self.sockets.values())
            else:
                targets = [self.sockets[sid]] if sid in self.sockets else []
            if not targets:
                continue
            message = data if event == "__bytes__" else json.dumps({"type": event, "data": data})
            for ws in targets:
                await self._send(ws, message)

    async def _send(self, ws: web.WebSocketResponse, message: str | bytes) -> None:
        try:
            if self.faults.ws_garbage:
                await ws.send_str('{"type": "status", "data": {')
                await ws.send_bytes((99).to_bytes(4, "big") + b"\x00garbage")
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("emulator %s: websocket send failed: %s", self.name, exc)

    # --- middleware -----------------------------------------------------------------

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith("/_emulator"):
            return await handler(request)
        if self.faults.delay_s > 0:
            await asyncio.sleep(self.faults.delay_s)
        if self.faults.http_500 and not request.path.endswith("/ws"):
            return web.Response(status=500, text="500 Internal Server Error (emulated fault)")
        return await handler(request)

    def _json(self, data: Any, status: int = 200, truncatable: bool = False) -> web.Response:
        text = json.dumps(data)
        if truncatable and self.faults.bad_json:
            text = text[: max(1, len(text) // 2)]
        return web.Response(text=text, status=status, content_type="application/json")

    # --- routes ---------------------------------------------------------------------

    def _routes(self) -> list[tuple[str, str, Callable]]:
        return [
            ("GET", "/", self.index),
            ("GET", "/ws", self.ws_handler),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/prompt", self.get_prompt),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_item),
            ("POST", "/history", self.post_history),
            ("GET", "/view", self.view),
            ("POST", "/upload/image", self.upload_image),
            ("POST", "/interrupt", self.post_interrupt),
            ("POST", "/free", self.post_free),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/object_info", self.object_info),
            ("GET", "/object_info/{node_class}", self.object_info_one),
            ("GET", "/features", self.features),
            ("GET", "/embeddings", self.empty_list),
            ("GET", "/extensions", self.empty_list),
            ("GET", "/models", self.models),
            ("GET", "/models/{folder}", self.models_folder),
            ("GET", "/_emulator/faults", self.get_faults),
            ("POST", "/_emulator/faults", self.post_faults),
            ("POST", "/_emulator/drop_ws", self.drop_ws),
        ]

    async def index(self, request: web.Request) -> web.Response:
        """The frontend's index.html in real ComfyUI: worker-comfyui probes it to see the server is up."""
        return web.Response(text=INDEX_HTML, content_type="text/html",
                            headers={"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})

    async def ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self._ws_transports[id(ws)] = request.transport
        try:
            await self._send(ws, json.dumps({"type": "status", "data": {"status": self.queue_info(), "sid": sid}}))
            if self.client_id == sid and self.last_node_id is not None:
                await self._send(ws, json.dumps({"type": "executing", "data": {"node": self.last_node_id}}))
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except json.JSONDecodeError:
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    await self._send(ws, json.dumps({"type": "feature_flags", "data": SERVER_FEATURES}))
                first = False
        finally:
            self._ws_transports.pop(id(ws), None)
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
        return ws

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "number" in body:
            number = float(body["number"])
        else:
            number = self.number
            if body.get("front"):
                number = -number
            self.number += 1
        if "prompt" not in body:
            error = _error("no_prompt", "No prompt provided", "No prompt provided")
            return self._json({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        extra_data = dict(body.get("extra_data", {}))
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        targets = body.get("partial_execution_targets")
        valid, problem, outputs, node_errors = self.validator.validate_prompt(prompt, targets)
        if not valid:
            log.debug("emulator %s: invalid prompt: %s", self.name, problem)
            return self._json({"error": problem, "node_errors": node_errors}, status=400)
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra_data.pop(key, None)
        self.queue.put((number, prompt_id, prompt, extra_data, outputs))
        return self._json({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def get_prompt(self, request: web.Request) -> web.Response:
        return self._json(self.queue_info())

    async def get_queue(self, request: web.Request) -> web.Response:
        running, pending = self.queue.current()
        return self._json({"queue_running": running, "queue_pending": pending}, truncatable=True)

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.queue.wipe_queue()
        for prompt_id in body.get("delete", []):
            self.queue.delete_pending(prompt_id)
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query.get("offset", -1))
        return self._json(self.queue.get_history(max_items=max_items, offset=offset), truncatable=True)

    async def get_history_item(self, request: web.Request) -> web.Response:
        return self._json(self.queue.get_history(request.match_info["prompt_id"]), truncatable=True)

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.queue.wipe_history()
        for prompt_id in body.get("delete", []):
            self.queue.delete_history(prompt_id)
        return web.Response(status=200)

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, folder = self.dirs.annotated(query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if folder is None:
            folder = self.dirs.by_type(query.get("type", "output"))
            if folder is None:
                return web.Response(status=400)
        root = str(folder)
        if "subfolder" in query:
            full = os.path.join(root, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), root)) != root:
                return web.Response(status=403)
            root = full
        filename = os.path.basename(filename)
        path = os.path.join(root, filename)
        if not os.path.isfile(path):
            return web.Response(status=404)
        preview, channel = query.get("preview"), query.get("channel")
        if preview is not None or channel in ("rgb", "a"):
            return await asyncio.get_running_loop().run_in_executor(None, _reencode, path, filename, preview, channel)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
            content_type = "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Disposition": f'filename="{filename}"',
                                               "Content-Type": content_type})

    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = post.get("type") or "input"
        folder = self.dirs.by_type(str(kind))
        if folder is None:
            return web.Response(status=400, text=f"unknown upload type {kind!r}")
        root = str(folder)
        subfolder = str(post.get("subfolder", ""))
        target_dir = os.path.join(root, os.path.normpath(subfolder))
        filename = image.filename
        path = os.path.abspath(os.path.join(target_dir, filename))
        if os.path.commonpath((root, path)) != root:
            return web.Response(status=400)
        os.makedirs(target_dir, exist_ok=True)
        data = image.file.read()
        overwrite = post.get("overwrite")
        duplicate = False
        if overwrite not in ("true", "1"):
            stem, ext = os.path.splitext(filename)
            i = 1
            while os.path.exists(path):
                with open(path, "rb") as existing:
                    if hashlib.sha256(existing.read()).digest() == hashlib.sha256(data).digest():
                        duplicate = True
                        break
                filename = f"{stem} ({i}){ext}"
                path = os.path.join(target_dir, filename)
                i += 1
        if not duplicate:
            with open(path, "wb") as out:
                out.write(data)
        return self._json({"name": filename, "subfolder": subfolder, "type": kind})

    async def post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id and not self.faults.interrupt_ignores_prompt_id:
            running, _ = self.queue.current()
            if any(len(item) > 1 and item[1] == prompt_id for item in running):
                self.interrupt_flag.set()
        else:
            self.interrupt_flag.set()
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.Response:
        body = await request.json()
        log.debug("emulator %s: free unload_models=%s free_memory=%s", self.name,
                  body.get("unload_models", False), body.get("free_memory", False))
        return web.Response(status=200)

    async def system_stats(self, request: web.Request) -> web.Response:
        ram_total, ram_free = _ram()
        busy = bool(self.queue.running)
        vram_free = FAKE_VRAM // 3 if busy else FAKE_VRAM - 512 * 1024**2
        return self._json({
            "system": {
                "os": os.name, "ram_total": ram_total, "ram_free": ram_free,
                "comfyui_version": COMFYUI_VERSION, "required_frontend_version": FRONTEND_VERSION,
                "installed_templates_version": TEMPLATES_VERSION, "required_templates_version": TEMPLATES_VERSION,
                "python_version": sys.version, "pytorch_version": "2.8.0+cu128",
                "embedded_python": False, "argv": self.argv,
            },
            "devices": [{
                "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
                "vram_total": FAKE_VRAM, "vram_free": vram_free,
                "torch_vram_total": FAKE_VRAM // 2 if busy else 0, "torch_vram_free": 0,
            }],
        })

    async def object_info(self, request: web.Request) -> web.Response:
        return self._json({name: node.info(self.dirs) for name, node in self.nodes.items()})

    async def object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        node = self.nodes.get(name)
        return self._json({name: node.info(self.dirs)} if node is not None else {})

    async def features(self, request: web.Request) -> web.Response:
        return self._json(SERVER_FEATURES)

    async def empty_list(self, request: web.Request) -> web.Response:
        return self._json([])

    async def models(self, request: web.Request) -> web.Response:
        return self._json(MODEL_FOLDERS)

    async def models_folder(self, request: web.Request) -> web.Response:
        if request.match_info["folder"] not in MODEL_FOLDERS:
            return web.Response(status=404)
        return self._json([])

    async def get_faults(self, request: web.Request) -> web.Response:
        return self._json(dataclasses.asdict(self.faults))

    async def post_faults(self, request: web.Request) -> web.Response:
        try:
            knobs = await request.json()
            if not isinstance(knobs, dict):
                raise ValueError("the body must be a JSON object of fault knobs")
            if knobs.get("die_mid_job") and self._die is None:
                raise ValueError("die_mid_job needs a server process (EmulatorProcess); this server runs in-process")
            self.faults.update(knobs)
        except ValueError as exc:
            return self._json({"error": str(exc)}, status=400)
        log.debug("emulator %s: faults now %s", self.name, self.faults)
        return self._json(dataclasses.asdict(self.faults))

    async def drop_ws(self, request: web.Request) -> web.Response:
        """Cut every websocket's TCP connection, as a network drop would."""
        dropped = 0
        for sid, ws in list(self.sockets.items()):
            self.sockets.pop(sid, None)
            transport = self._ws_transports.pop(id(ws), None)
            if transport is not None:
                transport.close()
            else:
                await ws.close(code=1001)
            dropped += 1
        return self._json({"dropped": dropped})


def _reencode(path: str, filename: str, preview: str | None, channel: str | None) -> web.Response:
    """``/view`` with ``preview=webp;90`` or ``channel=rgb|a``: re-encode like ``server.view_image``.

    A preview keeps the file's mode (RGB only for jpeg or ``channel=rgb``) and turns into webp
    for an unknown format or any channel containing "a"; ``channel=a`` takes the alpha of an
    RGBA file only (255 for every other mode).
    """
    out = io.BytesIO()
    with Image.open(path) as img:
        if preview is not None:
            info = preview.split(";")
            kind = info[0] if info[0] in ("webp", "jpeg") and "a" not in (channel or "") else "webp"
            quality = int(info[-1]) if info[-1].isdigit() else 90
            shown = img.convert("RGB") if kind == "jpeg" or channel == "rgb" else img
            shown.save(out, format=kind, quality=quality)
            return web.Response(body=out.getvalue(), content_type=f"image/{kind}",
                                headers={"Content-Disposition": f'filename="{filename}"'})
        if channel == "rgb":
            result = img.convert("RGB")
        else:
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            result = Image.new("RGBA", img.size)
            result.putalpha(alpha)
        result.save(out, format="PNG")
    return web.Response(body=out.getvalue(), content_type="image/png",
                        headers={"Content-Disposition": f'filename="{filename}"'})


def _ram() -> tuple[int, int]:
    mem = psutil.virtual_memory()
    return int(mem.total), int(mem.available)
