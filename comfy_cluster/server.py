"""One ComfyUI server as a backend: a status cache, the probe that refreshes it, and run_prompt.

The scheduler, the CLI and the Nuke panel read the cache (plain attributes, ``get_status()``)
and never wait on the network. The pool's monitor calls ``update_status()`` on a shared
thread pool; the first good probe opens the server's websocket, on which ComfyUI pushes a
``status`` message (queue remaining) on every queue change, so the cached counts follow
the queue at once. While that socket is up ``/queue`` is polled only every
``PUSHED_POLL_S`` as the truth; when it drops the server is probed at once and then every
poll interval again.

States: ``online`` (answers, nothing queued), ``busy`` (answers, work queued), ``booting``
(answers HTTP but ``/queue``, ``/system_stats`` or ``/object_info`` fail: a server that is
starting or broken), ``offline`` (does not answer), ``disabled`` (switched off by the user).

Load, as the pool sees it: ``predicted_finish(extra)`` = (running + pending + our in-flight
prompts the server has not shown us yet + extra) x the measured seconds per job. ComfyUI's
own queue already holds our submitted prompts once the cache has seen them, so a prompt of
ours is counted from our side only until a ``/queue`` poll (or a websocket ``status``
message received after its submit returned) shows it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from urllib3 import exceptions as u3

from .backend import EventCallback, OutputRef, PromptRequest, PromptResult, ServerState
from .client import ComfyClient
from .config import ServerConfig
from .errors import (
    Cancelled,
    ComfyClusterError,
    JobTimeout,
    MissingNodes,
    ProtocolError,
    ServerTimeout,
    ServerUnavailable,
    TunnelError,
)
from . import transfer
from .tracker import PromptTracker
from .transport import Timeouts
from .tunnel import Tunnel
from .wire import Device, Event, QueueState

log = logging.getLogger(__name__)

#: Smoothing of the seconds-per-job average: 0.3 follows a changed workload in a few jobs
#: without letting one slow frame swing the scheduler.
EWMA_ALPHA = 0.3
#: Seconds per job assumed for a server that has not finished a job of ours yet.
DEFAULT_SECONDS_PER_JOB = 5.0
#: Longest pause between probes of a server that does not answer.
MAX_BACKOFF = 30.0
#: ``/system_stats`` (VRAM, version) changes slowly: fetch it at most this often (seconds)
#: while the server is ready. ``/queue`` is fetched on every probe; it is the liveness and
#: load signal.
STATS_EVERY_S = 30.0
#: Timeouts of the status probe: a dead host costs at most the connect timeout, so it
#: never holds up the refresh of the others for long.
PROBE_TIMEOUTS = Timeouts(connect=1.0, read=5.0, transfer=5.0)
#: Seconds between probes while the status socket is up (never less than the poll interval):
#: the pushed ``status`` messages carry the queue, the probe checks them and liveness.
PUSHED_POLL_S = 10.0

#: ``listener(server, old_state, new_state)``: called after the cache changed (the states
#: are equal when only queue counts moved), never under the lock.
ChangeListener = Callable[["ComfyUIServer", "ServerState", "ServerState"], None]


_READY = (ServerState.ONLINE, ServerState.BUSY)


@dataclass(frozen=True)
class ServerStatus:
    """A frozen copy of one backend's cache, safe to hand to any thread and to JSON."""

    name: str
    kind: str
    state: ServerState
    address: str
    queue_running: int
    queue_pending: int
    in_flight: int
    max_queue: int
    seconds_per_job: float | None
    priority: int
    enabled: bool
    devices: tuple[Device, ...] = ()
    comfyui_version: str | None = None
    node_count: int | None = None
    last_status_check: float | None = None
    last_error: str | None = None
    jobs_done: int = 0
    jobs_failed: int = 0
    tunnel: str | None = None      # the SSH tunnel's one-line status, for tunnelled servers

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["devices"] = [asdict(d) for d in self.devices]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerStatus:
        fields = dict(data)
        fields["state"] = ServerState(fields["state"])
        fields["devices"] = tuple(Device(**d) for d in fields.get("devices", ()))
        return cls(**fields)


