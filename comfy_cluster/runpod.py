"""RunPod serverless as a backend: the overflow tier beside the local ComfyUI servers.

A ``RunPodEndpoint`` runs a prompt on a worker-comfyui endpoint: the input frames go
base64 in the ``/run`` payload, ``/status`` is polled with a backoff that grows from
``status_poll_min`` to ``status_poll_max`` (a 2 s job is seen in well under a second, a
ten-minute job costs a bounded number of polls), and the outputs come back base64 (or as
presigned S3 URLs) in either worker-comfyui format.

Policy lives here too: the pool asks ``should_take()`` (offline burst, predicted local
wait over ``overflow_after_s``) and ``has_free_slot()`` (``max_concurrent`` and the daily
budget). Every billed job is written to the ``CostLedger`` so the budget holds across
restarts.

The API key is read once, from ``environ[config.api_key_env]``, into the session's
``Authorization`` header; no message, log line or repr contains it.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import requests

from .backend import EventCallback, OutputRef, PromptRequest, PromptResult, ServerState
from .bucket import MAX_URL_OUTPUT_BYTES, download_url
from .config import RunPodConfig
from .errors import (
    BudgetExceeded,
    Cancelled,
    ExecutionFailed,
    JobTimeout,
    MissingNodes,
    ProtocolError,
    ServerTimeout,
    ServerUnavailable,
    Throttled,
    TransferError,
    WorkflowRejected,
)
from .ledger import CostLedger
from .runpod_payload import RUN_PAYLOAD_LIMIT, Payload, build_payload

log = logging.getLogger(__name__)

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ENDPOINT_ID_ENV = "RUNPOD_ENDPOINT_ID"
_MAX_RETRY_AFTER = 60.0


# --------------------------------------------------------------------------- HTTP

def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def send_with_retry(session: requests.Session, method: str, url: str, *, what: str, timeout: float,
                    json_body: Any = None, cancel: threading.Event | None = None, attempts: int = 5,
                    retry_connection: bool = True, server: str | None = None) -> requests.Response:
    """One RunPod call; 429 and 5xx are retried with exponential backoff honouring ``Retry-After``.

    Returns the last response (any status) for the caller to judge. A connection failure is
    retried only when ``retry_connection`` (never for ``/run``: it may have landed) and ends
    as ``ServerUnavailable``/``ServerTimeout`` naming ``what``. ``cancel`` cuts a wait short.
    """
    waiter = cancel or threading.Event()
    attempt = 0
    while True:
        attempt += 1
        last = attempt >= attempts
        try:
            resp = session.request(method, url, json=json_body, timeout=(3.05, timeout))
        except requests.Timeout as err:
            if not retry_connection or last:
                raise ServerTimeout(f"{what} timed out after {timeout:g} s", server=server) from err
            delay = min(0.5 * 2 ** (attempt - 1), 8.0)
        except requests.RequestException as err:
            if not retry_connection or last:
                raise ServerUnavailable(f"{what} failed: {type(err).__name__}", server=server) from err
            delay = min(0.5 * 2 ** (attempt - 1), 8.0)
        else:
            if resp.status_code not in RETRY_STATUSES or last:
                return resp
            hinted = retry_after_seconds(resp.headers.get("Retry-After"))
            delay = min(hinted, _MAX_RETRY_AFTER) if hinted is not None else min(0.5 * 2 ** (attempt - 1), 8.0)
            log.info("%s: HTTP %s, retrying in %.1f s (attempt %d of %d)",
                     what, resp.status_code, delay, attempt + 1, attempts)
        if waiter.wait(delay):
            raise Cancelled(f"{what}: cancelled while waiting to retry", server=server)


def json_of(resp: requests.Response, what: str) -> Any:
    try:
        return resp.json()
    except ValueError as err:
        raise ProtocolError(f"{what}: HTTP {resp.status_code} with a body that is not JSON") from err


def auth_failure(resp: requests.Response, *, what: str, key_env: str) -> ServerUnavailable | None:
    """The clear message for 401/403: which variable holds the key that was refused."""
    if resp.status_code in (401, 403):
        return ServerUnavailable(f"{what}: HTTP {resp.status_code}, RunPod refused the API key; "
                                 f"check {key_env}")
    return None


# --------------------------------------------------------------------------- status

@dataclass(frozen=True)
class RunPodStatus:
    """A snapshot of the endpoint for the panel and the CLI (no secrets)."""

    name: str
    kind: str
    state: str
    endpoint_id: str
    workers: dict[str, int]
    jobs: dict[str, int]
    in_flight: int
    max_concurrent: int
    spend_today: float
    daily_budget: float | None
    seconds_per_job: float | None
    workers_min: int | None = None
    workers_max: int | None = None
    idle_timeout: int | None = None
    blocked_reason: str | None = None
    last_error: str | None = None
    last_status_check: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_WORKER_KEYS = ("idle", "running", "initializing", "throttled", "unhealthy", "ready")
_JOB_KEYS = ("inQueue", "inProgress", "completed", "failed")


def parse_health(body: Any) -> tuple[dict[str, int], dict[str, int]]:
    """``GET /health`` as (workers, jobs) counts; missing keys are 0, extra keys ignored."""
    def counts(section: Any, keys: tuple[str, ...]) -> dict[str, int]:
        section = section if isinstance(section, Mapping) else {}
        out = {}
        for key in keys:
            try:
                out[key] = int(section.get(key) or 0)
            except (TypeError, ValueError):
                out[key] = 0
        return out
    body = body if isinstance(body, Mapping) else {}
    return counts(body.get("workers"), _WORKER_KEYS), counts(body.get("jobs"), _JOB_KEYS)


# --------------------------------------------------------------------------- outputs

def _safe_filename(name: str, index: int, data_hint: bytes | None = None) -> str:
    base = os.path.basename(str(name).replace("\\", "/")).strip().lstrip(".")
    if base:
        return base
    ext = ".jpg" if data_hint and data_hint[:3] == b"\xff\xd8\xff" else ".png"
    return f"runpod_{index:04d}{ext}"


def _b64(data: str, what: str) -> bytes:
    if "," in data[:100] and data.startswith("data:"):
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as err:
        raise ProtocolError(f"{what}: output is not valid base64") from err


class RunPodEndpoint:
    """A RunPod serverless endpoint running worker-comfyui: a backend with kind ``"runpod"``."""

    kind = "runpod"

    def __init__(self, config: RunPodConfig, *, environ: Mapping[str, str] = os.environ,
                 ledger: CostLedger | None = None, session: requests.Session | None = None, name: str = "runpod",
                 priority: int = 100, poll_interval: float = 10.0, default_job_seconds: float = 60.0,
                 lossy_inputs: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 payload_limit: int = RUN_PAYLOAD_LIMIT) -> None:
        self.config = config
        self.name = name
        self.endpoint_id = config.endpoint_id
        self.key_env = config.api_key_env
        key = config.api_key(environ)
        self.base_url = config.base_url.replace("{endpoint_id}", self.endpoint_id).rstrip("/")
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.ledger = ledger if ledger is not None else CostLedger(environ=environ)
        self._priority = priority
        self.poll_interval = poll_interval
        self.default_job_seconds = default_job_seconds
        self.lossy_inputs = config.lossy_inputs if lossy_inputs is None else lossy_inputs
        self.payload_limit = payload_limit
        #: the largest output fetched from a bucket URL (worker-comfyui with BUCKET_ENDPOINT_URL)
        self.max_output_bytes = MAX_URL_OUTPUT_BYTES
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._wall_ewma: float | None = None
        self._exec_ewma: float | None = None
        self._workers = {k: 0 for k in _WORKER_KEYS}
        self._jobs = {k: 0 for k in _JOB_KEYS}
        self._healthy: bool | None = None
        self._last_error: str | None = None
        self._last_check: float | None = None
        self._settings: Any = None
        self._spend_cache: tuple[Any, float, float] | None = None   # (day, dollars, read at)
        self._last_reason: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RunPodEndpoint(name={self.name!r}, endpoint_id={self.endpoint_id!r}, base_url={self.base_url!r})"

    # ----------------------------------------------------------- the backend surface
    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def priority(self) -> int:
        return self._priority

    @property
    def max_concurrent(self) -> int:
        return self.config.max_concurrent

    @property
    def max_queue(self) -> int:
        return self.max_concurrent

    @property
    def overflow_after_s(self) -> float:
        return self.config.overflow_after_s

    @property
    def price_per_second(self) -> float:
        return self.config.price_per_second

    @property
    def daily_budget(self) -> float | None:
        return self.config.daily_budget

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def seconds_per_job(self) -> float | None:
        """Wall seconds per job (queue, cold start and run), as the pool's predictions need."""
        return self._wall_ewma

    @property
    def state(self) -> ServerState:
        """From the last ``/health``: offline until one answers; booting while workers only initialize."""
        if not self.enabled:
            return ServerState.DISABLED
        if not self._healthy:
            return ServerState.OFFLINE
        w = self._workers
        if w["initializing"] and not (w["ready"] or w["idle"] or w["running"]):
            return ServerState.BOOTING
        if self._in_flight >= self.max_concurrent:
            return ServerState.BUSY
        return ServerState.ONLINE

    def is_available(self, classes: frozenset[str] | None = None) -> bool:
        return self.state in (ServerState.ONLINE, ServerState.BOOTING) and self.has_free_slot()

    def for_gpu_class(self, gpu_class: str) -> RunPodEndpoint:
        """This endpoint when its ``gpu_class`` is ``gpu_class`` (``target="runpod:A100"``), else ValueError."""
        if (self.config.gpu_class or "").lower() != gpu_class.lower():
            raise ValueError(f"target 'runpod:{gpu_class}': no RunPod endpoint has gpu_class {gpu_class!r} "
                             f"(configured: {self.config.gpu_class or 'none'})")
        return self

    def missing_classes(self, classes: frozenset[str]) -> frozenset[str]:
        """RunPod does not list a worker's node classes; a missing one shows up as a failed job."""
        return frozenset()

    def predicted_finish(self, extra: int = 0) -> float:
        """Jobs run side by side up to ``max_concurrent``; each wave takes a job's wall time."""
        per_job = self._wall_ewma if self._wall_ewma is not None else self.default_job_seconds
        return per_job * math.ceil((self._in_flight + extra) / max(1, self.max_concurrent))

    def record_result(self, seconds: float | None, ok: bool) -> None:
        if ok and seconds is not None and seconds > 0:
            with self._lock:
                self._wall_ewma = seconds if self._wall_ewma is None else 0.7 * self._wall_ewma + 0.3 * seconds

    # ----------------------------------------------------------- policy
    def should_take(self, *, local_online: int, predicted_local_wait: float | None) -> bool:
        """Overflow rule: no local server online, or the local wait is unknown or over the threshold."""
        if not self.enabled or self.blocked_reason is not None:
            return False
        return local_online == 0 or predicted_local_wait is None or predicted_local_wait > self.overflow_after_s

    def has_free_slot(self) -> bool:
        return self.enabled and self._in_flight < self.max_concurrent and self.blocked_reason is None

    def estimated_job_cost(self) -> float:
        seconds = self._exec_ewma if self._exec_ewma is not None else self.default_job_seconds
        return seconds * self.price_per_second

    def spend_today(self) -> float:
        """Today's spend from the ledger, re-read at most every 5 s (another process may add to it)."""
        today = time.localtime()[:3]
        now = self._clock()
        cache = self._spend_cache
        if cache is None or cache[0] != today or now - cache[2] > 5.0:
            cache = (today, self.ledger.spend_today(), now)
            self._spend_cache = cache
        return cache[1]

    def _budget_reason(self) -> str | None:
        budget = self.daily_budget
        if budget is None:
            return None
        spent = self.spend_today()
        estimate = self.estimated_job_cost()
        committed = spent + self._in_flight * estimate
        if committed + estimate <= budget + 1e-12:
            return None
        running = f", {self._in_flight} job(s) running" if self._in_flight else ""
        return (f"daily budget ${budget:.2f} reached: ${spent:.2f} spent today{running}, "
                f"next job est. ${estimate:.2f}")

    @property
    def blocked_reason(self) -> str | None:
        """Why no more work goes to RunPod now, or None; logged when it starts and stops applying."""
        reason = self._budget_reason()
        if (reason is None) != (self._last_reason is None):
            if reason:
                log.warning("RunPod endpoint '%s': %s; the remaining frames go local or wait", self.name, reason)
            else:
                log.info("RunPod endpoint '%s': budget allows work again", self.name)
        self._last_reason = reason
        return reason

    # ----------------------------------------------------------- status cache
    def update_status(self) -> RunPodStatus:
        """One ``GET /health``; a failure marks the endpoint offline with the reason."""
        what = f"RunPod endpoint '{self.name}': GET /health"
        try:
            resp = send_with_retry(self.session, "GET", f"{self.base_url}/health", what=what, timeout=10.0,
                                   attempts=2, server=self.name)
            self._check_response(resp, what)
            workers, jobs = parse_health(json_of(resp, what))
        except (ServerUnavailable, Cancelled) as err:
            if self._healthy is not False or self._last_error != str(err):
                log.warning("%s", err)
            self._healthy, self._last_error = False, str(err)
        else:
            if self._healthy is False:
                log.info("RunPod endpoint '%s' answers again", self.name)
            self._workers, self._jobs, self._healthy, self._last_error = workers, jobs, True, None
        self._last_check = time.time()
        return self.get_status()

    def set_endpoint_settings(self, settings: Any) -> None:
        """Hand in ``EndpointSettings`` read by ``RunPodAdmin`` so the status shows them."""
        self._settings = settings

    def get_status(self, refresh: bool = False) -> RunPodStatus:
        if refresh:
            return self.update_status()
        s = self._settings
        return RunPodStatus(
            name=self.name, kind=self.kind, state=self.state.value, endpoint_id=self.endpoint_id,
            workers=dict(self._workers), jobs=dict(self._jobs), in_flight=self._in_flight,
            max_concurrent=self.max_concurrent, spend_today=self.spend_today(), daily_budget=self.daily_budget,
            seconds_per_job=self._wall_ewma,
            workers_min=getattr(s, "workers_min", None), workers_max=getattr(s, "workers_max", None),
            idle_timeout=getattr(s, "idle_timeout", None), blocked_reason=self.blocked_reason,
            last_error=self._last_error, last_status_check=self._last_check)

    def start(self) -> RunPodEndpoint:
        """Start the monitor thread (first check at once); idempotent."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._monitor, name=f"runpod-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def _monitor(self) -> None:
        while not self._stop.is_set():
            self.update_status()
            self._stop.wait(self.poll_interval)

    # ----------------------------------------------------------- HTTP
    def _check_response(self, resp: requests.Response, what: str, *, job_id: str | None = None) -> None:
        failure = auth_failure(resp, what=what, key_env=self.key_env)
        if failure is not None:
            raise failure
        if resp.status_code == 404:
            if job_id:
                raise ServerUnavailable(f"{what}: RunPod no longer knows job {job_id} (HTTP 404: its result "
                                        f"expired or its TTL passed)", server=self.name)
            raise ServerUnavailable(f"{what}: HTTP 404, RunPod endpoint '{self.endpoint_id}' not found at "
                                    f"{self.base_url}; check {ENDPOINT_ID_ENV}", server=self.name)
        if resp.status_code == 429:
            raise Throttled(f"{what}: still rate limited (HTTP 429) after retries", server=self.name)
        if resp.status_code >= 400:
            raise ServerUnavailable(f"{what}: HTTP {resp.status_code} {resp.text[:200]!r}", server=self.name)

    def _call(self, method: str, path: str, *, body: Any = None, cancel: threading.Event | None = None,
              job_id: str | None = None, retry_connection: bool = True, timeout: float = 30.0,
              attempts: int = 5) -> dict[str, Any]:
        what = f"RunPod endpoint '{self.name}': {method} {path}"
        resp = send_with_retry(self.session, method, self.base_url + path, what=what, timeout=timeout,
                               json_body=body, cancel=cancel, retry_connection=retry_connection, server=self.name,
                               attempts=attempts)
        self._check_response(resp, what, job_id=job_id)
        data = json_of(resp, what)
        if not isinstance(data, dict):
            raise ProtocolError(f"{what}: expected a JSON object", server=self.name)
        return data

    # ----------------------------------------------------------- running a prompt
    def run_prompt(self, request: PromptRequest, *, on_event: EventCallback, cancel: threading.Event,
                   batch_id: str | None = None, submit_attempts: int = 5) -> PromptResult:
        """Run ``request`` on the endpoint. The ledger's batch is ``batch_id``, else
        ``request.batch_id``, else ``request.label``.

        Raises ``BudgetExceeded`` (nothing sent, safe to run elsewhere)
        when this job would pass the daily budget.
        """
        if not self.enabled:
            raise ServerUnavailable(f"RunPod endpoint '{self.name}' is disabled", server=self.name,
                                    prompt_id=request.prompt_id)
        payload = build_payload(request, server=self.name, limit=self.payload_limit, lossy_ok=self.lossy_inputs)
        with self._lock:
            reason = self.blocked_reason
            if reason:
                raise BudgetExceeded(f"RunPod endpoint '{self.name}': {reason}", server=self.name,
                                    prompt_id=request.prompt_id)
            self._in_flight += 1
        batch = batch_id if batch_id is not None else (request.batch_id or request.label)
        try:
            return self._run(request, payload, on_event=on_event, cancel=cancel, batch=batch,
                             submit_attempts=submit_attempts)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _run(self, request: PromptRequest, payload: Payload, *, on_event: EventCallback,
             cancel: threading.Event, batch: str, submit_attempts: int = 5) -> PromptResult:
        start = self._clock()
        deadline = start + request.timeout
        label = request.label or request.prompt_id
        submitted = self._call("POST", "/run", body=payload.body, cancel=cancel, retry_connection=False,
                               timeout=120.0, attempts=submit_attempts)
        job_id = str(submitted.get("id") or "")
        if not job_id:
            raise ProtocolError(f"RunPod endpoint '{self.name}': POST /run answered without a job id",
                                server=self.name, prompt_id=request.prompt_id)
        log.info("RunPod endpoint '%s': %s submitted as job %s (%.1f MB)", self.name, label, job_id,
                 payload.size / 1e6)
        on_event("submitted", {"backend": self.name, "prompt_id": request.prompt_id, "job_id": job_id})
        interval, poll_max = self.config.status_poll_min, self.config.status_poll_max
        started = False
        while True:
            if cancel.wait(max(0.0, min(interval, deadline - self._clock()))):
                self._abandon(job_id, request, batch)
                raise Cancelled(f"RunPod job {job_id} ({label}) cancelled", server=self.name,
                                prompt_id=request.prompt_id)
            if self._clock() >= deadline:
                self._abandon(job_id, request, batch)
                raise JobTimeout(f"RunPod endpoint '{self.name}': job {job_id} ({label}) did not finish in "
                                 f"{request.timeout:g} s; cancelled it", server=self.name,
                                 prompt_id=request.prompt_id)
            try:
                status = self._call("GET", f"/status/{job_id}", cancel=cancel, job_id=job_id)
            except Cancelled:
                self._abandon(job_id, request, batch)
                raise
            state = str(status.get("status", ""))
            if state in ("IN_PROGRESS", "RUNNING") and not started:
                started = True
                on_event("started", {"job_id": job_id})
            if state in TERMINAL:
                break
            interval = min(interval * 1.5, poll_max)
        cost = self._bill(status, request, batch)
        return self._finish(status, request, cost=cost, elapsed=self._clock() - start)

    def _abandon(self, job_id: str, request: PromptRequest, batch: str) -> None:
        """POST /cancel, then bill whatever the job ran for (best effort: we are leaving anyway)."""
        try:
            self._call("POST", f"/cancel/{job_id}", job_id=job_id, timeout=10.0)
            final = self._call("GET", f"/status/{job_id}", job_id=job_id, timeout=10.0)
        except (ServerUnavailable, Cancelled) as err:
            log.warning("RunPod endpoint '%s': could not cancel job %s: %s", self.name, job_id, err)
            return
        self._bill(final, request, batch)

    def _bill(self, status: Mapping[str, Any], request: PromptRequest, batch: str) -> float:
        try:
            execution_ms = int(status.get("executionTime") or 0)
            delay_ms = int(status.get("delayTime") or 0)
        except (TypeError, ValueError):
            execution_ms = delay_ms = 0
        if execution_ms <= 0:
            return 0.0
        cost = execution_ms / 1000.0 * self.price_per_second
        self.ledger.record(endpoint=self.endpoint_id, job_id=str(status.get("id", "")),
                           prompt_id=request.prompt_id, batch=batch, label=request.label,
                           execution_ms=execution_ms, delay_ms=delay_ms, cost=cost,
                           status=str(status.get("status", "")))
        with self._lock:
            seconds = execution_ms / 1000.0
            self._exec_ewma = seconds if self._exec_ewma is None else 0.7 * self._exec_ewma + 0.3 * seconds
            if self._spend_cache is not None:
                day, spent, read_at = self._spend_cache
                self._spend_cache = (day, spent + cost, read_at)
        log.info("RunPod job %s: %.2f s billed ($%.4f), %.2f s queued/cold start (not billed)",
                 status.get("id"), execution_ms / 1000, cost, delay_ms / 1000)
        return cost

    def _finish(self, status: Mapping[str, Any], request: PromptRequest, *, cost: float,
                elapsed: float) -> PromptResult:
        job_id = str(status.get("id", ""))
        label = request.label or request.prompt_id
        state = str(status.get("status"))
        where = f"RunPod endpoint '{self.name}': job {job_id} ({label})"
        if state == "TIMED_OUT":
            raise JobTimeout(f"RunPod job {job_id} ({label}) timed out (TIMED_OUT)", server=self.name,
                             prompt_id=request.prompt_id)
        if state == "CANCELLED":
            raise Cancelled(f"RunPod job {job_id} ({label}) was cancelled on RunPod (CANCELLED)",
                            server=self.name, prompt_id=request.prompt_id)
        if state == "FAILED":
            raise _failure(where, status.get("error"), status.get("output"), server=self.name,
                           prompt_id=request.prompt_id)
        output = status.get("output")
        if isinstance(output, Mapping) and (output.get("status") == "error" or "error" in output):
            raise _failure(where, output.get("error") or output.get("message"), output, server=self.name,
                           prompt_id=request.prompt_id)
        outputs = self._outputs(output, where)
        return PromptResult(prompt_id=request.prompt_id, backend=self.name, outputs=outputs, elapsed=elapsed,
                            cost=cost)

    def _outputs(self, output: Any, where: str) -> list[OutputRef]:
        """Both worker-comfyui formats: ``images`` [{filename, type, data}] (>= 4.1) or ``message`` (older)."""
        if not isinstance(output, Mapping):
            raise ProtocolError(f"{where}: COMPLETED without an output object", server=self.name)
        refs: list[OutputRef] = []
        if isinstance(output.get("images"), list):
            for error in output.get("errors") or []:
                log.warning("%s: worker reported: %s", where, error)
            for index, item in enumerate(output["images"]):
                if not isinstance(item, Mapping) or not isinstance(item.get("data"), str):
                    raise ProtocolError(f"{where}: output image {index} has no data", server=self.name)
                kind = str(item.get("type", "base64"))
                refs.append(self._ref(str(item.get("filename", "")), index, item["data"], is_url=kind == "s3_url",
                                      where=where))
            return refs
        message = output.get("message")
        if isinstance(message, str) and message:
            is_url = message.startswith(("http://", "https://"))
            return [self._ref("", 0, message, is_url=is_url, where=where)]
        raise ProtocolError(f"{where}: COMPLETED output has neither 'images' nor 'message'", server=self.name)

    def _ref(self, filename: str, index: int, data: str, *, is_url: bool, where: str) -> OutputRef:
        if is_url:
            url = data
            name = _safe_filename(filename or url.split("?", 1)[0].rsplit("/", 1)[-1], index)

            def fetch(dest: Path) -> None:
                download_url(url, Path(dest), what=f"{where}: output {name}", limit=self.max_output_bytes,
                             server=self.name)
            return OutputRef(filename=name, node_id="", index=index, fetch=fetch)
        raw = _b64(data, where)
        name = _safe_filename(filename, index, raw)

        def write(dest: Path) -> None:
            try:
                Path(dest).write_bytes(raw)
            except OSError as err:
                raise TransferError(f"{where}: writing output {name} to {dest} failed: {err.strerror}",
                                    server=self.name) from err
        return OutputRef(filename=name, node_id="", index=index, fetch=write)


# worker-comfyui's text for ComfyUI's invalid_prompt 400: "<message>. Raw response: <body>".
_MISSING_NODE = re.compile(r"Cannot execute because node (.+?) does not exist\.")
# worker-comfyui's line for ComfyUI's execution_error (in ``details`` from 5.x).
_EXECUTION_ERROR = re.compile(r"Node Type: (.+?), Node ID: (.+?), Message: ")
_VALIDATION_MARKERS = ("validation", "value_not_in_list", "prompt_outputs_failed", "invalid prompt",
                       "required_input_missing")


def _failure(where: str, error: Any, output: Any, *, server: str,
             prompt_id: str) -> ExecutionFailed | WorkflowRejected | MissingNodes:
    """A FAILED job (or a COMPLETED one with ``status: "error"``) as our error.

    ``error`` is a plain message (the handler returned ``{"error": ...}``) or a JSON string
    with ``error_type``/``error_message`` (the handler raised).
    """
    error_type = None
    message = error
    if isinstance(error, str) and error.strip().startswith("{"):
        try:
            parsed = json.loads(error)
        except ValueError:
            parsed = None
        if isinstance(parsed, Mapping):
            error_type = parsed.get("error_type")
            message = parsed.get("error_message") or error
    text = str(message if message not in (None, "") else "no error message")
    details = output.get("details") if isinstance(output, Mapping) else None
    if details:
        text += "; " + "; ".join(str(d) for d in details[:5])
    missing = _MISSING_NODE.search(text)
    if missing:
        return MissingNodes(f"{where}: the worker has no node class {missing.group(1)!r}",
                            missing={missing.group(1)}, server=server, prompt_id=prompt_id)
    if any(marker in text.lower() for marker in _VALIDATION_MARKERS):
        return WorkflowRejected(f"{where}: workflow rejected: {text}", error_type=error_type, server=server,
                                prompt_id=prompt_id)
    node = _EXECUTION_ERROR.search(text)
    return ExecutionFailed(f"{where} failed: {text}", node_type=node.group(1) if node else None,
                           node_id=node.group(2) if node else None, exception_type=error_type,
                           exception_message=text, server=server, prompt_id=prompt_id)


def runpod_status_text(status: RunPodStatus, settings: Any = None) -> str:
    """The ``comfy-cluster runpod status`` text: state, workers, jobs, spend, always-on setting."""
    w, j = status.workers, status.jobs
    budget = f" of ${status.daily_budget:.2f}" if status.daily_budget is not None else " (no daily budget)"
    lines = [
        f"RunPod endpoint {status.endpoint_id} ({status.name}): {status.state}",
        f"  workers: {w.get('idle', 0)} idle, {w.get('running', 0)} running, {w.get('initializing', 0)} "
        f"initializing, {w.get('throttled', 0)} throttled, {w.get('unhealthy', 0)} unhealthy",
        f"  jobs: {j.get('inQueue', 0)} in queue, {j.get('inProgress', 0)} in progress; ours in flight "
        f"{status.in_flight}/{status.max_concurrent}",
        f"  spend today: ${status.spend_today:.4f}{budget}",
    ]
    s_min = getattr(settings, "workers_min", status.workers_min)
    if s_min is not None:
        s_max = getattr(settings, "workers_max", status.workers_max)
        idle = getattr(settings, "idle_timeout", status.idle_timeout)
        lines.append(f"  always-on worker: {'warm' if s_min >= 1 else 'cold'} (workersMin {s_min}, "
                     f"workersMax {s_max}, idleTimeout {idle} s)")
    if w.get("unhealthy") and j.get("inQueue"):
        lines.append("  warning: jobs wait while workers are unhealthy: the worker is crash-looping")
    if status.blocked_reason:
        lines.append(f"  blocked: {status.blocked_reason}")
    if status.last_error:
        lines.append(f"  last error: {status.last_error}")
    return "\n".join(lines)


__all__ = ["RunPodEndpoint", "RunPodStatus", "parse_health", "runpod_status_text", "send_with_retry",
           "retry_after_seconds"]
