"""The pool: which backend gets the next prompt, and who is told when a server comes or goes.

Policy only: the pool reads the servers' status caches and never opens a socket itself.
Its monitor schedules each server's probe (``ComfyUIServer.update_status``) every poll
interval on a small shared thread pool, so a hundred servers cost a handful of threads and
a dead host, probed with back-off and a short connect timeout, never delays the others.

Work is handed out by free slot (``acquire``): at most ``max_queue`` prompts of ours sit on a
server, and the next one goes where it is predicted to finish first. A slot is reserved
under the lock before the prompt is sent (optimistic accounting), so two selections in the
same instant never both land on one idle server while another idle server exists.

>>> from comfy_cluster.config import ServerConfig
>>> pool = ComfyUIServerPool([ServerConfig(name="gpu-01", ip="127.0.0.1", port=1)])
>>> pool.acquire() is None           # never probed: offline until it answers
True
>>> pool.close()
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterable, Mapping

from .backend import Backend, ServerState
from .config import ClusterConfig, ServerConfig
from .config_edit import ConfigWatcher
from .config_load import load_config, load_config_file
from .errors import ComfyClusterError, MissingNodes, capped
from .server import MAX_BACKOFF, PROBE_TIMEOUTS, ComfyUIServer, ServerStatus
from .subscribers import Subscribers
from .transfer import UploadCache
from .transport import Timeouts

log = logging.getLogger(__name__)

#: Probe threads for the whole pool. A probe of a live server costs under a millisecond,
#: so two threads refresh hundreds of servers a second (a refused connection is instant,
#: a silent host costs one connect timeout); more threads only fight over the GIL.
DEFAULT_WORKERS = 2


class Strategy(str, Enum):
    """How ``acquire`` ranks the servers that have a free slot."""

    LEAST_LOADED = "least_loaded"   # predicted finish time, then priority, then round-robin
    PRIORITY = "priority"           # lowest priority number, then predicted finish, then round-robin
    ROUND_ROBIN = "round_robin"     # each free server in turn


@dataclass(frozen=True)
class PoolEvent:
    """A server went ``offline``, came back ``online``, ``changed`` state, was ``added`` or ``removed``."""

    kind: str
    server: str


@dataclass(frozen=True)
class PoolSnapshot:
    """Everything the status panel and ``comfy-cluster status`` show, frozen and JSON-able."""

    servers: tuple[ServerStatus, ...]
    strategy: Strategy
    poll_interval: float
    client_id: str
    runpod: dict[str, Any] | None = None
    pods: tuple[dict[str, Any], ...] = ()   # the autoscaler's pod rows: GPU, $/h, uptime, cost so far

    def to_dict(self) -> dict[str, Any]:
        return {
            "servers": [s.to_dict() for s in self.servers],
            "strategy": self.strategy.value,
            "poll_interval": self.poll_interval,
            "client_id": self.client_id,
            "runpod": self.runpod,
            "pods": list(self.pods),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolSnapshot:
        return cls(servers=tuple(ServerStatus.from_dict(s) for s in data["servers"]),
                   strategy=Strategy(data["strategy"]), poll_interval=float(data["poll_interval"]),
                   client_id=data["client_id"], runpod=data.get("runpod"), pods=tuple(data.get("pods") or ()))


class Lease:
    """A reserved slot on one backend; ``release()`` gives it back (idempotent).

    Used as a context manager, a block that raises releases the slot as a failed job.
    """

    def __init__(self, pool: ComfyUIServerPool, backend: Any) -> None:
        self.backend = backend
        self._pool = pool
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self, *, seconds: float | None = None, ok: bool = True) -> None:
        """Free the slot; ``seconds`` (the server's run time) feeds its speed estimate."""
        self._pool._release(self, seconds, ok)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.release(ok=exc_type is None)

    def __repr__(self) -> str:
        return f"Lease({self.backend.name!r}, released={self._released})"


def _classes_of(workflow: Any) -> frozenset[str]:
    """Node classes of a dict graph, a Workflow-like object (``class_types()``) or a set of names."""
    if workflow is None:
        return frozenset()
    if hasattr(workflow, "class_types"):
        return frozenset(workflow.class_types())
    if isinstance(workflow, Mapping):
        return frozenset(node["class_type"] for node in workflow.values()
                         if isinstance(node, Mapping) and "class_type" in node)
    return frozenset(workflow)


class _EventDispatcher:
    """Delivers PoolEvents to subscribers on one worker thread, in order, never under the pool lock."""

    def __init__(self) -> None:
        self.subscribers: Subscribers[PoolEvent] = Subscribers("pool")
        self._queue: queue.SimpleQueue[PoolEvent | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def emit(self, event: PoolEvent) -> None:
        if not self.subscribers:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="comfy-cluster-pool-events", daemon=True)
                self._thread.start()
        self._queue.put(event)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self.subscribers.deliver(event)

    def stop(self) -> None:
        """Deliver what is queued, then end the thread; a later event starts a new one."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


class ComfyUIServerPool:
    """All the backends of a cluster: cached status, selection, failover signals."""

    def __init__(
        self,
        servers: Iterable[ServerConfig] = (),
        *,
        poll_interval: float = 2.0,
        offline_after: float | None = None,
        client_id: str | None = None,
        runpod: Any = None,
        environ: Mapping[str, str] = os.environ,
        strategy: Strategy | str = Strategy.LEAST_LOADED,
        max_backoff: float = MAX_BACKOFF,
        probe_timeouts: Timeouts = PROBE_TIMEOUTS,
        workers: int = DEFAULT_WORKERS,
        clock: Callable[[], float] = time.monotonic,
        reload: Callable[[], ClusterConfig] | None = None,
        config_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.client_id = client_id or uuid.uuid4().hex
        self.runpod = runpod
        self.poll_interval = float(poll_interval)
        self.offline_after = offline_after
        self.strategy = Strategy(strategy)
        self.max_backoff = max_backoff
        self.probe_timeouts = probe_timeouts
        self.upload_cache = UploadCache()
        self._environ = environ
        self._clock = clock
        self._reload = reload
        #: the servers file this pool was built from; edits to it are picked up by the monitor
        self.config_path = config_path
        self._watcher = (ConfigWatcher(config_path, interval=self.poll_interval, clock=clock)
                         if config_path is not None else None)
        self._workers = max(1, workers)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._generation = 0
        self._servers: dict[str, ComfyUIServer] = {}
        self._rr = 0
        self._runpod_leases = 0
        self.autoscaler: Any = None   # the pod tier (comfy_cluster.autoscale), when configured
        self._class_leases: dict[str, int] = {}   # leases per "runpod:CLASS" view of a RunPod group
        self._events = _EventDispatcher()
        # monitor
        self._due: list[tuple[float, int, str]] = []
        self._due_at: dict[str, float] = {}
        self._probing: set[str] = set()
        self._seq = itertools.count()
        self._executor: ThreadPoolExecutor | None = None
        self._monitor: threading.Thread | None = None
        self._stopping = threading.Event()
        for cfg in servers:
            self._add(cfg)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: ClusterConfig, **kw: Any) -> ComfyUIServerPool:
        """The pool of a configuration, with its RunPod endpoint when one is configured and enabled."""
        kw.setdefault("poll_interval", cfg.poll_interval)
        if cfg.source.startswith("@"):  # a servers file: watched, so an edit reaches the running pool
            path, environ = cfg.source[1:], kw.get("environ", os.environ)
            kw.setdefault("config_path", path)
            kw.setdefault("reload", lambda: load_config_file(path, environ=environ))
        if "runpod" not in kw and cfg.runpod is not None and cfg.runpod.enabled:
            from .runpod_group import runpod_backend  # the RunPod tier is optional: only built when configured

            kw["runpod"] = runpod_backend(cfg.runpod, environ=kw.get("environ", os.environ))
        pool = cls(cfg.servers, **kw)
        if cfg.pods is not None and cfg.pods.enabled:
            from .autoscale import Autoscaler  # the pod tier is optional: only built when configured

            pool.autoscaler = Autoscaler(pool, cfg.pods, environ=kw.get("environ", os.environ))
        return pool

    def watch_batch(self, batch: Any) -> None:
        """Tell the pod autoscaler (if any) about a batch whose queued frames it should plan for."""
        if self.autoscaler is not None:
            self.autoscaler.watch(batch)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **kw: Any) -> ComfyUIServerPool:
        """The pool of ``NUKE_COMFYUI_SERVERS`` (or its fallbacks); ``load_configuration`` re-reads it."""
        kw.setdefault("reload", lambda: load_config(environ))
        return cls.from_config(load_config(environ), environ=environ, **kw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kw: Any) -> ComfyUIServerPool:
        """The pool of a servers file, RunPod from the environment as for ``@file``;
        ``load_configuration`` re-reads both."""
        environ = kw.setdefault("environ", os.environ)
        kw.setdefault("reload", lambda: load_config_file(path, environ=environ))
        return cls.from_config(load_config_file(path, environ=environ), **kw)

    def _make_server(self, cfg: ServerConfig) -> ComfyUIServer:
        return ComfyUIServer(
            cfg, client_id=self.client_id, environ=self._environ, clock=self._clock,
            probe_timeouts=self.probe_timeouts, poll_interval=self.poll_interval,
            offline_after=self.offline_after, max_backoff=self.max_backoff,
            upload_cache=self.upload_cache, lock=self._lock,
            listener=self._on_server_change, request_probe=self._request_probe,
        )

    # -- members -----------------------------------------------------------------------

    @property
    def servers(self) -> tuple[ComfyUIServer, ...]:
        with self._lock:
            return tuple(self._servers.values())

    @property
    def backends(self) -> tuple[Backend, ...]:
        """Every backend work can go to: the servers, then RunPod when attached."""
        extra = (self.runpod,) if self.runpod is not None else ()
        return (*self.servers, *extra)

    def get_server_by_name(self, name: str) -> ComfyUIServer | None:
        with self._lock:
            return self._servers.get(name)

    def _get(self, name: str) -> ComfyUIServer:
        server = self._servers.get(name)
        if server is None:
            raise ValueError(f"no server named {name!r}; servers: {', '.join(self._servers) or '(none)'}")
        return server

    def _add(self, cfg: ServerConfig) -> ComfyUIServer:
        server = self._make_server(cfg)
        with self._cond:
            if cfg.name in self._servers:
                raise ValueError(f"a server named {cfg.name!r} is already in the pool")
            self._servers[cfg.name] = server
            self._schedule(cfg.name, self._clock())
            self._changed()
        return server

    def add_server(self, cfg: ServerConfig) -> ComfyUIServer:
        """Add a server at run time; it is probed at once and takes work once it answers."""
        server = self._add(cfg)
        self._events.emit(PoolEvent("added", cfg.name))
        return server

    def remove_server(self, name: str) -> None:
        """Take a server out; prompts already running there finish, nothing new goes there."""
        with self._cond:
            server = self._get(name)
            del self._servers[name]
            self._due_at.pop(name, None)
            self._changed()
        server.lost.set()
        self._retire(server)
        self._events.emit(PoolEvent("removed", name))

    def _retire(self, server: ComfyUIServer) -> None:
        """Close a removed server once nothing of ours runs there any more."""
        if server.in_flight == 0:
            server.close()

    def _set(self, name: str, **values: Any) -> None:
        with self._cond:
            server = self._get(name)
            before = (server.enabled, server.priority)
            for key, value in values.items():
                setattr(server, key, value)
            changed = before != (server.enabled, server.priority)
            if changed:
                self._changed()
        if changed:
            self._events.emit(PoolEvent("changed", name))

    def enable(self, name: str) -> None:
        self._set(name, enabled=True)

    def disable(self, name: str) -> None:
        """No new work goes to a disabled server; prompts already there finish."""
        self._set(name, enabled=False)

    def set_priority(self, name: str, priority: int) -> None:
        self._set(name, priority=int(priority))

    def load_configuration(self, environ: Mapping[str, str] | None = None) -> None:
        """Re-read the configuration and apply it: add, remove and update servers in place.

        With ``environ``, reads ``load_config(environ)``; otherwise the source the pool was
        built from (its file, or the environment).
        """
        if environ is not None:
            cfg = load_config(environ)
        elif self._reload is not None:
            cfg = self._reload()
        else:
            cfg = load_config(self._environ)
        wanted = {s.name: s for s in cfg.servers}
        pods = {p.name for p in self.autoscaler.pods()} if self.autoscaler is not None else set()
        with self._lock:
            current = dict(self._servers)
        for name in current:
            if name not in wanted and name not in pods:   # rented pods are the autoscaler's, not the file's
                self.remove_server(name)
        for name, new in wanted.items():
            old = current.get(name)
            if old is None:
                self.add_server(new)
            elif old.config != new:
                same_wiring = old.config.model_copy(update={"priority": new.priority, "enabled": new.enabled}) == new
                if same_wiring:
                    old.config = new
                    self._set(name, priority=new.priority, enabled=new.enabled)
                else:
                    self.remove_server(name)
                    self.add_server(new)

    # -- selection ---------------------------------------------------------------------

    def _default_seconds(self) -> float | None:
        measured = [s.seconds_per_job for s in self._servers.values() if s.seconds_per_job is not None]
        return sum(measured) / len(measured) if measured else None

    def _best(self, servers: list[ComfyUIServer], strategy: Strategy, default: float | None) -> ComfyUIServer | None:
        """The first server by ``strategy``; round-robin order starts after the last one chosen."""
        if not servers:
            return None
        order = {name: i for i, name in enumerate(self._servers)}
        n = len(order)

        def turn(s: ComfyUIServer) -> int:
            return (order[s.name] - self._rr) % n

        def finish(s: ComfyUIServer) -> float:
            return round(s.predicted_finish(1, default_seconds=default), 6)

        if strategy is Strategy.ROUND_ROBIN:
            return min(servers, key=turn)
        if strategy is Strategy.PRIORITY:
            return min(servers, key=lambda s: (s.priority, finish(s), turn(s)))
        return min(servers, key=lambda s: (finish(s), s.priority, turn(s)))

    def _scope(self, target: str | None) -> list[ComfyUIServer]:
        if target in (None, "auto", "runpod"):
            return list(self._servers.values()) if target != "runpod" else []
        return [self._get(target)]

    def _check_capable(self, scope: list[ComfyUIServer], classes: frozenset[str], runpod_ok: bool) -> None:
        """MissingNodes when no server whose node classes we know can run the workflow."""
        if not classes or runpod_ok:
            return
        known = [s for s in scope if s.enabled and s.node_classes is not None]
        if not known:
            return
        missing = {s.name: s.missing_classes(classes) for s in known}
        if all(missing.values()):
            detail = "; ".join(capped(f"{name!r} lacks {', '.join(sorted(m))}" for name, m in missing.items()))
            absent = frozenset().union(*missing.values())
            raise MissingNodes(f"no server can run this workflow: {detail}", missing=absent,
                               server=known[0].name if len(known) == 1 else None)

    def _select(self, classes: frozenset[str], strategy: Strategy, target: str | None,
                exclude: frozenset[str], wait_for_faster: bool = False) -> Any:
        """The backend for the next prompt, under the lock; None when no slot is free.

        With ``wait_for_faster`` (the last frames of a batch) a free slot is declined when a
        server whose slots are full would still finish the prompt sooner: at the tail, the
        last frame on an idle slow GPU is what makes the whole render late.
        """
        gpu_class = None
        if target is not None and target.startswith("runpod:"):  # "runpod:A100": endpoints of that GPU class
            target, gpu_class = "runpod", target.partition(":")[2]
        scope = self._scope(target)
        runpod = self.runpod if (self.runpod is not None and target in (None, "auto", "runpod")
                                 and self.runpod.name not in exclude) else None
        runpod_ok = runpod is not None and not runpod.missing_classes(classes)
        if target == "runpod":
            if self.runpod is None:
                raise ValueError("target 'runpod': no RunPod endpoint is configured")
            if gpu_class and runpod is not None:
                runpod = runpod.for_gpu_class(gpu_class)
            return runpod if runpod_ok and self._runpod_free(runpod) else None
        self._check_capable(scope, classes, runpod_ok)
        default = self._default_seconds()
        ready = [s for s in scope if s.name not in exclude and s.is_available(classes)]
        free = [s for s in ready if s.in_flight < s.max_queue]
        best = self._best(free, strategy, default)
        if wait_for_faster and best is not None and strategy is Strategy.LEAST_LOADED:
            finish = best.predicted_finish(1, default_seconds=default)
            if any(s.predicted_finish(1, default_seconds=default) < finish for s in ready if s not in free):
                return None
        if runpod is None or not runpod_ok:
            return best
        if best is not None and best.predicted_finish(1, default_seconds=default) <= runpod.overflow_after_s:
            return best
        wait_s = min((s.predicted_finish(1, default_seconds=default) for s in ready), default=None)
        if runpod.should_take(local_online=len(ready), predicted_local_wait=wait_s) and self._runpod_free():
            return runpod
        return best

    def _runpod_free(self, runpod: Any = None) -> bool:
        """RunPod counts a job from its own submit; our leases count from selection, so both must fit."""
        runpod = runpod if runpod is not None else self.runpod
        view_ok = runpod is self.runpod or self._class_leases.get(runpod.name, 0) < runpod.max_queue
        return self._runpod_leases < self.runpod.max_queue and view_ok and runpod.has_free_slot()

    def get_available_server(self, strategy: Strategy | str = Strategy.LEAST_LOADED,
                             workflow: Any = None) -> ComfyUIServer | None:
        """The server the next prompt would go to, without reserving it (local servers only)."""
        with self._lock:
            choice = self._select(_classes_of(workflow), Strategy(strategy), None,
                                  frozenset({self.runpod.name}) if self.runpod is not None else frozenset())
        return choice

    def acquire(self, classes: Iterable[str] | Any = frozenset(), *, strategy: Strategy | str | None = None,
                target: str | None = None, exclude: Iterable[str] = (),
                wait_for_faster: bool = False) -> Lease | None:
        """Reserve a slot on the best backend for a prompt using ``classes``; None if none is free.

        ``wait_for_faster``: decline a free slot when a busy server would finish sooner (for
        a batch's last frames; see ``_select``). Raises MissingNodes when no known server has
        the node classes, ValueError for an unknown ``target``.
        """
        chosen_strategy = Strategy(strategy) if strategy is not None else self.strategy
        with self._cond:
            backend = self._select(_classes_of(classes), chosen_strategy, target, frozenset(exclude),
                                   wait_for_faster)
            if backend is None:
                return None
            if isinstance(backend, ComfyUIServer):
                order = list(self._servers)
                self._rr = (order.index(backend.name) + 1) % len(order)
            if isinstance(backend, ComfyUIServer):
                backend.reserve()
            else:
                self._runpod_leases += 1
                if backend is not self.runpod:
                    self._class_leases[backend.name] = self._class_leases.get(backend.name, 0) + 1
            self._changed()
        return Lease(self, backend)

    def _release(self, lease: Lease, seconds: float | None, ok: bool) -> None:
        with self._cond:
            if lease._released:
                return
            lease._released = True
            backend = lease.backend
            if isinstance(backend, ComfyUIServer):
                backend.unreserve()
            else:
                self._runpod_leases -= 1
                if backend is not self.runpod:
                    self._class_leases[backend.name] -= 1
            backend.record_result(seconds, ok)
            retired = isinstance(backend, ComfyUIServer) and self._servers.get(backend.name) is not backend
            self._changed()
        if retired:
            self._retire(backend)

    # -- change signals ------------------------------------------------------------------

    def _changed(self) -> None:
        """Wake ``wait_for_change``; called with the lock held."""
        self._generation += 1
        self._cond.notify_all()

    def wait_for_change(self, timeout: float) -> bool:
        """Block until a lease is released or a status or membership changes; False on timeout."""
        with self._cond:
            generation = self._generation
            return self._cond.wait_for(lambda: self._generation != generation, timeout)

    def subscribe(self, callback: Callable[[PoolEvent], None]) -> Callable[[], None]:
        """Call ``callback(PoolEvent)`` on a worker thread for every event; returns unsubscribe."""
        return self._events.subscribers.subscribe(callback)

    def _on_server_change(self, server: ComfyUIServer, old: ServerState, new: ServerState) -> None:
        with self._cond:
            if self._servers.get(server.name) is not server:
                return
            self._changed()
        if old is new:
            return
        ready = (ServerState.ONLINE, ServerState.BUSY)
        if new is ServerState.OFFLINE:
            kind = "offline"
        elif new in ready and old not in ready and old is not ServerState.DISABLED:
            kind = "online"
        else:
            kind = "changed"
        self._events.emit(PoolEvent(kind, server.name))

    # -- monitor -------------------------------------------------------------------------

    def _schedule(self, name: str, due: float) -> None:
        """Plan the next probe of ``name`` (lock held); an earlier plan wins."""
        current = self._due_at.get(name)
        if current is not None and current <= due:
            return
        self._due_at[name] = due
        heapq.heappush(self._due, (due, next(self._seq), name))
        self._cond.notify_all()

    def _request_probe(self, server: ComfyUIServer) -> None:
        with self._cond:
            if self._servers.get(server.name) is server and server.name not in self._probing:
                self._schedule(server.name, self._clock())

    def _ensure_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self._workers,
                                                    thread_name_prefix="comfy-cluster-probe")
            return self._executor

    def start(self) -> ComfyUIServerPool:
        """Start the background monitor (idempotent)."""
        executor = self._ensure_executor()
        with self._cond:
            if self._monitor is not None:
                return self
            self._stopping.clear()
            self._executor = executor
            now = self._clock()
            for name in self._servers:
                if name not in self._due_at:
                    self._schedule(name, now)
            self._monitor = threading.Thread(target=self._monitor_loop, name="comfy-cluster-monitor", daemon=True)
            self._monitor.start()
        if self.runpod is not None:
            self.runpod.start()
        if self.autoscaler is not None:
            self.autoscaler.start()
        return self

    def stop(self) -> None:
        """Stop the monitor and the event thread; the cache keeps its last values."""
        with self._cond:
            monitor, self._monitor = self._monitor, None
            executor, self._executor = self._executor, None
            self._stopping.set()
            self._cond.notify_all()
        if monitor is not None:
            monitor.join(timeout=10)
        if executor is not None:
            executor.shutdown(wait=True)
        if self.runpod is not None:
            self.runpod.stop()
        if self.autoscaler is not None:
            self.autoscaler.stop()
        self._events.stop()

    def close(self) -> None:
        """Stop monitoring and close every server's connections."""
        self.stop()
        for server in self.servers:
            server.close()

    def __enter__(self) -> ComfyUIServerPool:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _monitor_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping.is_set():
                    now = self._clock()
                    if self._due and self._due[0][0] <= now:
                        break
                    timeout = self._due[0][0] - now if self._due else None
                    if self._watcher is not None:
                        timeout = self.poll_interval if timeout is None else min(timeout, self.poll_interval)
                    self._cond.wait(timeout)
                    if self._watcher is not None:
                        break
                if self._stopping.is_set():
                    return
                batch = []
                now = self._clock()
                while self._due and self._due[0][0] <= now:
                    due, _, name = heapq.heappop(self._due)
                    if self._due_at.get(name) != due or name in self._probing or name not in self._servers:
                        continue
                    del self._due_at[name]
                    self._probing.add(name)
                    batch.append(self._servers[name])
                executor = self._executor
            if executor is None:
                return
            if self._watcher is not None and self._watcher.changed():
                executor.submit(self._reload_edited_file)
            for server in batch:
                executor.submit(self._probe_and_reschedule, server)

    def _reload_edited_file(self) -> None:
        """The servers file changed on disk (the editor, the panel, by hand): take it in."""
        try:
            self.load_configuration()
        except ComfyClusterError as err:  # a hand edit gone wrong keeps the running servers
            log.warning("servers file %s changed but cannot be used, keeping the current servers: %s",
                        self.config_path, err)
        else:
            log.info("servers file %s changed: configuration reloaded", self.config_path)

    def _probe_and_reschedule(self, server: ComfyUIServer) -> None:
        started = self._clock()
        try:
            server.update_status()
        except Exception:  # a bug in one probe must not end monitoring of that server
            log.exception("server %r: status probe failed unexpectedly", server.name)
        with self._cond:
            self._probing.discard(server.name)
            if self._servers.get(server.name) is server and not self._stopping.is_set():
                self._schedule(server.name, max(self._clock(), started + server.next_probe_delay()))

    def update_all_server_status(self) -> tuple[ServerStatus, ...]:
        """Probe every server now, in parallel on the probe threads, and wait for all of them."""
        executor = self._ensure_executor()
        futures = [executor.submit(server.update_status) for server in self.servers]
        wait(futures)
        return tuple(f.result() for f in futures)

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self) -> PoolSnapshot:
        """A frozen, JSON-able picture of the pool; never touches the network."""
        with self._lock:
            statuses = tuple(s.get_status() for s in self._servers.values())
        runpod = self.runpod.get_status().to_dict() if self.runpod is not None else None
        pods = tuple(self.autoscaler.rows()) if self.autoscaler is not None else ()
        return PoolSnapshot(servers=statuses, strategy=self.strategy, poll_interval=self.poll_interval,
                            client_id=self.client_id, runpod=runpod, pods=pods)

    def __repr__(self) -> str:
        return f"ComfyUIServerPool({len(self._servers)} servers, strategy={self.strategy.value!r})"
