"""Several RunPod endpoints (GPU types, prices) as one backend for the pool.

The pool sees one ``RunPodGroup`` where it saw one ``RunPodEndpoint``: its slots are the sum
of the endpoints' slots. A job goes to the first endpoint, in configured order, that has a
free slot and is not saturated (every worker throttled, or jobs queued with no idle
worker); a saturated endpoint is tried last. When an endpoint answers ``/run`` with 429
(``Throttled``), the job goes to the next one at once (one attempt, not the five-retry
back-off the last endpoint gets). ``target="runpod:A100"`` narrows the group to the
endpoints whose ``gpu_class`` is A100 (``for_gpu_class``). Every endpoint bills into the
shared ledger under its own endpoint id, so spend is tracked apart per endpoint and the
daily budget holds across all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any, Mapping

from .backend import EventCallback, PromptRequest, PromptResult, ServerState
from .config import RunPodConfig
from .errors import ServerUnavailable, Throttled
from .ledger import CostLedger
from .runpod import RunPodEndpoint, RunPodStatus

log = logging.getLogger(__name__)

#: Seconds a throttled endpoint is passed over while another one has room.
THROTTLE_COOLDOWN = 30.0


def runpod_backend(config: RunPodConfig, *, environ: Mapping[str, str] = os.environ,
                   **kw: Any) -> RunPodEndpoint | RunPodGroup:
    """One ``RunPodEndpoint`` for a single-endpoint config (as before), else a ``RunPodGroup``."""
    configs = config.endpoint_configs()
    if len(configs) == 1:
        return RunPodEndpoint(config, environ=environ, **kw)
    ledger = kw.pop("ledger", None) or CostLedger(environ=environ)
    endpoints = [RunPodEndpoint(cfg, environ=environ, ledger=ledger,
                                name="runpod" if i == 0 else f"runpod-{cfg.gpu_class or cfg.endpoint_id}", **kw)
                 for i, cfg in enumerate(configs)]
    return RunPodGroup(endpoints)


def _saturated(endpoint: RunPodEndpoint) -> bool:
    """From the last ``/health``: no worker can take a job now (throttled, or a queue and none idle)."""
    status = endpoint.get_status()
    w, j = status.workers, status.jobs
    free = w.get("idle", 0) + w.get("ready", 0)
    return (w.get("throttled", 0) > 0 and not free and not w.get("running", 0)) or (j.get("inQueue", 0) > 0
                                                                                    and not free)


class RunPodGroup:
    """RunPod endpoints tried in order; the backend surface of ``RunPodEndpoint``."""

    kind = "runpod"

    def __init__(self, endpoints: list[RunPodEndpoint], *, name: str = "runpod",
                 parent: RunPodGroup | None = None) -> None:
        if not endpoints:
            raise ValueError("a RunPod group needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.name = name
        self._parent = parent
        self._lock = threading.Lock()
        self._wall_ewma: float | None = None
        self._cooling: dict[str, float] = {}   # endpoint id -> monotonic time its 429 cool-down ends

    def __repr__(self) -> str:
        return f"RunPodGroup({[e.endpoint_id for e in self.endpoints]!r})"

    @property
    def primary(self) -> RunPodEndpoint:
        return self.endpoints[0]

    # the main endpoint's settings stand for the group (admin, status line, ledger, budget)
    @property
    def config(self) -> RunPodConfig:
        return self.primary.config

    @property
    def endpoint_id(self) -> str:
        return self.primary.endpoint_id

    @property
    def ledger(self) -> CostLedger:
        return self.primary.ledger

    @property
    def daily_budget(self) -> float | None:
        return self.primary.daily_budget

    @property
    def price_per_second(self) -> float:
        return self.primary.price_per_second

    @property
    def default_job_seconds(self) -> float:
        return self.primary.default_job_seconds

    @property
    def overflow_after_s(self) -> float:
        return self.primary.overflow_after_s

    @property
    def enabled(self) -> bool:
        return any(e.enabled for e in self.endpoints)

    @property
    def priority(self) -> int:
        return self.primary.priority

    @property
    def max_queue(self) -> int:
        return sum(e.max_queue for e in self.endpoints)

    max_concurrent = max_queue

    @property
    def in_flight(self) -> int:
        return sum(e.in_flight for e in self.endpoints)

    @property
    def seconds_per_job(self) -> float | None:
        root = self._parent or self
        return root._wall_ewma

    @property
    def state(self) -> ServerState:
        states = [e.state for e in self.endpoints]
        for wanted in (ServerState.ONLINE, ServerState.BOOTING, ServerState.BUSY, ServerState.OFFLINE):
            if wanted in states:
                return wanted
        return ServerState.DISABLED

    @property
    def blocked_reason(self) -> str | None:
        reasons = [e.blocked_reason for e in self.endpoints]
        return None if any(r is None for r in reasons) else reasons[0]

    def is_available(self, classes: frozenset[str] | None = None) -> bool:
        return any(e.is_available(classes) for e in self.endpoints)

    def missing_classes(self, classes: frozenset[str]) -> frozenset[str]:
        return frozenset()

    def _cool(self, endpoint: RunPodEndpoint) -> bool:
        """Throttled lately (a 429 on /run) or unreachable at the last /health."""
        root = self._parent or self
        return root._cooling.get(endpoint.endpoint_id, 0.0) > time.monotonic() or \
            endpoint.state is ServerState.OFFLINE

    def _free(self) -> list[RunPodEndpoint]:
        """Endpoints that can take a job now; throttled ones only when no other has a slot."""
        free = [e for e in self.endpoints if e.enabled and e.has_free_slot()]
        usable = [e for e in free if not self._cool(e)]
        if usable or any(not self._cool(e) and e.enabled for e in self.endpoints):
            return usable
        return free

    def has_free_slot(self) -> bool:
        return bool(self._free())

    def should_take(self, *, local_online: int, predicted_local_wait: float | None) -> bool:
        return any(e.should_take(local_online=local_online, predicted_local_wait=predicted_local_wait)
                   for e in self.endpoints)

    def predicted_finish(self, extra: int = 0) -> float:
        free = [e for e in self.endpoints if e.has_free_slot()] or self.endpoints
        return min(e.predicted_finish(extra) for e in free)

    def record_result(self, seconds: float | None, ok: bool) -> None:
        root = self._parent or self
        if ok and seconds is not None and seconds > 0:
            with root._lock:
                root._wall_ewma = seconds if root._wall_ewma is None else 0.7 * root._wall_ewma + 0.3 * seconds

    def estimated_job_cost(self) -> float:
        return self.primary.estimated_job_cost()

    def spend_today(self) -> float:
        return self.primary.spend_today()

    def for_gpu_class(self, gpu_class: str) -> RunPodGroup:
        """The endpoints of one GPU class (``target="runpod:A100"``); ValueError naming the known classes."""
        chosen = [e for e in self.endpoints if (e.config.gpu_class or "").lower() == gpu_class.lower()]
        if not chosen:
            known = ", ".join(sorted({e.config.gpu_class for e in self.endpoints if e.config.gpu_class})) or "none"
            raise ValueError(f"target 'runpod:{gpu_class}': no RunPod endpoint has gpu_class {gpu_class!r} "
                             f"(configured: {known})")
        return RunPodGroup(chosen, name=f"runpod:{gpu_class}", parent=self._parent or self)

    # -- status --------------------------------------------------------------------------
    def start(self) -> RunPodGroup:
        for endpoint in self.endpoints:
            endpoint.start()
        return self

    def stop(self) -> None:
        for endpoint in self.endpoints:
            endpoint.stop()

    def update_status(self) -> RunPodStatus:
        for endpoint in self.endpoints:
            endpoint.update_status()
        return self.get_status()

    def set_endpoint_settings(self, settings: Any) -> None:
        self.primary.set_endpoint_settings(settings)

    def get_status(self, refresh: bool = False) -> RunPodStatus:
        """The main endpoint's status with the group's state, slots and in-flight count."""
        if refresh:
            return self.update_status()
        return dataclasses.replace(self.primary.get_status(), name=self.name, state=self.state.value,
                                   in_flight=self.in_flight, max_concurrent=self.max_queue,
                                   seconds_per_job=self.seconds_per_job, blocked_reason=self.blocked_reason)

    # -- running -------------------------------------------------------------------------
    def _order(self) -> list[RunPodEndpoint]:
        return sorted(self._free(), key=_saturated)  # stable: configured order, saturated ones last

    def run_prompt(self, request: PromptRequest, *, on_event: EventCallback, cancel: threading.Event,
                   batch_id: str | None = None) -> PromptResult:
        """Run on the first endpoint that takes the job; a throttled one passes it to the next."""
        order = self._order()
        if not order:
            raise ServerUnavailable(f"RunPod: no endpoint of {self.name!r} has a free slot", server=self.name,
                                    prompt_id=request.prompt_id)
        last: Throttled | None = None
        for index, endpoint in enumerate(order):
            more = index < len(order) - 1
            try:
                return endpoint.run_prompt(request, on_event=on_event, cancel=cancel, batch_id=batch_id,
                                           submit_attempts=1 if more else 5)
            except Throttled as err:
                root = self._parent or self
                root._cooling[endpoint.endpoint_id] = time.monotonic() + THROTTLE_COOLDOWN
                log.info("RunPod endpoint '%s' is throttled (%s)%s", endpoint.name, err,
                         f"; trying '{order[index + 1].name}'" if more else "")
                last = err
        assert last is not None
        raise last


__all__ = ["RunPodGroup", "runpod_backend"]
