"""HTTP and websocket client for one ComfyUI server (transport only).

``ComfyClient`` speaks ComfyUI's HTTP API through one urllib3 pool per server (every call,
uploads included; timeouts per call; bodies read in bounded chunks by a deadline);
``PromptTracker`` holds one websocket per (server, client id), read through
websocket-client's public API, and routes its events to a ``PromptWatch`` per prompt,
falling back to polling ``/history/{id}`` whenever the socket is down or quiet.

This module never retries and never chooses a server: the pool and the dispatcher do.
Every failure is translated here, at the boundary, into ``comfy_cluster.errors``:
connection refused or reset -> ``ServerUnavailable``; a timeout -> ``ServerTimeout``;
bad or oversized bodies -> ``ProtocolError``; a refused workflow -> ``WorkflowRejected``
or ``MissingNodes``. Messages say which server and which call, and never hold a secret:
the headers (with any bearer token) live only in this client and are never formatted.
"""

from __future__ import annotations

import http.client
import json
import logging
import mimetypes
import os
import re
import ssl
import struct
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping
from urllib.parse import quote, unquote, urlencode, urlsplit

import certifi
import requests.utils
import urllib3
import websocket
from urllib3 import exceptions as u3

from .errors import (
    Cancelled,
    ComfyClusterError,
    ExecutionFailed,
    Interrupted,
    JobTimeout,
    MissingNodes,
    ProtocolError,
    ServerTimeout,
    ServerUnavailable,
    TransferError,
    WorkflowRejected,
)

if TYPE_CHECKING:
    from .config import ServerConfig

log = logging.getLogger(__name__)

_MIB = 1 << 20
#: Largest JSON body accepted from most routes; a bigger answer is not ComfyUI.
JSON_CAP = 16 * _MIB
#: ``/object_info`` with hundreds of custom nodes is legitimately large.
OBJECT_INFO_CAP = 64 * _MIB
#: Default cap for one downloaded output file.
DOWNLOAD_CAP = 4096 * _MIB
#: Connections kept per server: enough for every concurrent job and the monitor.
POOL_SIZE = 32
#: Consecutive unreadable /history answers after which a watch gives up on the server.
GARBLED_POLLS = 3

_CHUNK = 256 * 1024
_EXCERPT = 200
#: Bytes read from an error answer to quote from it.
_ERROR_BODY_CAP = 64 * 1024

#: ComfyUI <= 0.3.6x: "Cannot execute because node X does not exist." (X may hold spaces).
_MISSING_NODE_RE = re.compile(r"node (.+?) does not exist\.?\s*$")

# Binary websocket frame types (ComfyUI protocol.py).
_PREVIEW_IMAGE = 1
_UNENCODED_PREVIEW_IMAGE = 2
_TEXT = 3
_PREVIEW_IMAGE_WITH_METADATA = 4
_IMAGE_FORMATS = {1: "jpeg", 2: "png"}


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait: to connect, for an answer to a small call, for a file transfer."""

    connect: float = 3.05
    read: float = 30.0
    transfer: float = 300.0


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


def _seconds(value: float) -> str:
    return f"{value:g}"


def _reason(err: BaseException) -> str:
    """A short human cause for a connection failure (urllib3's text is a paragraph)."""
    text = str(err)
    lowered = text.lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("name or service not known", "host name not found"),
        ("nodename nor servname", "host name not found"),
        ("failed to resolve", "host name not found"),
        ("getaddrinfo failed", "host name not found"),
        ("temporary failure in name resolution", "host name not found"),
        ("connection reset", "connection reset by the server"),
        ("remotedisconnected", "the server closed the connection without answering"),
        ("connection aborted", "the server closed the connection"),
        ("no route to host", "no route to host"),
        ("network is unreachable", "network is unreachable"),
    ):
        if needle in lowered:
            return reason
    return text[-160:]


class _Sink:
    """Writes a downloaded body to an open file; a full disk is a TransferError, not a server fault."""

    def __init__(self, fh: Any, dest: Path, server: str) -> None:
        self._fh, self._dest, self._server = fh, dest, server

    def __call__(self, chunk: bytes) -> None:
        try:
            self._fh.write(chunk)
        except OSError as err:
            raise TransferError(f"cannot write {str(self._dest)!r} (from server '{self._server}'): {err}",
                                server=self._server) from err


_JSON = "application/json"
_ARRIVING = " while the answer was still arriving"


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def _excerpt(body: bytes) -> str:
    text = body[:_EXCERPT * 4].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")


def _node_error_lines(node_errors: Mapping[str, Any], prompt: Mapping[str, Any] | None) -> list[str]:
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


def _queue_order(entry: QueueEntry) -> tuple[float, str]:
    """ComfyUI's heap order: ``(number, prompt_id)``."""
    return entry.number, entry.prompt_id


def _failure(event_type: str, data: Mapping[str, Any], server: str, prompt_id: str) -> ComfyClusterError | None:
    """The exception an ``execution_error`` / ``execution_interrupted`` message stands for."""
    node_id = data.get("node_id")
    node_type = data.get("node_type")
    where = f"node {node_id} ({node_type})" if node_type else f"node {node_id}"
    if event_type == "execution_error":
        exc_type = data.get("exception_type")
        exc_message = str(data.get("exception_message") or "").strip()
        return ExecutionFailed(
            f"server '{server}': {where} raised {exc_type or 'an error'}: {exc_message} (prompt {prompt_id})",
            node_id=None if node_id is None else str(node_id),
            node_type=node_type,
            exception_type=exc_type,
            exception_message=exc_message,
            server=server,
            prompt_id=prompt_id,
        )
    if event_type == "execution_interrupted":
        return Interrupted(f"server '{server}': prompt {prompt_id} was interrupted at {where}",
                           server=server, prompt_id=prompt_id)
    return None


