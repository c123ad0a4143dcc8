"""Following prompts on one server: a websocket per (server, client id), a watch per prompt.

``PromptTracker`` holds the socket on a daemon thread, read through websocket-client's
public API, reconnecting with backoff; it routes each event to the ``PromptWatch`` of its
prompt and reports ComfyUI's pushed ``status`` (queue remaining). A watch falls back to
polling ``/history/{id}`` whenever the socket is down or quiet, so a dropped socket never
loses a result and never hangs a job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Mapping

import websocket

from .errors import (
    Cancelled,
    ComfyClusterError,
    ExecutionFailed,
    Interrupted,
    JobTimeout,
    ProtocolError,
    ServerUnavailable,
)
from .wire import Event, HistoryEntry, parse_binary_frame

if TYPE_CHECKING:
    from .client import ComfyClient

log = logging.getLogger(__name__)

#: Consecutive unreadable /history answers after which a watch gives up on the server.
GARBLED_POLLS = 3


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
                                     f"{timeout:g} s{why}", server=name, prompt_id=self.prompt_id)
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


__all__ = ["EventCallback", "PromptTracker", "PromptWatch"]
