"""RunPod's worker-facing API on the RunPod emulator, so a real serverless worker can take its jobs.

A worker built on the runpod SDK (``runpod.serverless.start``) long-polls
``RUNPOD_WEBHOOK_GET_JOB`` for a job, runs its handler, posts the result to
``RUNPOD_WEBHOOK_POST_OUTPUT`` and pings ``RUNPOD_WEBHOOK_PING``, authorised by
``RUNPOD_AI_API_KEY`` (a worker key, never the user's API key). With
``RunPodEmulator(external_workers=True)`` the emulator runs no handler of its own: each job
waits IN_QUEUE until a worker takes it, and the worker's result decides COMPLETED or
FAILED, as on RunPod. The routes and payloads follow runpod 1.7 (``rp_job.get_job``,
``rp_http.send_result``, ``rp_ping.Heartbeat``):

- ``GET /v2/{id}/job-take/{worker}?gpu=..&job_in_progress=0``: 200 ``{"id", "input"}``,
  or 204 when no job came within ``TAKE_WAIT_S``;
- ``POST /v2/{id}/job-done/{worker}/{job}?gpu=..&isStream=false``: the JSON result
  ``{"output"?, "error"?, "stopPod"?}`` (sent as ``application/x-www-form-urlencoded``);
- ``GET /v2/{id}/ping/{worker}?gpu=..&job_id=..``: the heartbeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .runpod import Job, RunPodEmulator, Worker

log = logging.getLogger(__name__)

TAKE_WAIT_S = 5.0        # how long a job-take request is held open before 204
TAKE_TICK_S = 0.01
WORKER_PATHS = ("/job-take/", "/job-done/", "/ping/")


class WorkerAPI:
    """The job-take / job-done / ping routes over one emulator's queue and job table."""

    def __init__(self, emulator: RunPodEmulator) -> None:
        self.emulator = emulator
        self.key = f"rpw_{secrets.token_hex(16)}"
        self.pings: dict[str, float] = {}

    def env(self, worker_id: str) -> dict[str, str]:
        """The variables RunPod gives a worker container, pointing at this emulator."""
        base = f"{self.emulator.url}/v2/{self.emulator.endpoint_id}"
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=EMULATED",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=EMULATED",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=EMULATED",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu=EMULATED",
            "RUNPOD_AI_API_KEY": self.key,
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_POD_HOSTNAME": f"{worker_id}-emulated",
            "RUNPOD_ENDPOINT_ID": self.emulator.endpoint_id,
        }

    @staticmethod
    def is_worker_path(path: str) -> bool:
        return path.startswith("/v2/") and any(part in path for part in WORKER_PATHS)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v2/{eid}/job-take/{worker}", self.take)
        router.add_post("/v2/{eid}/job-done/{worker}/{job}", self.done)
        router.add_get("/v2/{eid}/ping/{worker}", self.ping)

    def _worker(self, worker_id: str) -> Worker:
        from .runpod import Worker

        emu = self.emulator
        for worker in emu.workers:
            if worker.id == worker_id:
                return worker
        worker = Worker(len(emu.workers), comfy_url="", state="idle", idle_since=time.monotonic(), id=worker_id)
        emu.workers.append(worker)
        log.info("RunPod emulator: worker %s joined", worker_id)
        return worker

    async def take(self, request: web.Request) -> web.Response:
        emu = self.emulator
        worker = self._worker(request.match_info["worker"])
        eid = request.match_info["eid"]
        deadline = time.monotonic() + TAKE_WAIT_S
        while True:
            job = next((j for j in emu.queue if j.endpoint == eid), None)
            if job is not None:
                emu.queue.remove(job)
                job.status, job.started, job.worker = "IN_PROGRESS", time.monotonic(), worker
                worker.state = "running"
                log.debug("RunPod emulator: worker %s took job %s", worker.id, job.id)
                return web.json_response({"id": job.id, "input": job.input})
            if time.monotonic() >= deadline or request.transport is None or request.transport.is_closing():
                return web.Response(status=204)
            await asyncio.sleep(TAKE_TICK_S)

    async def done(self, request: web.Request) -> web.Response:
        emu = self.emulator
        job = emu.jobs.get(request.match_info["job"])
        try:
            result = json.loads(await request.read())
        except ValueError:
            return web.json_response({"error": "the job result is not JSON"}, status=400)
        if job is None or job.status != "IN_PROGRESS" or job.worker is None \
                or job.worker.id != request.match_info["worker"]:
            # Cancelled, timed out or never taken by this worker: RunPod drops a late result.
            log.info("RunPod emulator: dropped a result for job %s (%s)", request.match_info["job"],
                     job.status if job is not None else "unknown")
            return web.json_response({})
        self.finish(job, result if isinstance(result, dict) else {"output": result})
        return web.json_response({})

    def finish(self, job: Job, result: dict[str, Any]) -> None:
        """A worker's result as the job's end: an ``error`` key fails it, the ``output`` stays."""
        job.output = result.get("output")
        if result.get("error") is not None:
            job.error = result["error"]
            self.emulator.finish_job(job, "FAILED")
        else:
            self.emulator.finish_job(job, "COMPLETED")

    async def ping(self, request: web.Request) -> web.Response:
        self.pings[request.match_info["worker"]] = time.monotonic()
        self._worker(request.match_info["worker"])
        return web.json_response({})

    def tick(self, now: float) -> None:
        """Jobs past their execution timeout end TIMED_OUT; the worker's late result is dropped."""
        for job in list(self.emulator.jobs.values()):
            if job.status == "IN_PROGRESS" and job.started is not None and now - job.started > job.timeout_s:
                self.emulator.finish_job(job, "TIMED_OUT")