def _history_failure(entry: HistoryEntry, server: str) -> ComfyClusterError | None:
    """The exception a finished history entry stands for, or ``None`` if it succeeded."""
    for message in entry.messages:
        if isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], dict):
            error = _failure(str(message[0]), message[1], server, entry.prompt_id)
            if error is not None:
                return error
    if entry.status_str == "error":
        return ExecutionFailed(f"server '{server}': prompt {entry.prompt_id} failed (history status 'error')",
                               server=server, prompt_id=entry.prompt_id)
    return None


def _ca_bundle() -> str:
    """The CA certificates every call trusts: requests' rule ($REQUESTS_CA_BUNDLE, then
    $CURL_CA_BUNDLE, then certifi's bundle), for HTTP and the websocket alike."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()


def _pool_manager(base_url: str, ca_bundle: str) -> urllib3.PoolManager:
    """One connection pool for one server, through the proxy the environment names for it.

    Proxies are read once, as requests reads them (``HTTP(S)_PROXY``, ``ALL_PROXY``,
    ``NO_PROXY``); credentials in the proxy URL become a ``Proxy-Authorization`` header.
    Nothing is retried here and nothing redirects: the dispatcher owns retries.
    """
    tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
    tls["ca_cert_dir" if os.path.isdir(ca_bundle) else "ca_certs"] = ca_bundle
    options: dict[str, Any] = {"num_pools": 2, "maxsize": POOL_SIZE, "block": False, "retries": False, **tls}
    proxies = requests.utils.get_environ_proxies(base_url)
    proxy = proxies.get(urlsplit(base_url).scheme) or proxies.get("all")
    if not proxy:
        return urllib3.PoolManager(**options)
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the proxy for {base_url} must be an http(s) URL, not {parts.scheme}://")
    headers = {}
    if parts.username is not None:
        auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers = urllib3.make_headers(proxy_basic_auth=auth)
    bare = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    return urllib3.ProxyManager(bare, proxy_headers=headers, **options)


class ComfyClient:
    """One ComfyUI server's HTTP API. Transport only: never retries, never chooses.

    ``base_url`` may carry a path (``https://host/comfy/``) for servers behind a proxy;
    ``api_prefix`` is ``""`` or ``"/api"`` (ComfyUI serves every route under both).
    """

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "",
        headers: Mapping[str, str] | None = None,
        timeouts: Timeouts = Timeouts(),
        api_prefix: str = "",
        auth_token_env: str | None = None,
    ) -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.strip().rstrip("/")
        self.name = name or parts.netloc
        self.timeouts = timeouts
        prefix = api_prefix.strip().strip("/")
        self.api_prefix = f"/{prefix}" if prefix else ""
        self._auth_token_env = auth_token_env
        self._headers = dict(headers or {})
        self._ca_bundle = _ca_bundle()
        self._http = _pool_manager(self.base_url, self._ca_bundle)
        # Direct, the server's own pool takes the path alone (no URL parsing or pool lookup
        # per call); through a proxy the manager adds the proxy's headers and absolute URLs.
        self._direct: urllib3.HTTPConnectionPool | None = (
            None if isinstance(self._http, urllib3.ProxyManager) else self._http.connection_from_url(self.base_url))
        self._root = parts.path.rstrip("/") + self.api_prefix

    @classmethod
    def from_config(cls, cfg: ServerConfig, environ: Mapping[str, str] = os.environ,
                    timeouts: Timeouts = Timeouts()) -> ComfyClient:
        """A client for a configured server; the bearer token is read from ``environ`` here."""
        headers = dict(cfg.headers)
        headers.update(cfg.auth_header(environ))
        return cls(cfg.base_url, name=cfg.name, headers=headers, timeouts=timeouts,
                   auth_token_env=cfg.auth_token_env)

    def __repr__(self) -> str:
        return f"ComfyClient({self.base_url!r}, name={self.name!r}, api_prefix={self.api_prefix!r})"

    def __enter__(self) -> ComfyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def headers(self) -> dict[str, str]:
        """A copy of the request headers, for the websocket. Never log or format these."""
        return dict(self._headers)

    def ws_url(self, client_id: str) -> str:
        """``ws://host:port[/path][/api]/ws?clientId=...`` (``wss`` for https)."""
        scheme = "wss" if self.base_url.startswith("https:") else "ws"
        rest = self.base_url.split("://", 1)[1]
        return f"{scheme}://{rest}{self.api_prefix}/ws?clientId={quote(client_id, safe='')}"

    def open_websocket(self, client_id: str) -> websocket.WebSocket:
        """A connected ``/ws`` socket with this client's headers and CA bundle.

        Like HTTP, it follows no redirect; websocket-client reads the proxy from the same
        environment variables (``http_proxy`` / ``https_proxy``, ``no_proxy``).
        """
        sslopt: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
        sslopt["ca_cert_path" if os.path.isdir(self._ca_bundle) else "ca_certs"] = self._ca_bundle
        return websocket.create_connection(
            self.ws_url(client_id), timeout=self.timeouts.connect, sslopt=sslopt, redirect_limit=0,
            header=[f"{k}: {v}" for k, v in self._headers.items()], suppress_origin=True,
            skip_utf8_validation=True, enable_multithread=True)

    def close(self) -> None:
        """Close the pooled connections; a later call opens new ones."""
        self._http.clear()
        if self._direct is not None:
            self._direct = self._http.connection_from_url(self.base_url)

    # -- the API --------------------------------------------------------------------------

    def submit(
        self,
        prompt: Mapping[str, Any],
        *,
        client_id: str,
        prompt_id: str | None = None,
        extra_data: Mapping[str, Any] | None = None,
        number: float | None = None,
        front: bool = False,
        partial_ok: bool = False,
    ) -> SubmitResult:
        """Queue a prompt; the id is ours (uuid4 hex by default) so a lost answer can be checked.

        A 400 raises ``WorkflowRejected`` (``MissingNodes`` for an unknown class). A 200 that
        carries ``node_errors`` means only some outputs will run: unless ``partial_ok``, the
        prompt is withdrawn (deleted, and interrupted in case it already started) and
        ``WorkflowRejected`` raised, because a partial render is a wrong render.
        """
        prompt_id = prompt_id or uuid.uuid4().hex
        body: dict[str, Any] = {"prompt": dict(prompt), "client_id": client_id, "prompt_id": prompt_id,
                                "extra_data": dict(extra_data or {})}
        if number is not None:
            body["number"] = number
        if front:
            body["front"] = True
        what = "POST /prompt"
        status, raw = self._exchange("POST", "/prompt", body=_json_bytes(body), content_type=_JSON, cap=JSON_CAP,
                                     prompt_id=prompt_id)
        if status == 400:
            raise self._rejection(self._parse_json(raw, what, prompt_id), prompt, prompt_id)
        if status != 200:
            self._raise_status(status, raw, what, prompt_id)
        data = self._parse_json(raw, what, prompt_id)
        queued = data.get("prompt_id")
        if queued != prompt_id:
            raise ProtocolError(f"server '{self.name}': {what} queued prompt {queued!r} instead of ours, "
                                f"{prompt_id!r}: its events and history would never be found",
                                server=self.name, prompt_id=prompt_id)
        node_errors = data.get("node_errors") or {}
        if not isinstance(node_errors, dict):
            raise ProtocolError(f"server '{self.name}': {what} answered node_errors of type "
                                f"{type(node_errors).__name__}", server=self.name, prompt_id=prompt_id)
        if node_errors and not partial_ok:
            try:
                self.withdraw(prompt_id)
            except ServerUnavailable as err:
                log.warning("server '%s': could not withdraw partially valid prompt %s: %s", self.name, prompt_id, err)
            lines = _node_error_lines(node_errors, prompt)
            raise WorkflowRejected(
                f"server '{self.name}' would run prompt {prompt_id} only in part, so it was withdrawn:\n  "
                + "\n  ".join(lines),
                node_errors=node_errors, error_type="partial_outputs_failed_validation",
                server=self.name, prompt_id=prompt_id)
        try:
            number_out = float(data.get("number", number if number is not None else 0))
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"server '{self.name}': {what} answered a non-numeric number",
                                server=self.name, prompt_id=prompt_id) from err
        return SubmitResult(prompt_id=prompt_id, number=number_out,
                            node_errors=node_errors)

    def get_queue(self) -> QueueState:
        """``GET /queue``, with ``pending`` sorted into execution order (ComfyUI sends a heap)."""
        what = "GET /queue"
        data = self._get_json("/queue")
        try:
            running = [self._queue_entry(item) for item in data.get("queue_running", [])]
            pending = [self._queue_entry(item) for item in data.get("queue_pending", [])]
        except (TypeError, ValueError, IndexError, AttributeError) as err:
            raise ProtocolError(f"server '{self.name}': {what} answered a malformed queue item: {err}",
                                server=self.name) from err
        return QueueState(running=sorted(running, key=_queue_order), pending=sorted(pending, key=_queue_order))

    def queue_remaining(self) -> int:
        """``GET /prompt``: pending + running, the cheapest load probe."""
        data = self._get_json("/prompt")
        try:
            return int(data["exec_info"]["queue_remaining"])
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError(f"server '{self.name}': GET /prompt answered no exec_info.queue_remaining",
                                server=self.name) from err

    def delete_pending(self, prompt_ids: Iterable[str]) -> None:
        """Remove prompts from the pending queue (a running prompt needs ``interrupt``)."""
        ids = [str(pid) for pid in prompt_ids]
        if ids:
            self._post_no_content("/queue", {"delete": ids}, prompt_id=ids[0] if len(ids) == 1 else None)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt; with ``prompt_id`` only if that one is running (ComfyUI >= 0.3.57).

        Older servers ignore the id and stop whatever runs: to take back a prompt of ours,
        use ``withdraw``.
        """
        self._post_no_content("/interrupt", {"prompt_id": prompt_id} if prompt_id else {}, prompt_id=prompt_id)

    def withdraw(self, prompt_id: str) -> None:
        """Take back a prompt of ours: delete it from the pending queue, interrupt it if it runs.

        ``/interrupt`` is sent only when ``/queue`` shows this very prompt running, because
        ComfyUI before 0.3.57 ignores the id and would stop another artist's job. Both steps
        are tried; the first failure (``ServerUnavailable``) is raised after them.
        """
        failures: list[ServerUnavailable] = []
        try:
            self.delete_pending([prompt_id])
        except ServerUnavailable as err:
            failures.append(err)
        try:
            if any(entry.prompt_id == prompt_id for entry in self.get_queue().running):
                self.interrupt(prompt_id)
        except ServerUnavailable as err:
            failures.append(err)
        if failures:
            raise failures[0]

    def get_history(self, prompt_id: str, *, timeout: float | None = None) -> HistoryEntry | None:
        """``GET /history/{id}``; ``None`` while the prompt has not finished (ComfyUI answers ``{}``)."""
        route = f"/history/{quote(prompt_id, safe='')}"
        data = self._get_json(route, prompt_id=prompt_id, read_timeout=timeout)
        raw = data.get(prompt_id)
        return None if raw is None else self._history_entry(prompt_id, raw)

    def get_recent_history(self, max_items: int = 5) -> list[HistoryEntry]:
        """``GET /history?max_items=N``: the newest finished prompts, oldest first (everyone's)."""
        data = self._get_json(f"/history?max_items={int(max_items)}")
        return [self._history_entry(str(pid), raw) for pid, raw in data.items()]

    def _history_entry(self, prompt_id: str, raw: Any) -> HistoryEntry:
        try:
            status = raw.get("status") or {}
            outputs = raw.get("outputs") or {}
            if not isinstance(outputs, dict) or not isinstance(status, dict):
                raise TypeError("outputs and status must be objects")
            return HistoryEntry(
                prompt_id=prompt_id,
                status_str=str(status.get("status_str") or ""),
                completed=bool(status.get("completed", True)),
                outputs=outputs,
                messages=list(status.get("messages") or []),
            )
        except (AttributeError, TypeError) as err:
            raise ProtocolError(f"server '{self.name}': GET /history answered a malformed entry: {err}",
                                server=self.name, prompt_id=prompt_id) from err

    def get_system_stats(self) -> SystemStats:
        """``GET /system_stats``, typed (also the readiness probe)."""
        data = self._get_json("/system_stats")
        try:
            system = data.get("system") or {}
            devices = [Device(name=str(d.get("name", "")), type=str(d.get("type", "")),
                              vram_total=int(d.get("vram_total") or 0), vram_free=int(d.get("vram_free") or 0))
                       for d in data.get("devices") or []]
            version = system.get("comfyui_version")
            return SystemStats(comfyui_version=None if version is None else str(version), devices=devices,
                               argv=[str(a) for a in system.get("argv") or []], raw=data)
        except (AttributeError, TypeError, ValueError) as err:
            raise ProtocolError(f"server '{self.name}': GET /system_stats answered a malformed body: {err}",
                                server=self.name) from err

    def get_object_info(self) -> dict:
        """``GET /object_info``: every node class's schema (large; capped at 64 MiB)."""
        return self._get_json("/object_info", cap=OBJECT_INFO_CAP)

    def node_classes(self) -> frozenset[str]:
        """The node class names this server can run."""
        return frozenset(self.get_object_info())

    def upload_image(self, data: bytes | Path, name: str, *, subfolder: str = "", overwrite: bool = True,
                     type: str = "input") -> UploadedFile:
        """``POST /upload/image`` (multipart); feed ``result.load_image_value`` to LoadImage."""
        what = "POST /upload/image"
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        form = {"subfolder": subfolder, "overwrite": "true" if overwrite else "false", "type": type}
        try:
            payload = data if isinstance(data, bytes) else Path(data).read_bytes()
        except OSError as err:
            raise TransferError(f"cannot read {str(data)!r} to upload to server '{self.name}': {err}",
                                server=self.name) from err
        fields: dict[str, Any] = {**form, "image": (name, payload, mime)}
        body, content_type = urllib3.encode_multipart_formdata(fields)
        status, raw = self._exchange("POST", "/upload/image", body=body, content_type=content_type, cap=JSON_CAP,
                                     read_timeout=self.timeouts.transfer)
        if status in (401, 403) or status >= 500:
            self._raise_status(status, raw, what)
        if status != 200:
            raise TransferError(f"server '{self.name}': {what} refused {name!r} (HTTP {status}): "
                                f"{_excerpt(raw)}", server=self.name)
        answer = self._parse_json(raw, what)
        try:
            return UploadedFile(name=str(answer["name"]), subfolder=str(answer.get("subfolder") or ""),
                                type=str(answer.get("type") or type))
        except KeyError as err:
            raise ProtocolError(f"server '{self.name}': {what} answered no 'name'", server=self.name) from err

    def download(self, image: OutputImage, dest: Path, *, max_bytes: int = DOWNLOAD_CAP) -> Path:
        """``GET /view`` streamed to ``dest`` in chunks; the caller makes the final rename.

        The server's file name is only a query parameter here, never a local path. A file
        over ``max_bytes`` or a broken transfer leaves no partial ``dest`` behind.
        """
        what = "GET /view"
        dest = Path(dest)
        query = urlencode({"filename": image.filename, "subfolder": image.subfolder, "type": image.type})
        try:
            fh = open(dest, "wb")
        except OSError as err:
            raise TransferError(f"cannot write {str(dest)!r} (from server '{self.name}'): {err}",
                                server=self.name) from err
        try:
            with fh:
                status, body = self._exchange("GET", f"/view?{query}", cap=max_bytes, sink=_Sink(fh, dest, self.name),
                                              read_timeout=self.timeouts.transfer)
            if status in (401, 403) or status >= 500:
                self._raise_status(status, body, what)
            if status != 200:
                raise TransferError(f"server '{self.name}': {what} could not fetch {image.filename!r} of node "
                                    f"{image.node_id} (HTTP {status}): {_excerpt(body)}", server=self.name)
            return dest
        except ProtocolError as err:
            dest.unlink(missing_ok=True)
            raise ProtocolError(f"{err} (file {image.filename!r} of node {image.node_id})", server=self.name,
                                prompt_id=err.prompt_id) from err
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        """``POST /free``; always with a JSON body (ComfyUI answers 500 without one)."""
        self._post_no_content("/free", {"unload_models": unload_models, "free_memory": free_memory})

    # -- plumbing ---------------------------------------------------------------------------

    def _rejection(self, data: dict, prompt: Mapping[str, Any], prompt_id: str) -> ComfyClusterError:
        """Turn a 400 answer of ``POST /prompt`` into ``WorkflowRejected`` or ``MissingNodes``."""
        error = data.get("error")
        if not isinstance(error, dict):
            error = {"message": str(error or "rejected"), "type": None}
        error_type = error.get("type")
        message = str(error.get("message") or "rejected")
        details = str(error.get("details") or "")
        extra = error.get("extra_info")
        node_errors = data.get("node_errors")
        if not isinstance(node_errors, dict):
            node_errors = {}
        if error_type in ("invalid_prompt", "missing_node_type"):
            missing = extra.get("class_type") if isinstance(extra, dict) else None
            match = _MISSING_NODE_RE.search(message)
            if not missing and match:
                missing = match.group(1)
            if missing:
                where = f" ({details})" if details else ""
                return MissingNodes(f"server '{self.name}' has no node class {missing!r}{where}",
                                    missing={str(missing)}, server=self.name, prompt_id=prompt_id)
        headline = f"server '{self.name}' rejected prompt {prompt_id}: {message}"
        if error_type:
            headline += f" [{error_type}]"
        lines = _node_error_lines(node_errors, prompt)
        if details and not lines:
            headline += f": {details}"
        return WorkflowRejected("\n  ".join([headline, *lines]), node_errors=node_errors, error_type=error_type,
                                server=self.name, prompt_id=prompt_id)

    def _queue_entry(self, item: Any) -> QueueEntry:
        if not isinstance(item, (list, tuple)) or len(item) < 2:
            raise ValueError(f"expected [number, prompt_id, ...], got {str(item)[:80]}")
        prompt = item[2] if len(item) > 2 and isinstance(item[2], dict) else {}
        extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
        outputs = [str(o) for o in item[4]] if len(item) > 4 and isinstance(item[4], list) else []
        return QueueEntry(number=float(item[0]), prompt_id=str(item[1]), prompt=prompt, extra_data=extra,
                          outputs=outputs)

    def _url(self, route: str) -> str:
        return f"{self.base_url}{self.api_prefix}{route}"

    def _translate(self, err: u3.HTTPError, what: str, budget: float, prompt_id: str | None, *,
                   answering: bool) -> ServerUnavailable:
        """The project's error for a urllib3 failure; ``answering``: the head had arrived."""
        where = f"server '{self.name}': {what}"
        if isinstance(err, (u3.NewConnectionError, u3.ProxyError)):   # a NewConnectionError is a ConnectTimeoutError
            return ServerUnavailable(f"{where} failed: {_reason(err)}", server=self.name, prompt_id=prompt_id)
        if isinstance(err, u3.ConnectTimeoutError):
            return ServerTimeout(f"{where} could not connect within {_seconds(self.timeouts.connect)} s",
                                 server=self.name, prompt_id=prompt_id)
        if isinstance(err, u3.ReadTimeoutError):
            return ServerTimeout(f"{where} timed out after {_seconds(budget)} s" + _ARRIVING * answering,
                                 server=self.name, prompt_id=prompt_id)
        inner = err.args[1] if isinstance(err, u3.ProtocolError) and len(err.args) > 1 else None
        not_http = isinstance(inner, (http.client.BadStatusLine, http.client.LineTooLong)) and not isinstance(
            inner, http.client.RemoteDisconnected)
        if not_http or (answering and isinstance(err, (u3.ProtocolError, u3.DecodeError))):
            return ProtocolError(f"{where}: the answer broke off or could not be decoded",
                                 server=self.name, prompt_id=prompt_id)
        return ServerUnavailable(f"{where} failed: {_reason(err)}", server=self.name, prompt_id=prompt_id)

    def _raise_status(self, status: int, body: bytes, what: str, prompt_id: str | None = None) -> None:
        """The error for a non-200 answer: auth and 5xx blame the server, anything else the protocol."""
        if status in (401, 403):
            hint = (f"check the token in ${self._auth_token_env}" if self._auth_token_env
                    else "no auth_token_env is configured for this server")
            raise ServerUnavailable(f"server '{self.name}': {what}: authentication failed (HTTP {status}); {hint}",
                                    server=self.name, prompt_id=prompt_id)
        if status >= 500:
            raise ServerUnavailable(f"server '{self.name}': {what} failed with HTTP {status}: {_excerpt(body)}",
                                    server=self.name, prompt_id=prompt_id)
        hint = {404: " (is api_prefix right for this server?)"}.get(status, "")
        if 300 <= status < 400:
            hint = " (redirects are not followed: point the server's address at ComfyUI itself)"
        raise ProtocolError(f"server '{self.name}': {what} answered HTTP {status}{hint}: {_excerpt(body)}",
                            server=self.name, prompt_id=prompt_id)

    def _parse_json(self, body: bytes, what: str, prompt_id: str | None = None) -> dict:
        try:
            data = json.loads(body)
        except ValueError as err:
            raise ProtocolError(f"server '{self.name}': {what} answered invalid JSON ({len(body)} bytes): "
                                f"{_excerpt(body)}", server=self.name, prompt_id=prompt_id) from err
        if not isinstance(data, dict):
            raise ProtocolError(f"server '{self.name}': {what} answered JSON {type(data).__name__}, not an object",
                                server=self.name, prompt_id=prompt_id)
        return data

    def _exchange(self, method: str, route: str, *, body: bytes | None = None, content_type: str | None = None,
                  cap: int, sink: Callable[[bytes], None] | None = None, read_timeout: float | None = None,
                  prompt_id: str | None = None) -> tuple[int, bytes]:
        """One request through the server's pool, ``(status, body)``; the status is the caller's to judge.

        Every call carries its own timeouts: ``connect``, and ``read_timeout`` (default
        ``timeouts.read``) both for each socket read and for the whole answer, so a server
        that drips a byte at a time cannot hold the caller. With ``sink`` a 200 body is
        streamed there; an error body is always returned, cut short.
        """
        what = f"{method} {route.split('?', 1)[0]}"
        budget = read_timeout or self.timeouts.read
        deadline = time.monotonic() + budget
        headers = self._headers if content_type is None else {**self._headers, "Content-Type": content_type}
        try:
            options: dict[str, Any] = {
                "body": body, "headers": headers, "redirect": False, "retries": False, "preload_content": False,
                "timeout": urllib3.Timeout(connect=self.timeouts.connect, read=budget)}
            if self._direct is not None:
                resp = self._direct.urlopen(method, self._root + route, assert_same_host=False, **options)
            else:
                resp = self._http.urlopen(method, self._url(route), **options)
        except u3.HTTPError as err:
            raise self._translate(err, what, budget, prompt_id, answering=False) from err
        status = resp.status
        ok = status == 200 or (status == 400 and sink is None)
        try:
            data = self._read_body(resp, what, cap if ok else _ERROR_BODY_CAP, sink if status == 200 else None,
                                   deadline, budget, prompt_id, cut=not ok)
        finally:
            resp.release_conn()
        return status, data

    def _read_body(self, resp: urllib3.BaseHTTPResponse, what: str, cap: int, sink: Callable[[bytes], None] | None,
                   deadline: float, budget: float, prompt_id: str | None, *, cut: bool) -> bytes:
        """Read the body in bounded chunks by ``deadline``, refusing (or, with ``cut``, cutting) past ``cap``.

        Before each read the socket timeout is set to the time left, so the deadline holds
        to the read; an answer left unread closes its connection instead of returning it.
        """
        declared = resp.headers.get("Content-Length", "")
        buf = bytearray()
        seen = 0
        try:
            if not cut and declared.isdigit() and int(declared) > cap:
                raise ProtocolError(f"server '{self.name}': {what} answered {declared} bytes, more than the "
                                    f"{cap} byte limit", server=self.name, prompt_id=prompt_id)
            while True:
                sock = getattr(resp.connection, "sock", None)   # no connection once the body is all read
                if sock is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ServerTimeout(f"server '{self.name}': {what} timed out after {_seconds(budget)} s"
                                            f"{_ARRIVING}", server=self.name, prompt_id=prompt_id)
                    sock.settimeout(left)
                chunk = resp.read1(_CHUNK)
                if not chunk:
                    return bytes(buf)
                seen += len(chunk)
                if seen > cap:
                    if cut:
                        resp.close()
                        return bytes(buf)
                    raise ProtocolError(f"server '{self.name}': {what} answered {seen} bytes, more than the {cap} "
                                        f"byte limit", server=self.name, prompt_id=prompt_id)
                if sink is not None:
                    sink(chunk)
                else:
                    buf += chunk
        except u3.HTTPError as err:
            resp.close()
            raise self._translate(err, what, budget, prompt_id, answering=True) from err
        except BaseException:
            resp.close()
            raise

    def _get_json(self, route: str, *, cap: int = JSON_CAP, prompt_id: str | None = None,
                  read_timeout: float | None = None) -> dict:
        what = f"GET {route.split('?', 1)[0]}"
        status, body = self._exchange("GET", route, cap=cap, read_timeout=read_timeout, prompt_id=prompt_id)
        if status != 200:
            self._raise_status(status, body, what, prompt_id)
        return self._parse_json(body, what, prompt_id)

    def _post_no_content(self, route: str, body: Mapping[str, Any], *, prompt_id: str | None = None) -> None:
        what = f"POST {route}"
        status, answer = self._exchange("POST", route, body=_json_bytes(dict(body)), content_type=_JSON,
                                        cap=_ERROR_BODY_CAP, prompt_id=prompt_id)
        if status not in (200, 204):
            self._raise_status(status, answer, what, prompt_id)

EventCallback = Callable[[Event], None]


class PromptWatch:
    """Follows one prompt: websocket events while they flow, ``/history/{id}`` when they don't.

    Register it (``PromptTracker.watch``) before submitting so no early event is missed.
    """

    def __init__(self, tracker: PromptTracker, prompt_id: str, on_event: EventCallback | None = None) -> None:
        self.prompt_id = prompt_id
        self._tracker = tracker
        self._client = tracker.client
        self._on_event = on_event
        self._cond = threading.Condition()
        self._outputs: dict[str, Any] = {}
        self._messages: list[list[Any]] = []
        self._stream_complete = False     # saw execution_start with no websocket gap since
        self._done = False
        self._error: ComfyClusterError | None = None
        self._last_heard = time.monotonic()
        self._poll_now = False
        self._closed = False

    def __enter__(self) -> PromptWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop routing this prompt's events here (idempotent)."""
        if not self._closed:
            self._closed = True
            self._tracker._unregister(self)

    def _deliver(self, event: Event) -> None:
        """Called on the tracker's thread for each event of this prompt."""
        kind = event.type
        with self._cond:
            self._last_heard = time.monotonic()
            if kind == "execution_start":
                self._stream_complete = True
                self._messages.append([kind, event.data])
            elif kind == "execution_cached":
                self._messages.append([kind, event.data])
            elif kind == "executed":
                node = event.data.get("node")
                if node is not None and isinstance(event.data.get("output"), dict):
                    self._outputs[str(node)] = event.data["output"]
            elif kind == "execution_success":
                self._messages.append([kind, event.data])
                self._done = True
            elif kind == "executing" and event.data.get("node") is None:
                self._done = True
            elif kind in ("execution_error", "execution_interrupted") and self._error is None:
                self._error = _failure(kind, event.data, self._client.name, self.prompt_id)
            if self._done or self._error is not None:
                self._cond.notify_all()        # only an outcome wakes the waiter: ~10 events per prompt
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a caller's callback must not kill the socket thread
                log.exception("on_event callback for prompt %s failed", self.prompt_id)

    def _gap(self) -> None:
        """The socket dropped or came back: events may be missing, so ask /history."""
        with self._cond:
            self._stream_complete = False
            self._poll_now = True
            self._cond.notify_all()

    def wait(self, timeout: float, *, cancel: threading.Event | None = None,
             lost: threading.Event | None = None) -> HistoryEntry:
        """Block until the prompt finished and return its entry, or raise why it did not.

        ``ExecutionFailed`` / ``Interrupted`` for a failed run; ``Cancelled`` soon after
        ``cancel`` is set (the caller deletes or interrupts the prompt); ``ServerUnavailable``
        when ``lost`` is set (the pool saw the server go offline) and one last history check
        does not find it finished; ``JobTimeout`` after ``timeout`` seconds.
        """
        tracker = self._tracker
        name = self._client.name
        start = time.monotonic()
        deadline = start + timeout
        quiet_after = max(tracker.quiet_after, tracker.poll_interval)
        next_poll = start
        failing_since: float | None = None
        last_error: ServerUnavailable | None = None
        garbled = 0
        try:
            while True:
                with self._cond:
                    if self._error is not None:
                        raise self._error
                    done, complete = self._done, self._stream_complete
                    quiet = time.monotonic() - self._last_heard >= quiet_after
                    poll_now, self._poll_now = self._poll_now, False
                if done and complete:
                    return HistoryEntry(prompt_id=self.prompt_id, status_str="success", completed=True,
                                        outputs=dict(self._outputs), messages=list(self._messages))
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"server '{name}': prompt {self.prompt_id} was cancelled",
                                    server=name, prompt_id=self.prompt_id)
                if lost is not None and lost.is_set():
                    return self._last_check()
                now = time.monotonic()
                if now >= deadline:
                    why = f" (last /history poll: {last_error})" if last_error is not None else ""
                    raise JobTimeout(f"server '{name}': prompt {self.prompt_id} did not finish within "
                                     f"{_seconds(timeout)} s{why}", server=name, prompt_id=self.prompt_id)
                if done or poll_now or not tracker.connected or quiet:
                    if now >= next_poll or poll_now:
                        try:
                            entry = self._poll(min(self._client.timeouts.read, max(5.0, 2 * tracker.poll_interval)))
                            failing_since, last_error, garbled = None, None, 0
                        except ServerUnavailable as err:
                            failing_since = failing_since or now
                            last_error = err
                            log.debug("polling history of %s on '%s' failed: %s", self.prompt_id, name, err)
                            garbled = garbled + 1 if isinstance(err, ProtocolError) else 0
                            if garbled >= GARBLED_POLLS:
                                raise   # the server answers garbage about this prompt: run it elsewhere
                            if not tracker.connected and time.monotonic() - failing_since >= tracker.unreachable_after:
                                raise
                            entry = None
                        if entry is not None:
                            return entry
                        # Finished by websocket but history not stored yet: ask again soon.
                        next_poll = time.monotonic() + (0.05 if done else tracker.poll_interval)
                with self._cond:
                    if self._error is None and not self._poll_now and not (self._done and self._stream_complete):
                        self._cond.wait(max(0.0, min(0.05, deadline - time.monotonic())))
        finally:
            self.close()

    def _poll(self, read_timeout: float) -> HistoryEntry | None:
        entry = self._client.get_history(self.prompt_id, timeout=read_timeout)
        if entry is None:
            return None
        error = _history_failure(entry, self._client.name)
        if error is not None:
            raise error
        return entry

    def _last_check(self) -> HistoryEntry:
        name = self._client.name
        try:
            entry = self._poll(min(self._client.timeouts.read, 5.0))
        except ServerUnavailable as err:
            raise ServerUnavailable(f"server '{name}' went offline while prompt {self.prompt_id} was running: {err}",
                                    server=name, prompt_id=self.prompt_id) from err
        if entry is None:
            raise ServerUnavailable(f"server '{name}' went offline before prompt {self.prompt_id} finished",
                                    server=name, prompt_id=self.prompt_id)
        return entry


