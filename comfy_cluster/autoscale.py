"""The elastic pod tier: rent RunPod pods when the queue is long, give them back when idle.

Order of preference for a frame: the local servers, then serverless for a short burst,
then on-demand pods when the work left makes them cheaper. A pod bills by the hour from
the moment it runs, boots for minutes before it renders anything, and idles ``idle_s``
before we let it go; a serverless worker bills only the seconds it renders. So a pod pays
off only when it will render enough frames.

**Break-even.** With ``s`` the measured seconds per frame, ``P`` the pod's price per second
(``$/h / 3600``), ``B`` its boot time (measured on the last pod, else ``boot_estimate_s``),
``I`` the idle time before scale-down and ``S`` the serverless price per second, a pod that
renders ``n`` frames costs ``P * (B + n*s + I)``, serverless ``S * n*s``. The pod is cheaper
when ``n > P * (B + I) / (s * (S - P))`` (never, when ``S <= P``). ``n`` is estimated as the
frames the pod can render before the queue would drain: ``(W - B) / s`` with ``W`` the
predicted wait of the queued frames over the servers we have plus this pod. Without a
serverless endpoint a pod is rented whenever it would arrive before the queue drains.

**Scale-up** when the predicted wait ``remaining * s / servers`` passes ``scale_up_wait_s``,
up to ``max_pods``, trying ``gpu_types`` in order (a create places exactly one type: no
capacity falls to the next, and when none has capacity the frames stay on local servers
and serverless). **Scale-down**: a pod with none of our frames for ``idle_s`` is drained
(disabled in the pool: no new frames, its own finish) and terminated; so is one past
``max_lifetime_s``, one that never answers within ``boot_timeout_s``, and every pod once
today's spend (ledger + running pods) reaches the daily budget. A pod that dies is removed;
its frames are retried elsewhere by the batch.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping
from urllib.parse import urlsplit

from .backend import ServerState
from .config import ServerConfig
from .errors import ComfyClusterError
from .ledger import CostLedger
from .pod_policy import PodsPolicy
from .pod_registry import PodRegistry, pod_cost, reap, record_pod_cost
from .pods import InsufficientBalance, NoCapacity, PodInfo, PodsClient

log = logging.getLogger(__name__)

_READY = (ServerState.ONLINE, ServerState.BUSY)
_DEAD = ("EXITED", "TERMINATED", "ERROR")


def pods_break_even(*, seconds_per_frame: float, pod_per_hour: float, boot_s: float, idle_s: float,
                    serverless_per_s: float) -> float:
    """Frames a pod must render to cost less than serverless (``inf`` when it never does).

    >>> round(pods_break_even(seconds_per_frame=10, pod_per_hour=0.69, boot_s=300, idle_s=300,
    ...                       serverless_per_s=0.00044), 1)
    46.3
    """
    pod_per_s = pod_per_hour / 3600
    if serverless_per_s <= pod_per_s or seconds_per_frame <= 0:
        return math.inf
    return pod_per_s * (boot_s + idle_s) / (seconds_per_frame * (serverless_per_s - pod_per_s))


@dataclass
class ManagedPod:
    """A pod this autoscaler runs: its pool server has the pod's tagged name."""

    name: str
    pod_id: str
    gpu_type: str
    cost_per_hr: float
    created: float          # wall clock
    spawned: float          # monotonic
    batch: str = ""
    state: str = "booting"  # booting, serving, draining
    last_busy: float = 0.0
    started_at: float | None = None
    adopted: bool = False   # taken over from a client that is gone (or spawned by ``pods spawn``)
    used: bool = False      # rendered a frame of ours

    def cost(self, now: float) -> float:
        start = self.started_at or self.created
        return max(0.0, now - start) * self.cost_per_hr / 3600


