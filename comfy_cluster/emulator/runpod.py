"""A RunPod-compatible serverless endpoint for tests and the demo, over real HTTP.

It serves the job API (``/v2/{id}/run``, ``/runsync``, ``/status``, ``/cancel``,
``/health``, ``/purge-queue``, ``/retry``) and the three endpoint-admin APIs (REST v2
``/v2/serverless/{id}``, REST v1 ``/v1/endpoints/{id}``, GraphQL ``/graphql`` whose
``saveEndpoint`` replaces the whole record, the documented pitfall). Jobs run through a
worker-comfyui-compatible handler against emulated ComfyUI servers: the ``images`` are
uploaded with ``/upload/image``, the workflow is queued with ``/prompt``, ``/history`` is
polled and the outputs are read with ``/view``, so the pixels are ComfyUI's arithmetic.

With ``external_workers=True`` it runs no handler of its own: real worker processes (the
real worker-comfyui ``handler.py`` on the runpod SDK's loop) take the jobs through RunPod's
worker-facing API (``runpod_worker.py``; ``worker_env(worker_id)`` gives their variables).

Knobs (``RunPodEmulator.set(...)`` or ``POST /_emulator/knobs``) play RunPod's behaviour:
cold starts, N workers and queueing, FAILED jobs, 429s with ``Retry-After``, TIMED_OUT,
the payload limits, result retention, and the worker-comfyui output format (5.x
``images`` or the older ``message``).

``python -m comfy_cluster.emulator.runpod --port 8000 --workers 2`` runs it as a process;
the API key it accepts is read from ``$RUNPOD_API_KEY`` (``--api-key-env``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from . import worker_comfyui
from .runpod_worker import WorkerAPI

log = logging.getLogger(__name__)

RUN_LIMIT = 10_000_000
RUNSYNC_LIMIT = 20_000_000
ADMIN_APIS = ("v2", "v1", "graphql")

#: What saveEndpoint resets an omitted field to (measured values, runpod_api.md §2.1).
GRAPHQL_DEFAULTS: dict[str, Any] = {
    "gpuIds": "AMPERE_16", "gpuCount": 1, "idleTimeout": 10, "locations": None, "networkVolumeId": None,
    "networkVolumeIds": [], "scalerType": "QUEUE_DELAY", "scalerValue": 4, "type": "QB", "workersMin": 0,
    "workersMax": 3, "workersStandby": 1, "executionTimeoutMs": 600_000, "flashBootType": "OFF",
    "instanceIds": None,
}
#: Fields that survive a saveEndpoint that omits them.
GRAPHQL_KEPT = ("id", "templateId", "allowedCudaVersions")
ENDPOINT_FIELDS = ("id", "name", *GRAPHQL_DEFAULTS, "templateId", "allowedCudaVersions")
V1_FIELDS = {"workersMin", "workersMax", "idleTimeout", "scalerType", "scalerValue", "executionTimeoutMs",
             "flashboot", "name", "templateId", "gpuTypeIds", "gpuCount", "allowedCudaVersions",
             "networkVolumeId", "networkVolumeIds", "dataCenterIds"}


@dataclass
class Knobs:
    """RunPod behaviours to play; every one defaults to a plain, healthy endpoint."""

    cold_start_s: float = 0.0
    seconds_per_job: float = 0.0          # added to the ComfyUI run, as GPU time
    output_format: str = "v5"             # "v5": images list; "legacy": status/message (<= 4.0.1)
    s3_outputs: bool = False              # outputs as presigned URLs (served by this emulator)
    fail_next: int = 0                    # next K jobs: the handler raises -> FAILED, error is a JSON string
    timed_out_next: int = 0               # next K jobs end TIMED_OUT
    completed_error_next: int = 0         # next K jobs: legacy COMPLETED with {"status": "error"}
    rate_limit_next: int = 0              # next K job-API requests answer 429
    server_error_next: int = 0            # next K job-API requests answer 503
    retry_after: str | None = "1"         # Retry-After header on those 429s (None: no header)
    execution_timeout_s: float | None = None   # overrides the endpoint's executionTimeoutMs
    retention_s: float = 1800.0           # /run results are kept this long after they finish
    payload_limit: int = RUN_LIMIT
    runsync_payload_limit: int = RUNSYNC_LIMIT
    admin_apis: tuple[str, ...] = ADMIN_APIS   # which admin APIs answer; the others 404
    admin_delay_s: float = 0.0            # every admin write takes this long (races)
    throttled: int = 0                    # reported in /health
    unhealthy: int = 0


@dataclass
class Worker:
    index: int
    comfy_url: str
    state: str = "off"                    # off, initializing, idle, running
    ready_at: float = 0.0
    idle_since: float = 0.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:14])


@dataclass
class Job:
    id: str
    endpoint: str
    input: dict[str, Any]
    submitted: float
    sync: bool = False
    fault: str | None = None
    status: str = "IN_QUEUE"
    started: float | None = None
    finished: float | None = None
    output: Any = None
    error: Any = None
    worker: Worker | None = None
    task: asyncio.Task | None = None
    timeout_s: float = 600.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            out["delayTime"] = int((self.started - self.submitted) * 1000)
            out["workerId"] = self.worker.id if self.worker else None
        elif self.finished is not None:
            out["delayTime"] = int((self.finished - self.submitted) * 1000)
        if self.finished is not None and self.started is not None:
            out["executionTime"] = max(1, int((self.finished - self.started) * 1000))
        if self.output is not None:
            out["output"] = self.output
        if self.error is not None:
            out["error"] = self.error
        return out


class HandlerFailure(Exception):
    """The handler raised: RunPod's SDK turns this into a JSON ``error`` string."""


