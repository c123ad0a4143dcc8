"""The HTTP API of one ComfyUI server, as typed calls (transport only: never retries, never chooses).

``ComfyClient`` sends each call through the server's ``Transport`` (``transport.py``) and
turns what comes back into the types of ``wire.py``, or into ``comfy_cluster.errors``: a
refused workflow -> ``WorkflowRejected`` or ``MissingNodes``; auth and 5xx ->
``ServerUnavailable``; anything that is not ComfyUI's protocol -> ``ProtocolError``.
Messages say which server and which call, and never hold a secret.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping
from urllib.parse import quote, urlencode, urlsplit

import urllib3
import websocket

from .errors import (
    ComfyClusterError,
    MissingNodes,
    ProtocolError,
    ServerUnavailable,
    TransferError,
    WorkflowRejected,
)
from .transport import DOWNLOAD_CAP, ERROR_BODY_CAP, JSON_CAP, OBJECT_INFO_CAP, Timeouts, Transport
from .wire import (
    Device,
    HistoryEntry,
    OutputImage,
    QueueEntry,
    QueueState,
    SubmitResult,
    SystemStats,
    UploadedFile,
    node_error_lines,
)

if TYPE_CHECKING:
    from .config import ServerConfig

log = logging.getLogger(__name__)

_EXCERPT = 200
#: ComfyUI <= 0.3.6x: "Cannot execute because node X does not exist." (X may hold spaces).
_MISSING_NODE_RE = re.compile(r"node (.+?) does not exist\.?\s*$")


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


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def _excerpt(body: bytes) -> str:
    text = body[:_EXCERPT * 4].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")


def _queue_order(entry: QueueEntry) -> tuple[float, str]:
    """ComfyUI's heap order: ``(number, prompt_id)``."""
    return entry.number, entry.prompt_id


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
        self._transport = Transport(self.base_url, parts.path.rstrip("/") + self.api_prefix, name=self.name,
                                    headers=headers or {}, timeouts=timeouts)

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
        """A copy of the request headers. Never log or format these."""
        return self._transport.headers

    def ws_url(self, client_id: str) -> str:
        """``ws://host:port[/path][/api]/ws?clientId=...`` (``wss`` for https)."""
        scheme = "wss" if self.base_url.startswith("https:") else "ws"
        rest = self.base_url.split("://", 1)[1]
        return f"{scheme}://{rest}{self.api_prefix}/ws?clientId={quote(client_id, safe='')}"

    def open_websocket(self, client_id: str) -> websocket.WebSocket:
        """A connected ``/ws`` socket with this client's headers, CA bundle and proxy rules."""
        return self._transport.open_websocket(self.ws_url(client_id))

    def close(self) -> None:
        """Close the pooled connections; a later call opens new ones."""
        self._transport.close()

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
        status, raw = self._transport.exchange("POST", "/prompt", body=_json_bytes(body), content_type=_JSON,
                                               cap=JSON_CAP, prompt_id=prompt_id)
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
            lines = node_error_lines(node_errors, prompt)
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
        status, raw = self._transport.exchange("POST", "/upload/image", body=body, content_type=content_type,
                                               cap=JSON_CAP, read_timeout=self.timeouts.transfer)
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
                status, body = self._transport.exchange("GET", f"/view?{query}", cap=max_bytes,
                                                        sink=_Sink(fh, dest, self.name),
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
        lines = node_error_lines(node_errors, prompt)
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

    def _get_json(self, route: str, *, cap: int = JSON_CAP, prompt_id: str | None = None,
                  read_timeout: float | None = None) -> dict:
        what = f"GET {route.split('?', 1)[0]}"
        status, body = self._transport.exchange("GET", route, cap=cap, read_timeout=read_timeout,
                                                prompt_id=prompt_id)
        if status != 200:
            self._raise_status(status, body, what, prompt_id)
        return self._parse_json(body, what, prompt_id)

    def _post_no_content(self, route: str, body: Mapping[str, Any], *, prompt_id: str | None = None) -> None:
        what = f"POST {route}"
        status, answer = self._transport.exchange("POST", route, body=_json_bytes(dict(body)), content_type=_JSON,
                                                  cap=ERROR_BODY_CAP, prompt_id=prompt_id)
        if status not in (200, 204):
            self._raise_status(status, answer, what, prompt_id)


__all__ = ["ComfyClient"]