class Autoscaler:
    """Watches the pool and its batches on one thread and rents or returns pods."""

    def __init__(self, pool: Any, policy: PodsPolicy, *, client: PodsClient | None = None,
                 registry: PodRegistry | None = None, ledger: CostLedger | None = None,
                 environ: Mapping[str, str] = os.environ, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.policy = policy
        self.client = client or PodsClient(policy, environ=environ)
        self.registry = registry or PodRegistry(environ=environ)
        runpod = getattr(pool, "runpod", None)
        self.ledger = ledger or getattr(runpod, "ledger", None) or CostLedger(environ=environ)
        self.owner = f"autoscaler-{uuid.uuid4().hex[:10]}"
        self._clock, self._wall = clock, wall
        self._lock = threading.RLock()
        self._pods: dict[str, ManagedPod] = {}
        self._batches: weakref.WeakSet[Any] = weakref.WeakSet()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._boot_measured: float | None = None
        self._no_capacity_until = 0.0
        self._prices: dict[str, float] = {}
        self.blocked_reason: str | None = None
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"Autoscaler({len(self._pods)} pod(s), max {self.policy.max_pods})"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Autoscaler:
        """On a daemon thread: adopt our pods nobody runs any more, then decide every ``tick_s``."""
        with self._lock:
            if self._thread is not None:
                return self
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="comfy-cluster-autoscaler", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, terminate: bool = True) -> None:
        """End the thread; with ``terminate`` (the default) every pod we run is terminated.

        An adopted pod this client never used is handed back instead (its record loses its
        owner): a short-lived ``comfy-cluster status`` must not end a pod spawned for the
        next render; ``pods reap`` or the next client still ends it.
        """
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)
        if terminate:
            for pod in self.pods():
                if pod.adopted and not pod.used:
                    self._release(pod)
                else:
                    self._terminate(pod.name, "the client is closing")
        self.registry.retire_owner(self.owner)

    def watch(self, batch: Any) -> None:
        """Plan for ``batch``'s frames (anything with ``progress`` -> (done, failed, total) and ``done``)."""
        self._batches.add(batch)

    def _run(self) -> None:
        adopted = False
        delay = 0.0
        while not self._stop.wait(delay):
            delay = self.policy.tick_s
            try:
                if not adopted:
                    self.registry.heartbeat(self.owner)
                    self._adopt()
                    adopted = True
                self.tick()
            except ComfyClusterError as err:   # RunPod unreachable for a moment: try again next tick
                self.last_error = str(err)
                log.warning("autoscaler: %s", err)
            except Exception:   # a bug must not end the thread that stops the billing
                log.exception("autoscaler: tick failed")

    # ------------------------------------------------------------------ reading
    def pods(self) -> list[ManagedPod]:
        with self._lock:
            return list(self._pods.values())

    def rows(self) -> list[dict[str, Any]]:
        """Pod rows for ``status`` and the panel: GPU, $/h, uptime, cost so far, state."""
        now = self._wall()
        return [{"name": p.name, "pod_id": p.pod_id, "gpu": p.gpu_type, "cost_per_hr": p.cost_per_hr,
                 "uptime_s": max(0.0, now - (p.started_at or p.created)), "cost": round(p.cost(now), 4),
                 "state": p.state} for p in self.pods()]

    def spend_today(self) -> float:
        """The ledger's spend today plus what our running pods have cost so far."""
        now = self._wall()
        return self.ledger.spend_today() + sum(p.cost(now) for p in self.pods())

    @property
    def daily_budget(self) -> float | None:
        if self.policy.daily_budget is not None:
            return self.policy.daily_budget
        runpod = getattr(self.pool, "runpod", None)
        return getattr(runpod, "daily_budget", None)

    def _remaining(self) -> tuple[int, str]:
        """Frames still to render over the watched batches, and the id of one of them."""
        left, batch_id = 0, ""
        for batch in list(self._batches):
            if batch.done:
                continue
            done, failed, total = batch.progress
            left += max(0, total - done - failed)
            batch_id = batch_id or str(getattr(batch, "batch_id", ""))
        return left, batch_id

    # ------------------------------------------------------------------ the decision
    def tick(self) -> None:
        """One round: heartbeat, follow the pods, scale down, then maybe scale up."""
        self.registry.heartbeat(self.owner)
        now = self._clock()
        for pod in self.pods():
            self._follow(pod, now)
        budget = self.daily_budget
        over = budget is not None and self.spend_today() >= budget
        self.blocked_reason = f"daily budget ${budget:.2f} reached" if over else None
        for pod in self.pods():
            age = self._wall() - pod.created
            if over:
                self._drain(pod, "the daily budget is reached")
            elif age > self.policy.max_lifetime_s:
                self._drain(pod, f"past the lifetime cap of {self.policy.max_lifetime_s:g} s")
            elif pod.state == "serving" and now - pod.last_busy >= self.policy.idle_s:
                self._drain(pod, f"idle for {self.policy.idle_s:g} s")
            if pod.state == "draining":
                server = self.pool.get_server_by_name(pod.name)
                if server is None or server.in_flight == 0:
                    self._terminate(pod.name, "drained")
        if not over and self.policy.enabled:
            self._scale_up(now)

    def _follow(self, pod: ManagedPod, now: float) -> None:
        info = self.client.get(pod.pod_id)
        if info is None or info.status in _DEAD:
            log.warning("RunPod pods: %s (%s) is %s: removing it; its frames go elsewhere", pod.name, pod.pod_id,
                        "gone" if info is None else info.status)
            self._terminate(pod.name, "the pod died", info=info)
            return
        pod.started_at = info.started_at or pod.started_at
        server = self.pool.get_server_by_name(pod.name)
        if server is None:
            return
        if server.in_flight > 0 or server.queue_running + server.queue_pending > 0:
            pod.last_busy = now
        pod.used = pod.used or server.in_flight > 0 or server.jobs_done > 0
        if pod.state == "booting":
            if server.state in _READY:
                pod.state, pod.last_busy = "serving", now
                self._boot_measured = now - pod.spawned
                log.info("RunPod pods: %s joined the pool after %.0f s", pod.name, self._boot_measured)
            elif now - pod.spawned > self.policy.boot_timeout_s:
                self._terminate(pod.name, f"its ComfyUI did not answer within {self.policy.boot_timeout_s:g} s")
                self._no_capacity_until = now + 6 * self.policy.tick_s   # no rent-fail-rent loop

    def _scale_up(self, now: float) -> None:
        remaining, batch_id = self._remaining()
        if remaining == 0:
            return
        servers = [s for s in self.pool.servers if s.enabled and s.state in _READY]
        measured = [s.seconds_per_job for s in servers if s.seconds_per_job is not None]
        if not measured:
            return      # no frame measured yet: nothing to predict from
        seconds = sum(measured) / len(measured)
        live = [p for p in self.pods() if p.state != "draining"]
        count = len({s.name for s in servers} | {p.name for p in live})
        while len(live) < self.policy.max_pods and now >= self._no_capacity_until:
            wait = remaining * seconds / max(1, count)
            if wait <= self.policy.scale_up_wait_s or not self._pods_pay_off(remaining, seconds, count):
                return
            pod = self._spawn(batch_id)
            if pod is None:
                return
            live.append(pod)
            count += 1

    def _pods_pay_off(self, remaining: int, seconds: float, servers: int) -> bool:
        boot = self._boot_measured if self._boot_measured is not None else self.policy.boot_estimate_s
        wait_with_pod = remaining * seconds / (servers + 1)
        frames_on_pod = (wait_with_pod - boot) / seconds
        if frames_on_pod <= 0:
            return False    # the queue drains before a pod could boot
        runpod = getattr(self.pool, "runpod", None)
        if runpod is None or not getattr(runpod, "enabled", False):
            return True
        price = self._price(self.policy.gpu_types[0])
        if price is None:
            return True
        needed = pods_break_even(seconds_per_frame=seconds, pod_per_hour=price, boot_s=boot,
                                 idle_s=self.policy.idle_s, serverless_per_s=runpod.price_per_second)
        return frames_on_pod > needed

    def _price(self, gpu_type: str) -> float | None:
        if gpu_type not in self._prices:
            price = self.client.price_per_hour(gpu_type)
            if price is None:
                return None
            self._prices[gpu_type] = price
        return self._prices[gpu_type]

    # ------------------------------------------------------------------ acting
    def spawn(self, gpu_types: list[str] | None = None, batch: str = "") -> ManagedPod | None:
        """Rent one pod now (the first GPU type with capacity); None when none has any."""
        return self._spawn(batch, gpu_types)

    def _spawn(self, batch: str, gpu_types: list[str] | None = None) -> ManagedPod | None:
        tried = []
        for gpu in gpu_types or self.policy.gpu_types:
            name = self.registry.intend(self.policy, self.owner, gpu, batch)
            try:
                info = self.client.create(name, gpu)
            except NoCapacity as err:
                self.registry.forget(name)
                tried.append(gpu)
                log.info("RunPod pods: %s", err)
                continue
            except InsufficientBalance as err:
                self.registry.forget(name)
                self.blocked_reason = str(err)
                self._no_capacity_until = self._clock() + 10 * self.policy.tick_s
                log.warning("%s", err)
                return None
            except BaseException:
                self.registry.forget(name)
                raise
            self.registry.bind(name, info)
            return self._join(name, info, batch)
        self._no_capacity_until = self._clock() + 6 * self.policy.tick_s
        log.warning("RunPod pods: no capacity for %s: frames stay on the local servers and serverless",
                    ", ".join(tried))
        return None

    def _join(self, name: str, info: PodInfo, batch: str) -> ManagedPod:
        now = self._clock()
        pod = ManagedPod(name=name, pod_id=info.id, gpu_type=info.gpu_type, cost_per_hr=info.cost_per_hr,
                         created=info.created_at or self._wall(), spawned=now, batch=batch, last_busy=now,
                         started_at=info.started_at)
        with self._lock:
            self._pods[name] = pod
        if self.pool.get_server_by_name(name) is None:
            self.pool.add_server(self._server_config(name, info.id))
        log.info("RunPod pods: %s (%s, %s at $%.2f/h) is booting", name, info.id, info.gpu_type, info.cost_per_hr)
        return pod

    def _server_config(self, name: str, pod_id: str) -> ServerConfig:
        url = urlsplit(self.policy.pod_url(pod_id))
        scheme: Literal["http", "https"] = "https" if url.scheme == "https" else "http"
        return ServerConfig(name=name, ip=url.hostname or "", port=url.port or (443 if scheme == "https" else 80),
                            scheme=scheme, base_path=url.path or None, max_queue=self.policy.max_queue)

    def _drain(self, pod: ManagedPod, why: str) -> None:
        if pod.state == "draining":
            return
        pod.state = "draining"
        log.info("RunPod pods: draining %s: %s", pod.name, why)
        if self.pool.get_server_by_name(pod.name) is not None:
            self.pool.disable(pod.name)

    def _release(self, pod: ManagedPod) -> None:
        with self._lock:
            self._pods.pop(pod.name, None)
        if self.pool.get_server_by_name(pod.name) is not None:
            self.pool.remove_server(pod.name)
        self.registry.adopt(pod.name, f"released-by-{self.owner}")
        log.info("RunPod pods: handed back %s (%s), unused here", pod.name, pod.pod_id)

    def terminate(self, name: str) -> bool:
        """Terminate one of our pods now (its running frames go elsewhere)."""
        return self._terminate(name, "asked to")

    def _terminate(self, name: str, why: str, info: PodInfo | None = None) -> bool:
        with self._lock:
            pod = self._pods.pop(name, None)
        if pod is None:
            return False
        now = self._wall()
        if info is None or info.status != "TERMINATED":
            self.client.terminate(pod.pod_id)
        if self.pool.get_server_by_name(name) is not None:
            self.pool.remove_server(name)
        self.registry.forget(name)
        record_pod_cost(self.ledger, name=name, pod_id=pod.pod_id, gpu_type=pod.gpu_type, cost=pod.cost(now),
                        seconds=now - (pod.started_at or pod.created), batch=pod.batch)
        log.info("RunPod pods: terminated %s (%s): %s; cost $%.4f", name, pod.pod_id, why, pod.cost(now))
        return True

    def shutdown_all(self) -> list[str]:
        """Terminate every pod we own, from any client (``pods shutdown-all``)."""
        names = list(self._pods)
        for name in names:
            self._terminate(name, "shutdown-all")
        for result in reap(self.client, self.registry, ledger=self.ledger, everything=True):
            if result.action == "terminated":
                names.append(result.name)
        return names

    def _adopt(self) -> None:
        """Take over our pods whose client is gone; end the ones past the lifetime cap or stopped."""
        tag = self.registry.tag(self.policy)
        records = {r.name: r for r in self.registry.records()}
        orphaned = self.registry.orphans(self.policy.owner_timeout_s)
        for info in self.client.list_pods():
            record = records.get(info.name)
            if not (info.name.startswith(tag) or record is not None):
                continue
            if record is not None and info.name not in orphaned:
                continue        # a live client runs it
            age = self._wall() - (info.created_at or self._wall())
            if info.status in _DEAD or age > self.policy.max_lifetime_s:
                cost = pod_cost(info, record, self._wall())
                self.client.terminate(info.id)
                self.registry.forget(info.name)
                record_pod_cost(self.ledger, name=info.name, pod_id=info.id, gpu_type=info.gpu_type, cost=cost,
                                seconds=age, batch=record.batch if record else "")
                log.warning("RunPod pods: terminated orphan %s (%s, %s)", info.name, info.id, info.status)
                continue
            self.registry.adopt(info.name, self.owner, info)
            log.warning("RunPod pods: adopted %s (%s): its client is gone; it is drained after %g s idle",
                        info.name, info.id, self.policy.idle_s)
            self._join(info.name, info, record.batch if record else "").adopted = True


__all__ = ["Autoscaler", "ManagedPod", "pods_break_even"]