def _default_endpoint(endpoint_id: str, workers: int) -> dict[str, Any]:
    record = {"id": endpoint_id, "name": f"comfy-cluster-{endpoint_id}", **GRAPHQL_DEFAULTS,
              "templateId": "tmpl-worker-comfyui", "allowedCudaVersions": "12.4,12.6"}
    record.update(idleTimeout=5, workersMax=workers, workersStandby=0, flashBootType="FLASHBOOT")
    return record


def _problem(status: int, detail: str) -> web.Response:
    """An RFC 9457 problem, as REST v2 answers errors."""
    return web.json_response({"type": "about:blank", "title": "Unprocessable Content" if status == 422
                              else "Bad Request", "status": status, "detail": detail}, status=status,
                             content_type="application/problem+json")


class RunPodEmulator:
    """One emulated RunPod account with one (or more) serverless endpoints, on a loopback port."""

    def __init__(self, *, endpoint_id: str = "emu-endpoint", api_key: str = "emu-key", workers: int = 1,
                 comfy_urls: list[str] | None = None, host: str = "127.0.0.1", port: int = 0,
                 endpoint_settings: dict[str, Any] | None = None, external_workers: bool = False,
                 **knobs: Any) -> None:
        self.endpoint_id = endpoint_id
        self.external_workers = external_workers
        self._worker_api = WorkerAPI(self)
        self._api_key = api_key
        self.host = host
        self.port = port
        self.knobs = Knobs(**knobs)
        self._own_comfy: list[Any] = []
        self._comfy_urls = list(comfy_urls or [])
        self._worker_count = workers if comfy_urls is None or external_workers else len(self._comfy_urls)
        record = _default_endpoint(endpoint_id, self._worker_count)
        record.update(endpoint_settings or {})
        self.endpoints: dict[str, dict[str, Any]] = {endpoint_id: record}
        self.workers: list[Worker] = []
        self.jobs: dict[str, Job] = {}
        self.queue: list[Job] = []
        self.requests: list[tuple[str, str]] = []
        self.s3: dict[str, bytes] = {}
        self.retried = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._http: ClientSession | None = None
        self._scheduler: asyncio.Task | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"RunPodEmulator(endpoint_id={self.endpoint_id!r}, url={self.url!r})"

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The job-API base for ``RunPodConfig.base_url``."""
        return f"{self.url}/v2/{self.endpoint_id}"

    def start(self, timeout: float = 15.0) -> RunPodEmulator:
        if not self._comfy_urls and not self.external_workers:
            from .process import EmulatorThread

            for i in range(self._worker_count):
                emu = EmulatorThread(name=f"runpod-worker-{i}").start()
                self._own_comfy.append(emu)
                self._comfy_urls.append(emu.url)
        # External workers join when they first poll for a job.
        self.workers = [] if self.external_workers else [Worker(i, url) for i, url in enumerate(self._comfy_urls)]
        self._thread = threading.Thread(target=self._serve, name="runpod-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"RunPod emulator did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(15)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None
        for emu in self._own_comfy:
            emu.stop()
        self._own_comfy.clear()

    def __enter__(self) -> RunPodEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set(self, **knobs: Any) -> None:
        """Change knobs live (only those given), on the server's loop so no request sees half of it."""
        for name in knobs:
            if name not in {f.name for f in fields(Knobs)}:
                raise ValueError(f"unknown RunPod emulator knob {name!r}")

        async def apply() -> None:
            for name, value in knobs.items():
                setattr(self.knobs, name, tuple(value) if name == "admin_apis" else value)
        self._call(apply())

    def reset(self) -> None:
        """Knobs back to their defaults and the request log emptied (between tests)."""
        async def apply() -> None:
            self.knobs = Knobs()
            self.requests.clear()
        self._call(apply())

    def endpoint(self, endpoint_id: str | None = None) -> dict[str, Any]:
        """A copy of the endpoint's admin record (as GraphQL would read it)."""
        async def read() -> dict[str, Any]:
            return json.loads(json.dumps(self.endpoints[endpoint_id or self.endpoint_id]))
        return self._call(read())

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's ``/status`` view plus its ``input``, for tests to inspect."""
        async def read() -> dict[str, Any]:
            job = self.jobs[job_id]
            return {**job.view(), "input": json.loads(json.dumps(job.input))}
        return self._call(read())

    def worker_env(self, worker_id: str) -> dict[str, str]:
        """The RunPod variables for an external worker process (``external_workers=True``)."""
        return self._worker_api.env(worker_id)

    def count(self, method: str, suffix: str) -> int:
        """How many requests ``method`` to a path ending in ``suffix`` arrived."""
        return sum(1 for m, p in list(self.requests) if m == method and p.endswith(suffix))

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None, "RunPod emulator is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(15)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as err:  # reported to start()
            self._error = err
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_get("/v2/serverless/{eid}", self._v2_get)
        r.add_patch("/v2/serverless/{eid}", self._v2_patch)
        r.add_post("/v2/{eid}/run", self._run)
        r.add_post("/v2/{eid}/runsync", self._runsync)
        r.add_get("/v2/{eid}/status/{job}", self._status)
        r.add_post("/v2/{eid}/status/{job}", self._status)
        r.add_post("/v2/{eid}/cancel/{job}", self._cancel)
        r.add_post("/v2/{eid}/retry/{job}", self._retry)
        r.add_post("/v2/{eid}/purge-queue", self._purge)
        r.add_get("/v2/{eid}/health", self._health)
        r.add_get("/v1/endpoints/{eid}", self._v1_get)
        r.add_patch("/v1/endpoints/{eid}", self._v1_patch)
        r.add_post("/v1/endpoints/{eid}/update", self._v1_patch)
        r.add_post("/graphql", self._graphql)
        r.add_get("/_s3/{key:.+}", self._s3_get)
        r.add_post("/_emulator/knobs", self._knobs)
        if self.external_workers:
            self._worker_api.add_routes(r)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._http = ClientSession(timeout=ClientTimeout(total=120))
        self._scheduler = asyncio.create_task(self._schedule())

    async def _shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ middleware
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.path.startswith("/_s3/"):
            return await handler(request)
        given = request.headers.get("Authorization", "")
        given = given[7:] if given.startswith("Bearer ") else given
        if request.path == "/graphql" and not given:
            given = request.query.get("api_key", "")
        worker_call = self.external_workers and WorkerAPI.is_worker_path(request.path)
        if given != (self._worker_api.key if worker_call else self._api_key):
            return web.json_response({"error": "Unauthorized"}, status=401)
        eid = request.match_info.get("eid")
        if eid is not None and eid not in self.endpoints:
            return web.json_response({"error": f"endpoint {eid} not found"}, status=404)
        is_job_api = request.path.startswith("/v2/") and not request.path.startswith("/v2/serverless/")
        if is_job_api and self.knobs.rate_limit_next > 0:
            self.knobs.rate_limit_next -= 1
            headers = {"Retry-After": self.knobs.retry_after} if self.knobs.retry_after is not None else {}
            return web.json_response({"error": "Too Many Requests"}, status=429, headers=headers)
        if is_job_api and self.knobs.server_error_next > 0:
            self.knobs.server_error_next -= 1
            return web.json_response({"error": "Service Unavailable"}, status=503)
        return await handler(request)

    async def _knobs(self, request: web.Request) -> web.Response:
        body = await request.json()
        known = {f.name for f in fields(Knobs)}
        unknown = sorted(set(body) - known)
        if unknown:
            return web.json_response({"error": f"unknown knobs {unknown}"}, status=400)
        for name, value in body.items():
            setattr(self.knobs, name, tuple(value) if name == "admin_apis" else value)
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ job API
    async def _submit(self, request: web.Request, limit: int, sync: bool) -> Job | web.Response:
        raw = await request.read()
        if len(raw) > limit:
            return web.json_response({"error": f"request body is {len(raw)} bytes, over the "
                                      f"{limit / 1e6:.0f} MB limit"}, status=400)
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return web.json_response({"error": "'input' must be a JSON object"}, status=400)
        k = self.knobs
        fault = None
        for name in ("fail_next", "timed_out_next", "completed_error_next"):
            if getattr(k, name) > 0:
                setattr(k, name, getattr(k, name) - 1)
                fault = name
                break
        eid = request.match_info["eid"]
        raw_policy = body.get("policy")
        policy = raw_policy if isinstance(raw_policy, dict) else {}
        timeout_ms = policy.get("executionTimeout") or self.endpoints[eid].get("executionTimeoutMs") or 600_000
        job_id = (f"sync-{uuid.uuid4()}" if sync else f"{uuid.uuid4()}-u1")
        job = Job(id=job_id, endpoint=eid, input=body["input"], submitted=time.monotonic(), sync=sync,
                  fault=fault, timeout_s=k.execution_timeout_s if k.execution_timeout_s is not None
                  else timeout_ms / 1000)
        self.jobs[job.id] = job
        self.queue.append(job)
        return job

    async def _run(self, request: web.Request) -> web.Response:
        job = await self._submit(request, self.knobs.payload_limit, sync=False)
        if isinstance(job, web.Response):
            return job
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    async def _runsync(self, request: web.Request) -> web.Response:
        job = await self._submit(request, self.knobs.runsync_payload_limit, sync=True)
        if isinstance(job, web.Response):
            return job
        wait_ms = min(300_000, max(1_000, int(request.query.get("wait", "90000"))))
        try:
            await asyncio.wait_for(job.done.wait(), wait_ms / 1000)
        except asyncio.TimeoutError:
            return web.json_response({"id": job.id, "status": job.status})
        return web.json_response(job.view())

    def _job(self, request: web.Request) -> Job | None:
        job = self.jobs.get(request.match_info["job"])
        return job if job is not None and job.endpoint == request.match_info["eid"] else None

    async def _status(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return web.json_response({"error": "job not found"}, status=404)
        return web.json_response(job.view())

    async def _cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return web.json_response({"error": "job not found"}, status=404)
        if job.status == "IN_QUEUE":
            self.queue.remove(job)
            self.finish_job(job, "CANCELLED")
        elif job.status == "IN_PROGRESS":
            if job.task is not None:
                job.task.cancel()
            self.finish_job(job, "CANCELLED")   # an external worker's late result is dropped
        return web.json_response({"id": job.id, "status": job.status})

    async def _retry(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return web.json_response({"error": "job not found"}, status=404)
        if job.status not in ("FAILED", "TIMED_OUT"):
            return web.json_response({"error": f"job is {job.status}; only FAILED or TIMED_OUT jobs can be "
                                      "retried"}, status=400)
        job.status, job.output, job.error, job.started, job.finished, job.fault = \
            "IN_QUEUE", None, None, None, None, None
        job.done = asyncio.Event()
        self.retried += 1
        self.queue.append(job)
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    async def _purge(self, request: web.Request) -> web.Response:
        eid = request.match_info["eid"]
        purged = [j for j in self.queue if j.endpoint == eid]
        for job in purged:
            self.queue.remove(job)
            self.jobs.pop(job.id, None)
        return web.json_response({"removed": len(purged), "status": "completed"})

    async def _health(self, request: web.Request) -> web.Response:
        eid = request.match_info["eid"]
        states = [w.state for w in self.workers]
        mine = [j for j in self.jobs.values() if j.endpoint == eid]
        return web.json_response({
            "jobs": {"inQueue": sum(j.status == "IN_QUEUE" for j in mine),
                     "inProgress": sum(j.status == "IN_PROGRESS" for j in mine),
                     "completed": sum(j.status == "COMPLETED" for j in mine),
                     "failed": sum(j.status in ("FAILED", "TIMED_OUT") for j in mine),
                     "retried": self.retried},
            "workers": {"idle": states.count("idle"), "running": states.count("running"),
                        "initializing": states.count("initializing"), "ready": states.count("idle"),
                        "throttled": self.knobs.throttled, "unhealthy": self.knobs.unhealthy},
        })

    async def _s3_get(self, request: web.Request) -> web.Response:
        data = self.s3.get(request.match_info["key"])
        if data is None:
            return web.Response(status=404, text="NoSuchKey")
        return web.Response(body=data, content_type="image/png")

    # ------------------------------------------------------------------ scheduler and workers
    def finish_job(self, job: Job, status: str) -> None:
        job.status = status
        job.finished = time.monotonic()
        if job.worker is not None:
            job.worker.state, job.worker.idle_since = "idle", job.finished
        job.done.set()

    async def _schedule(self) -> None:
        while True:
            self._tick(time.monotonic())
            await asyncio.sleep(0.01)

    def _tick(self, now: float) -> None:
        """Jobs run (here or on external workers) and expire after their retention time."""
        if self.external_workers:
            self._worker_api.tick(now)
        else:
            self._tick_workers(now)
        for job in list(self.jobs.values()):
            if job.finished is not None and job.status != "IN_QUEUE":
                if now - job.finished > (60.0 if job.sync else self.knobs.retention_s):
                    del self.jobs[job.id]

    def _tick_workers(self, now: float) -> None:
        """Workers finish booting, take queued jobs, scale up to demand and down after idleTimeout."""
        record = self.endpoints[self.endpoint_id]
        cap = min(int(record.get("workersMax") or 0), len(self.workers))
        warm = min(cap, max(int(record.get("workersMin") or 0), int(record.get("workersStandby") or 0)))
        idle_timeout = float(record.get("idleTimeout") or 5)
        for w in self.workers:
            if w.state == "initializing" and now >= w.ready_at:
                w.state, w.idle_since = "idle", now
            if w.index >= cap and w.state in ("idle", "initializing"):
                w.state = "off"
        idle = [w for w in self.workers if w.state == "idle"]
        while self.queue and idle:
            self._start(self.queue.pop(0), idle.pop(0), now)
        running = sum(w.state == "running" for w in self.workers)
        target = min(cap, max(warm, running + len(self.queue)))
        active = [w for w in self.workers if w.state != "off"]
        for w in self.workers[:cap]:
            if len(active) >= target:
                break
            if w.state == "off":
                w.state, w.ready_at = "initializing", now + self.knobs.cold_start_s
                active.append(w)
        for w in self.workers:
            if w.state == "idle" and now - w.idle_since > idle_timeout and len(active) > warm:
                w.state = "off"
                active.remove(w)

    def _start(self, job: Job, worker: Worker, now: float) -> None:
        job.status, job.started, job.worker = "IN_PROGRESS", now, worker
        worker.state = "running"
        job.task = asyncio.create_task(self._execute(job, worker))

    async def _execute(self, job: Job, worker: Worker) -> None:
        try:
            if job.fault == "timed_out_next":
                await asyncio.sleep(max(self.knobs.seconds_per_job, 0.05))
                self.finish_job(job, "TIMED_OUT")
                return
            result = await asyncio.wait_for(self._handler(job, worker), job.timeout_s)
        except asyncio.TimeoutError:
            await self._interrupt(worker)
            self.finish_job(job, "TIMED_OUT")
            return
        except asyncio.CancelledError:
            await asyncio.shield(self._interrupt(worker))
            raise
        except HandlerFailure as err:
            job.error = json.dumps({"error_type": type(err.__cause__ or err).__name__,
                                    "error_message": str(err),
                                    "error_traceback": "".join(traceback.format_exception(err)),
                                    "hostname": f"emu-{worker.id}", "worker_id": worker.id,
                                    "runpod_version": "1.7.12"})
            self.finish_job(job, "FAILED")
            return
        if isinstance(result, dict) and "error" in result:
            job.error = result["error"]
            rest = {k: v for k, v in result.items() if k != "error"}
            job.output = rest or None
            self.finish_job(job, "FAILED")
            return
        job.output = result
        self.finish_job(job, "COMPLETED")

    async def _interrupt(self, worker: Worker) -> None:
        assert self._http is not None
        try:
            async with self._http.post(f"{worker.comfy_url}/interrupt", json={}, timeout=ClientTimeout(total=5)):
                pass
        except Exception as err:  # the worker may already be gone
            log.debug("emulated worker %s: interrupt failed: %s", worker.index, err)

    async def _handler(self, job: Job, worker: Worker) -> dict[str, Any]:
        """worker-comfyui's handler (worker_comfyui.py) with this endpoint's faults and output format."""
        k = self.knobs
        assert self._http is not None
        if k.seconds_per_job:
            await asyncio.sleep(k.seconds_per_job)
        if job.fault == "fail_next":
            raise HandlerFailure("CUDA error: an illegal memory access was encountered") from RuntimeError()
        result = await worker_comfyui.handle(self._http, worker.comfy_url, job.input)
        if result.error is not None:
            return {"error": result.error["error"]} if k.output_format == "legacy" else result.error
        return self._format(job, result.images, result.warnings)

    def _format(self, job: Job, found: list[tuple[str, bytes]], warnings: list[str]) -> dict[str, Any]:
        k = self.knobs

        def stored(filename: str, data: bytes) -> str:
            # rp_upload.upload_image: bucket "%m-%y", key "<job id>/<uuid[:8]><ext>", a 7-day presigned GET
            key = f"{time.strftime('%m-%y')}/{job.id}/{uuid.uuid4().hex[:8]}{os.path.splitext(filename)[1]}"
            self.s3[key] = data
            return (f"{self.url}/_s3/{key}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=EMUKEY%2F"
                    f"{time.strftime('%Y%m%d')}%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date={time.strftime('%Y%m%dT%H%M%SZ')}"
                    f"&X-Amz-Expires=604800&X-Amz-SignedHeaders=host&X-Amz-Signature={uuid.uuid4().hex}")
        if k.output_format == "legacy":
            if job.fault == "completed_error_next" or not found:
                return {"status": "error", "message": "the image does not exist in the specified output folder"}
            name, data = found[-1]
            message = stored(name, data) if k.s3_outputs else base64.b64encode(data).decode("ascii")
            return {"status": "success", "message": message}
        if not found:
            return {"status": "success_no_images", "images": []}
        images = [{"filename": name, "type": "s3_url" if k.s3_outputs else "base64",
                   "data": stored(name, data) if k.s3_outputs else base64.b64encode(data).decode("ascii")}
                  for name, data in found]
        return {"images": images, "errors": warnings} if warnings else {"images": images}

    # ------------------------------------------------------------------ endpoint admin
    def _admin_record(self, request: web.Request, api: str) -> dict[str, Any] | web.Response:
        if api not in self.knobs.admin_apis:
            return web.json_response({"error": "Not Found"}, status=404)
        return self.endpoints[request.match_info["eid"]]

    async def _admin_write(self, record: dict[str, Any], changes: dict[str, Any]) -> None:
        if self.knobs.admin_delay_s:
            await asyncio.sleep(self.knobs.admin_delay_s)
        record.update(changes)

    @staticmethod
    def _v2_view(record: dict[str, Any]) -> dict[str, Any]:
        scaling = ({"type": "QUEUE_DELAY", "queueDelay": record["scalerValue"]}
                   if record["scalerType"] == "QUEUE_DELAY" else
                   {"type": "REQUEST_COUNT", "requestCount": record["scalerValue"]})
        return {"id": record["id"], "name": record["name"], "templateId": record["templateId"],
                "workers": {"min": record["workersMin"], "max": record["workersMax"],
                            "idleTimeout": record["idleTimeout"]},
                "scaling": scaling, "timeout": record["executionTimeoutMs"],
                "flashboot": record["flashBootType"],
                "networkVolumes": [{"id": v["networkVolumeId"]} for v in record.get("networkVolumeIds") or []]}

    async def _v2_get(self, request: web.Request) -> web.Response:
        record = self._admin_record(request, "v2")
        return record if isinstance(record, web.Response) else web.json_response(self._v2_view(record))

    async def _v2_patch(self, request: web.Request) -> web.Response:
        record = self._admin_record(request, "v2")
        if isinstance(record, web.Response):
            return record
        body = await request.json()
        workers = body.get("workers", {}) if isinstance(body, dict) else None
        if not isinstance(workers, dict) or set(workers) - {"min", "max", "idleTimeout"}:
            return _problem(422, "workers: expected an object with min, max, idleTimeout")
        changes = {}
        for key, target in (("min", "workersMin"), ("max", "workersMax"), ("idleTimeout", "idleTimeout")):
            if key in workers:
                value = workers[key]
                if not isinstance(value, int) or value < 0:
                    return _problem(422, f"workers.{key}: must be an integer >= 0")
                changes[target] = value
        error = _check_workers({**record, **changes})
        if error:
            return _problem(422, error)
        if "workersMin" in changes:
            changes["workersStandby"] = changes["workersMin"]
        await self._admin_write(record, changes)
        return web.json_response(self._v2_view(record))

    async def _v1_get(self, request: web.Request) -> web.Response:
        record = self._admin_record(request, "v1")
        return record if isinstance(record, web.Response) else web.json_response(_v1_view(record))

    async def _v1_patch(self, request: web.Request) -> web.Response:
        record = self._admin_record(request, "v1")
        if isinstance(record, web.Response):
            return record
        body = await request.json()
        if not isinstance(body, dict) or set(body) - V1_FIELDS:
            return web.json_response({"error": f"unknown fields {sorted(set(body) - V1_FIELDS)}"}, status=400)
        for key in ("workersMin", "workersMax", "idleTimeout", "scalerValue"):
            if key in body and (not isinstance(body[key], int) or body[key] < 0):
                return web.json_response({"error": f"{key}: must be an integer >= 0"}, status=400)
        changes = dict(body)
        error = _check_workers({**record, **changes})
        if error:
            return web.json_response({"error": error}, status=400)
        if "workersMin" in changes:
            changes["workersStandby"] = changes["workersMin"]
        await self._admin_write(record, changes)
        return web.json_response(_v1_view(record))

    async def _graphql(self, request: web.Request) -> web.Response:
        if "graphql" not in self.knobs.admin_apis:
            return web.json_response({"error": "Not Found"}, status=404)
        body = await request.json()
        query = str(body.get("query", "")) if isinstance(body, dict) else ""
        variables = body.get("variables") or {} if isinstance(body, dict) else {}
        if "saveEndpoint" in query:
            return await self._save_endpoint(variables.get("input"), query)
        if "myself" in query:
            selection = _selection(query, "endpoints")
            if selection is None:
                return _gql_error("expected myself { endpoints { ... } }")
            unknown = [f for f in selection if f not in ENDPOINT_FIELDS]
            if unknown:
                return _gql_error(f'Cannot query field "{unknown[0]}" on type "Endpoint".')
            rows = [{f: record.get(f) for f in selection} for record in self.endpoints.values()]
            return web.json_response({"data": {"myself": {"endpoints": rows}}})
        return _gql_error("unsupported operation")

    async def _save_endpoint(self, given: Any, query: str) -> web.Response:
        """saveEndpoint replaces the record: every omitted field goes back to its default."""
        if not isinstance(given, dict):
            return _gql_error("Variable \"$input\" of required type \"EndpointInput!\" was not provided.")
        unknown = sorted(set(given) - set(ENDPOINT_FIELDS))
        if unknown:
            return _gql_error(f'Field "{unknown[0]}" is not defined by type "EndpointInput".')
        if not isinstance(given.get("name"), str) or len(given["name"]) < 3:
            return _gql_error("name: String! is required (at least 3 characters)")
        for volume in given.get("networkVolumeIds") or []:
            if not isinstance(volume, dict) or set(volume) != {"networkVolumeId"}:
                return _gql_error("networkVolumeIds: expected [{networkVolumeId}], got "
                                  f"{sorted(volume) if isinstance(volume, dict) else volume!r}")
        record = self.endpoints.get(str(given.get("id")))
        if record is None:
            return _gql_error(f"endpoint {given.get('id')} not found")
        replaced = {**GRAPHQL_DEFAULTS, **{k: record[k] for k in GRAPHQL_KEPT}, "name": record["name"]}
        for key, value in given.items():
            replaced[key] = value
        old_dcs = {v["networkVolumeId"]: v.get("dataCenterId") for v in record.get("networkVolumeIds") or []}
        replaced["networkVolumeIds"] = [{"networkVolumeId": v["networkVolumeId"],
                                         "dataCenterId": old_dcs.get(v["networkVolumeId"], "EU-RO-1")}
                                        for v in replaced.get("networkVolumeIds") or []]
        error = _check_workers(replaced)
        if error:
            return _gql_error(error)
        await self._admin_write(record, replaced)
        selection = _selection(query, "saveEndpoint") or ["id"]
        return web.json_response({"data": {"saveEndpoint": {f: record.get(f) for f in selection
                                                            if f in ENDPOINT_FIELDS}}})


def _check_workers(record: dict[str, Any]) -> str | None:
    if record["workersMin"] > record["workersMax"]:
        return f"workersMin ({record['workersMin']}) must not exceed workersMax ({record['workersMax']})"
    if not 1 <= int(record["idleTimeout"]) <= 3600:
        return "idleTimeout: must be between 1 and 3600 seconds"
    return None


def _v1_view(record: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in record.items() if k not in ("gpuIds", "flashBootType")}
    view["gpuTypeIds"] = str(record["gpuIds"]).split(",")
    view["flashboot"] = record["flashBootType"] != "OFF"
    return view


def _gql_error(message: str) -> web.Response:
    return web.json_response({"errors": [{"message": message}], "data": None})


def _selection(query: str, name: str) -> list[str] | None:
    """The top-level field names selected under ``name { ... }`` (arguments and nested selections dropped)."""
    match = re.search(rf"\b{name}\b[^{{]*{{", query)
    if not match:
        return None
    depth, end = 1, match.end()
    while depth and end < len(query):
        depth += {"{": 1, "}": -1}.get(query[end], 0)
        end += 1
    block = query[match.end():end - 1]
    while True:
        flat = re.sub(r"\{[^{}]*\}", " ", block)
        if flat == block:
            break
        block = flat
    return re.findall(r"[A-Za-z_]\w*", re.sub(r"\([^)]*\)", " ", block))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m comfy_cluster.emulator.runpod",
                                     description="A RunPod-compatible serverless endpoint over emulated ComfyUI.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--endpoint-id", default="emu-endpoint")
    parser.add_argument("--api-key-env", default="RUNPOD_API_KEY",
                        help="the variable holding the API key to accept")
    parser.add_argument("--cold-start", type=float, default=0.0)
    parser.add_argument("--seconds-per-job", type=float, default=0.0)
    parser.add_argument("--output-format", choices=("v5", "legacy"), default="v5")
    args = parser.parse_args(argv)
    key = os.environ.get(args.api_key_env, "").strip()
    if not key:
        parser.error(f"{args.api_key_env} is not set: the emulator needs the key it should accept")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    emu = RunPodEmulator(endpoint_id=args.endpoint_id, api_key=key, workers=args.workers, host=args.host,
                         port=args.port, cold_start_s=args.cold_start, seconds_per_job=args.seconds_per_job,
                         output_format=args.output_format).start()
    log.info("RunPod emulator: job API %s, admin %s/v1 and %s/graphql", emu.base_url, emu.url, emu.url)
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