def _answered(err: ServerUnavailable) -> bool:
    """True when the server answered HTTP (5xx, garbage) rather than not answering at all."""
    if isinstance(err, ProtocolError):
        return True
    if isinstance(err, ServerTimeout):
        return False
    return not isinstance(err.__cause__, (u3.HTTPError, OSError))


def _refused(err: BaseException) -> bool:
    """True when nothing listens on the port: the server process is gone, not merely slow."""
    seen: set[int] = set()
    todo: list[Any] = [err]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ConnectionRefusedError):
            return True
        todo.extend((item.__cause__, item.__context__, getattr(item, "reason", None), *item.args[:1]))
    return False


class ComfyUIServer:
    """One ComfyUI server: configuration, cached status, and the backend surface.

    ``lock`` is shared with the pool, so the pool's selection and this cache change under
    one lock; no network call is ever made while holding it.
    """

    kind = "comfyui"

    def __init__(
        self,
        config: ServerConfig,
        *,
        client_id: str,
        environ: Mapping[str, str] = os.environ,
        client: ComfyClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        probe_client: ComfyClient | None = None,
        probe_timeouts: Timeouts = PROBE_TIMEOUTS,
        poll_interval: float = 2.0,
        offline_after: float | None = None,
        max_backoff: float = MAX_BACKOFF,
        upload_cache: transfer.UploadCache | None = None,
        lock: threading.RLock | None = None,
        listener: ChangeListener | None = None,
        request_probe: Callable[[ComfyUIServer], None] | None = None,
        tunnel: Tunnel | None = None,
    ) -> None:
        self.config = config
        self.client_id = client_id
        #: The SSH tunnel the clients talk through (``config.ssh``); opened on the first probe.
        self.tunnel = tunnel if tunnel is not None or config.ssh is None else Tunnel.for_server(
            config, environ=environ, max_backoff=max_backoff)
        wire = config if self.tunnel is None else self.tunnel.client_config(config)
        self._environ, self._probe_timeouts, self._own_clients = environ, probe_timeouts, client is None
        self.client = client if client is not None else ComfyClient.from_config(wire, environ)
        self._probe = probe_client if probe_client is not None else (
            client if client is not None else ComfyClient.from_config(wire, environ, timeouts=probe_timeouts))
        self._clock = clock
        self._wall_clock = wall_clock
        self.poll_interval = float(poll_interval)
        #: A server silent for this long (from the start of its last good probe) is offline.
        self.offline_after = float(offline_after) if offline_after is not None else self.poll_interval
        self.max_backoff = float(max_backoff)
        self.upload_cache = upload_cache if upload_cache is not None else transfer.UploadCache()
        self._lock = lock if lock is not None else threading.RLock()
        self._probe_lock = threading.Lock()
        self._tracker_lock = threading.Lock()
        self.listener = listener
        self.request_probe = request_probe

        self.priority: int = config.priority
        self.enabled: bool = config.enabled
        self._state = ServerState.OFFLINE
        self.queue_running = 0
        self.queue_pending = 0
        self.last_status_check: float | None = None
        self.last_error: str | None = None
        self.devices: tuple[Device, ...] = ()
        self.comfyui_version: str | None = None
        self._argv: tuple[str, ...] = ()   # the server's command line: where it writes outputs
        #: Node classes from /object_info; kept while offline (capability routing still
        #: knows what the server had), fetched again on the first probe after a reconnect.
        self.node_classes: frozenset[str] | None = None
        self._classes_stale = True
        self._in_flight = 0
        self._submitted: dict[str, int] = {}   # our prompt_id -> submit sequence number
        self._seen: set[str] = set()           # our prompt_ids the server's queue has shown
        self._submit_seq = 0
        self.seconds_per_job: float | None = None
        self.jobs_done = 0
        self.jobs_failed = 0
        self._last_ok: float | None = None
        self._failures = 0
        self._stats_at: float | None = None
        self._lost = threading.Event()
        self._tracker: PromptTracker | None = None
        self._closed = False

    # -- configuration -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ip(self) -> str:
        return self.config.ip

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def dir_local(self) -> str | None:
        return self.config.dir_local

    @property
    def dir_remote(self) -> str | None:
        return self.config.dir_remote

    @property
    def max_queue(self) -> int:
        return self.config.max_queue

    @property
    def address(self) -> str:
        return self.config.base_url

    def __repr__(self) -> str:
        return f"ComfyUIServer({self.name!r}, {self.address!r}, state={self.state.value!r})"

    # -- cache readers (never touch the network) ------------------------------------

    @property
    def state(self) -> ServerState:
        return self._state if self.enabled else ServerState.DISABLED

    @property
    def in_flight(self) -> int:
        """Prompts of ours leased to this server and not finished."""
        return self._in_flight

    @property
    def lost(self) -> threading.Event:
        """Set when this server goes offline; a fresh, clear event once it is back."""
        return self._lost

    def get_status(self, refresh: bool = False) -> ServerStatus:
        """The cached status; ``refresh=True`` probes the server first (a network call)."""
        if refresh:
            return self.update_status()
        with self._lock:
            return ServerStatus(
                name=self.name, kind=self.kind, state=self.state, address=self.address,
                queue_running=self.queue_running, queue_pending=self.queue_pending,
                in_flight=self._in_flight, max_queue=self.max_queue,
                seconds_per_job=self.seconds_per_job, priority=self.priority, enabled=self.enabled,
                devices=self.devices, comfyui_version=self.comfyui_version,
                node_count=None if self.node_classes is None else len(self.node_classes),
                last_status_check=self.last_status_check, last_error=self.last_error,
                jobs_done=self.jobs_done, jobs_failed=self.jobs_failed,
                tunnel=None if self.tunnel is None else self.tunnel.status().summary(),
            )

    def missing_classes(self, classes: Iterable[str]) -> frozenset[str]:
        """Node classes the workflow needs that this server lacks (empty when unknown)."""
        known = self.node_classes
        if known is None:
            return frozenset()
        return frozenset(classes) - known

    def is_available(self, classes: Iterable[str] | None = None) -> bool:
        """Enabled, answering and ready, and (as far as we know) has every node class."""
        if self.state not in _READY:
            return False
        return not classes or not self.missing_classes(classes)

    def predicted_finish(self, extra: int = 0, *, default_seconds: float | None = None) -> float:
        """Seconds until ``extra`` more jobs placed here now would be done.

        ``default_seconds`` stands in for an unmeasured server's speed (the pool passes the
        mean of the measured ones).
        """
        with self._lock:
            seen = sum(1 for pid in self._submitted if pid in self._seen)
            unseen = max(0, self._in_flight - seen)
            jobs = self.queue_running + self.queue_pending + unseen + extra
            speed = self.seconds_per_job
        if speed is None:
            speed = default_seconds if default_seconds is not None else DEFAULT_SECONDS_PER_JOB
        return jobs * speed

    # -- accounting (called by the pool's Lease) -----------------------------------

    def reserve(self) -> None:
        """Count one more prompt of ours on this server (optimistic: before it is sent)."""
        with self._lock:
            self._in_flight += 1

    def unreserve(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def record_result(self, seconds: float | None, ok: bool) -> None:
        """Count a finished job; a successful one's duration feeds the seconds-per-job EWMA."""
        with self._lock:
            if not ok:
                self.jobs_failed += 1
                return
            self.jobs_done += 1
            if seconds is None or seconds < 0:
                return
            if self.seconds_per_job is None:
                self.seconds_per_job = float(seconds)
            else:
                self.seconds_per_job += EWMA_ALPHA * (float(seconds) - self.seconds_per_job)

    # -- monitoring (network) --------------------------------------------------------

    def test_connection(self) -> bool:
        """True when the server answers ``/system_stats`` now (a network call)."""
        try:
            self._probe.get_system_stats()
        except ComfyClusterError as err:
            log.debug("server %r: connection test failed: %s", self.name, err)
            return False
        return True

    def next_probe_delay(self) -> float:
        """Seconds from this probe's start to the next: the poll interval (``PUSHED_POLL_S``
        while the status socket is up), or back-off while offline."""
        tracker = self._tracker
        with self._lock:
            if self._state is not ServerState.OFFLINE or self._failures <= 1:
                pushed = self._state in _READY and tracker is not None and tracker.connected
                return max(self.poll_interval, PUSHED_POLL_S) if pushed else self.poll_interval
            return min(self.max_backoff, self.poll_interval * 2 ** (self._failures - 1))

    def update_status(self) -> ServerStatus:
        """Probe the server (``/queue``; ``/system_stats`` and ``/object_info`` when due) and update the cache."""
        with self._probe_lock:
            started = self._clock()
            if self.tunnel is not None and not self._tunnel_up(started):
                return self.get_status()
            with self._lock:
                need_classes = self._classes_stale or self.node_classes is None
                need_stats = (need_classes or self._state not in _READY or self._stats_at is None
                              or started - self._stats_at >= STATS_EVERY_S)
            try:
                queue = self._read_queue()
                stats = self._probe.get_system_stats() if need_stats else None
                classes = self._probe.node_classes() if need_classes else None
            except ServerUnavailable as err:
                if _answered(err) or (self.tunnel is not None and self.tunnel.was_up and _refused(err)):
                    # A refused local port is the tunnel's ssh dying: the next probe re-makes it.
                    self._apply(ServerState.BOOTING, started, error=err)
                else:
                    self._probe_failed(started, err)
            else:
                self._probe_ok(started, queue, stats, classes)
        if self.request_probe is not None and self.state in _READY:
            self._start_tracker()   # the status socket: monitored servers only (its drop asks for a probe)
        return self.get_status()

    def _tunnel_up(self, started: float) -> bool:
        """Open or re-make the tunnel: while a tunnel that was up is re-made, the server is ``booting``."""
        tunnel = self.tunnel
        assert tunnel is not None
        try:
            port = tunnel.ensure(on_down=lambda why: self._apply(ServerState.BOOTING, started, error=why))
        except TunnelError as err:
            if tunnel.was_up:
                self._apply(ServerState.BOOTING, started, error=err)
            else:
                self._probe_failed(started, err)
            return False
        if self._own_clients and port != urlsplit(self.client.base_url).port:
            self._rewire()
        return True

    def _rewire(self) -> None:
        """The tunnel moved to another local port: new clients and a new websocket for it."""
        assert self.tunnel is not None
        wire = self.tunnel.client_config(self.config)
        old = (self.client, self._probe)
        self.client = ComfyClient.from_config(wire, self._environ)
        self._probe = ComfyClient.from_config(wire, self._environ, timeouts=self._probe_timeouts)
        with self._tracker_lock:
            tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.stop()
        for client in old:
            client.close()
        log.info("server %r: now talking through %s", self.name, self.client.base_url)

    def _read_queue(self) -> QueueState | None:
        """``/queue``, or None when it answered something unreadable (alive, load unknown)."""
        try:
            return self._probe.get_queue()
        except ProtocolError as err:
            log.debug("server %r: unreadable /queue: %s", self.name, err)
            return None

    def _probe_ok(self, started: float, queue: QueueState | None, stats: Any, classes: frozenset[str] | None) -> None:
        with self._lock:
            if queue is not None:
                self.queue_running = len(queue.running)
                self.queue_pending = len(queue.pending)
                ids = {e.prompt_id for e in queue.running} | {e.prompt_id for e in queue.pending}
                self._seen = {pid for pid in self._submitted if pid in ids}
            if stats is not None:
                self._stats_at = started
                self.devices = tuple(stats.devices)
                self.comfyui_version = stats.comfyui_version
                self._argv = tuple(stats.argv)
            if classes is not None:
                self.node_classes = frozenset(classes)
                self._classes_stale = False
            self._last_ok = started
            self._failures = 0
            state = ServerState.BUSY if self.queue_running + self.queue_pending else ServerState.ONLINE
        self._apply(state, started, error=None if queue is not None else "unreadable /queue answer")

    def _probe_failed(self, started: float, err: ServerUnavailable) -> None:
        with self._lock:
            self._failures += 1
            silent = (self._last_ok is None or started - self._last_ok >= self.offline_after - 1e-3
                      or _refused(err))
            state = ServerState.OFFLINE if self._state is ServerState.OFFLINE or silent else self._state
            failures = self._failures
        log.debug("server %r: probe failed (%d in a row): %s", self.name, failures, err)
        self._apply(state, started, error=err)

    def _apply(self, state: ServerState, started: float, *, error: object) -> None:
        """Move to ``state``: entering offline sets ``lost``; leaving it starts a new connection."""
        with self._lock:
            old = self.state
            was = self._state
            before = (self.queue_running, self.queue_pending, self.last_error)
            self.last_status_check = self._wall_clock()
            self.last_error = None if error is None else str(error)
            if state is ServerState.OFFLINE and was is not ServerState.OFFLINE:
                self._lost.set()
                self._classes_stale = True
                self.queue_running = self.queue_pending = 0
                self._seen = set()
            elif was is ServerState.OFFLINE and state is not ServerState.OFFLINE:
                if self._lost.is_set():
                    self._lost = threading.Event()
                self.upload_cache.forget(self.name)
            if state is ServerState.BOOTING:
                self._classes_stale = True
            self._state = state
            new = self.state
            moved = old is not new or before != (self.queue_running, self.queue_pending, self.last_error)
        if was is not state:
            log.info("server %r: %s -> %s%s", self.name, was.value, state.value,
                     f" ({error})" if error is not None else "")
        if moved:
            self._notify(old, new)

    def _notify(self, old: ServerState, new: ServerState) -> None:
        if self.listener is not None:
            self.listener(self, old, new)

    # -- websocket tracker ------------------------------------------------------------

    def _on_ws_status(self, queue_remaining: int) -> None:
        """A websocket ``status`` message: the queue changed; everything we submitted is in it."""
        with self._lock:
            if self._state is ServerState.OFFLINE:
                return
            remaining = max(0, int(queue_remaining))
            self.queue_running = min(1, remaining)
            self.queue_pending = remaining - self.queue_running
            self._seen = set(self._submitted)
            old = self.state
            if self._state in _READY:
                self._state = ServerState.BUSY if remaining else ServerState.ONLINE
            new = self.state
        self._notify(old, new)

    def _on_ws_connection(self, connected: bool) -> None:
        """A dropped socket is the fastest sign of a dead or restarted server: probe now."""
        if not connected:
            with self._lock:
                self._classes_stale = True
        if self.request_probe is not None:
            self.request_probe(self)

    def _start_tracker(self) -> tuple[PromptTracker | None, bool]:
        """The server's one websocket (status pushes and prompt events): ``(tracker, created now)``."""
        with self._tracker_lock:
            if self._tracker is not None or self._closed:
                return self._tracker, False
            self._tracker = PromptTracker(self.client, self.client_id, on_status=self._on_ws_status,
                                          on_connection=self._on_ws_connection,
                                          poll_interval=min(1.0, self.poll_interval)).start()
            return self._tracker, True

    def _ensure_tracker(self) -> PromptTracker:
        tracker, created = self._start_tracker()
        if tracker is None:
            raise ServerUnavailable(f"server {self.name!r} is closed", server=self.name)
        if created:
            # The first prompt's events only reach us over an open socket; the history
            # fallback covers a server whose websocket does not come up in time.
            tracker.wait_connected(self.client.timeouts.connect)
        return tracker

    def close(self) -> None:
        """Stop the tracker and close the HTTP sessions."""
        with self._tracker_lock:
            tracker, self._tracker = self._tracker, None
            self._closed = True
        if tracker is not None:
            tracker.stop()
        self.client.close()
        if self._probe is not self.client:
            self._probe.close()
        if self.tunnel is not None:
            self.tunnel.release()

    # -- running a prompt --------------------------------------------------------------

    def run_prompt(self, request: PromptRequest, *, on_event: EventCallback,
                   cancel: threading.Event) -> PromptResult:
        """Stage inputs, submit, follow the prompt to its end and describe its outputs.

        Raises ``Cancelled`` (after removing or interrupting our prompt, never another's),
        ``JobTimeout`` (after a best-effort interrupt), ``ServerUnavailable`` when the server
        went away, and the ``WorkflowError`` family when the work itself failed.
        """
        if cancel.is_set():
            raise Cancelled(f"server {self.name!r}: {request.label or request.prompt_id} cancelled before submit",
                            server=self.name, prompt_id=request.prompt_id)
        pid = request.prompt_id
        workflow = transfer.stage_inputs(self.config, self.client, request.workflow, request.inputs,
                                         cache=self.upload_cache)
        tracker = self._ensure_tracker()
        relay = _EventRelay(on_event, self._clock)
        watch = tracker.watch(pid, on_event=relay.forward)
        lost = self.lost
        submitted_at = self._clock()
        try:
            self._submit(workflow, pid)
            relay.open({"backend": self.name, "prompt_id": pid})
            try:
                entry = watch.wait(request.timeout, cancel=cancel, lost=lost)
            except (Cancelled, JobTimeout):
                self._withdraw(pid)
                raise
        except ServerUnavailable:
            if self.request_probe is not None:
                self.request_probe(self)
            raise
        finally:
            watch.close()
            with self._lock:
                self._submitted.pop(pid, None)
                self._seen.discard(pid)
        done_at = self._clock()
        elapsed = _server_seconds(entry.messages)
        if elapsed is None:
            elapsed = done_at - (relay.started_at or submitted_at)
        output_dir = transfer.remote_output_dir(self.config, list(self._argv)) if self.config.transfer == "shared" else None
        outputs = [OutputRef(filename=image.filename, node_id=image.node_id, index=i,
                             fetch=transfer.make_output_fetcher(self.config, self.client, image,
                                                                output_dir_remote=output_dir))
                   for i, image in enumerate(entry.images)]
        return PromptResult(prompt_id=pid, backend=self.name, outputs=outputs, elapsed=elapsed)

    def _submit(self, workflow: dict[str, Any], pid: str) -> None:
        """POST /prompt; when the answer is lost (timeout, reset, garbage), ask the server
        whether the prompt landed before the frame is sent anywhere else."""
        try:
            self.client.submit(workflow, client_id=self.client_id, prompt_id=pid)   # checks the answered id
        except MissingNodes:
            with self._lock:
                self._classes_stale = True
            raise
        except ServerUnavailable as err:
            if _refused(err) or not self._landed(pid):
                raise
            log.info("server %r: POST /prompt failed (%s) but prompt %s landed", self.name, err, pid)
        with self._lock:
            self._submit_seq += 1
            self._submitted[pid] = self._submit_seq

    def _landed(self, pid: str) -> bool:
        """Queue first, then history: a prompt that finishes in between is seen in one of them."""
        try:
            queue = self.client.get_queue()
            if any(e.prompt_id == pid for e in (*queue.running, *queue.pending)):
                return True
            return self.client.get_history(pid) is not None
        except ComfyClusterError:
            return False

    def _withdraw(self, pid: str) -> None:
        """Cancel our prompt (``ComfyClient.withdraw``: never another artist's); best effort."""
        try:
            self.client.withdraw(pid)
        except ComfyClusterError as err:
            log.warning("server %r: could not withdraw prompt %s: %s", self.name, pid, err)


class _EventRelay:
    """Turns websocket events into JobEvents, holding them back until "submitted" went out.

    The socket can report ``execution_start`` before ``POST /prompt`` has returned; the
    caller must still see "submitted" first.
    """

    def __init__(self, on_event: EventCallback, clock: Callable[[], float]) -> None:
        self._on_event = on_event
        self._clock = clock
        self._lock = threading.Lock()
        self._held: list[tuple[str, dict[str, Any]]] | None = []
        self.started_at: float | None = None

    def open(self, submitted: dict[str, Any]) -> None:
        self._on_event("submitted", submitted)
        with self._lock:
            held, self._held = self._held or [], None
        for kind, data in held:
            self._on_event(kind, data)

    def forward(self, event: Event) -> None:
        data = event.data
        if event.type == "execution_start":
            self.started_at = self._clock()
            job_event: tuple[str, dict[str, Any]] = ("started", {})
        elif event.type == "progress":
            job_event = ("progress", {"value": data.get("value"), "max": data.get("max"), "node": data.get("node")})
        elif event.type == "executing" and data.get("node") is not None:
            job_event = ("executing", {"node": data["node"]})
        else:
            return
        with self._lock:
            if self._held is not None:
                self._held.append(job_event)
                return
        self._on_event(*job_event)


def _server_seconds(messages: Iterable[Any]) -> float | None:
    """Run time from the history's ``execution_start`` / ``execution_success`` timestamps (ms)."""
    stamps: dict[str, float] = {}
    for message in messages or ():
        try:
            kind, data = message[0], message[1]
            stamps[kind] = float(data["timestamp"])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    if "execution_start" in stamps and "execution_success" in stamps:
        return max(0.0, (stamps["execution_success"] - stamps["execution_start"]) / 1000.0)
    return None