class PromptTracker:
    """One websocket per (server, client id) on a daemon thread, reconnecting with backoff.

    Routes each event to the ``PromptWatch`` of its prompt; ``status`` messages call
    ``on_status(queue_remaining)``; ``on_connection(bool)`` reports connects and drops.
    Callbacks run on the socket thread and must be quick.
    """

    #: Seconds between reconnect attempts: doubles from min to max.
    backoff_min = 0.1
    backoff_max = 5.0
    #: Seconds of silence before a ping; three times that without any frame = dead socket.
    ping_interval = 10.0
    #: How often a quiet reader wakes to see whether a ping is due (``stop()`` aborts the
    #: socket, which wakes it at once).
    tick = 5.0
    #: Seconds without an event for a prompt before its watch also polls /history.
    quiet_after = 5.0
    #: Seconds of failing history polls, with the socket down, before a watch gives up
    #: (``ServerUnavailable``) even if nobody sets ``lost``: a dead socket never hangs a job.
    unreachable_after = 10.0
    #: Events kept for prompts nobody watches yet (watch registered after submit).
    orphan_prompts = 32
    orphan_events = 256

    def __init__(self, client: ComfyClient, client_id: str, *, on_status: Callable[[int], None] | None = None,
                 on_connection: Callable[[bool], None] | None = None, poll_interval: float = 1.0) -> None:
        self.client = client
        self.client_id = client_id
        self.poll_interval = poll_interval
        self._on_status = on_status
        self._on_connection = on_connection
        self._lock = threading.Lock()
        self._watches: dict[str, PromptWatch] = {}
        self._orphans: OrderedDict[str, list[Event]] = OrderedDict()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._ws: websocket.WebSocket | None = None
        self._current: str | None = None    # the prompt running now, for previews without an id

    def __repr__(self) -> str:
        return f"PromptTracker({self.client!r}, client_id={self.client_id!r}, connected={self.connected})"

    def __enter__(self) -> PromptTracker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """True once the socket is up (for callers that want events from the first prompt)."""
        return self._connected.wait(timeout)

    def start(self) -> PromptTracker:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"comfy-ws-{self.client.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close the socket and end the thread (returns within about a second)."""
        self._stop.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.abort()
            except (OSError, websocket.WebSocketException):
                log.debug("aborting the websocket of '%s' failed", self.client.name)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def watch(self, prompt_id: str, on_event: EventCallback | None = None) -> PromptWatch:
        """Register interest in a prompt; do it before ``submit``. Events seen already are replayed."""
        watch = PromptWatch(self, prompt_id, on_event)
        with self._lock:
            if prompt_id in self._watches:
                raise ValueError(f"prompt {prompt_id} is already watched on server '{self.client.name}'")
            self._watches[prompt_id] = watch
            early = self._orphans.pop(prompt_id, [])
        for event in early:
            watch._deliver(event)
        return watch

    def _unregister(self, watch: PromptWatch) -> None:
        with self._lock:
            if self._watches.get(watch.prompt_id) is watch:
                del self._watches[watch.prompt_id]

    # -- the socket thread ------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff_min
        while not self._stop.is_set():
            try:
                ws = self.client.open_websocket(self.client_id)
            except (OSError, websocket.WebSocketException) as err:
                log.debug("websocket to '%s' failed: %s; retrying in %.1f s", self.client.name,
                          type(err).__name__, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_min
            self._ws = ws
            try:
                ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
                self._set_connected(True)
                self._pump(ws)
            except (OSError, ValueError, websocket.WebSocketException) as err:
                if not self._stop.is_set():
                    log.info("websocket to '%s' dropped: %s", self.client.name, type(err).__name__)
            except Exception:  # the reader must outlive any surprise: jobs depend on it
                log.exception("websocket reader of '%s' failed; reconnecting", self.client.name)
            finally:
                self._ws = None
                ws.shutdown()
                self._set_connected(False)

    def _set_connected(self, up: bool) -> None:
        if up:
            self._connected.set()
        else:
            self._connected.clear()
            self._current = None
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            watch._gap()
        if self._on_connection is not None:
            try:
                self._on_connection(up)
            except Exception:
                log.exception("on_connection callback of '%s' failed", self.client.name)

    def _pump(self, ws: websocket.WebSocket) -> None:
        """Read messages until the socket closes or ``stop()``; a quiet socket gets pinged.

        websocket-client joins fragments, answers pings and a CLOSE, and keeps a frame cut
        by the tick's timeout buffered for the next call. Pongs count as signs of life.
        """
        ws.settimeout(self.tick)
        last_heard = last_ping = time.monotonic()
        while not self._stop.is_set():
            try:
                opcode, frame = ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                now = time.monotonic()
                if now - last_heard > 3 * self.ping_interval:
                    log.info("websocket to '%s' silent for %.0f s; reconnecting", self.client.name, now - last_heard)
                    return
                if now - last_heard > self.ping_interval and now - last_ping > self.ping_interval:
                    ws.ping()
                    last_ping = now
                continue
            last_heard = time.monotonic()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._on_text(frame.data)
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self._on_binary(frame.data)

    def _on_text(self, payload: bytes | str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.debug("skipping a malformed websocket frame from '%s' (%d bytes)", self.client.name, len(payload))
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            log.debug("skipping a websocket message without a type from '%s'", self.client.name)
            return
        data = message.get("data")
        event = Event(message["type"], data if isinstance(data, dict) else {})
        if event.type == "status":
            self._status(event.data)
            return
        prompt_id = event.prompt_id
        if prompt_id is None:
            return
        finished = event.type in ("execution_success", "execution_error", "execution_interrupted") or (
            event.type == "executing" and event.data.get("node") is None)
        if finished:
            if self._current == prompt_id:
                self._current = None
        elif event.type in ("execution_start", "executing"):
            self._current = prompt_id
        self._route(prompt_id, event)

    def _on_binary(self, payload: bytes) -> None:
        event = parse_binary_frame(payload)
        if event is None:
            log.debug("skipping a binary websocket frame of unknown type from '%s'", self.client.name)
            return
        prompt_id = event.prompt_id or self._current
        if prompt_id is not None:
            self._route(prompt_id, event)

    def _status(self, data: Mapping[str, Any]) -> None:
        try:
            remaining = int(data["status"]["exec_info"]["queue_remaining"])
        except (KeyError, TypeError, ValueError):
            log.debug("skipping a status message without queue_remaining from '%s'", self.client.name)
            return
        if self._on_status is not None:
            try:
                self._on_status(remaining)
            except Exception:
                log.exception("on_status callback of '%s' failed", self.client.name)

    def _route(self, prompt_id: str, event: Event) -> None:
        with self._lock:
            watch = self._watches.get(prompt_id)
            if watch is None:
                events = self._orphans.setdefault(prompt_id, [])
                self._orphans.move_to_end(prompt_id)
                if len(events) < self.orphan_events:
                    events.append(event)
                while len(self._orphans) > self.orphan_prompts:
                    self._orphans.popitem(last=False)
                return
        watch._deliver(event)


__all__ = [
    "ComfyClient",
    "Device",
    "Event",
    "HistoryEntry",
    "OutputImage",
    "PromptTracker",
    "PromptWatch",
    "QueueEntry",
    "QueueState",
    "SubmitResult",
    "SystemStats",
    "Timeouts",
    "UploadedFile",
    "parse_binary_frame",
]
